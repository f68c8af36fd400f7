//! One WebRTC peer per participant (webrtc 0.21): negotiation, the two outgoing mixed tracks,
//! the incoming tracks' receive tasks, keyframe requests both ways, and the bandwidth estimate.
//!
//! Async only at the edges: receive tasks depacketize and `try_send` into the room's media
//! thread; one sender task writes the room's output for this participant to its two tracks.

use crate::config::{PortRange, RtcConfig, UdpPorts};
use crate::metrics::METRICS;
use crate::room::estimate::PublishedEstimate;
use crate::room::media::{Command, MediaHandleRef, Output, Packet, PacketSender};
use crate::room::pacer::{LinkState, PriorityPacer, WithRtx};
use crate::room::red::{self, Redundancy};
use crate::room::udp_mux::{self, MuxPeer, UdpMux};
use crate::room::vp8::FrameAssembler;
use rtc::interceptor::{
    Attribute, CongestionControlBuilder, Interceptor, Packet as IPacket, Registry, Slot,
    StreamInfo, TaggedPacket, TwccReceiverBuilder, TwccSenderBuilder,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_nack, configure_rtcp_reports,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{RTCIceCandidateInit, RTCIceCandidateType};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpHeaderExtensionCapability};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState,
};

/// Payload types we register; the answer may keep the offer's own numbers.
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
/// Retransmissions of VP8 (RFC 4588), on their own SSRC.
const RTX_PT: u8 = 97;
/// Audio redundancy (RFC 2198) over Opus, Chromium's number for it.
const RED_PT: u8 = 63;
const MIME_TYPE_RED: &str = "audio/red";

/// Events a peer reports to its signaling session.
#[derive(Debug)]
pub enum PeerEvent {
    /// A local ICE candidate to trickle to the client (None = gathering complete).
    Candidate(Option<RTCIceCandidateInit>),
    /// Connection state change.
    State(RTCPeerConnectionState),
}

/// Capacity of a peer's event queue to its session (candidates are a handful).
pub const PEER_EVENT_QUEUE: usize = 64;

/// Why an offer cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum OfferError {
    /// The SDP is not an offer we can parse.
    #[error("invalid offer: {0}")]
    Invalid(String),
    /// No audio and no video m-line.
    #[error("the offer has neither an audio nor a video m-line")]
    NoMedia,
    /// No common codec.
    #[error("no common codec: the server needs Opus for audio and VP8 for video ({0})")]
    NoCommonCodec(String),
    /// The webrtc stack refused.
    #[error("webrtc: {0}")]
    Rtc(String),
}

/// What an offer contains, from a light SDP scan done before handing it to the stack.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OfferSummary {
    /// An audio m-line exists.
    pub audio: bool,
    /// It offers Opus.
    pub opus: bool,
    /// A video m-line exists.
    pub video: bool,
    /// It offers VP8.
    pub vp8: bool,
}

/// Scans an SDP offer for its media sections and codecs.
pub fn summarize_offer(sdp: &str) -> Result<OfferSummary, OfferError> {
    if !sdp.starts_with("v=0") {
        return Err(OfferError::Invalid("SDP must start with v=0".into()));
    }
    let mut s = OfferSummary::default();
    let mut kind = "";
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split(' ').next().unwrap_or("");
            match kind {
                "audio" => s.audio = true,
                "video" => s.video = true,
                _ => {}
            }
        } else if let Some(r) = line.strip_prefix("a=rtpmap:") {
            let codec = r.split(' ').nth(1).unwrap_or("").to_ascii_lowercase();
            if kind == "audio" && codec.starts_with("opus/48000") {
                s.opus = true;
            }
            if kind == "video" && codec.starts_with("vp8/90000") {
                s.vp8 = true;
            }
        }
    }
    if !s.audio && !s.video {
        return Err(OfferError::NoMedia);
    }
    if (s.audio && !s.opus) || (s.video && !s.vp8) || (!s.opus && !s.vp8) {
        return Err(OfferError::NoCommonCodec(format!(
            "offered: audio={} opus={} video={} vp8={}",
            s.audio, s.opus, s.video, s.vp8
        )));
    }
    Ok(s)
}

/// The payload type the answer uses for a codec (`a=rtpmap:<pt> <name>/...`).
fn negotiated_pt(sdp: &str, codec: &str, fallback: u8) -> u8 {
    find_pt(sdp, codec).unwrap_or(fallback)
}

/// The id `sdp` gives the header extension `uri` (`a=extmap:<id>[/<direction>] <uri>`).
fn find_extmap(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=extmap:"))
        .find_map(|r| {
            let (id, rest) = r.split_once(' ')?;
            let id = id.split('/').next()?;
            (rest.split_whitespace().next()? == uri).then(|| id.parse().ok())?
        })
}

/// The payload type `codec` (e.g. `red/48000`) has in `sdp`, if it is there.
fn find_pt(sdp: &str, codec: &str) -> Option<u8> {
    let codec = codec.to_ascii_lowercase();
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=rtpmap:"))
        .find_map(|r| {
            let (pt, name) = r.split_once(' ')?;
            name.to_ascii_lowercase()
                .starts_with(&codec)
                .then(|| pt.parse().ok())?
        })
}

