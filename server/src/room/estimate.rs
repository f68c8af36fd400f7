//! The bandwidth estimate a receiver's link gets, from the transport-wide feedback (TWCC) that
//! webrtc-rs `rtc`'s congestion-control interceptor matches to what we sent.
//!
//! Not GCC (which `rtc` ships), after measuring it here. Its delay-based half reacts to a
//! *growing* delay. A weak link's drop-tail queue (a home router, or `tbf` in our tests) that is
//! already full has a constant delay and only drops, so GCC kept raising its target while we
//! overran the link, and raised it anyway while we sent far below it: on a 300 kbit/s link, GCC
//! at 400 kbit/s to 4 Mbit/s while the receiver lost up to half the video. When it did react, it
//! was to a probe's own queue, and it then cut media for it. Its loss-based half never rises
//! between 2 and 10 % loss, so a few per cent of random loss pins it down. So the estimate reads
//! the feedback for three plain signals:
//! - **standing queue**: one-way delay above the lowest seen in [`BASE_DELAY_WINDOW`] by more than
//!   [`QUEUE_HIGH_MS`] means we fill a queue: back off to [`BACKOFF`] x the acknowledged rate;
//! - **heavy loss**: more than [`LOSS_HIGH`] of the packets in a report window never arrived:
//!   the same (random loss below it, the few per cent a weak radio link has, is not congestion);
//! - **room**: a short queue and little loss let the estimate grow by [`GROWTH_PER_S`] a second,
//!   never beyond [`ACKED_CAP_FACTOR`] x the acknowledged rate plus [`ACKED_HEADROOM_BPS`]
//!   (libwebrtc caps its increases by the acknowledged rate for the same reason): an estimate
//!   that the link has not been seen to carry is a guess, and a tier chosen on a guess overruns
//!   a weak link, fills its queue and freezes the picture.
//! - **probes**: the receiver's next tier up needs more than that cap. When the room wants it
//!   (its probe point, [`QueueEstimate::set_probe_floor`], is above the estimate) a probe runs
//!   for [`PROBE_DURATION`]: the pacer sends at a rate that ramps from the estimate to the probe
//!   point over [`PROBE_RAMP`] and then holds, padding what media leaves with copies of recent
//!   video on the RTX stream. The link carried it (the acknowledged rate reached
//!   [`PROBE_CARRIED`] of it, the queue stayed under [`PROBE_QUEUE_MS`]): the estimate jumps to it
//!   and the room moves up. It did not: the probe stops at once, the estimate returns to where
//!   the probe started (which the link carried), and the next probe waits
//!   [`PROBE_WAIT_MIN`], doubled by each failure up to [`PROBE_WAIT_MAX`]. A failed probe costs a
//!   short queue, never media. The ramp keeps that queue short: the rate passes the link's
//!   capacity slowly, and the queue is seen while it is still small. While video is paused, or when the receiver did not negotiate
//!   RTX, there is nothing to pad with: the estimate may then grow blindly to the next tier's
//!   probe point, as a tier move is then the only probe there is.
//!
//! Time is an input (the instants the interceptor chain hands in).

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, PacketReport};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::room::pacer::LinkState;

