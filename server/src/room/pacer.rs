//! What leaves for one participant, and when: the send policy of a peer, in one place.
//!
//! - **Audio first.** The mix-minus never waits: its packets go out as they come, and what they
//!   cost is charged to the budget, so video yields to them.
//! - **Video is paced** within the bandwidth estimate ([`PACING_FACTOR`] x the estimate, small
//!   bursts), so the link's own queue stays short and audio behind it stays on time. Video
//!   retransmissions (RTX) are paced with it, ahead of new video (libwebrtc's order: audio, then
//!   retransmissions, then video): a lost packet holds up its frame at the receiver, and every
//!   millisecond it waits behind new frames is a millisecond of frozen picture.
//! - **Video that cannot go out in time is not made.** The application reads [`LinkState`]
//!   before it hands over a frame: when the queue holds more than [`VIDEO_QUEUE_MAX_MS`], the
//!   frame is skipped, and the stream continues from a keyframe. The pacer drops packets itself
//!   only past [`VIDEO_QUEUE_LIMIT`] (counted, and the stream again waits for a keyframe).
//! - **Probes carry padding, not media.** While the estimator probes (it wants to know whether
//!   the link carries the receiver's next tier before the room sends it), the pacer runs at the
//!   probe's rate and fills what media leaves of it with copies of recent video packets sent
//!   again on the RTX stream (libwebrtc's payload padding): the receiver discards them as
//!   duplicates, the transport-wide feedback counts them. A probe the link cannot carry costs a
//!   short queue, not a frozen picture. RTX is renumbered here, at release, so padding and
//!   retransmissions share one sequence.
//! - **What the receiver says** (RTCP receiver reports on our streams: loss and round trip) is
//!   read here and published in [`LinkState`], with the estimate and the bytes sent.
//!
//! Sans-IO like the rest of the interceptor chain: time comes in with every call, so the policy is
//! tested with synthetic instants. It sits at the chain's pacer slot, below every generator (NACK
//! responder, RTCP reports) and above the TWCC numbering and the send history, which therefore see
//! release times, not enqueue times.

use crate::room::estimate::FeedbackCoverage;
use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet as IPacket, StreamInfo, TaggedPacket,
};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pacing rate as a multiple of the estimate. Not the 2.5x of libwebrtc, whose bursts a weak
/// link's queue turns into audio delay: the estimate is what the link carries, and the encoders
/// aim below it (audio reserve, video share), which is what drains the queue after a keyframe.
pub const PACING_FACTOR: f64 = 1.0;
/// What a packet costs on the wire beyond its RTP bytes: SRTP tag (10), UDP (8), IPv4 (20),
/// rounded up for IPv6 and TWCC extensions. Charged so that the pace is the wire's.
pub const WIRE_OVERHEAD_BYTES: u64 = 48;
/// Retransmissions are dropped while this much video is queued (a congested link, where they
/// would only compete with the keyframe the receiver will get anyway).
pub const RTX_MAX_QUEUE_MS: u64 = VIDEO_QUEUE_MAX_MS;
/// Credit the budget may build up while idle, in time at the pacing rate.
pub const BURST: Duration = Duration::from_millis(20);
/// Queued video beyond this (at the pacing rate) makes the application skip frames. Our queue
/// only delays video (audio overtakes it), so it may hold more than a link queue should: a
/// skip costs a freeze until the next keyframe.
pub const VIDEO_QUEUE_MAX_MS: u64 = 500;
/// Packets the video queue holds before it drops (a stall well past [`VIDEO_QUEUE_MAX_MS`]).
pub const VIDEO_QUEUE_LIMIT: usize = 600;
/// Rate used before any estimate arrives (bit/s).
pub const START_RATE_BPS: u64 = 300_000;
/// Recent video packets kept as padding material for probes (about a second at 300 kbit/s).
pub const PADDING_HISTORY: usize = 32;
/// Floor of the pacing rate, so that a collapsed estimate still drains the queue (bit/s).
const MIN_RATE_BPS: f64 = 50_000.0;