/// The answer with `usedtx=1` on the Opus payload type's parameters (RFC 7587: the receiver
/// prefers DTX), unless it says otherwise already. The answer `rtc` writes carries the offer's
/// parameters, not ours, so the line is amended here; a browser then sends a packet every
/// 400 ms or so while its microphone is silent, not 50 a second (`playout` plays the gaps as
/// silence without concealing).
fn ask_for_dtx(sdp: &str) -> String {
    let Some(pt) = find_pt(sdp, "opus/48000") else {
        return sdp.to_owned();
    };
    let (fmtp, rtpmap) = (format!("a=fmtp:{pt} "), format!("a=rtpmap:{pt} "));
    let has_fmtp = sdp.lines().any(|l| l.starts_with(&fmtp));
    let mut out = String::with_capacity(sdp.len() + 24);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let end = &line[body.len()..];
        match body.strip_prefix(&fmtp) {
            Some(params) if !params.to_ascii_lowercase().contains("usedtx=") => {
                out.push_str(&format!("{body};usedtx=1{end}"));
            }
            _ => out.push_str(line),
        }
        if !has_fmtp && body.starts_with(&rtpmap) {
            out.push_str(&format!(
                "{fmtp}usedtx=1{}",
                if end.is_empty() { "\r\n" } else { end }
            ));
        }
    }
    out
}

// ── Keyframe requests from receivers reach the application ─────────────────────────────────

