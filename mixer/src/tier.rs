//! Video bitrate tiers: what each tier's encoder makes (resolution and frame rate fitted to its
//! bitrate), and which tier a receiver gets from its bandwidth estimate (or none: video paused).
//!
//! The policy, in one place (LiveKit's stream allocator, simplified to one stream):
//! - Audio comes first: [`AUDIO_RESERVE_BPS`] of the estimate is kept for the mix-minus (Opus
//!   with its RTP/UDP/IP overhead); video gets [`VIDEO_SHARE_PERCENT`] of what is left.
//! - A tier that no longer fits ([`HOLD_PERCENT`] of it) is left at once, for the largest one
//!   that does. When not even
//!   [`PAUSE_FRACTION_PERCENT`] of the lowest tier fits, video pauses (audio never does).
//! - Going up is a probe: one tier at a time, only when the next tier fits with
//!   [`UP_MARGIN_PERCENT`] to spare, the last move up is [`UP_HOLD_MS`] old and the last move
//!   down is [`ProbeState::backoff_ms`] old. A
//!   probe that fails (a move down soon after a move up) doubles that wait, up to
//!   [`MAX_UP_BACKOFF_MS`]; a tier held for long resets it.

/// Share of the video budget the tier's bitrate may use (the rest is headroom for RTP overhead,
/// keyframes and estimate error).
pub const VIDEO_SHARE_PERCENT: u64 = 85;
/// Bits per second kept for audio before video gets anything: 32 kbit/s Opus plus 50 packets a
/// second of IP/UDP/RTP/SRTP overhead (measured: 46-50 kbit/s acknowledged for audio alone).
pub const AUDIO_RESERVE_BPS: u64 = 50_000;
/// Video pauses when less than this share of the lowest tier fits, and resumes when all of it does.
pub const PAUSE_FRACTION_PERCENT: u64 = 80;
/// A tier already in use is kept while this share of it fits (hysteresis on the way down: the
/// encoders undershoot, and a probe that fails falls back to the tier it came from).
pub const HOLD_PERCENT: u64 = 85;
/// Margin the next tier up must fit with before it is tried.
pub const UP_MARGIN_PERCENT: u64 = 10;
/// First wait after a move down before going up again.
pub const MIN_UP_BACKOFF_MS: u64 = 8_000;
/// Longest wait between two probes up.
pub const MAX_UP_BACKOFF_MS: u64 = 64_000;
/// A tier reached by a move up is held this long before the next move up (the estimate needs
/// that long to show whether the link carries it).
pub const UP_HOLD_MS: u64 = 5_000;
/// A move down this soon after a move up means the probe failed.
pub const FAILED_PROBE_MS: u64 = 15_000;
/// Bits per pixel a tier needs at full canvas size before it gets it (VP8, camera content:
/// below this the picture is all blocks and half the size looks better).
pub const MIN_BITS_PER_PIXEL: f64 = 0.05;
/// Below this bitrate a tier runs at half the canvas frame rate.
pub const HALF_RATE_BELOW_KBPS: u32 = 100;

/// What one tier's encoder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierShape {
    /// Width in pixels (even).
    pub width: u32,
    /// Height in pixels (even).
    pub height: u32,
    /// The tier encodes every `fps_divisor`-th composite.
    pub fps_divisor: u32,
}

/// Resolution and frame rate for a tier of `kbps` on a `width`x`height`@`fps` canvas: the canvas
/// size when it gets [`MIN_BITS_PER_PIXEL`], else halved (at most twice, never below 160 wide);
/// half the frame rate below [`HALF_RATE_BELOW_KBPS`].
pub fn tier_shape(kbps: u32, width: u32, height: u32, fps: u32) -> TierShape {
    let fps_divisor = if kbps < HALF_RATE_BELOW_KBPS && fps >= 10 {
        2
    } else {
        1
    };
    let rate = f64::from(fps) / f64::from(fps_divisor);
    let (mut w, mut h) = (width, height);
    for _ in 0..2 {
        let bpp = f64::from(kbps) * 1000.0 / (f64::from(w) * f64::from(h) * rate);
        if bpp >= MIN_BITS_PER_PIXEL || w / 2 < 160 {
            break;
        }
        w = (w / 2) & !1;
        h = (h / 2) & !1;
    }
    TierShape {
        width: w,
        height: h,
        fps_divisor,
    }
}

/// The estimate (bit/s) at which [`next_tier`] moves up to a tier of `kbps`: what an estimator
/// must be allowed to reach, however little is sent now, for the receiver to ever try that tier.
pub fn probe_estimate(kbps: u32) -> u64 {
    let video = u64::from(kbps) * 1000 * (100 + UP_MARGIN_PERCENT) / 100;
    (video * 100).div_ceil(VIDEO_SHARE_PERCENT) + AUDIO_RESERVE_BPS
}