/// What one participant's link looks like from the sending side; written by the interceptor chain
/// and the bandwidth estimator, read by the room and the stats endpoint.
#[derive(Debug)]
pub struct LinkState {
    /// Bandwidth estimate (from transport-wide feedback, `room::estimate`), bit/s.
    pub estimate_bps: AtomicU64,
    /// RTP bytes released to the wire.
    pub sent_bytes: AtomicU64,
    /// Video queued in the pacer, bits.
    pub queued_video_bits: AtomicU64,
    /// Video packets dropped by the pacer (queue over [`VIDEO_QUEUE_LIMIT`]).
    pub dropped_video: AtomicU64,
    /// Retransmissions dropped because they would have arrived too late.
    pub dropped_rtx: AtomicU64,
    /// Retransmissions sent.
    pub retransmissions: AtomicU64,
    /// Set when the pacer dropped video: the sender waits for a keyframe.
    pub video_broken: AtomicBool,
    /// Loss the receiver reports on our streams, the worse of audio and video (1/256 units,
    /// each the last reported value).
    pub fraction_lost: AtomicU32,
    /// Last reported loss per stream: audio, video (1/256 units).
    stream_lost: [AtomicU32; 2],
    /// Round trip from its receiver reports, ms (0: unknown).
    pub rtt_ms: AtomicU32,
    /// Queueing delay on the path, from transport-wide feedback, ms.
    pub queue_delay_ms: AtomicU32,
    /// RTP sent over the last half second, kbit/s.
    pub sent_kbps: AtomicU32,
    /// Video tier the room encodes for this receiver, kbit/s (0: paused).
    pub tier_kbps: AtomicU32,
    /// The room pauses this receiver's video for bandwidth.
    pub video_paused: AtomicBool,
    /// The estimate at which the room would try this receiver's next tier up, bit/s (0: none).
    pub probe_bps: AtomicU64,
    /// What audio redundancy (RED) adds to the mix-minus now, bit/s: the room sizes video on the
    /// estimate minus this.
    pub audio_redundancy_bps: AtomicU64,
    /// Rate the estimator probes at, bit/s (0: no probe): the pacer sends at least this much,
    /// padding what media leaves.
    pub probe_rate_bps: AtomicU64,
    /// Padding bytes sent for probes.
    pub padding_bytes: AtomicU64,
    /// The receiver negotiated RTX for our video: probes can be padded.
    pub rtx: AtomicBool,
    /// What the transport-wide feedback that reached us described ([`FeedbackCoverage`]).
    pub feedback: FeedbackCoverage,
}

impl LinkState {
    /// A fresh link at the start rate.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            estimate_bps: AtomicU64::new(START_RATE_BPS),
            sent_bytes: AtomicU64::new(0),
            queued_video_bits: AtomicU64::new(0),
            dropped_video: AtomicU64::new(0),
            dropped_rtx: AtomicU64::new(0),
            retransmissions: AtomicU64::new(0),
            video_broken: AtomicBool::new(false),
            fraction_lost: AtomicU32::new(0),
            stream_lost: [AtomicU32::new(0), AtomicU32::new(0)],
            rtt_ms: AtomicU32::new(0),
            queue_delay_ms: AtomicU32::new(0),
            sent_kbps: AtomicU32::new(0),
            tier_kbps: AtomicU32::new(0),
            video_paused: AtomicBool::new(false),
            probe_bps: AtomicU64::new(0),
            audio_redundancy_bps: AtomicU64::new(0),
            probe_rate_bps: AtomicU64::new(0),
            padding_bytes: AtomicU64::new(0),
            rtx: AtomicBool::new(false),
            feedback: FeedbackCoverage::default(),
        })
    }

    /// The rate the pacer releases at, bit/s.
    pub fn pacing_rate_bps(&self) -> f64 {
        let rate = self
            .estimate_bps
            .load(Relaxed)
            .max(self.probe_rate_bps.load(Relaxed));
        (rate as f64 * PACING_FACTOR).max(MIN_RATE_BPS)
    }

    /// How long the queued video takes to leave at the pacing rate, ms.
    pub fn video_queue_ms(&self) -> u64 {
        (self.queued_video_bits.load(Relaxed) as f64 * 1000.0 / self.pacing_rate_bps()) as u64
    }

    /// Whether a new video frame should be skipped rather than queued.
    pub fn video_congested(&self) -> bool {
        self.video_queue_ms() > VIDEO_QUEUE_MAX_MS
    }

    /// Reported loss, percent.
    pub fn loss_percent(&self) -> f64 {
        f64::from(self.fraction_lost.load(Relaxed)) * 100.0 / 256.0
    }
}