/// An interceptor that looks at each packet read from the wire (`see`) and passes everything on.
struct ReadTap<F> {
    see: F,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl<F: FnMut(&mut TaggedPacket)> ReadTap<F> {
    fn new(see: F) -> Self {
        Self {
            see,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl<F: FnMut(&mut TaggedPacket)> Protocol<TaggedPacket, TaggedPacket, ()> for ReadTap<F> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        (self.see)(&mut msg);
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl<F: FnMut(&mut TaggedPacket) + Send + Sync> Interceptor for ReadTap<F> {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

/// Marks inbound PLI/FIR for delivery to the application (by default inbound RTCP stops in the
/// interceptor chain), so that a receiver's keyframe request reaches the room.
fn keyframe_request_tap(msg: &mut TaggedPacket) {
    if let IPacket::Rtcp(pkts) = &msg.message.packet
        && pkts.iter().any(|p| {
            let a = p.as_any();
            a.is::<PictureLossIndication>() || a.is::<FullIntraRequest>()
        })
    {
        msg.message.add(Attribute::DeliverToApplication);
    }
}

/// Marks what each transport-wide feedback from the receiver describes, before the congestion
/// controller reads it (nearer the wire): see `estimate::FeedbackCoverage`.
fn feedback_tap(link: Arc<LinkState>) -> impl FnMut(&mut TaggedPacket) + Send + Sync + 'static {
    move |msg| {
        if let IPacket::Rtcp(pkts) = &msg.message.packet {
            for p in pkts {
                if let Some(cc) = p.as_any().downcast_ref::<TransportLayerCc>() {
                    link.feedback
                        .mark(cc.base_sequence_number, cc.packet_status_count);
                }
            }
        }
    }
}

// ── Bandwidth estimate ──────────────────────────────────────────────────────────────────────

/// Estimate start, floor and ceiling (bit/s). The start is a guess a weak link can carry (audio and
/// the 150 kbit/s tier); probing finds more.
const BWE_START: f64 = crate::room::pacer::START_RATE_BPS as f64;
const BWE_MIN: f64 = 50_000.0;
const BWE_MAX: f64 = 4_000_000.0;

// ── Peer ────────────────────────────────────────────────────────────────────────────────────

/// Everything a room gives a new peer.
pub struct PeerContext {
    /// Mixer key of the participant.
    pub key: u64,
    /// May publish media.
    pub publishes: bool,
    /// Where received media goes.
    pub packets: PacketSender,
    /// Control of the room's media thread.
    pub media: MediaHandleRef,
}

struct Handler {
    events: mpsc::Sender<PeerEvent>,
    ctx: Arc<PeerContextShared>,
    /// The shared media port our candidates must name (None with a port pool).
    shared_port: Option<u16>,
}

struct PeerContextShared {
    key: u64,
    publishes: bool,
    packets: PacketSender,
    /// The publisher's video track, for PLI.
    video_in: parking_lot::Mutex<Option<(Arc<dyn TrackRemote>, u32)>>,
    /// DTLS/SRTP is up: before that, writing media only fails (and the stack logs each one).
    connected: std::sync::atomic::AtomicBool,
    /// Negotiated payload type of `audio/red` (0: not negotiated): incoming packets with it are
    /// split into their Opus frames.
    red_pt: std::sync::atomic::AtomicU8,
    /// The negotiated id of the RFC 6464 audio-level extension (0: none).
    audio_level_id: std::sync::atomic::AtomicU8,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(mut c) => {
                if let Some(port) = self.shared_port {
                    c.candidate = udp_mux::rewrite_candidate_port(&c.candidate, port);
                }
                let _ = self.events.try_send(PeerEvent::Candidate(Some(c)));
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise local candidate"),
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.events.try_send(PeerEvent::Candidate(None));
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let up = state == RTCPeerConnectionState::Connected;
        self.ctx.connected.store(up, Relaxed);
        let _ = self.events.try_send(PeerEvent::State(state));
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let ctx = self.ctx.clone();
        tokio::spawn(receive(track, ctx));
    }
}

/// Reads one incoming track into the room until it ends.
async fn receive(track: Arc<dyn TrackRemote>, ctx: Arc<PeerContextShared>) {
    let kind = track.kind().await;
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    if !ctx.publishes {
        tracing::debug!(
            key = ctx.key,
            "participant may not publish; ignoring its track"
        );
    }
    if kind == RtpCodecKind::Video {
        *ctx.video_in.lock() = Some((track.clone(), ssrc));
    }
    let mut assembler = FrameAssembler::new();
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(p) => {
                if !ctx.publishes {
                    continue;
                }
                METRICS.bytes_in.fetch_add(p.payload.len() as u64, Relaxed);
                match kind {
                    RtpCodecKind::Audio => {
                        // RFC 6464: the sender's level of this packet, -dBov (the V bit off).
                        let level_id = ctx.audio_level_id.load(Relaxed);
                        let level = (level_id != 0)
                            .then(|| p.header.get_extension(level_id))
                            .flatten()
                            .and_then(|b| b.first().map(|v| v & 0x7f));
                        let red_pt = ctx.red_pt.load(Relaxed);
                        if red_pt == 0 || p.header.payload_type != red_pt {
                            ctx.packets.send(Packet::Audio {
                                key: ctx.key,
                                seq: p.header.sequence_number,
                                ts: p.header.timestamp,
                                payload: p.payload,
                                level,
                            });
                            continue;
                        }
                        // RED: each frame under its own sequence number (the jitter buffer drops
                        // the copies it already has).
                        let Some(blocks) = red::split(&p.payload) else {
                            tracing::debug!(key = ctx.key, "malformed RED packet dropped");
                            continue;
                        };
                        for b in blocks.into_iter().filter(|b| !b.data.is_empty()) {
                            ctx.packets.send(Packet::Audio {
                                key: ctx.key,
                                seq: p.header.sequence_number.wrapping_sub(b.distance),
                                ts: p.header.timestamp.wrapping_sub(b.timestamp_offset),
                                payload: p.payload.slice_ref(b.data),
                                // The level is the primary frame's; older copies go unmarked.
                                level: level.filter(|_| b.distance == 0),
                            });
                        }
                    }
                    RtpCodecKind::Video => {
                        for f in assembler.push(
                            p.header.sequence_number,
                            p.header.timestamp,
                            p.header.marker,
                            &p.payload,
                        ) {
                            ctx.packets.send(Packet::Video {
                                key: ctx.key,
                                ts: f.ts,
                                frame: f.data,
                                complete: f.complete,
                            });
                        }
                    }
                    _ => {}
                }
            }
            TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
            _ => {}
        }
    }
    tracing::debug!(key = ctx.key, ?kind, "incoming track ended");
}

/// A participant's WebRTC connection and its output tracks.
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    ctx: Arc<PeerContextShared>,
    audio_out: Arc<TrackLocalStaticRTP>,
    video_out: Arc<TrackLocalStaticRTP>,
    audio_ssrc: u32,
    video_ssrc: u32,
    media: MediaHandleRef,
    link: Arc<LinkState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Its routes on the shared media socket (None with a port pool).
    mux: Option<MuxPeer>,
}

static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

fn udp_addr_candidates(cfg: &RtcConfig) -> Vec<String> {
    let ip = cfg.bind.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    match cfg.udp_ports {
        // The shared socket: the connection binds a throwaway port whose only use is to name its
        // local candidate (see `udp_mux`).
        UdpPorts::Shared(_) => vec![format!("{}", std::net::SocketAddr::new(ip, 0))],
        UdpPorts::Pool(PortRange { min, max }) => {
            // Rotate through the range so concurrent joins rarely collide; each attempt that
            // fails to bind moves on to the next port.
            let n = (max - min) as usize + 1;
            let start = NEXT_PORT.fetch_add(1, Relaxed);
            (0..n.min(64))
                .map(|i| {
                    let port = min as usize + (start + i) % n;
                    format!("{}", std::net::SocketAddr::new(ip, port as u16))
                })
                .collect()
        }
    }
}

fn codec(mime: &str, clock: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: clock,
        channels,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: vec![],
    }
}

fn opus_codec() -> RTCRtpCodec {
    codec(MIME_TYPE_OPUS, 48000, 2, "minptime=10;useinbandfec=1")
}

fn vp8_codec() -> RTCRtpCodec {
    codec(MIME_TYPE_VP8, 90000, 0, "")
}