/// Queueing delay above the base that counts as a standing queue.
pub const QUEUE_HIGH_MS: f64 = 80.0;
/// Below this queueing delay the link has room.
pub const QUEUE_LOW_MS: f64 = 30.0;
/// Share of lost packets (in one evaluation window) that counts as congestion.
pub const LOSS_HIGH: f64 = 0.10;
/// Loss below which the link may grow.
pub const LOSS_LOW: f64 = 0.06;
/// On congestion, the estimate goes to this share of the acknowledged rate.
pub const BACKOFF: f64 = 0.85;
/// Growth of the estimate per second while the link has room.
pub const GROWTH_PER_S: f64 = 1.08;
/// Growth never takes the estimate past this multiple of the acknowledged rate...
pub const ACKED_CAP_FACTOR: f64 = 1.1;
/// ...plus this (the next tier up is a probe's business, not growth's).
pub const ACKED_HEADROOM_BPS: f64 = 20_000.0;
/// How far past the next tier's probe point a probe (or, video paused, growth) goes, so that the
/// tier choice, which sees the estimate every 500 ms, does cross it.
pub const PROBE_HEADROOM: f64 = 1.05;
/// How long a probe runs before it is judged: the ramp, then [`ACKED_WINDOW`] at the probe's
/// rate (the acknowledged rate is taken over that window).
pub const PROBE_DURATION: Duration = Duration::from_millis(2000);
/// How long a probe's rate takes to climb from the estimate to the probe point.
pub const PROBE_RAMP: Duration = Duration::from_millis(1000);
/// Share of the probe's rate the link must be seen to carry for the probe to succeed (RTP bytes
/// against a rate paced with wire overhead, a feedback lag into the ramp, and a few per cent of
/// random loss).
pub const PROBE_CARRIED: f64 = 0.75;
/// A queue this long during a probe ends it: the link does not carry the rate.
pub const PROBE_QUEUE_MS: f64 = 40.0;
/// Wait before the first probe, after a success, and after a first failure.
pub const PROBE_WAIT_MIN: Duration = Duration::from_secs(5);
/// Longest wait between two probes (each failure doubles the wait).
pub const PROBE_WAIT_MAX: Duration = Duration::from_secs(60);
/// A probe never asks for more than this multiple of the estimate.
pub const PROBE_MAX_STEP: f64 = 2.0;
/// Window of the acknowledged rate.
pub const ACKED_WINDOW: Duration = Duration::from_secs(1);
/// The base one-way delay is the lowest seen within this window (it follows route changes).
pub const BASE_DELAY_WINDOW: Duration = Duration::from_secs(10);
/// How often the estimate is re-evaluated.
pub const EVAL_INTERVAL: Duration = Duration::from_millis(250);
/// Loss is judged over at least this many reported packets (and at least [`EVAL_INTERVAL`]):
/// on a link carrying 20 packets in a window, two random losses would read as 10 %.
pub const LOSS_MIN_PACKETS: usize = 60;
/// After a back-off (or a failed probe), the next back-off and any growth wait this long: the
/// queue needs time to drain, and the acknowledged rate to forget the overload.
pub const BACKOFF_HOLD: Duration = Duration::from_millis(1500);

/// What the feedback says, reduced to the three signals (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Probe {
    started: Instant,
    /// The estimate when it started, and the probe point it climbs to, bit/s.
    from: f64,
    to: f64,
    /// The rate asked of the pacer now.
    now: f64,
}

#[derive(Debug)]
pub struct QueueEstimate {
    target: f64,
    min: f64,
    max: f64,
    /// (report time, bytes acknowledged).
    acked: VecDeque<(Instant, usize)>,
    acked_bytes: usize,
    /// (report time, lowest one-way delay in that report, ms), for the base delay.
    delays: VecDeque<(Instant, f64)>,
    /// Latest queueing delay seen, ms.
    queue_ms: f64,
    /// Loss of the last judged window.
    last_loss: f64,
    lost: usize,
    total: usize,
    last_eval: Option<Instant>,
    last_backoff: Option<Instant>,
    /// The departure instant the one-way delays are measured from.
    epoch: Option<Instant>,
    /// The estimate at which the receiver tries its next tier up, bit/s (0: none).
    probe_floor: f64,
    /// Probes can be padded (the receiver gets video, and negotiated RTX).
    can_pad: bool,
    /// The probe running.
    probe: Option<Probe>,
    /// No probe starts before this.
    next_probe: Option<Instant>,
    /// Wait after the next failed probe.
    probe_wait: Duration,
    /// Probes run and probes that succeeded.
    probes: (u32, u32),
}