/// The pacing interceptor (see the module docs).
pub struct PriorityPacer {
    audio_ssrc: u32,
    media_ssrcs: [u32; 2],
    link: Arc<LinkState>,
    budget_bits: f64,
    last_refill: Option<Instant>,
    /// Retransmissions first (the first `rtx_queued`), then new video.
    video: VecDeque<TaggedPacket>,
    rtx_queued: usize,
    video_bits: u64,
    write_out: VecDeque<TaggedPacket>,
    read_out: VecDeque<TaggedPacket>,
    /// The video stream's RTX (learned when the stream binds; none: not negotiated).
    rtx: Option<RtxStream>,
    /// Recent new video packets as released, newest last: padding material (kept only when
    /// there is an RTX stream to pad on).
    recent: VecDeque<Recent>,
    /// Which of `recent` the next padding packet copies (counting back from the newest).
    pad_cursor: usize,
}

/// What padding needs of a video packet sent: no header copy (its extensions are an
/// allocation per packet), the payload shared.
#[derive(Debug, Clone)]
struct Recent {
    transport: rtc::shared::TransportContext,
    sequence_number: u16,
    timestamp: u32,
    marker: bool,
    payload: bytes::Bytes,
}

/// The RTX stream of the video, whose sequence numbers the pacer assigns.
#[derive(Debug, Clone, Copy)]
struct RtxStream {
    ssrc: u32,
    payload_type: u8,
    next_seq: u16,
}

/// What a packet costs on the wire, in bits.
fn rtp_bits(p: &TaggedPacket) -> u64 {
    match &p.message.packet {
        IPacket::Rtp(rtp) => (rtp.marshal_size() as u64 + WIRE_OVERHEAD_BYTES) * 8,
        _ => 0,
    }
}

/// The middle 32 bits of the NTP time of `now` (RFC 3550's unit for LSR and DLSR: 1/65536 s).
fn ntp_middle(now: SystemTime) -> u32 {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (((secs << 32) | frac) >> 16) as u32
}

impl PriorityPacer {
    /// A pacer for a peer whose outgoing audio has `audio_ssrc` and video `video_ssrc` (anything
    /// else, e.g. video RTX, is paced as video).
    pub fn new(audio_ssrc: u32, video_ssrc: u32, link: Arc<LinkState>) -> Self {
        Self {
            audio_ssrc,
            media_ssrcs: [audio_ssrc, video_ssrc],
            link,
            budget_bits: 0.0,
            last_refill: None,
            video: VecDeque::new(),
            rtx_queued: 0,
            video_bits: 0,
            write_out: VecDeque::new(),
            read_out: VecDeque::new(),
            rtx: None,
            recent: VecDeque::new(),
            pad_cursor: 0,
        }
    }

    /// Whether a probe asks for padding and there is something to pad with.
    fn padding(&self) -> bool {
        self.link.probe_rate_bps.load(Relaxed) > 0 && self.rtx.is_some() && !self.recent.is_empty()
    }

