//! The bandwidth estimate a receiver's link gets: GCC (webrtc-rs `rtc`), bounded by what the
//! link is seen to carry.
//!
//! GCC's delay-based half reacts to a *growing* delay. A weak link's drop-tail queue (a home
//! router, or `tbf` in our tests) that is already full has a constant delay and only drops, so GCC
//! keeps raising its target while we overrun the link, and it raises it anyway while we send far
//! below it. Measured on a 300 kbit/s link: GCC at 400 kbit/s to 4 Mbit/s while the receiver lost
//! up to half the video. And its loss-based half never rises between 2 and 10 % loss, so a few per
//! cent of random loss pins it down. So the estimate we publish is the smaller of GCC's
//! delay-based target and a second one that reads the same transport-wide feedback for three
//! plain signals:
//! - **standing queue**: one-way delay above the lowest seen in [`BASE_DELAY_WINDOW`] by more than
//!   [`QUEUE_HIGH_MS`] means we fill a queue: back off to [`BACKOFF`] x the acknowledged rate;
//! - **heavy loss**: more than [`LOSS_HIGH`] of the packets in a report window never arrived:
//!   the same (random loss below it, the few per cent a weak radio link has, is not congestion);
//! - **room**: a short queue and little loss let the estimate grow by [`GROWTH_PER_S`] a second,
//!   never beyond [`ACKED_CAP_FACTOR`] x the acknowledged rate plus [`ACKED_HEADROOM_BPS`]
//!   (libwebrtc caps its increases by the acknowledged rate for the same reason), or just past
//!   the estimate at which the receiver would try its next tier up when that is more: cheap
//!   content (a still picture) undershoots its tier, and a cap by the acknowledged rate alone
//!   would keep a good link on a low tier for ever. Moving up one tier is the probe; a standing
//!   queue or heavy loss brings the estimate back. The estimate never runs further ahead than one
//!   tier, so a failed probe overloads a weak link by one step only.
//!
//! Time is an input (the instants the interceptor chain hands in).

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};
use std::collections::VecDeque;
use std::sync::Arc;
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
/// The estimate never exceeds this multiple of the acknowledged rate...
pub const ACKED_CAP_FACTOR: f64 = 1.5;
/// ...plus this, so that a quiet start (audio only) can still reach the lowest video tier.
pub const ACKED_HEADROOM_BPS: f64 = 100_000.0;
/// How far past the next tier's probe estimate growth may go (so that the tier choice, which
/// sees the estimate every 500 ms, does cross it).
pub const PROBE_HEADROOM: f64 = 1.05;
/// Window of the acknowledged rate.
pub const ACKED_WINDOW: Duration = Duration::from_secs(1);
/// The base one-way delay is the lowest seen within this window (it follows route changes).
pub const BASE_DELAY_WINDOW: Duration = Duration::from_secs(10);
/// How often the estimate is re-evaluated.
pub const EVAL_INTERVAL: Duration = Duration::from_millis(250);
/// Loss is judged over at least this many reported packets (and at least [`EVAL_INTERVAL`]):
/// on a link carrying 20 packets in a window, two random losses would read as 10 %.
pub const LOSS_MIN_PACKETS: usize = 60;
/// After a back-off, the next one waits this long (the queue needs time to drain).
pub const BACKOFF_HOLD: Duration = Duration::from_millis(1500);