impl QueueEstimate {
    /// Starts at `initial` bit/s, held within `min..=max`.
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        Self {
            target: initial.clamp(min, max),
            min,
            max,
            acked: VecDeque::new(),
            acked_bytes: 0,
            delays: VecDeque::new(),
            queue_ms: 0.0,
            last_loss: 0.0,
            lost: 0,
            total: 0,
            last_eval: None,
            last_backoff: None,
            epoch: None,
            probe_floor: 0.0,
            can_pad: true,
            probe: None,
            next_probe: None,
            probe_wait: PROBE_WAIT_MIN,
            probes: (0, 0),
        }
    }

    /// The estimate (bit/s) at which the receiver would try its next tier up (0: none), and
    /// whether probes can be padded (the receiver gets video, on a stream with RTX); when they
    /// cannot, growth may reach the point blindly.
    pub fn set_probe_floor(&mut self, bps: f64, can_pad: bool) {
        self.probe_floor = bps;
        self.can_pad = can_pad;
    }

    /// The rate of the probe running, bit/s (0: none): what the pacer must send now.
    pub fn probe_rate(&self) -> f64 {
        self.probe.map_or(0.0, |p| p.now)
    }

    /// Probes run, and those the link carried.
    pub fn probes(&self) -> (u32, u32) {
        self.probes
    }

    /// The estimate, bit/s.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// The acknowledged rate over [`ACKED_WINDOW`], bit/s.
    pub fn acked_bps(&self) -> f64 {
        self.acked_bytes as f64 * 8.0 / ACKED_WINDOW.as_secs_f64()
    }

    /// The latest queueing delay, ms.
    pub fn queue_ms(&self) -> f64 {
        self.queue_ms
    }

    /// The loss of the last judged window, 0..1.
    pub fn loss(&self) -> f64 {
        self.last_loss
    }

    /// Takes one feedback report.
    pub fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        let epoch = *self
            .epoch
            .get_or_insert_with(|| reports.iter().map(|r| r.departure).min().unwrap_or(now));
        let mut bytes = 0;
        let mut lowest: Option<f64> = None;
        let mut latest: Option<(Instant, f64)> = None;
        for r in reports {
            self.total += 1;
            let Some(arrival) = r.arrival.filter(|_| r.arrived) else {
                self.lost += 1;
                continue;
            };
            bytes += r.size;
            // Sender and receiver clocks differ by a constant: only differences matter.
            let sent_ms = r.departure.saturating_duration_since(epoch).as_secs_f64() * 1000.0;
            let owd = arrival.as_secs_f64() * 1000.0 - sent_ms;
            lowest = Some(lowest.map_or(owd, |l: f64| l.min(owd)));
            if latest.is_none_or(|(d, _)| r.departure >= d) {
                latest = Some((r.departure, owd));
            }
        }
        self.acked.push_back((now, bytes));
        self.acked_bytes += bytes;
        while let Some(&(t, b)) = self.acked.front() {
            if now.saturating_duration_since(t) < ACKED_WINDOW {
                break;
            }
            self.acked.pop_front();
            self.acked_bytes -= b;
        }
        if let Some(l) = lowest {
            self.delays.push_back((now, l));
        }
        while self
            .delays
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > BASE_DELAY_WINDOW)
        {
            self.delays.pop_front();
        }
        let base = self.delays.iter().map(|&(_, d)| d).fold(f64::MAX, f64::min);
        if let Some((_, owd)) = latest
            && base < f64::MAX
        {
            self.queue_ms = (owd - base).max(0.0);
        }
        self.evaluate(now);
    }

    fn evaluate(&mut self, now: Instant) {
        let Some(last) = self.last_eval else {
            self.last_eval = Some(now);
            return;
        };
        let dt = now.saturating_duration_since(last);
        if dt < EVAL_INTERVAL || self.total == 0 {
            return;
        }
        let judged = self.total >= LOSS_MIN_PACKETS;
        let loss = if judged {
            self.lost as f64 / self.total as f64
        } else {
            0.0
        };
        if judged {
            self.last_loss = loss;
        }
        let acked = self.acked_bps();
        let congested = self.queue_ms > QUEUE_HIGH_MS || loss > LOSS_HIGH;
        if self.run_probe(now, acked, loss, congested) {
            // The queue is the failed probe's own, and it drains now that the padding stops:
            // media keeps its rate (a real congestion still shows after the hold).
            self.last_backoff = Some(now);
        } else if congested {
            let may = self
                .last_backoff
                .is_none_or(|t| now.saturating_duration_since(t) >= BACKOFF_HOLD);
            if may {
                // From what the link delivered; when that is far below the estimate (little
                // was sent), from the estimate itself.
                let from = if acked > 0.5 * self.target {
                    acked
                } else {
                    self.target
                };
                self.target = (from * BACKOFF).min(self.target);
                self.last_backoff = Some(now);
            }
        } else if self.queue_ms < QUEUE_LOW_MS
            && loss < LOSS_LOW
            && self
                .last_backoff
                .is_none_or(|t| now.saturating_duration_since(t) >= BACKOFF_HOLD)
        {
            let grown = self.target * GROWTH_PER_S.powf(dt.as_secs_f64().min(1.0));
            let mut cap = acked * ACKED_CAP_FACTOR + ACKED_HEADROOM_BPS;
            if !self.can_pad {
                cap = cap.max(self.probe_floor * PROBE_HEADROOM);
            }
            // Never grow past the cap; never cut to it either (that is what congestion is for).
            self.target = grown.min(cap).max(self.target);
        }
        self.target = self.target.clamp(self.min, self.max);
        if judged {
            self.lost = 0;
            self.total = 0;
        }
        self.last_eval = Some(now);
    }
}