fn rtc_err(e: impl std::fmt::Display) -> OfferError {
    OfferError::Rtc(e.to_string())
}

/// Codecs, feedback and the interceptor chain of one peer: NACK with RTX, RTCP reports, our
/// estimate over TWCC, and our [`PriorityPacer`] in the pacer's slot.
fn media_setup(
    link: &Arc<LinkState>,
    audio_ssrc: u32,
    video_ssrc: u32,
) -> Result<(MediaEngine, Registry), OfferError> {
    let mut me = MediaEngine::default();
    for (rtp_codec, payload_type, kind) in [
        (opus_codec(), OPUS_PT, RtpCodecKind::Audio),
        (
            codec(MIME_TYPE_RED, 48000, 2, &format!("{OPUS_PT}/{OPUS_PT}")),
            RED_PT,
            RtpCodecKind::Audio,
        ),
        (vp8_codec(), VP8_PT, RtpCodecKind::Video),
        (
            codec(MIME_TYPE_RTX, 90000, 0, &format!("apt={VP8_PT}")),
            RTX_PT,
            RtpCodecKind::Video,
        ),
    ] {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec,
                payload_type,
            },
            kind,
        )
        .map_err(rtc_err)?;
    }
    let registry = configure_nack(Registry::new(), &mut me);
    let registry = configure_rtcp_reports(registry);
    // Congestion control as `configure_congestion_control` sets it up, with our pacer instead of
    // the FIFO one (which holds audio behind video).
    for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
        me.register_feedback(
            RTCPFeedback {
                typ: "transport-cc".to_owned(),
                parameter: String::new(),
            },
            kind,
        );
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
            },
            kind,
            None,
        )
        .map_err(rtc_err)?;
    }
    // RFC 6464: each audio packet says how loud it is, so silence is not decoded.
    me.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )
    .map_err(rtc_err)?;
    let estimator = PublishedEstimate::new(BWE_START, BWE_MIN, BWE_MAX, link.clone());
    let registry = registry
        .with(Slot::from(500), ReadTap::new(feedback_tap(link.clone())))
        .with(
            Slot::CongestionControl,
            WithRtx(CongestionControlBuilder::new(estimator).build()),
        )
        .with(
            Slot::Pacer,
            PriorityPacer::new(audio_ssrc, video_ssrc, link.clone()),
        )
        .with(Slot::TwccSender, WithRtx(TwccSenderBuilder::new().build()))
        .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
        .with(Slot::from(14_000), ReadTap::new(keyframe_request_tap));
    Ok((me, registry))
}

