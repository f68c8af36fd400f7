//! Voice activity per input and active-speaker selection.
//!
//! All times are counted in 20 ms ticks of the room clock. Constants:
//! - level: RMS of the decoded frame in dBov (0 dBov = full-scale square
//!   wave), smoothed on power with [`LEVEL_SMOOTHING`] per tick (a fast
//!   attack, ~2 dB per tick release);
//! - speaking turns on after [`SPEAKING_ON_TICKS`] (60 ms) of frames at or
//!   above [`SPEAKING_ON_DBOV`], off after [`SPEAKING_OFF_TICKS`] (600 ms) of
//!   frames below [`SPEAKING_OFF_DBOV`] (per-frame levels: the smoothed one
//!   only ranks speakers);
//! - the active speaker is the loudest speaking input; a challenger replaces
//!   a still-speaking active speaker only after being the loudest for
//!   [`SPEAKER_SWITCH_TICKS`] (300 ms) in a row, and replaces a silent one at
//!   once. When everyone is silent the last speaker stays (so the speaker
//!   layout does not jump around); it becomes `None` only when it leaves and
//!   nobody else speaks.

/// Floor of [`level_dbov`] (digital silence).
pub const SILENCE_DBOV: f32 = -127.0;
/// Frame level at or above which an input may start speaking.
pub const SPEAKING_ON_DBOV: f32 = -45.0;
/// Frame level below which a speaking input counts towards stopping.
pub const SPEAKING_OFF_DBOV: f32 = -50.0;
/// Consecutive ticks at or above the on-level before speaking starts (60 ms).
pub const SPEAKING_ON_TICKS: u32 = 3;
/// Consecutive ticks below the off-level before speaking stops (600 ms).
pub const SPEAKING_OFF_TICKS: u32 = 30;
/// Ticks a challenger must be the loudest before it takes over (300 ms).
pub const SPEAKER_SWITCH_TICKS: u32 = 15;
/// Weight of the previous smoothed power in the next one.
pub const LEVEL_SMOOTHING: f32 = 0.6;

/// RMS level of a frame in dBov, floored at [`SILENCE_DBOV`].
pub fn level_dbov(pcm: &[i16]) -> f32 {
    power_to_dbov(frame_power(pcm))
}