impl QueueEstimate {
    /// Starts, judges or ends a probe (see the module docs). True when a probe just failed
    /// on a queue (it built that queue itself).
    fn run_probe(&mut self, now: Instant, acked: f64, loss: f64, congested: bool) -> bool {
        if let Some(mut probe) = self.probe {
            let failed = congested || self.queue_ms > PROBE_QUEUE_MS;
            let elapsed = now.saturating_duration_since(probe.started);
            if !failed && elapsed < PROBE_DURATION {
                let climbed = (elapsed.as_secs_f64() / PROBE_RAMP.as_secs_f64()).min(1.0);
                probe.now = probe.from + (probe.to - probe.from) * climbed;
                self.probe = Some(probe);
                return false;
            }
            self.probe = None;
            tracing::debug!(
                rate = probe.now as u64,
                acked = acked as u64,
                queue_ms = self.queue_ms as u64,
                failed,
                ms = elapsed.as_millis() as u64,
                "probe ended"
            );
            if !failed && acked >= PROBE_CARRIED * probe.to {
                self.probes.1 += 1;
                self.target = self.target.max(probe.to).min(self.max);
                self.probe_wait = PROBE_WAIT_MIN;
                self.next_probe = Some(now + PROBE_WAIT_MIN);
                return false;
            }
            if failed {
                // Back to where the probe started, which the link carried; no lower: what was
                // acknowledged in a probe cut short mixes the probe with the time before it
                // and feedback still in flight (a cut to it halved the pacing rate under a
                // queued keyframe, and the picture froze).
                self.target = self.target.min(probe.from);
            }
            self.next_probe = Some(now + self.probe_wait);
            self.probe_wait = (self.probe_wait * 2).min(PROBE_WAIT_MAX);
            return failed;
        }
        let next = *self.next_probe.get_or_insert(now + PROBE_WAIT_MIN);
        let wanted = self.can_pad && self.probe_floor > self.target;
        let calm = !congested
            && self.queue_ms < QUEUE_LOW_MS
            && loss < LOSS_LOW
            && self
                .last_backoff
                .is_none_or(|t| now.saturating_duration_since(t) >= BACKOFF_HOLD);
        if wanted && calm && now >= next {
            let to = (self.probe_floor * PROBE_HEADROOM)
                .min(self.target * PROBE_MAX_STEP)
                .min(self.max);
            self.probe = Some(Probe {
                started: now,
                from: self.target,
                to,
                now: self.target,
            });
            self.probes.0 += 1;
        }
        false
    }
}