    /// An RTX packet of `original` (RFC 4588: the original sequence number, then its payload).
    fn rtx_packet(rtx: &mut RtxStream, original: &Recent) -> rtc::rtp::Packet {
        let mut payload = Vec::with_capacity(2 + original.payload.len());
        payload.extend_from_slice(&original.sequence_number.to_be_bytes());
        payload.extend_from_slice(&original.payload);
        let seq = rtx.next_seq;
        rtx.next_seq = seq.wrapping_add(1);
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: rtx.ssrc,
                payload_type: rtx.payload_type,
                sequence_number: seq,
                timestamp: original.timestamp,
                marker: original.marker,
                ..Default::default()
            },
            payload: payload.into(),
        }
    }

    /// The next padding packet: a recent video packet again, on RTX.
    fn padding_packet(&mut self, now: Instant) -> Option<TaggedPacket> {
        let rtx = self.rtx.as_mut()?;
        let n = self.recent.len();
        let original = self
            .recent
            .get(n.checked_sub(1 + self.pad_cursor % n.max(1))?)?;
        self.pad_cursor += 1;
        let packet = Self::rtx_packet(rtx, original);
        Some(TaggedPacket {
            now,
            transport: original.transport,
            message: AttributedPacket::new(IPacket::Rtp(packet)).with(Attribute::Retransmission),
        })
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.link.pacing_rate_bps();
        if let Some(last) = self.last_refill {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.budget_bits = (self.budget_bits + rate * dt).min(rate * BURST.as_secs_f64());
        }
        self.last_refill = Some(self.last_refill.map_or(now, |l| l.max(now)));
    }

    fn release(&mut self, now: Instant) {
        self.refill(now);
        while self.budget_bits > 0.0 {
            let Some(mut p) = self.video.pop_front() else {
                break;
            };
            self.rtx_queued = self.rtx_queued.saturating_sub(1);
            let bits = rtp_bits(&p);
            self.video_bits -= bits;
            self.budget_bits -= bits as f64;
            p.now = now;
            self.sent(bits);
            if let IPacket::Rtp(rtp) = &mut p.message.packet {
                match &mut self.rtx {
                    Some(rtx) if rtp.header.ssrc == rtx.ssrc => {
                        rtp.header.sequence_number = rtx.next_seq;
                        rtx.next_seq = rtx.next_seq.wrapping_add(1);
                    }
                    Some(_) if rtp.header.ssrc == self.media_ssrcs[1] => {
                        if self.recent.len() == PADDING_HISTORY {
                            self.recent.pop_front();
                        }
                        self.recent.push_back(Recent {
                            transport: p.transport,
                            sequence_number: rtp.header.sequence_number,
                            timestamp: rtp.header.timestamp,
                            marker: rtp.header.marker,
                            payload: rtp.payload.clone(),
                        });
                        self.pad_cursor = 0;
                    }
                    _ => {}
                }
            }
            self.write_out.push_back(p);
        }
        self.link.queued_video_bits.store(self.video_bits, Relaxed);
        if self.video.is_empty() && self.padding() {
            while self.budget_bits > 0.0 {
                let Some(p) = self.padding_packet(now) else {
                    break;
                };
                let bits = rtp_bits(&p);
                self.budget_bits -= bits as f64;
                self.sent(bits);
                self.link.padding_bytes.fetch_add(bits / 8, Relaxed);
                self.write_out.push_back(p);
            }
        }
    }

    fn sent(&self, bits: u64) {
        self.link.sent_bytes.fetch_add(bits / 8, Relaxed);
    }

    /// Loss and round trip from a report block on one of our streams.
    fn observe_report(&self, ssrc: u32, fraction_lost: u8, lsr: u32, dlsr: u32) {
        let Some(i) = self.media_ssrcs.iter().position(|&s| s == ssrc) else {
            return;
        };
        self.link.stream_lost[i].store(u32::from(fraction_lost), Relaxed);
        let worst = self.link.stream_lost.iter().map(|l| l.load(Relaxed)).max();
        self.link.fraction_lost.store(worst.unwrap_or(0), Relaxed);
        if lsr != 0 {
            let rtt = ntp_middle(SystemTime::now())
                .wrapping_sub(lsr)
                .wrapping_sub(dlsr);
            // Units of 1/65536 s; a wrapped (negative) value is a clock step: ignore it.
            if rtt < 65536 * 10 {
                self.link
                    .rtt_ms
                    .store((u64::from(rtt) * 1000 / 65536) as u32, Relaxed);
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for PriorityPacer {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let IPacket::Rtcp(pkts) = &msg.message.packet {
            for p in pkts {
                let a = p.as_any();
                let blocks = if let Some(rr) = a.downcast_ref::<ReceiverReport>() {
                    &rr.reports
                } else if let Some(sr) = a.downcast_ref::<SenderReport>() {
                    &sr.reports
                } else {
                    continue;
                };
                for b in blocks {
                    self.observe_report(b.ssrc, b.fraction_lost, b.last_sender_report, b.delay);
                }
            }
        }
        self.read_out.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read_out.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let now = msg.now;
        let (audio, retransmission) = match &msg.message.packet {
            IPacket::Rtp(rtp) => (
                rtp.header.ssrc == self.audio_ssrc,
                !self.media_ssrcs.contains(&rtp.header.ssrc),
            ),
            _ => {
                // Feedback is only useful fresh: never paced.
                self.write_out.push_back(msg);
                return Ok(());
            }
        };
        self.refill(now);
        if audio {
            let bits = rtp_bits(&msg);
            // Charged, so that video yields; the debt is bounded by what audio sends.
            self.budget_bits -= bits as f64;
            self.sent(bits);
            self.write_out.push_back(msg);
            return Ok(());
        }
        if retransmission {
            if self.link.video_queue_ms() > RTX_MAX_QUEUE_MS {
                self.link.dropped_rtx.fetch_add(1, Relaxed);
                return Ok(());
            }
            self.link.retransmissions.fetch_add(1, Relaxed);
        }
        if self.video.len() >= VIDEO_QUEUE_LIMIT {
            self.link.dropped_video.fetch_add(1, Relaxed);
            self.link.video_broken.store(true, Relaxed);
            return Ok(());
        }
        self.video_bits += rtp_bits(&msg);
        if retransmission {
            self.video.insert(self.rtx_queued, msg);
            self.rtx_queued += 1;
        } else {
            self.video.push_back(msg);
        }
        self.release(now);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write_out.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.release(now);
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.video.is_empty() && !self.padding() {
            return None;
        }
        let last = self.last_refill?;
        let rate = self.link.pacing_rate_bps();
        // The head goes once the budget is positive again; never a deadline in the past.
        let wait = (-self.budget_bits).max(0.0) / rate + 0.001;
        Some(last + Duration::from_secs_f64(wait))
    }
}

impl Interceptor for PriorityPacer {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if info.ssrc == self.media_ssrcs[1]
            && let (Some(ssrc), Some(payload_type)) = (info.ssrc_rtx, info.payload_type_rtx)
        {
            self.rtx = Some(RtxStream {
                ssrc,
                payload_type,
                next_seq: rand::random(),
            });
            self.link.rtx.store(true, Relaxed);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        if info.ssrc == self.media_ssrcs[1] {
            self.rtx = None;
            self.link.rtx.store(false, Relaxed);
            self.recent.clear();
        }
    }
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// An interceptor of webrtc-rs `rtc` that keys its work on bound SSRCs, told of each stream's RTX
/// SSRC too. A stream binds once, under its media SSRC, so the transport-wide numbering (TWCC
/// sender) and the send history the estimator reads (congestion control) would leave RTX alone:
/// retransmissions and probe padding would take the link's capacity with no feedback naming them.
pub struct WithRtx<I>(pub I);

impl<I: Interceptor> Protocol<TaggedPacket, TaggedPacket, ()> for WithRtx<I> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.0.handle_read(msg)
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.0.poll_read()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.0.handle_write(msg)
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.0.poll_write()
    }
    fn handle_event(&mut self, evt: ()) -> Result<(), Self::Error> {
        self.0.handle_event(evt)
    }
    fn poll_event(&mut self) -> Option<()> {
        self.0.poll_event()
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.0.handle_timeout(now)
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.0.poll_timeout()
    }
}

/// `info` as its RTX stream's own, if it has one.
fn rtx_info(info: &StreamInfo) -> Option<StreamInfo> {
    info.ssrc_rtx.map(|ssrc| StreamInfo {
        ssrc,
        ..info.clone()
    })
}

impl<I: Interceptor> Interceptor for WithRtx<I> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.0.bind_local_stream(info);
        if let Some(rtx) = rtx_info(info) {
            self.0.bind_local_stream(&rtx);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.0.unbind_local_stream(info);
        if let Some(rtx) = rtx_info(info) {
            self.0.unbind_local_stream(&rtx);
        }
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.0.bind_remote_stream(info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.0.unbind_remote_stream(info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::{TransportContext, TransportMessage};

    const AUDIO: u32 = 1;
    const VIDEO: u32 = 2;

    fn rtp(ssrc: u32, seq: u16, payload: usize, now: Instant) -> TaggedPacket {
        let mut p = rtc::rtp::Packet::default();
        p.header.ssrc = ssrc;
        p.header.sequence_number = seq;
        p.payload = vec![0u8; payload].into();
        TransportMessage {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(IPacket::Rtp(p)),
        }
    }

    fn drain(p: &mut PriorityPacer) -> Vec<(u32, u16)> {
        let mut out = Vec::new();
        while let Some(m) = p.poll_write() {
            if let IPacket::Rtp(r) = &m.message.packet {
                out.push((r.header.ssrc, r.header.sequence_number));
            }
        }
        out
    }

    #[test]
    fn audio_overtakes_queued_video_and_video_leaves_at_the_pacing_rate() {
        let link = LinkState::new();
        link.estimate_bps.store(300_000, Relaxed);
        let mut p = PriorityPacer::new(AUDIO, VIDEO, link.clone());
        let t0 = Instant::now();
        // A 30-packet keyframe (~30 KB, 0.8 s at 300 kbit/s) arrives at once.
        for s in 0..30 {
            p.handle_write(rtp(VIDEO, s, 1000, t0)).unwrap();
        }
        let first = drain(&mut p);
        assert!(first.len() <= 1, "no burst: {first:?}");
        assert!(link.video_queue_ms() > VIDEO_QUEUE_MAX_MS);
        assert!(link.video_congested());
        // Audio written now goes straight out, ahead of the queued video.
        p.handle_write(rtp(AUDIO, 7, 80, t0)).unwrap();
        assert_eq!(drain(&mut p), vec![(AUDIO, 7)]);
        // Time runs; the queue drains at about 300 kbit/s, in order.
        let mut released = Vec::new();
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_millis(10);
            if p.poll_timeout().is_some_and(|d| d <= now) || !p.video.is_empty() {
                p.handle_timeout(now).unwrap();
            }
            released.push((now - t0, drain(&mut p).len()));
        }
        let at = |ms: u64| {
            released
                .iter()
                .filter(|(t, _)| *t <= Duration::from_millis(ms))
                .map(|(_, n)| n)
                .sum::<usize>()
                + first.len()
        };
        // 300 kbit/s = 35 packets of 1060 wire bytes per second: ~11 by 300 ms, all 30 by ~850 ms.
        assert!((8..=14).contains(&at(300)), "by 300 ms: {}", at(300));
        assert_eq!(at(1000), 30);
        assert_eq!(link.queued_video_bits.load(Relaxed), 0);
        assert!(!link.video_congested());
        let sent = link.sent_bytes.load(Relaxed);
        assert!(sent >= 30 * 1000 + 80, "sent {sent}");
    }

    #[test]
    fn the_deadline_never_lies_in_the_past_and_idle_means_idle() {
        let link = LinkState::new();
        let mut p = PriorityPacer::new(AUDIO, VIDEO, link);
        assert_eq!(p.poll_timeout(), None);
        let t0 = Instant::now();
        for s in 0..5 {
            p.handle_write(rtp(VIDEO, s, 1200, t0)).unwrap();
        }
        let mut now = t0;
        let mut released = drain(&mut p).len();
        while let Some(d) = p.poll_timeout() {
            assert!(d > now, "deadline {d:?} not after {now:?}");
            now = d;
            p.handle_timeout(now).unwrap();
            released += drain(&mut p).len();
        }
        assert_eq!(released, 5);
        // 5 x 1.26 KB on the wire at 300 kbit/s: about 170 ms.
        assert!(now - t0 < Duration::from_millis(200), "{:?}", now - t0);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn late_retransmissions_are_dropped_timely_ones_paced() {
        let link = LinkState::new();
        let mut p = PriorityPacer::new(AUDIO, VIDEO, link.clone());
        let t0 = Instant::now();
        const RTX: u32 = 3;
        p.handle_write(rtp(RTX, 1, 1000, t0)).unwrap();
        assert_eq!(link.retransmissions.load(Relaxed), 1);
        for s in 0..10 {
            p.handle_write(rtp(VIDEO, s, 1000, t0)).unwrap();
        }
        // A retransmission overtakes queued new video (not audio).
        p.handle_write(rtp(RTX, 2, 1000, t0)).unwrap();
        p.handle_write(rtp(RTX, 3, 1000, t0)).unwrap();
        let order: Vec<u32> = p
            .video
            .iter()
            .filter_map(|m| match &m.message.packet {
                IPacket::Rtp(r) => Some(r.header.ssrc),
                _ => None,
            })
            .collect();
        assert_eq!(&order[..3], &[RTX, RTX, RTX], "{order:?}");
        assert_eq!(order.iter().filter(|&&s| s == RTX).count(), 3);
        for s in 10..40 {
            p.handle_write(rtp(VIDEO, s, 1000, t0)).unwrap();
        }
        assert!(link.video_queue_ms() > RTX_MAX_QUEUE_MS);
        p.handle_write(rtp(RTX, 4, 1000, t0)).unwrap();
        assert_eq!(link.dropped_rtx.load(Relaxed), 1);
        assert!(!link.video_broken.load(Relaxed));
    }

    #[test]
    fn a_stalled_queue_drops_and_says_so() {
        let link = LinkState::new();
        link.estimate_bps.store(0, Relaxed);
        let mut p = PriorityPacer::new(AUDIO, VIDEO, link.clone());
        let t0 = Instant::now();
        for s in 0..(VIDEO_QUEUE_LIMIT + 10) {
            p.handle_write(rtp(VIDEO, s as u16, 1000, t0)).unwrap();
        }
        assert!(link.dropped_video.load(Relaxed) >= 10);
        assert!(link.video_broken.load(Relaxed));
    }

    #[test]
    fn a_probe_pads_with_recent_video_on_rtx_and_rtx_has_one_sequence() {
        const RTX: u32 = 3;
        let link = LinkState::new();
        link.estimate_bps.store(200_000, Relaxed);
        let mut p = PriorityPacer::new(AUDIO, VIDEO, link.clone());
        p.bind_local_stream(&StreamInfo {
            ssrc: VIDEO,
            ssrc_rtx: Some(RTX),
            payload_type_rtx: Some(97),
            ..Default::default()
        });
        let t0 = Instant::now();
        for s in 0..3 {
            p.handle_write(rtp(VIDEO, 100 + s, 1000, t0)).unwrap();
        }
        let mut now = t0;
        while p.poll_timeout().is_some() {
            now += Duration::from_millis(5);
            p.handle_timeout(now).unwrap();
        }
        drain(&mut p);
        // No probe: nothing more goes out, and the pacer sleeps.
        assert_eq!(p.poll_timeout(), None);
        // A probe at 600 kbit/s for a second: about 600 kbit of padding, on RTX, copying the
        // recent video (RFC 4588: the original sequence number first).
        link.probe_rate_bps.store(600_000, Relaxed);
        let mut sent = Vec::new();
        let end = now + Duration::from_secs(1);
        while now < end {
            let due = p.poll_timeout().expect("a probe keeps the pacer awake");
            assert!(due > now);
            now = due;
            p.handle_timeout(now).unwrap();
            while let Some(m) = p.poll_write() {
                let IPacket::Rtp(r) = m.message.packet else {
                    continue;
                };
                assert_eq!((r.header.ssrc, r.header.payload_type), (RTX, 97));
                let osn = u16::from_be_bytes([r.payload[0], r.payload[1]]);
                assert!((100..103).contains(&osn), "{osn}");
                assert_eq!(r.payload.len(), 1002);
                sent.push(r.header.sequence_number);
            }
        }
        let bits = link.padding_bytes.load(Relaxed) * 8;
        assert!(
            (500_000..=650_000).contains(&bits),
            "{bits} bits of padding"
        );
        // A retransmission from the NACK responder continues the same RTX sequence.
        link.probe_rate_bps.store(0, Relaxed);
        p.handle_write(rtp(RTX, 9, 500, now)).unwrap();
        now += Duration::from_millis(50);
        p.handle_timeout(now).unwrap();
        sent.extend(drain(&mut p).into_iter().map(|(_, seq)| seq));
        assert!(
            sent.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
            "{sent:?}"
        );
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn retransmissions_get_transport_wide_numbers() {
        const RTX: u32 = 3;
        let mut twcc = WithRtx(rtc::interceptor::TwccSenderBuilder::new().build());
        twcc.bind_local_stream(&StreamInfo {
            ssrc: VIDEO,
            ssrc_rtx: Some(RTX),
            rtp_header_extensions: vec![rtc::interceptor::RTPHeaderExtension {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
                id: 5,
            }],
            ..Default::default()
        });
        let t0 = Instant::now();
        let mut numbers = Vec::new();
        for ssrc in [VIDEO, RTX, AUDIO] {
            twcc.handle_write(rtp(ssrc, 1, 100, t0)).unwrap();
            let IPacket::Rtp(r) = twcc.poll_write().expect("passed on").message.packet else {
                panic!("not RTP")
            };
            numbers.push(
                r.header
                    .get_extension(5)
                    .map(|b| u16::from_be_bytes([b[0], b[1]])),
            );
        }
        // Video and its RTX share the transport-wide sequence; an unbound stream is left alone.
        let [Some(video), Some(rtx), None] = numbers[..] else {
            panic!("{numbers:?}")
        };
        assert_eq!(rtx, video.wrapping_add(1));
    }

    #[test]
    fn ntp_middle_bits() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        // 2208988800.5 s since 1900: seconds' low 16 bits, then half a second (0x8000).
        let secs = 2_208_988_801u64 & 0xffff;
        assert_eq!(ntp_middle(t), ((secs << 16) | 0x8000) as u32);
    }
}