/// What the feedback says, reduced to the three signals (see the module docs).
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
    /// The estimate at which the receiver tries its next tier up, bit/s: the cap's floor.
    probe_floor: f64,
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
        }
    }

    /// The estimate (bit/s) at which the receiver would try its next tier up (0: none): growth
    /// may always reach just past it.
    pub fn set_probe_floor(&mut self, bps: f64) {
        self.probe_floor = bps;
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
        if congested {
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
        } else if self.queue_ms < QUEUE_LOW_MS && loss < LOSS_LOW {
            let grown = self.target * GROWTH_PER_S.powf(dt.as_secs_f64().min(1.0));
            let cap = (acked * ACKED_CAP_FACTOR + ACKED_HEADROOM_BPS)
                .max(self.probe_floor * PROBE_HEADROOM);
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

/// GCC and [`QueueEstimate`] on the same feedback; the smaller one is published to the
/// participant's [`LinkState`] (the pacer's rate and the room's tier choice).
pub struct PublishedEstimate {
    gcc: Gcc,
    queue: QueueEstimate,
    link: Arc<LinkState>,
    last_log: Option<Instant>,
}

impl PublishedEstimate {
    /// Both estimators starting at `initial` bit/s within `min..=max`.
    pub fn new(initial: f64, min: f64, max: f64, link: Arc<LinkState>) -> Self {
        Self {
            gcc: Gcc::new(initial, min, max),
            queue: QueueEstimate::new(initial, min, max),
            link,
            last_log: None,
        }
    }

    fn publish(&self) {
        let target = self.target_bitrate();
        self.link.estimate_bps.store(target as u64, Relaxed);
        self.link
            .queue_delay_ms
            .store(self.queue.queue_ms() as u32, Relaxed);
    }
}

impl BandwidthEstimator for PublishedEstimate {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.gcc.on_reports(now, reports);
        self.queue
            .set_probe_floor(self.link.probe_bps.load(Relaxed) as f64);
        self.queue.on_reports(now, reports);
        self.publish();
        if self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(2))
        {
            self.last_log = Some(now);
            tracing::debug!(
                gcc_delay = self.gcc.delay_based_bitrate() as u64,
                queue_estimate = self.queue.target() as u64,
                acked = self.queue.acked_bps() as u64,
                queue_ms = self.queue.queue_ms() as u64,
                loss = self.queue.loss(),
                "estimate"
            );
        }
    }
    fn target_bitrate(&self) -> f64 {
        // GCC's loss-based half holds (never rises) between 2 and 10 % loss: on a radio link with
        // a few per cent of random loss it would keep the estimate wherever it once fell. Loss
        // that means congestion is the queue estimate's business.
        self.gcc.delay_based_bitrate().min(self.queue.target())
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
        self.publish();
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.gcc.poll_timeout()
    }
    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// A simulated bottleneck: `rate` bit/s, a FIFO of at most `queue_ms`, then drops; packets
    /// of 1000 bytes sent at `send_bps`, reported every 50 ms. Returns the estimate over time.
    fn simulate(
        est: &mut QueueEstimate,
        send_bps: impl Fn(f64) -> f64,
        rate: f64,
        queue_ms: f64,
        seconds: f64,
    ) -> Vec<(f64, f64)> {
        simulate_lossy(est, send_bps, rate, queue_ms, seconds, 0)
    }

    /// As [`simulate`], and every `lose_every`-th packet is lost on the way (random loss).
    fn simulate_lossy(
        est: &mut QueueEstimate,
        send_bps: impl Fn(f64) -> f64,
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
            batch.push(PacketReport {
                ssrc: 1,
                id,
                rtp_sequence_number: id as u16,
                is_twcc: true,
                twcc_sequence_number: id as u16,
                size,
                arrived,
                departure: t0 + Duration::from_secs_f64(now_s),
                arrival,
                ecn: Ecn::default(),
            });
            id += 1;
            next_send += size as f64 * 8.0 / send_bps(est.target());
            if next_send >= next_report {
                est.on_reports(t0 + Duration::from_secs_f64(next_report + 0.03), &batch);
                batch.clear();
                out.push((next_report, est.target()));
                next_report += 0.05;
            }
        }
        out
    }

    #[test]
    fn a_full_drop_tail_queue_brings_the_estimate_under_the_link() {
        // Start far above a 300 kbit/s link with a 300 ms queue, sending at the estimate.
        let mut est = QueueEstimate::new(1_000_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |t| t, 300_000.0, 300.0, 20.0);
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
        // 150 kbit/s sent on a fat link: the estimate stays within 1.5x + 100k of it...
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |_| 150_000.0, 10_000_000.0, 300.0, 20.0);
        let last = trace.last().expect("trace").1;
        // (10% for the granularity of a one-second window of 1000-byte packets.)
        assert!(last <= (150_000.0 * 1.5 + 100_000.0) * 1.1, "{last}");
        assert!(last >= 300_000.0, "no reason to go down: {last}");
        // ...or just past where the next tier would be tried, when that is more (cheap
        // content undershoots its tier).
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        est.set_probe_floor(568_000.0);
        let trace = simulate(&mut est, |_| 150_000.0, 10_000_000.0, 300.0, 20.0);
        let last = trace.last().expect("trace").1;
        assert!(
            last > 568_000.0 && last <= 568_000.0 * PROBE_HEADROOM * 1.01,
            "{last}"
        );
    }

    #[test]
    fn a_few_per_cent_of_random_loss_is_not_congestion() {
        // 5 % loss (one in 20) on a 1 Mbit/s link: the estimate still grows to the link.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate_lossy(&mut est, |t| t, 1_000_000.0, 300.0, 25.0, 20);
        let late = trace.last().expect("trace").1;
        assert!(late > 700_000.0, "found {late:.0}");
    }

    #[test]
    fn a_link_with_room_is_found() {
        // Sending at the estimate on a 2 Mbit/s link: it grows to the link within 20 s.
        let mut est = QueueEstimate::new(300_000.0, 50_000.0, 4_000_000.0);
        let trace = simulate(&mut est, |t| t, 2_000_000.0, 300.0, 25.0);
        let late = trace.last().expect("trace").1;
        assert!(late > 1_200_000.0, "found {late:.0}");
    }
}