/// Which transport-wide sequence numbers the feedback that reached us described (as arrived or
/// as lost). The congestion controller's send history reports every packet older than the newest
/// acknowledged one that no feedback mentioned as lost: a feedback packet the receiver's *uplink*
/// dropped (a weak participant's own video fills it) would then read as a burst of loss on the
/// downlink, and cut an estimate the downlink never earned losing. A tap nearer the wire than the
/// controller marks what each feedback covers ([`FeedbackCoverage::mark`]); the estimator counts
/// as lost only what a feedback said was lost ([`described`]).
pub struct FeedbackCoverage {
    words: Box<[AtomicU64]>,
}

impl std::fmt::Debug for FeedbackCoverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedbackCoverage").finish_non_exhaustive()
    }
}

impl Default for FeedbackCoverage {
    fn default() -> Self {
        Self {
            words: (0..(1 << 16) / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl FeedbackCoverage {
    /// A feedback described `count` packets from `base`.
    pub fn mark(&self, base: u16, count: u16) {
        for i in 0..count {
            let seq = base.wrapping_add(i);
            self.words[usize::from(seq >> 6)].fetch_or(1 << (seq & 63), Relaxed);
        }
    }

    /// Whether a feedback described `seq`; forgets it (sequence numbers come round again).
    pub fn take(&self, seq: u16) -> bool {
        let bit = 1u64 << (seq & 63);
        self.words[usize::from(seq >> 6)].fetch_and(!bit, Relaxed) & bit != 0
    }
}

/// The reports a feedback described: those of packets no feedback mentioned (its feedback was
/// lost on the way back) are left out, neither arrived nor lost.
pub fn described<'a>(
    reports: &'a [PacketReport],
    coverage: &FeedbackCoverage,
) -> Cow<'a, [PacketReport]> {
    let mut keep = Vec::new();
    let mut dropped = false;
    for (i, r) in reports.iter().enumerate() {
        let seen = !r.is_twcc || coverage.take(r.twcc_sequence_number) || r.arrived;
        if seen && dropped {
            keep.push(r.clone());
        } else if !seen && !dropped {
            dropped = true;
            keep.extend_from_slice(&reports[..i]);
        }
    }
    if dropped {
        Cow::Owned(keep)
    } else {
        Cow::Borrowed(reports)
    }
}

/// [`QueueEstimate`] on a participant's feedback, published to its [`LinkState`] (the pacer's
/// rate, the probe it pads, and the room's tier choice).
pub struct PublishedEstimate {
    queue: QueueEstimate,
    link: Arc<LinkState>,
    last_log: Option<Instant>,
}

impl PublishedEstimate {
    /// Starting at `initial` bit/s within `min..=max`.
    pub fn new(initial: f64, min: f64, max: f64, link: Arc<LinkState>) -> Self {
        Self {
            queue: QueueEstimate::new(initial, min, max),
            link,
            last_log: None,
        }
    }

    fn publish(&self) {
        self.link
            .estimate_bps
            .store(self.queue.target() as u64, Relaxed);
        self.link
            .probe_rate_bps
            .store(self.queue.probe_rate() as u64, Relaxed);
        self.link
            .queue_delay_ms
            .store(self.queue.queue_ms() as u32, Relaxed);
    }
}

impl BandwidthEstimator for PublishedEstimate {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        // Padding copies video on the RTX stream: none while video is paused or without RTX.
        let can_pad = self.link.rtx.load(Relaxed)
            && !self.link.video_paused.load(Relaxed)
            && self.link.tier_kbps.load(Relaxed) > 0;
        self.queue
            .set_probe_floor(self.link.probe_bps.load(Relaxed) as f64, can_pad);
        let reports = described(reports, &self.link.feedback);
        self.queue.on_reports(now, &reports);
        self.publish();
        if self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(2))
        {
            self.last_log = Some(now);
            tracing::debug!(
                estimate = self.queue.target() as u64,
                acked = self.queue.acked_bps() as u64,
                queue_ms = self.queue.queue_ms() as u64,
                loss = self.queue.loss(),
                probe = self.queue.probe_rate() as u64,
                probes = ?self.queue.probes(),
                "estimate"
            );
        }
    }
    fn target_bitrate(&self) -> f64 {
        self.queue.target()
    }
    fn stats(&self) -> EstimatorStats {
        let mut stats = EstimatorStats::default();
        stats.delay_based_bitrate = Some(self.queue.target());
        stats.packet_loss = Some(self.queue.loss());
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// What the send history reports of packet `id` (transport-wide number `id` too).
    fn report(id: u64, size: usize, departure: Instant, arrival: Option<Duration>) -> PacketReport {
        PacketReport {
            ssrc: 1,
            id,
            rtp_sequence_number: id as u16,
            is_twcc: true,
            twcc_sequence_number: id as u16,
            size,
            arrived: arrival.is_some(),
            departure,
            arrival,
            ecn: Ecn::default(),
        }
    }

    /// A simulated bottleneck: `rate` bit/s, a FIFO of at most `queue_ms`, then drops; packets
    /// of 1000 bytes sent at `send_bps`, reported every 50 ms. Returns the estimate over time.
    fn simulate(
        est: &mut QueueEstimate,
        send_bps: impl Fn(&QueueEstimate) -> f64,
        rate: f64,
        queue_ms: f64,
        seconds: f64,
    ) -> Vec<(f64, f64)> {
        simulate_lossy(est, send_bps, rate, queue_ms, seconds, 0)
    }

    /// As [`simulate`], and every `lose_every`-th packet is lost on the way (random loss).
    fn simulate_lossy(
        est: &mut QueueEstimate,
        send_bps: impl Fn(&QueueEstimate) -> f64,
        rate: f64,
        queue_ms: f64,
        seconds: f64,
        lose_every: u64,
    ) -> Vec<(f64, f64)> {
        let t0 = Instant::now();
        let size = 1000usize;
        let mut busy_until = 0.0f64; // s, when the bottleneck is free
        let mut next_send = 0.0f64;
        let mut id = 0u64;
        let mut batch = Vec::new();
        let mut next_report = 0.05;
        let mut out = Vec::new();
        while next_send < seconds {
            let now_s = next_send;
            let service = size as f64 * 8.0 / rate;
            let waiting = (busy_until - now_s).max(0.0);
            let arrived = waiting * 1000.0 <= queue_ms && (lose_every == 0 || id % lose_every != 7);
            let arrival = if arrived {
                busy_until = now_s.max(busy_until) + service;
                Some(Duration::from_secs_f64(busy_until + 0.020))
            } else {
                None
            };
            batch.push(report(
                id,
                size,
                t0 + Duration::from_secs_f64(now_s),
                arrival,
            ));
            id += 1;
            next_send += size as f64 * 8.0 / send_bps(est);
            if next_send >= next_report {
                est.on_reports(t0 + Duration::from_secs_f64(next_report + 0.03), &batch);
                batch.clear();
                out.push((next_report, est.target()));
                next_report += 0.05;
            }
        }
        out
    }

    /// A clean 2 Mbit/s link whose receiver loses every tenth feedback packet on its own uplink:
    /// the send history reports that feedback's packets as lost along with the next one's.
    fn with_lost_feedback(filter: bool) -> f64 {
        let t0 = Instant::now();
        let coverage = FeedbackCoverage::default();
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let (size, rate) = (1000usize, 2_000_000.0);
        let (mut id, mut now_s, mut held) = (0u64, 0.0f64, Vec::new());
        for feedback in 0..800u32 {
            let until = f64::from(feedback + 1) * 0.05;
            let mut batch = Vec::new();
            while now_s < until {
                batch.push(report(
                    id,
                    size,
                    t0 + Duration::from_secs_f64(now_s),
                    Some(Duration::from_secs_f64(now_s + 0.02)),
                ));
                id += 1;
                now_s += size as f64 * 8.0 / est.target().min(rate);
            }
            if batch.is_empty() {
                continue;
            }
            if feedback % 10 == 9 {
                // Lost on the way back: nothing marked; the history calls them lost later.
                held.extend(batch.into_iter().map(|mut r| {
                    r.arrived = false;
                    r.arrival = None;
                    r
                }));
                continue;
            }
            let first = batch[0].twcc_sequence_number;
            coverage.mark(first, batch.len() as u16);
            let mut reports = std::mem::take(&mut held);
            reports.extend(batch);
            let now = t0 + Duration::from_secs_f64(until + 0.03);
            if filter {
                est.on_reports(now, &described(&reports, &coverage));
            } else {
                est.on_reports(now, &reports);
            }
        }
        est.target()
    }

    #[test]
    fn feedback_lost_on_the_way_back_is_not_loss() {
        let unfiltered = with_lost_feedback(false);
        let filtered = with_lost_feedback(true);
        eprintln!(
            "lost feedback: estimate {unfiltered:.0} counted as loss, {filtered:.0} left out"
        );
        assert!(
            unfiltered < 400_000.0,
            "lost feedback reads as loss: {unfiltered:.0}"
        );
        assert!(filtered > 900_000.0, "the link is clean: {filtered:.0}");
        // And a loss a feedback does describe still counts.
        let coverage = FeedbackCoverage::default();
        coverage.mark(65_530, 10); // wraps
        let packet = |seq: u16, arrived: bool| {
            report(
                u64::from(seq),
                100,
                Instant::now(),
                arrived.then(|| Duration::from_millis(1)),
            )
        };
        let reports = [
            packet(65_520, false),
            packet(65_535, false),
            packet(2, true),
            packet(9, false),
        ];
        let kept = described(&reports, &coverage);
        let seqs: Vec<u16> = kept.iter().map(|r| r.twcc_sequence_number).collect();
        assert_eq!(seqs, vec![65_535, 2], "only what a feedback described");
        assert!(!coverage.take(2), "taken once");
    }

    #[test]
    fn a_full_drop_tail_queue_brings_the_estimate_under_the_link() {
        // Start far above a 300 kbit/s link with a 300 ms queue, sending at the estimate.
        let mut est = QueueEstimate::new(1_000_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |e| e.target(), 300_000.0, 300.0, 20.0);
        let late: Vec<f64> = trace
            .iter()
            .filter(|(t, _)| *t > 10.0)
            .map(|(_, e)| *e)
            .collect();
        let mean = late.iter().sum::<f64>() / late.len() as f64;
        assert!(
            (200_000.0..=320_000.0).contains(&mean),
            "estimate settles near the link: {mean:.0}"
        );
        assert!(late.iter().all(|&e| e < 400_000.0), "{late:?}");
    }

    #[test]
    fn sending_little_does_not_inflate_the_estimate() {
        // 150 kbit/s sent on a fat link: the estimate grows to 1.1x + 20k of it, no further...
        let mut est = QueueEstimate::new(100_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |_| 150_000.0, 10_000_000.0, 300.0, 20.0);
        let last = trace.last().expect("trace").1;
        let cap = 150_000.0 * ACKED_CAP_FACTOR + ACKED_HEADROOM_BPS;
        // (10% for the granularity of a one-second window of 1000-byte packets.)
        assert!((cap * 0.9..=cap * 1.1).contains(&last), "{last} vs {cap}");
        // ...and a start above that is not cut to it (no reason to go down).
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |_| 150_000.0, 10_000_000.0, 300.0, 20.0);
        assert_eq!(trace.last().expect("trace").1, 300_000.0);
    }