/// The video budget (bit/s) an estimate leaves after audio.
pub fn video_budget(estimate_bps: u64) -> u64 {
    estimate_bps
        .saturating_sub(AUDIO_RESERVE_BPS)
        .saturating_mul(VIDEO_SHARE_PERCENT)
        / 100
}

/// Index of the largest tier (kbit/s, ascending) that fits `budget_bps`, if any.
fn largest_fitting(budget_bps: u64, tiers_kbps: &[u32]) -> Option<usize> {
    tiers_kbps
        .iter()
        .rposition(|&kbps| u64::from(kbps) * 1000 <= budget_bps)
}

/// Index of the largest tier that fits the estimate, the lowest if none does (no pause, no
/// hysteresis: for fixed decisions such as a first guess). `tiers_kbps` empty returns 0.
pub fn tier_for_bandwidth(bps: u64, tiers_kbps: &[u32]) -> usize {
    largest_fitting(video_budget(bps), tiers_kbps).unwrap_or(0)
}

/// One receiver's probing memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    /// Room clock of the last move up, ms.
    pub last_up_ms: Option<u64>,
    /// Room clock of the last move down (or pause), ms.
    pub last_down_ms: Option<u64>,
    /// Wait after a move down before the next probe up, ms.
    pub backoff_ms: u64,
}

impl Default for ProbeState {
    fn default() -> Self {
        Self {
            last_up_ms: None,
            last_down_ms: None,
            backoff_ms: MIN_UP_BACKOFF_MS,
        }
    }
}

