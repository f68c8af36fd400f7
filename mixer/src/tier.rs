//! Choice of a receiver's video bitrate tier from its bandwidth estimate.

/// Share of the estimated bandwidth the video may use (the rest is headroom
/// for audio, RTP/RTCP overhead and estimate error).
pub const VIDEO_SHARE_PERCENT: u64 = 85;

/// Index of the largest tier (kbit/s, ascending) whose rate fits in
/// [`VIDEO_SHARE_PERCENT`] of `bps`; the lowest tier if none fits (a
/// receiver always gets some video). No hysteresis here: the server feeds
/// estimates at RTCP pace, and each change costs one keyframe of that tier.
/// `tiers_kbps` empty returns 0.
pub fn tier_for_bandwidth(bps: u64, tiers_kbps: &[u32]) -> usize {
    let budget = bps.saturating_mul(VIDEO_SHARE_PERCENT) / 100;
    tiers_kbps
        .iter()
        .rposition(|&kbps| u64::from(kbps) * 1000 <= budget)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_table() {
        let tiers = [150, 400, 800];
        // (estimate bit/s, expected tier index)
        let table: &[(u64, usize)] = &[
            (0, 0),
            (100_000, 0),
            (176_470, 0), // 85% = 149_999: nothing fits, lowest tier anyway
            (176_471, 0), // 85% = 150_000: exactly tier 0
            (470_000, 0), // 399_500 < 400 kbit/s
            (470_589, 1), // 400_000
            (900_000, 1),
            (941_177, 2), // 800_000
            (10_000_000, 2),
            (u64::MAX, 2),
        ];
        for &(bps, want) in table {
            assert_eq!(tier_for_bandwidth(bps, &tiers), want, "{bps} bit/s");
        }
        assert_eq!(tier_for_bandwidth(1_000_000, &[]), 0);
        assert_eq!(tier_for_bandwidth(1_000_000, &[500]), 0);
    }
}