    #[test]
    fn the_next_tier_is_reached_by_a_probe_the_link_carries() {
        // The room wants 568 kbit/s; media is 150 kbit/s; the sender pads up to the probe rate.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        est.set_probe_floor(568_000.0, true);
        let trace = simulate(
            &mut est,
            |e| e.probe_rate().max(150_000.0),
            10_000_000.0,
            300.0,
            10.0,
        );
        let reached = trace.iter().find(|(_, e)| *e >= 568_000.0).map(|(t, _)| *t);
        assert!(reached.is_some_and(|t| t < 8.0), "reached at {reached:?}");
        // One probe did it; none runs once the estimate is past the point.
        assert_eq!(est.probes(), (1, 1));
    }

    #[test]
    fn a_probe_without_padding_proves_nothing() {
        // The same, but the sender ignores the probe: the estimate stays near what is sent and
        // failed probes back off (5 s, then 5, 10, 20, 40 s apart).
        let mut est = QueueEstimate::new(200_000.0, 50_000.0, 4_000_000.0);
        est.set_probe_floor(568_000.0, true);
        let trace = simulate(&mut est, |_| 150_000.0, 10_000_000.0, 300.0, 60.0);
        assert!(trace.iter().all(|(_, e)| *e <= 230_000.0), "{trace:?}");
        let (run, carried) = est.probes();
        assert_eq!(carried, 0);
        assert!((3..=5).contains(&run), "{run} probes in 60 s");
        // With video paused there is nothing to pad with: growth may reach the point itself.
        let mut est = QueueEstimate::new(200_000.0, 50_000.0, 4_000_000.0);
        est.set_probe_floor(300_000.0, false);
        let trace = simulate(&mut est, |_| 60_000.0, 10_000_000.0, 300.0, 20.0);
        let last = trace.last().expect("trace").1;
        assert!(
            last > 300_000.0 && last <= 300_000.0 * PROBE_HEADROOM * 1.01,
            "{last}"
        );
    }