/// The next tier of a receiver now on `current` (`None`: video paused), given its estimate at
/// `now_ms`. Updates `probe`. See the module docs for the policy.
pub fn next_tier(
    current: Option<usize>,
    estimate_bps: u64,
    tiers_kbps: &[u32],
    probe: &mut ProbeState,
    now_ms: u64,
) -> Option<usize> {
    let lowest = u64::from(*tiers_kbps.first()?) * 1000;
    let budget = video_budget(estimate_bps);
    let holds = |t: usize| u64::from(tiers_kbps[t]) * 1000 * HOLD_PERCENT / 100 <= budget;
    let fitting = (0..tiers_kbps.len()).rev().find(|&t| holds(t));
    let may_go_up = probe
        .last_down_ms
        .is_none_or(|t| now_ms >= t + probe.backoff_ms)
        && probe.last_up_ms.is_none_or(|t| now_ms >= t + UP_HOLD_MS);
    let down = |probe: &mut ProbeState| {
        if probe
            .last_up_ms
            .is_some_and(|t| now_ms < t + FAILED_PROBE_MS)
        {
            probe.backoff_ms = (probe.backoff_ms * 2).min(MAX_UP_BACKOFF_MS);
        }
        probe.last_down_ms = Some(now_ms);
    };
    match current {
        None => {
            if budget >= lowest && may_go_up {
                probe.last_up_ms = Some(now_ms);
                Some(0)
            } else {
                None
            }
        }
        Some(cur) => {
            let cur = cur.min(tiers_kbps.len() - 1);
            if !holds(cur) {
                down(probe);
                match fitting {
                    Some(t) => Some(t),
                    None if budget * 100 >= lowest * PAUSE_FRACTION_PERCENT => Some(0),
                    None => None,
                }
            } else if cur + 1 < tiers_kbps.len()
                && u64::from(tiers_kbps[cur + 1]) * 1000 * (100 + UP_MARGIN_PERCENT) / 100 <= budget
                && may_go_up
            {
                probe.last_up_ms = Some(now_ms);
                Some(cur + 1)
            } else {
                // Held: a tier kept well past a probe means the path is stable again.
                if probe
                    .last_down_ms
                    .is_some_and(|t| now_ms >= t + 4 * MAX_UP_BACKOFF_MS)
                {
                    probe.backoff_ms = MIN_UP_BACKOFF_MS;
                }
                Some(cur)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIERS: [u32; 5] = [70, 150, 250, 400, 800];

    #[test]
    fn tier_table() {
        // (estimate bit/s, expected tier index): budget = (estimate - 50k) * 85%.
        let table: &[(u64, usize)] = &[
            (0, 0),
            (100_000, 0),
            (132_353, 0), // budget 70_000
            (226_470, 0), // budget 149_999
            (226_471, 1), // 150_000
            (344_118, 2), // 250_000
            (520_589, 3), // 400_000
            (991_177, 4),
            (u64::MAX, 4),
        ];
        for &(bps, want) in table {
            assert_eq!(tier_for_bandwidth(bps, &TIERS), want, "{bps} bit/s");
        }
        assert_eq!(tier_for_bandwidth(1_000_000, &[]), 0);
    }

    #[test]
    fn the_probe_estimate_is_where_the_next_tier_is_tried() {
        let mut p = ProbeState::default();
        for (cur, next) in [(0usize, 150u32), (1, 250), (2, 400), (3, 800)] {
            let at = probe_estimate(next);
            let mut q = p;
            assert_eq!(
                next_tier(Some(cur), at, &TIERS, &mut q, 0),
                Some(cur + 1),
                "{next}"
            );
            assert_eq!(
                next_tier(Some(cur), at - 2, &TIERS, &mut p, 0),
                Some(cur),
                "{next}"
            );
        }
    }

    #[test]
    fn shapes_fit_the_bitrate() {
        // (kbps, canvas) -> shape
        /// (width, height, fps or divisor)
        type Dims = (u32, u32, u32);
        let table: &[(u32, Dims, Dims)] = &[
            (70, (640, 360, 15), (320, 180, 2)),
            (150, (640, 360, 15), (320, 180, 1)),
            (250, (640, 360, 15), (640, 360, 1)),
            (800, (640, 360, 15), (640, 360, 1)),
            (150, (1280, 720, 30), (320, 180, 1)),
            (400, (1280, 720, 30), (640, 360, 1)),
            (1500, (1280, 720, 30), (1280, 720, 1)),
            // Never below 160 wide, and a slow canvas keeps its rate.
            (10, (320, 180, 5), (160, 90, 1)),
        ];
        for &(kbps, (w, h, fps), (ew, eh, div)) in table {
            let s = tier_shape(kbps, w, h, fps);
            assert_eq!(
                (s.width, s.height, s.fps_divisor),
                (ew, eh, div),
                "{kbps} kbit/s on {w}x{h}@{fps}"
            );
        }
    }

    #[test]
    fn moves_down_at_once_and_up_one_step_after_a_wait() {
        let mut p = ProbeState::default();
        // A 300 kbit/s link: estimate around 290k -> budget 204k -> tier 1 (150).
        assert_eq!(next_tier(Some(3), 290_000, &TIERS, &mut p, 0), Some(1));
        // Held while the estimate stays.
        assert_eq!(next_tier(Some(1), 300_000, &TIERS, &mut p, 1_000), Some(1));
        // The estimate climbs (nothing overused yet): not before the back-off.
        assert_eq!(next_tier(Some(1), 700_000, &TIERS, &mut p, 2_000), Some(1));
        // After it: one step only, not straight to the largest fitting tier, and the next
        // step only after the hold.
        assert_eq!(next_tier(Some(1), 700_000, &TIERS, &mut p, 8_000), Some(2));
        assert_eq!(next_tier(Some(2), 900_000, &TIERS, &mut p, 8_500), Some(2));
        // The probe overloads the link and the estimate falls: down, and the wait doubles.
        assert_eq!(next_tier(Some(2), 290_000, &TIERS, &mut p, 9_000), Some(1));
        assert_eq!(p.backoff_ms, 2 * MIN_UP_BACKOFF_MS);
        assert_eq!(next_tier(Some(1), 700_000, &TIERS, &mut p, 20_000), Some(1));
        assert_eq!(next_tier(Some(1), 700_000, &TIERS, &mut p, 25_000), Some(2));
        assert_eq!(next_tier(Some(2), 700_000, &TIERS, &mut p, 29_000), Some(2));
        assert_eq!(next_tier(Some(2), 700_000, &TIERS, &mut p, 30_000), Some(3));
        // A failed probe falls back to the tier it came from while 85% of that fits (budget
        // 149k: 150 is held, where a fresh choice would take 70).
        assert_eq!(next_tier(Some(3), 240_000, &TIERS, &mut p, 31_000), Some(1));
        assert_eq!(tier_for_bandwidth(240_000, &TIERS), 1);
        assert_eq!(next_tier(Some(1), 225_000, &TIERS, &mut p, 32_000), Some(1));
        assert_eq!(tier_for_bandwidth(225_000, &TIERS), 0);
    }

    #[test]
    fn pauses_below_the_lowest_tier_and_resumes_with_room() {
        let mut p = ProbeState::default();
        // budget 42.5k: 61% of the 70k tier -> paused.
        assert_eq!(next_tier(Some(1), 100_000, &TIERS, &mut p, 0), None);
        // budget 68k (97%): not enough to resume (needs all of the lowest tier).
        assert_eq!(next_tier(None, 130_000, &TIERS, &mut p, 10_000), None);
        // Enough, but only once the back-off has passed.
        let mut q = ProbeState {
            last_down_ms: Some(10_000),
            ..ProbeState::default()
        };
        assert_eq!(next_tier(None, 150_000, &TIERS, &mut q, 11_000), None);
        assert_eq!(next_tier(None, 150_000, &TIERS, &mut q, 18_000), Some(0));
        // On the lowest tier, 85% of it still fitting keeps video going.
        assert_eq!(next_tier(Some(0), 120_000, &TIERS, &mut q, 24_000), Some(0));
        assert_eq!(next_tier(Some(0), 100_000, &TIERS, &mut q, 25_000), None);
        assert_eq!(next_tier(None, 10_000_000, &[], &mut q, 0), None);
    }
}