/// Amplitude (in samples) of the `freq` Hz component of 48 kHz `pcm` (Goertzel): about `a` for
/// a sine of amplitude `a` spanning `pcm`, near 0 for other tones. Tests and the synthetic
/// participant tell who is heard with it.
pub fn tone_amplitude(pcm: &[i16], freq: f64) -> f64 {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(crate::SAMPLE_RATE)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in pcm {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / pcm.len().max(1) as f64
}

/// Mean square of a frame, normalised so that a full-scale square wave is 1.
fn frame_power(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: i64 = pcm.iter().map(|&s| i64::from(s) * i64::from(s)).sum();
    (sum as f64 / pcm.len() as f64 / (32768.0 * 32768.0)) as f32
}

fn power_to_dbov(p: f32) -> f32 {
    if p <= 0.0 {
        SILENCE_DBOV
    } else {
        (10.0 * p.log10()).max(SILENCE_DBOV)
    }
}

/// Smoothed level and speaking flag of one input.
#[derive(Debug, Clone)]
pub struct VoiceActivity {
    power: f32,
    frame_dbov: f32,
    speaking: bool,
    /// Consecutive ticks on the other side of the threshold from `speaking`.
    run: u32,
}

impl Default for VoiceActivity {
    fn default() -> Self {
        Self {
            power: 0.0,
            frame_dbov: SILENCE_DBOV,
            speaking: false,
            run: 0,
        }
    }
}

impl VoiceActivity {
    /// Silent, not speaking.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one decoded 20 ms frame; returns true if the speaking flag flipped.
    pub fn update(&mut self, pcm: &[i16]) -> bool {
        self.update_power(frame_power(pcm))
    }

    /// Feeds a tick with nothing to play (muted, missing, not started).
    pub fn update_silent(&mut self) -> bool {
        self.update_power(0.0)
    }

    fn update_power(&mut self, p: f32) -> bool {
        self.power = LEVEL_SMOOTHING * self.power + (1.0 - LEVEL_SMOOTHING) * p;
        self.frame_dbov = power_to_dbov(p);
        // The flag follows the per-frame level (so a single loud frame cannot
        // start speaking through the smoothing tail); the smoothed level only
        // ranks speakers.
        let crossing = if self.speaking {
            self.frame_dbov < SPEAKING_OFF_DBOV
        } else {
            self.frame_dbov >= SPEAKING_ON_DBOV
        };
        self.run = if crossing { self.run + 1 } else { 0 };
        let needed = if self.speaking {
            SPEAKING_OFF_TICKS
        } else {
            SPEAKING_ON_TICKS
        };
        if self.run >= needed {
            self.speaking = !self.speaking;
            self.run = 0;
            return true;
        }
        false
    }

    /// Forces "silent, not speaking" (audio muted); true if it was speaking.
    pub fn reset(&mut self) -> bool {
        let was = self.speaking;
        *self = Self::default();
        was
    }

    /// Smoothed level in dBov.
    pub fn level_dbov(&self) -> f32 {
        power_to_dbov(self.power)
    }

    /// Level of the last frame in dBov.
    pub fn frame_level_dbov(&self) -> f32 {
        self.frame_dbov
    }

    /// Speaking flag (with hysteresis).
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Whether this input's current frame belongs in the mix: speaking, or
    /// the frame is loud enough to be starting to (so word onsets are not cut
    /// while the 60 ms on-delay runs). Everything else is gated out, which is
    /// what lets all quiet receivers share one encoded full mix.
    pub fn contributes(&self) -> bool {
        self.speaking || self.frame_dbov >= SPEAKING_ON_DBOV
    }
}

/// Picks the active speaker among the inputs, with hysteresis.
#[derive(Debug, Clone, Default)]
pub struct SpeakerDetector {
    active: Option<u64>,
    challenger: Option<(u64, u32)>,
}

impl SpeakerDetector {
    /// Nobody active.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current active speaker.
    pub fn active(&self) -> Option<u64> {
        self.active
    }

    /// Runs once per tick over `(key, speaking, smoothed level dBov)` of every
    /// present input. Returns `Some(new)` when the active speaker changed.
    pub fn update<I>(&mut self, inputs: I) -> Option<Option<u64>>
    where
        I: IntoIterator<Item = (u64, bool, f32)>,
    {
        let mut loudest: Option<(u64, f32)> = None;
        let mut active_present = false;
        let mut active_speaking = false;
        let mut active_level = f32::NEG_INFINITY;
        for (key, speaking, level) in inputs {
            if Some(key) == self.active {
                active_present = true;
                active_speaking = speaking;
                active_level = level;
            }
            if speaking && loudest.is_none_or(|(_, l)| level > l) {
                loudest = Some((key, level));
            }
        }
        let new = match (self.active, loudest) {
            // Nobody speaking: keep the last speaker while present.
            (_, None) => {
                self.challenger = None;
                if active_present { self.active } else { None }
            }
            (Some(a), Some((l, level))) if active_present && active_speaking => {
                if l == a || level <= active_level {
                    self.challenger = None;
                    Some(a)
                } else {
                    let ticks = match self.challenger {
                        Some((c, t)) if c == l => t + 1,
                        _ => 1,
                    };
                    if ticks >= SPEAKER_SWITCH_TICKS {
                        self.challenger = None;
                        Some(l)
                    } else {
                        self.challenger = Some((l, ticks));
                        Some(a)
                    }
                }
            }
            // No active speaker, it left, or it stopped speaking: take the
            // loudest speaking input at once.
            (_, Some((l, _))) => {
                self.challenger = None;
                Some(l)
            }
        };
        if new != self.active {
            self.active = new;
            Some(new)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amp: f32) -> Vec<i16> {
        (0..960)
            .map(|i| (amp * (i as f32 * 0.05).sin()) as i16)
            .collect()
    }

    #[test]
    fn level_of_known_signals() {
        assert_eq!(level_dbov(&[0; 960]), SILENCE_DBOV);
        assert!(level_dbov(&[i16::MIN; 960]).abs() < 0.01);
        // Sine at half scale: -6 dB amplitude, -3 dB crest -> about -9 dBov.
        let l = level_dbov(&tone(16384.0));
        assert!((l + 9.03).abs() < 0.3, "level {l}");
    }

    #[test]
    fn speaking_turns_on_after_60ms_and_off_after_600ms_below() {
        let mut va = VoiceActivity::new();
        let loud = tone(3000.0);
        let silent = vec![0i16; 960];
        let mut on_at = None;
        for t in 0..10 {
            if va.update(&loud) {
                on_at = Some(t);
                break;
            }
            assert!(va.contributes(), "loud frame {t} not mixed");
        }
        assert_eq!(on_at, Some(SPEAKING_ON_TICKS as usize - 1));
        assert!(va.is_speaking());
        // Release: 600 ms of silent frames.
        let mut off_at = None;
        for t in 0..100 {
            if va.update(&silent) {
                off_at = Some(t);
                break;
            }
            assert!(va.is_speaking());
        }
        let off_at = off_at.expect("never stopped speaking");
        assert_eq!(off_at, SPEAKING_OFF_TICKS as usize - 1);
        assert!(!va.contributes());
    }

    #[test]
    fn short_blips_do_not_start_speaking_and_short_pauses_do_not_stop_it() {
        let mut va = VoiceActivity::new();
        let loud = tone(3000.0);
        let silent = vec![0i16; 960];
        for _ in 0..5 {
            // Two loud frames (40 ms) then silence: never three in a row.
            assert!(!va.update(&loud));
            assert!(!va.update(&loud));
            for _ in 0..10 {
                assert!(!va.update(&silent));
            }
        }
        assert!(!va.is_speaking());
        for _ in 0..10 {
            va.update(&loud);
        }
        assert!(va.is_speaking());
        for _ in 0..10 {
            for _ in 0..25 {
                va.update(&silent);
            }
            va.update(&loud);
            assert!(va.is_speaking(), "500 ms pause ended speaking");
        }
        assert!(va.reset());
        assert!(!va.is_speaking());
        assert_eq!(va.level_dbov(), SILENCE_DBOV);
    }

    #[test]
    fn quiet_noise_never_speaks() {
        let mut va = VoiceActivity::new();
        // -60 dBov noise floor.
        let quiet = tone(46.0);
        for _ in 0..200 {
            assert!(!va.update(&quiet));
            assert!(!va.contributes());
        }
    }

    #[test]
    fn active_speaker_hysteresis() {
        let mut d = SpeakerDetector::new();
        // First speaker takes over at once.
        assert_eq!(
            d.update([(1, true, -20.0), (2, false, -90.0)]),
            Some(Some(1))
        );
        // A louder challenger needs 300 ms in a row.
        for t in 1..SPEAKER_SWITCH_TICKS {
            assert_eq!(
                d.update([(1, true, -20.0), (2, true, -10.0)]),
                None,
                "tick {t}"
            );
        }
        // An interruption of the challenger's lead resets its count.
        assert_eq!(d.update([(1, true, -5.0), (2, true, -10.0)]), None);
        for _ in 1..SPEAKER_SWITCH_TICKS {
            assert_eq!(d.update([(1, true, -20.0), (2, true, -10.0)]), None);
        }
        assert_eq!(
            d.update([(1, true, -20.0), (2, true, -10.0)]),
            Some(Some(2))
        );
        assert_eq!(d.active(), Some(2));
        // Everyone silent: the last speaker stays.
        for _ in 0..200 {
            assert_eq!(d.update([(1, false, -90.0), (2, false, -90.0)]), None);
        }
        // Active speaker silent, someone else speaks: immediate switch.
        assert_eq!(
            d.update([(1, true, -30.0), (2, false, -90.0)]),
            Some(Some(1))
        );
        // Active speaker leaves, nobody speaks: none.
        assert_eq!(d.update([(2, false, -90.0)]), Some(None));
        assert_eq!(d.update([(2, false, -90.0)]), None);
    }
}
