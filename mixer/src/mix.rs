//! Mix-minus audio mixing.
//!
//! Invariants: one frame is [`FRAME_SAMPLES`] samples of 48 kHz mono i16.
//! The sum of all contributing frames is formed once per tick in i32 (no
//! overflow below 65536 contributors); each receiver's mix is that sum minus
//! its own frame, exact before limiting; [`soft_limit`] is the only place
//! where i32 becomes i16.

use crate::FRAME_SAMPLES;

/// Level (in samples) up to which [`soft_limit`] is the identity: half full scale.
pub const LIMIT_KNEE: i32 = 16_384;
const FULL_SCALE: i32 = i16::MAX as i32;

/// Maps a mixed sample to i16 without hard clipping: identity up to
/// [`LIMIT_KNEE`], then a tanh-shaped curve that approaches full scale
/// asymptotically. Monotonic, odd-symmetric (up to rounding), continuous in
/// value and slope at the knee.
pub fn soft_limit(x: i32) -> i16 {
    let mag = i64::from(x).abs();
    if mag <= i64::from(LIMIT_KNEE) {
        return x as i16;
    }
    let range = (FULL_SCALE - LIMIT_KNEE) as f32;
    let over = (mag - i64::from(LIMIT_KNEE)) as f32 / range;
    let y = (LIMIT_KNEE as f32 + range * over.tanh()).round() as i32;
    let y = y.min(FULL_SCALE) as i16;
    if x < 0 { -y } else { y }
}

/// Applies [`soft_limit`] to a whole frame.
pub fn soft_limit_frame(input: &[i32], out: &mut [i16]) {
    for (o, &s) in out.iter_mut().zip(input) {
        *o = soft_limit(s);
    }
}

/// Sums contributing frames once and renders per-receiver mix-minus frames.
#[derive(Debug, Clone)]
pub struct AudioMixer {
    sum: Vec<i32>,
    contributors: usize,
}

impl Default for AudioMixer {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioMixer {
    /// An empty mix (silence).
    pub fn new() -> Self {
        Self {
            sum: vec![0; FRAME_SAMPLES],
            contributors: 0,
        }
    }

    /// Starts a new tick's mix.
    pub fn clear(&mut self) {
        self.sum.fill(0);
        self.contributors = 0;
    }

    /// Adds one contributor's frame (shorter frames count as zero-padded).
    pub fn add(&mut self, frame: &[i16]) {
        for (s, &x) in self.sum.iter_mut().zip(frame) {
            *s += i32::from(x);
        }
        self.contributors += 1;
    }

    /// Frames added since the last [`AudioMixer::clear`].
    pub fn contributors(&self) -> usize {
        self.contributors
    }

    /// The full mix before limiting.
    pub fn sum(&self) -> &[i32] {
        &self.sum
    }

    /// The pre-limit mix-minus: the sum minus `own` (exact).
    pub fn mix_minus_raw(&self, own: &[i16], out: &mut [i32]) {
        for ((o, &s), &x) in out.iter_mut().zip(&self.sum).zip(own) {
            *o = s - i32::from(x);
        }
    }

    /// The limited mix for one receiver: everyone minus `own` (`None` = the
    /// full mix, for receivers that contributed nothing).
    pub fn render(&self, own: Option<&[i16]>, out: &mut [i16]) {
        match own {
            None => soft_limit_frame(&self.sum, out),
            Some(own) => {
                for ((o, &s), &x) in out.iter_mut().zip(&self.sum).zip(own) {
                    *o = soft_limit(s - i32::from(x));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seed: u32, amp: i32) -> Vec<i16> {
        let mut x = seed.max(1);
        (0..FRAME_SAMPLES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x % (2 * amp as u32 + 1)) as i32 - amp) as i16
            })
            .collect()
    }

    #[test]
    fn mix_minus_is_exactly_the_sum_of_the_others() {
        let frames: Vec<Vec<i16>> = (1..=6).map(|i| frame(i * 7919, 30_000)).collect();
        let mut mixer = AudioMixer::new();
        for f in &frames {
            mixer.add(f);
        }
        assert_eq!(mixer.contributors(), 6);
        let mut got = vec![0i32; FRAME_SAMPLES];
        for (me, own) in frames.iter().enumerate() {
            mixer.mix_minus_raw(own, &mut got);
            for i in 0..FRAME_SAMPLES {
                let expected: i32 = frames
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != me)
                    .map(|(_, f)| i32::from(f[i]))
                    .sum();
                assert_eq!(got[i], expected, "receiver {me} sample {i}");
            }
        }
    }

    #[test]
    fn render_of_quiet_mix_is_identity() {
        let a = frame(3, 4000);
        let b = frame(5, 4000);
        let mut mixer = AudioMixer::new();
        mixer.add(&a);
        mixer.add(&b);
        let mut out = vec![0i16; FRAME_SAMPLES];
        mixer.render(Some(&a), &mut out);
        assert_eq!(out, b);
        mixer.render(None, &mut out);
        for i in 0..FRAME_SAMPLES {
            assert_eq!(i32::from(out[i]), i32::from(a[i]) + i32::from(b[i]));
        }
        mixer.clear();
        mixer.render(None, &mut out);
        assert!(out.iter().all(|&s| s == 0));
    }

    #[test]
    fn limiter_is_identity_below_the_knee() {
        for x in (-LIMIT_KNEE..=LIMIT_KNEE).step_by(7) {
            assert_eq!(i32::from(soft_limit(x)), x);
        }
    }

    #[test]
    fn limiter_is_monotonic_and_bounded() {
        let mut prev = soft_limit(-200_000);
        for x in (-200_000..=200_000).step_by(3) {
            let y = soft_limit(x);
            assert!(y >= prev, "not monotonic at {x}: {prev} -> {y}");
            prev = y;
        }
        // Saturates at full scale only for absurd inputs (i32 extremes).
        assert_eq!(soft_limit(i32::MAX), i16::MAX);
        assert!(soft_limit(3 * 32_767) < i16::MAX);
        assert_eq!(soft_limit(i32::MIN), -soft_limit(i32::MAX));
    }

    #[test]
    fn limiter_does_not_hard_clip_at_twice_full_scale() {
        // A 2x full-scale sine: the output must still be a smooth curve, so
        // distinct inputs near the peak keep distinct outputs (no flat top)
        // and the peak stays below full scale.
        let peak = 2 * 32_767;
        let y_peak = soft_limit(peak);
        assert!(y_peak < i16::MAX, "peak {y_peak}");
        assert!(soft_limit(peak - 3000) < y_peak);
        assert!(soft_limit(peak - 6000) < soft_limit(peak - 3000));
        // Slope is continuous at the knee: just above it, still ~1.
        let d = i32::from(soft_limit(LIMIT_KNEE + 100)) - i32::from(soft_limit(LIMIT_KNEE));
        assert!((95..=100).contains(&d), "slope at knee {d}");
        // Compression above the knee.
        assert!(i32::from(soft_limit(30_000)) < 30_000);
        assert!(i32::from(soft_limit(30_000)) > 25_000);
    }
}