impl Peer {
    /// Builds the connection (not yet negotiated).
    pub async fn new(
        cfg: &RtcConfig,
        mux: Option<&Arc<UdpMux>>,
        ctx: PeerContext,
        events: mpsc::Sender<PeerEvent>,
    ) -> Result<Peer, OfferError> {
        let mux = mux.map(|m| m.register());
        let shared = Arc::new(PeerContextShared {
            key: ctx.key,
            publishes: ctx.publishes,
            packets: ctx.packets,
            video_in: parking_lot::Mutex::new(None),
            connected: std::sync::atomic::AtomicBool::new(false),
            red_pt: std::sync::atomic::AtomicU8::new(0),
            audio_level_id: std::sync::atomic::AtomicU8::new(0),
        });
        let link = LinkState::new();
        let audio_ssrc = rand::random::<u32>();
        let video_ssrc = rand::random::<u32>();
        let mut last_err = None;
        for addr in udp_addr_candidates(cfg) {
            let (me, registry) = media_setup(&link, audio_ssrc, video_ssrc)?;
            let mut se = SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
            if let Some(ip) = cfg.public_ip {
                se = se.with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
            }
            if cfg.bind.is_some_and(|ip| ip.is_loopback()) {
                se = se.with_include_loopback_candidate(true);
            }
            let handler = Arc::new(Handler {
                events: events.clone(),
                ctx: shared.clone(),
                shared_port: mux.as_ref().map(MuxPeer::port),
            });
            let mut builder = PeerConnectionBuilder::new();
            if let Some(m) = &mux {
                let rt = webrtc::runtime::default_runtime()
                    .ok_or_else(|| OfferError::Rtc("no async runtime".into()))?;
                builder = builder.with_runtime(m.runtime(rt));
            }
            let built = builder
                .with_configuration(RTCConfigurationBuilder::new().build())
                .with_media_engine(me)
                .with_setting_engine(se.build())
                .with_interceptor_registry(registry)
                .with_handler(handler)
                .with_udp_addrs(vec![addr.clone()])
                .build()
                .await;
            match built {
                Ok(pc) => {
                    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
                    let track = |kind, id: &str, ssrc, codec| {
                        MediaStreamTrack::new(
                            "mcu".to_owned(),
                            id.to_owned(),
                            id.to_owned(),
                            kind,
                            vec![RTCRtpEncodingParameters {
                                rtp_coding_parameters: RTCRtpCodingParameters {
                                    ssrc: Some(ssrc),
                                    ..Default::default()
                                },
                                codec,
                                ..Default::default()
                            }],
                        )
                    };
                    return Ok(Peer {
                        pc,
                        ctx: shared,
                        audio_out: Arc::new(TrackLocalStaticRTP::new(track(
                            RtpCodecKind::Audio,
                            "mix-audio",
                            audio_ssrc,
                            opus_codec(),
                        ))),
                        video_out: Arc::new(TrackLocalStaticRTP::new(track(
                            RtpCodecKind::Video,
                            "mix-video",
                            video_ssrc,
                            vp8_codec(),
                        ))),
                        audio_ssrc,
                        video_ssrc,
                        media: ctx.media,
                        link,
                        tasks: Vec::new(),
                        mux,
                    });
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot build peer on this address");
                    last_err = Some(e);
                }
            }
        }
        Err(OfferError::Rtc(format!(
            "no UDP port available: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// What this peer's link looks like from the sending side.
    pub fn link(&self) -> Arc<LinkState> {
        self.link.clone()
    }

    /// Applies an offer and returns the answer SDP. The first offer also starts the output.
    pub async fn answer(
        &mut self,
        sdp: String,
        output: Option<mpsc::Receiver<Output>>,
    ) -> Result<String, OfferError> {
        let offer =
            RTCSessionDescription::offer(sdp).map_err(|e| OfferError::Invalid(e.to_string()))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(|e| OfferError::Invalid(e.to_string()))?;
        if self.tasks.is_empty() {
            let tracks: [Arc<dyn TrackLocal>; 2] = [self.audio_out.clone(), self.video_out.clone()];
            for t in tracks {
                self.pc.add_track(t).await.map_err(rtc_err)?;
            }
        }
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        let mut sdp = ask_for_dtx(&answer.sdp);
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        if let Some(m) = &self.mux {
            // Checks naming this answer's ufrag (new on an ICE restart) reach this peer, and its
            // candidates name the shared port.
            for u in udp_mux::sdp_ufrags(&sdp) {
                m.add_ufrag(u);
            }
            sdp = udp_mux::rewrite_sdp_candidates(&sdp, m.port());
        }
        self.ctx
            .red_pt
            .store(find_pt(&sdp, "red/48000").unwrap_or(0), Relaxed);
        self.ctx.audio_level_id.store(
            find_extmap(&sdp, rtc::sdp::extmap::AUDIO_LEVEL_URI).unwrap_or(0),
            Relaxed,
        );
        if let Some(rx) = output {
            let opus_pt = negotiated_pt(&sdp, "opus/48000", OPUS_PT);
            let vp8_pt = negotiated_pt(&sdp, "vp8/90000", VP8_PT);
            let out = OutputTracks {
                audio: ClockedWriter::new(self.audio_out.clone(), self.audio_ssrc, 48_000),
                video: ClockedWriter::new(self.video_out.clone(), self.video_ssrc, 90_000),
                opus_pt,
                vp8_pt,
                red_pt: find_pt(&sdp, "red/48000"),
            };
            self.tasks.push(tokio::spawn(send_output(
                rx,
                out,
                self.ctx.clone(),
                self.link.clone(),
                self.media.clone(),
            )));
            self.tasks.push(tokio::spawn(keyframe_requests(
                self.video_out.clone(),
                self.media.clone(),
                self.ctx.key,
            )));
            self.tasks.push(tokio::spawn(report_link(
                self.link.clone(),
                self.media.clone(),
                self.ctx.key,
            )));
        }
        Ok(sdp)
    }

    /// Adds a remote ICE candidate.
    pub async fn add_candidate(&self, c: RTCIceCandidateInit) -> Result<(), OfferError> {
        self.pc.add_ice_candidate(c).await.map_err(rtc_err)
    }

    /// Whether a remote description has been applied.
    pub async fn has_remote(&self) -> bool {
        self.pc.remote_description().await.is_some()
    }

    /// Closes the connection and stops its tasks. Idempotent.
    pub async fn close(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "peer close");
        }
    }
}

/// A participant's two output tracks and how to write to them.
struct OutputTracks {
    audio: ClockedWriter,
    video: ClockedWriter,
    opus_pt: u8,
    vp8_pt: u8,
    /// `audio/red` when the receiver negotiated it: redundancy while it reports loss.
    red_pt: Option<u8>,
}

/// RTP packets payload bytes at most (webrtc-rs's own sample tracks use the same), and the
/// fixed RTP header within it.
const RTP_MTU: usize = 1200;
const RTP_HEADER: usize = 12;

/// One frame's RTP payloads, shared by the receivers it goes to.
pub type Payloads = Arc<[bytes::Bytes]>;

/// A composite frame's RTP payloads, made once per tier frame and shared by every receiver of
/// the tier (only the RTP header and SRTP stay per receiver). The VP8 descriptors carry no
/// picture id: one running per tier would jump (even backwards) when a receiver moves to
/// another tier, and Chromium drops a keyframe whose id is older than the last it decoded (an
/// ICE restart that changed the tier froze the picture); without one it orders frames by
/// sequence number, which is per receiver.
pub fn vp8_payloads(frame: &Arc<[u8]>) -> Payloads {
    let frame = bytes::Bytes::from_owner(frame.clone());
    match Vp8Payloader::default().payload(RTP_MTU - RTP_HEADER, &frame) {
        Ok(payloads) => payloads.into(),
        Err(e) => {
            tracing::error!(error = %e, "vp8 payloads");
            Arc::from([])
        }
    }
}

/// One output track's RTP, each frame stamped with the room clock. A sample track advances the
/// timestamp by a fixed frame duration per frame written, so a frame the room did not make (an
/// unchanged composite, a lower tier rate, a frame the gate held back, audio in DTX) would pull
/// every later timestamp earlier than its time; here the gap stays a gap in time, and only
/// packets we dropped leave a gap in sequence.
struct ClockedWriter {
    track: Arc<TrackLocalStaticRTP>,
    sequencer: Box<dyn rtc::rtp::sequence::Sequencer>,
    ssrc: u32,
    /// RTP clock ticks per millisecond (90 for video, 48 for Opus).
    clock_per_ms: u64,
    /// Random start of the RTP timestamps (RFC 3550).
    ts_base: u32,
}

impl ClockedWriter {
    fn new(track: Arc<TrackLocalStaticRTP>, ssrc: u32, clock_rate: u32) -> Self {
        Self {
            track,
            sequencer: Box::new(rtc::rtp::sequence::new_random_sequencer()),
            ssrc,
            clock_per_ms: u64::from(clock_rate / 1000),
            ts_base: rand::random(),
        }
    }

    /// Writes one frame (its RTP payloads, shared with other receivers) of room clock `pts_ms`
    /// with `payload_type`, after `dropped_before` packets lost in our queues.
    async fn write(
        &mut self,
        payloads: &[bytes::Bytes],
        payload_type: u8,
        pts_ms: u64,
        dropped_before: u16,
    ) -> Result<(), webrtc::error::Error> {
        for _ in 0..dropped_before {
            self.sequencer.next_sequence_number();
        }
        let timestamp = self
            .ts_base
            .wrapping_add((pts_ms.wrapping_mul(self.clock_per_ms)) as u32);
        for (i, payload) in payloads.iter().enumerate() {
            let p = rtc::rtp::Packet {
                header: rtc::rtp::Header {
                    version: 2,
                    marker: i + 1 == payloads.len(),
                    payload_type,
                    sequence_number: self.sequencer.next_sequence_number(),
                    timestamp,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload: payload.clone(),
            };
            self.track.write_rtp_with_extensions(p, &[]).await?;
        }
        Ok(())
    }
}

/// Duration of one audio frame of the mix, and RTP units (48 kHz) per millisecond.
const AUDIO_FRAME: Duration = Duration::from_millis(20);
const AUDIO_SAMPLES_PER_MS: u64 = 48;

/// Shortest interval between two keyframe requests a sender makes for itself after skipping.
const SKIP_KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// Whether to write a composite frame, given the link: the video half of the send policy that
/// runs before packetizing (see `pacer`). Frames that would only deepen a congested queue are
/// skipped, and so is everything after a skip or a drop until a keyframe (nothing undecodable
/// goes out).
#[derive(Debug, Default)]
struct VideoGate {
    awaiting_keyframe: bool,
    last_request: Option<Instant>,
    /// Frames skipped (reported in logs at debug level).
    skipped: u64,
}

impl VideoGate {
    /// Returns (write this frame, ask the room for a keyframe now).
    fn admit(
        &mut self,
        keyframe: bool,
        congested: bool,
        broken: bool,
        now: Instant,
    ) -> (bool, bool) {
        if broken {
            self.awaiting_keyframe = true;
        }
        let write = if congested {
            self.awaiting_keyframe = true;
            false
        } else if self.awaiting_keyframe {
            keyframe
        } else {
            true
        };
        if write && keyframe {
            self.awaiting_keyframe = false;
        }
        if !write {
            self.skipped += 1;
        }
        // Ask once the queue has room for the keyframe, and not at every frame.
        let ask = self.awaiting_keyframe
            && !congested
            && !write
            && self
                .last_request
                .is_none_or(|t| now.duration_since(t) >= SKIP_KEYFRAME_REQUEST_INTERVAL);
        if ask {
            self.last_request = Some(now);
        }
        (write, ask)
    }
}

/// Writes the room's output for one participant to its tracks; sends PLI for its own video.
async fn send_output(
    mut rx: mpsc::Receiver<Output>,
    mut out: OutputTracks,
    ctx: Arc<PeerContextShared>,
    link: Arc<LinkState>,
    media: MediaHandleRef,
) {
    let mut gate = VideoGate::default();
    let mut redundancy = Redundancy::default();
    // What the copies add, bit/s, smoothed over about a second of frames.
    let mut redundancy_bps = 0.0;
    // Room clock of the last audio frame written: the copy a RED packet carries lies this far back.
    let mut last_audio_pts = None;
    while let Some(o) = rx.recv().await {
        if !ctx.connected.load(Relaxed) {
            continue; // not yet (or no longer) connected: drop rather than queue stale media
        }
        let r = match o {
            Output::Audio {
                data,
                pts_ms,
                dropped_before,
            } => {
                let now = Instant::now();
                redundancy.observe_loss(link.fraction_lost.load(Relaxed), now);
                // After a DTX gap the previous frame is too far back for a RED header to say.
                let back = pts_ms.saturating_sub(last_audio_pts.replace(pts_ms).unwrap_or(pts_ms));
                let offset = u32::try_from(back * AUDIO_SAMPLES_PER_MS).unwrap_or(u32::MAX);
                let red = out.red_pt.and_then(|pt| {
                    let red =
                        redundancy.payload(out.opus_pt, &data, dropped_before, offset, now)?;
                    Some((pt, Arc::<[u8]>::from(red)))
                });
                let extra = red.as_ref().map_or(0, |(_, r)| r.len() - data.len()) as f64;
                // Per packet's time: 20 ms, 40 ms when a large room pairs frames (its gap
                // from the last one; the first and those after a DTX gap count as 20 ms).
                let packet_ms = if (1..=60).contains(&back) {
                    back
                } else {
                    AUDIO_FRAME.as_millis() as u64
                };
                let extra_bps = extra * 8.0 * 1000.0 / packet_ms as f64;
                redundancy_bps += (extra_bps - redundancy_bps) * 0.05;
                link.audio_redundancy_bps
                    .store(redundancy_bps as u64, Relaxed);
                let (pt, data) = red.unwrap_or((out.opus_pt, data));
                let payload = [bytes::Bytes::from_owner(data)];
                out.audio.write(&payload, pt, pts_ms, dropped_before).await
            }
            Output::Video {
                payloads,
                keyframe,
                pts_ms,
                dropped_before,
            } => {
                let broken = link.video_broken.swap(false, Relaxed) || dropped_before > 0;
                let congested = link.video_congested();
                let was_waiting = gate.awaiting_keyframe;
                let (write, ask) = gate.admit(keyframe, congested, broken, Instant::now());
                if gate.awaiting_keyframe != was_waiting {
                    // The receiver's picture freezes from here until the keyframe: say why.
                    tracing::debug!(
                        key = ctx.key,
                        waiting = gate.awaiting_keyframe,
                        congested,
                        broken,
                        queue_ms = link.video_queue_ms(),
                        "video gate"
                    );
                }
                if ask {
                    media.command(Command::Keyframe(ctx.key));
                }
                if !write {
                    continue;
                }
                out.video
                    .write(&payloads, out.vp8_pt, pts_ms, dropped_before)
                    .await
            }
            Output::Pli => {
                let target = ctx.video_in.lock().clone();
                if let Some((track, ssrc)) = target {
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    };
                    if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                        tracing::debug!(error = %e, "PLI not sent");
                    }
                }
                Ok(())
            }
        };
        // Writing before the connection is up fails: that is expected and not worth a log line.
        if let Err(e) = r {
            tracing::trace!(error = %e, "sample not written");
        }
    }
    tracing::debug!(key = ctx.key, skipped = gate.skipped, "output ended");
}

/// Forwards a receiver's PLI/FIR on the composite to the room (keyframe from its tier only, which
/// the room coalesces and rate-limits per tier).
async fn keyframe_requests(video: Arc<TrackLocalStaticRTP>, media: MediaHandleRef, key: u64) {
    while let Some(ev) = video.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(pkts) = ev
            && pkts.iter().any(|p| {
                let a = p.as_any();
                a.is::<PictureLossIndication>() || a.is::<FullIntraRequest>()
            })
        {
            media.command(Command::Keyframe(key));
        }
    }
}

