//! What each publisher needs to send. A picture is never shown larger than its tile in the
//! largest picture the room encodes, so pixels beyond that are sent, decrypted, decoded and
//! scaled away for nothing, and a publisher that is on no tile at all is not seen. The room works
//! out, for every publisher, the box its video is shown in (in pixels of the largest tier or
//! recording it encodes) and a bitrate to match, or that it is not shown; the server passes it on
//! (`video_constraints`), and clients that honour it (the web client, the synthetic participant)
//! send that much. Decoding a quarter of the pixels costs about a quarter.
//!
//! A larger limit is announced at once (a publisher coming on screen, a tile growing); a smaller
//! one only once it has held for [`LOWER_AFTER_MS`], so that a speaker change or a tier flap does
//! not make publishers switch sizes back and forth.

use crate::layout::Rect;

/// A limit below this is announced only after it has held this long, ms.
pub const LOWER_AFTER_MS: u64 = 3_000;
/// The least bitrate asked of a publisher that is shown, kbit/s.
pub const MIN_INPUT_KBPS: u32 = 100;
/// A shown input may have this many times the bits per pixel of the room's best tier: it is
/// decoded and encoded again, so it needs some headroom over what goes out.
pub const INPUT_BITS_FACTOR: u64 = 2;

/// How much video a publisher should send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimit {
    /// `false`: its picture is on no tile; it should send no video at all.
    pub active: bool,
    /// Its tile's size, pixels: the picture is fitted inside (aspect kept), so a sender scales
    /// down until both of its sides fit.
    pub max_width: u32,
    /// See `max_width`.
    pub max_height: u32,
    /// Bitrate that is useful at that size, kbit/s.
    pub max_kbps: u32,
}

impl SendLimit {
    /// Not shown: send nothing.
    pub const OFF: SendLimit = SendLimit {
        active: false,
        max_width: 0,
        max_height: 0,
        max_kbps: 0,
    };

    /// The limit of a publisher shown on `tile` of a `canvas` (w, h), when the widest picture
    /// the room encodes is `out_width` wide (tiers and recordings scale the canvas down) and its
    /// best tier has `top_kbps`.
    pub fn for_tile(tile: Rect, canvas: (u32, u32), out_width: u32, top_kbps: u32) -> SendLimit {
        let (cw, ch) = (u64::from(canvas.0.max(1)), u64::from(canvas.1.max(1)));
        let out = u64::from(out_width.clamp(2, canvas.0.max(2)));
        let scale = |v: u32| (((u64::from(v) * out / cw) as u32) & !1).max(2);
        let (w, h) = (scale(tile.w), scale(tile.h));
        let kbps =
            u64::from(top_kbps) * INPUT_BITS_FACTOR * u64::from(w) * u64::from(h) / (cw * ch);
        SendLimit {
            active: true,
            max_width: w,
            max_height: h,
            max_kbps: (kbps as u32).max(MIN_INPUT_KBPS),
        }
    }

    /// Whether `self` allows something `other` does not: sending at all, more pixels on either
    /// side, or more bits.
    fn exceeds(&self, other: &SendLimit) -> bool {
        (self.active && !other.active)
            || self.max_width > other.max_width
            || self.max_height > other.max_height
            || self.max_kbps > other.max_kbps
    }
}

/// One publisher's announced limit and the hysteresis on lowering it.
#[derive(Debug, Default)]
pub struct LimitState {
    announced: Option<SendLimit>,
    lower_since: Option<u64>,
}

impl LimitState {
    /// The limit the room wants now (room clock `now_ms`); returns the one to announce, if the
    /// announced one should change.
    pub fn update(&mut self, want: SendLimit, now_ms: u64) -> Option<SendLimit> {
        let announce = match self.announced {
            None => true,
            Some(a) if a == want => {
                self.lower_since = None;
                false
            }
            Some(a) if want.exceeds(&a) => true,
            Some(_) => {
                let since = *self.lower_since.get_or_insert(now_ms);
                now_ms >= since + LOWER_AFTER_MS
            }
        };
        if announce {
            self.announced = Some(want);
            self.lower_since = None;
            Some(want)
        } else {
            None
        }
    }

    /// The limit last announced.
    pub fn announced(&self) -> Option<SendLimit> {
        self.announced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(w: u32, h: u32) -> Rect {
        Rect { x: 0, y: 0, w, h }
    }

    #[test]
    fn tile_size_scaled_to_the_widest_picture_encoded() {
        // Two in a 640x360 grid: cells of 320x360; the best tier at full size.
        let l = SendLimit::for_tile(rect(320, 360), (640, 360), 640, 800);
        assert_eq!((l.max_width, l.max_height), (320, 360));
        assert!(l.active);
        // 2 × 800 kbit/s × half the canvas.
        assert_eq!(l.max_kbps, 800);
        // Every receiver on a tier at half size: the tile is shown at half that.
        let l = SendLimit::for_tile(rect(320, 360), (640, 360), 320, 800);
        assert_eq!((l.max_width, l.max_height, l.max_kbps), (160, 180, 200));
        // A 25-tile grid cell: the floor bitrate.
        let l = SendLimit::for_tile(rect(128, 72), (640, 360), 640, 800);
        assert_eq!(
            (l.max_width, l.max_height, l.max_kbps),
            (128, 72, MIN_INPUT_KBPS)
        );
        // Odd sizes come out even, never zero.
        let l = SendLimit::for_tile(rect(3, 1), (640, 360), 640, 800);
        assert_eq!((l.max_width, l.max_height), (2, 2));
    }

    #[test]
    fn raised_at_once_lowered_after_it_held() {
        let big = SendLimit::for_tile(rect(640, 360), (640, 360), 640, 800);
        let small = SendLimit::for_tile(rect(320, 180), (640, 360), 640, 800);
        let mut s = LimitState::default();
        assert_eq!(
            s.update(small, 0),
            Some(small),
            "the first one goes out at once"
        );
        assert_eq!(s.update(small, 20), None);
        assert_eq!(s.update(big, 40), Some(big), "up: at once");
        // Down: only after LOWER_AFTER_MS of wanting less.
        assert_eq!(s.update(small, 100), None);
        assert_eq!(s.update(small, 100 + LOWER_AFTER_MS - 20), None);
        assert_eq!(s.update(small, 100 + LOWER_AFTER_MS), Some(small));
        assert_eq!(s.announced(), Some(small));
        // A dip that does not last is never announced.
        assert_eq!(s.update(SendLimit::OFF, 5_000), None);
        assert_eq!(s.update(small, 6_000), None);
        assert_eq!(s.update(SendLimit::OFF, 7_000), None);
        assert_eq!(s.update(SendLimit::OFF, 7_000 + LOWER_AFTER_MS - 20), None);
        assert_eq!(
            s.update(SendLimit::OFF, 7_000 + LOWER_AFTER_MS),
            Some(SendLimit::OFF)
        );
        // Back on screen: at once.
        assert_eq!(s.update(small, 11_000), Some(small));
    }
}
