//! Room media configuration.

use serde::{Deserialize, Serialize};

use crate::MixerError;

/// How the composite picture is arranged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Equal cells, `ceil(sqrt n)` columns, in join order (at most
    /// [`crate::MAX_GRID_TILES`] tiles).
    #[default]
    Grid,
    /// The active speaker large on top, a strip of small tiles below (at most
    /// [`crate::MAX_STRIP_TILES`] of them).
    Speaker,
}

/// Media settings of one room. `Default` is 640x360@15, grid, tiers
/// 50/100/150/250/400/800 kbit/s (starting at 150), Opus 32 kbit/s complexity 5,
/// a 40 ms jitter target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MediaConfig {
    /// Composite width in pixels (even, 64..=1920).
    pub canvas_width: u32,
    /// Composite height in pixels (even, 64..=1080).
    pub canvas_height: u32,
    /// Composite frame rate (1..=30), on the room clock.
    pub fps: u32,
    /// Initial layout; [`crate::MediaRoom::set_layout`] changes it.
    pub layout: Layout,
    /// Video bitrate tiers in kbit/s, strictly ascending, non-empty.
    pub video_tiers_kbps: Vec<u32>,
    /// Tier used for receivers without a bandwidth estimate. If it is not one
    /// of `video_tiers_kbps`, the largest tier below it is used (else the lowest).
    pub default_tier_kbps: u32,
    /// Opus target bitrate in bit/s (6000..=510000).
    pub opus_bitrate: i32,
    /// Opus encoder complexity (0..=10).
    pub opus_complexity: i32,
    /// Audio frames (20 ms each) buffered before playout starts (1..=25).
    pub jitter_target_frames: usize,
    /// Most tiles the grid shows (1..=[`crate::MAX_GRID_TILES`]); only those inputs are
    /// decoded. When the active speaker is not among them it takes the last tile.
    pub max_tiles: usize,
    /// From this many listeners up (participants not heard this tick), the mix they share goes
    /// out two 20 ms frames to a packet ([`crate::opus_codec::pair_frames`]): half the packets,
    /// which are most of what a large room costs, for 20 ms more latency. Speakers' own mixes
    /// stay at 20 ms. 0: never.
    pub pair_audio_from: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            canvas_width: 640,
            canvas_height: 360,
            fps: 15,
            layout: Layout::Grid,
            video_tiers_kbps: vec![50, 100, 150, 250, 400, 800],
            default_tier_kbps: 150,
            opus_bitrate: 32_000,
            opus_complexity: 5,
            jitter_target_frames: 2,
            max_tiles: crate::MAX_GRID_TILES,
            pair_audio_from: 100,
        }
    }
}

impl MediaConfig {
    /// Checks every field's range; [`crate::MediaRoom::new`] calls it.
    pub fn validate(&self) -> Result<(), MixerError> {
        let bad = |m: String| Err(MixerError::InvalidConfig(m));
        if !(64..=1920).contains(&self.canvas_width) || !self.canvas_width.is_multiple_of(2) {
            return bad(format!(
                "canvas_width {} (even, 64..=1920)",
                self.canvas_width
            ));
        }
        if !(64..=1080).contains(&self.canvas_height) || !self.canvas_height.is_multiple_of(2) {
            return bad(format!(
                "canvas_height {} (even, 64..=1080)",
                self.canvas_height
            ));
        }
        if !(1..=30).contains(&self.fps) {
            return bad(format!("fps {} (1..=30)", self.fps));
        }
        if self.video_tiers_kbps.is_empty()
            || self.video_tiers_kbps.contains(&0)
            || self.video_tiers_kbps.windows(2).any(|w| w[0] >= w[1])
        {
            return bad(format!(
                "video_tiers_kbps {:?} (non-empty, > 0, strictly ascending)",
                self.video_tiers_kbps
            ));
        }
        if !(6_000..=510_000).contains(&self.opus_bitrate) {
            return bad(format!(
                "opus_bitrate {} (6000..=510000)",
                self.opus_bitrate
            ));
        }
        if !(0..=10).contains(&self.opus_complexity) {
            return bad(format!("opus_complexity {} (0..=10)", self.opus_complexity));
        }
        if !(1..=25).contains(&self.jitter_target_frames) {
            return bad(format!(
                "jitter_target_frames {} (1..=25)",
                self.jitter_target_frames
            ));
        }
        if !(1..=crate::MAX_GRID_TILES).contains(&self.max_tiles) {
            return bad(format!(
                "max_tiles {} (1..={})",
                self.max_tiles,
                crate::MAX_GRID_TILES
            ));
        }
        Ok(())
    }

    /// Index of the tier used when a receiver has no bandwidth estimate.
    pub fn default_tier(&self) -> usize {
        self.video_tiers_kbps
            .iter()
            .rposition(|&t| t <= self.default_tier_kbps)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_default_tier_is_150() {
        let cfg = MediaConfig::default();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.video_tiers_kbps[cfg.default_tier()], 150);
    }

    #[test]
    fn rejects_out_of_range_values() {
        let cases: [fn(&mut MediaConfig); 7] = [
            |c| c.canvas_width = 641,
            |c| c.canvas_height = 0,
            |c| c.fps = 0,
            |c| c.video_tiers_kbps = vec![],
            |c| c.video_tiers_kbps = vec![400, 150],
            |c| c.opus_complexity = 11,
            |c| c.jitter_target_frames = 0,
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut cfg = MediaConfig::default();
            mutate(&mut cfg);
            assert!(
                matches!(cfg.validate(), Err(MixerError::InvalidConfig(_))),
                "case {i} accepted"
            );
        }
    }

    #[test]
    fn default_tier_falls_back_below_or_lowest() {
        let mut cfg = MediaConfig {
            default_tier_kbps: 500,
            ..MediaConfig::default()
        };
        assert_eq!(cfg.default_tier(), 4);
        cfg.default_tier_kbps = 40;
        assert_eq!(cfg.default_tier(), 0);
    }
}