/// How often the link is reported to the room (tier choice runs on it) and the sent rate sampled.
const LINK_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Reports the estimate and the reported loss to the room, and samples the sent rate.
async fn report_link(link: Arc<LinkState>, media: MediaHandleRef, key: u64) {
    let mut tick = tokio::time::interval(LINK_REPORT_INTERVAL);
    let mut last_bytes = link.sent_bytes.load(Relaxed);
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let bytes = link.sent_bytes.load(Relaxed);
        let secs = now.duration_since(last_at).as_secs_f64();
        if secs > 0.0 {
            let kbps = (bytes.saturating_sub(last_bytes) as f64 * 8.0 / secs / 1000.0) as u32;
            link.sent_kbps.store(kbps, Relaxed);
        }
        (last_bytes, last_at) = (bytes, now);
        // Video is sized on what audio leaves: the tier policy reserves plain Opus, so the cost
        // of redundancy comes off the estimate.
        let estimate = link.estimate_bps.load(Relaxed);
        media.command(Command::Link {
            key,
            estimate_bps: estimate.saturating_sub(link.audio_redundancy_bps.load(Relaxed)),
            loss_percent: link.loss_percent().round() as u8,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LIKE: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n";

    #[test]
    fn finds_the_audio_level_extension_id() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
            a=extmap:1/sendrecv urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
        assert_eq!(find_extmap(sdp, rtc::sdp::extmap::AUDIO_LEVEL_URI), Some(1));
        assert_eq!(
            find_extmap(sdp, rtc::sdp::extmap::TRANSPORT_CC_URI),
            Some(3)
        );
        assert_eq!(
            find_extmap("v=0\r\n", rtc::sdp::extmap::AUDIO_LEVEL_URI),
            None
        );
    }

    #[test]
    fn summarizes_a_browser_offer() {
        let s = summarize_offer(CHROME_LIKE).unwrap();
        assert_eq!(
            s,
            OfferSummary {
                audio: true,
                opus: true,
                video: true,
                vp8: true
            }
        );
    }

    #[test]
    fn rejects_offers_we_cannot_serve() {
        assert!(matches!(
            summarize_offer("garbage"),
            Err(OfferError::Invalid(_))
        ));
        let dc_only = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert!(matches!(summarize_offer(dc_only), Err(OfferError::NoMedia)));
        let h264_only = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n";
        assert!(matches!(
            summarize_offer(h264_only),
            Err(OfferError::NoCommonCodec(_))
        ));
        let pcmu = "v=0\r\nm=audio 9 RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert!(matches!(
            summarize_offer(pcmu),
            Err(OfferError::NoCommonCodec(_))
        ));
    }

    #[test]
    fn the_video_gate_skips_into_a_congested_queue_and_resumes_on_a_keyframe() {
        let mut g = VideoGate::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Flowing: every frame goes.
        assert_eq!(g.admit(true, false, false, ms(0)), (true, false));
        assert_eq!(g.admit(false, false, false, ms(66)), (true, false));
        // The pacer's queue is over its bound: skip, and do not ask while it drains.
        assert_eq!(g.admit(false, true, false, ms(133)), (false, false));
        assert_eq!(g.admit(true, true, false, ms(200)), (false, false));
        // Drained: inter frames still cannot be decoded; ask for a keyframe, once per 500 ms.
        assert_eq!(g.admit(false, false, false, ms(266)), (false, true));
        assert_eq!(g.admit(false, false, false, ms(333)), (false, false));
        assert_eq!(g.admit(false, false, false, ms(800)), (false, true));
        // The keyframe goes, and so does what follows.
        assert_eq!(g.admit(true, false, false, ms(866)), (true, false));
        assert_eq!(g.admit(false, false, false, ms(933)), (true, false));
        // A drop (pacer overflow or our own queue) breaks the chain the same way.
        assert_eq!(g.admit(false, false, true, ms(1400)), (false, true));
        assert_eq!(g.admit(true, false, false, ms(1466)), (true, false));
        assert_eq!(g.skipped, 6);
    }

    #[test]
    fn a_tier_frame_is_split_once_into_payloads_its_receivers_share() {
        use rtc::rtp::packetizer::Depacketizer;
        let frame: Arc<[u8]> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let payloads = vp8_payloads(&frame);
        assert_eq!(payloads.len(), 5, "5000 bytes in payloads of at most 1188");
        assert!(payloads.iter().all(|p| p.len() <= RTP_MTU - RTP_HEADER));
        // The payloads carry the frame whole, behind one-byte VP8 descriptors (no picture id:
        // the same payloads whatever tier a receiver was on before).
        let mut whole = Vec::new();
        let mut d = rtc::rtp::codec::vp8::Vp8Packet::default();
        for (i, p) in payloads.iter().enumerate() {
            whole.extend_from_slice(&d.depacketize(p).unwrap());
            assert_eq!(d.s == 1, i == 0, "start of partition on the first only");
            assert_eq!(p[0] & 0x80, 0, "no extension, so no picture id");
        }
        assert_eq!(&whole[..], &frame[..]);
    }

    #[test]
    fn the_answer_asks_for_opus_dtx() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=rtpmap:111 opus/48000/2\r\n\
                      a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
                      a=fmtp:63 111/111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        let asked = ask_for_dtx(answer);
        assert!(
            asked.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n"),
            "{asked}"
        );
        assert!(asked.contains("a=fmtp:63 111/111\r\n"), "{asked}");
        assert_eq!(asked.len(), answer.len() + ";usedtx=1".len());
        // Said already (either way): unchanged. No fmtp line: one is added after the rtpmap.
        let said = answer.replace("useinbandfec=1", "useinbandfec=1;usedtx=0");
        assert_eq!(ask_for_dtx(&said), said);
        let bare = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=mid:0\r\n";
        assert_eq!(
            ask_for_dtx(bare),
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 usedtx=1\r\na=mid:0\r\n"
        );
        // No Opus: unchanged.
        assert_eq!(
            ask_for_dtx("m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"),
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        );
    }

    #[test]
    fn finds_negotiated_payload_types() {
        assert_eq!(negotiated_pt(CHROME_LIKE, "opus/48000", 1), 111);
        assert_eq!(negotiated_pt(CHROME_LIKE, "vp8/90000", 1), 96);
        assert_eq!(negotiated_pt("v=0\r\n", "vp8/90000", 7), 7);
    }
}