    #[test]
    fn a_probe_the_link_cannot_carry_fails_fast_and_the_estimate_stays_under_the_link() {
        // A 300 kbit/s link with a 300 ms queue, 230 kbit/s of media, the next tier's point at
        // 413 kbit/s: every probe fails, none runs long, the estimate never reaches the point.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        est.set_probe_floor(413_000.0, true);
        let trace = simulate(
            &mut est,
            |e| e.probe_rate().max(e.target().min(230_000.0)),
            300_000.0,
            300.0,
            60.0,
        );
        let (run, carried) = est.probes();
        assert_eq!(carried, 0, "{trace:?}");
        assert!((2..=5).contains(&run), "{run} probes");
        for (t, e) in &trace {
            assert!(*e < 413_000.0, "{e} at {t}");
            // (What a probe got through counts as carried: growth may reach 1.1x that.)
            if *t > 10.0 {
                assert!(*e <= 360_000.0, "{e} at {t}");
            }
        }
        // The queue a failed probe built is its own: media keeps its rate (230 kbit/s fits).
        assert!(
            trace
                .iter()
                .filter(|(t, _)| *t > 3.0)
                .all(|(_, e)| *e >= 230_000.0),
            "{trace:?}"
        );
        // Each failed probe is cut short: under a second of the probe's rate (52 packets of
        // 1000 bytes a second at 413 kbit/s), not its full length.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        est.set_probe_floor(413_000.0, true);
        let probing = std::cell::Cell::new(0u32);
        simulate(
            &mut est,
            |e| {
                if e.probe_rate() > 0.0 {
                    probing.set(probing.get() + 1);
                }
                e.probe_rate().max(e.target().min(230_000.0))
            },
            300_000.0,
            300.0,
            60.0,
        );
        let run = est.probes().0;
        assert!(
            run >= 2 && probing.get() < 52 * run,
            "{} packets in {run} probes",
            probing.get()
        );
    }

    #[test]
    fn a_few_per_cent_of_random_loss_is_not_congestion() {
        // 5 % loss (one in 20) on a 1 Mbit/s link: the estimate still grows to the link.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate_lossy(&mut est, |e| e.target(), 1_000_000.0, 300.0, 25.0, 20);
        let late = trace.last().expect("trace").1;
        assert!(late > 700_000.0, "found {late:.0}");
    }

    #[test]
    fn a_link_with_room_is_found() {
        // Sending at the estimate on a 2 Mbit/s link: it grows to the link within 20 s.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |e| e.target(), 2_000_000.0, 300.0, 25.0);
        let late = trace.last().expect("trace").1;
        assert!(late > 1_200_000.0, "found {late:.0}");
    }
}
