//! VP8 decoding with libavcodec's native decoder (through ffmpeg-next's safe API).
//!
//! Invariants: single-threaded, no frame delay (one complete frame in, at most
//! one picture out). The last good picture is kept until a newer one replaces
//! it; a failed decode leaves it untouched and flushes the decoder (the caller
//! must then wait for a keyframe). Keyframes over [`MAX_INPUT_SIDE`] or
//! [`MAX_INPUT_PIXELS`] (1080p) are refused before they reach libavcodec, so a
//! peer can neither make us allocate huge pictures nor stall its room's tick.

use std::sync::Once;

use ffmpeg_next::codec::{self, threading};
use ffmpeg_next::{Packet, decoder, frame};

use crate::MixerError;

/// Longest side of an accepted input picture (1080p either way up).
pub const MAX_INPUT_SIDE: u32 = 1920;
/// Largest accepted input picture area (1920x1088: 1080p with its macroblock padding).
///
/// Measured (`cargo bench -p mixer --bench kernels -- input_frame`, camera-like content, decode
/// plus the scale into a tile): 1.1 ms per frame at 640x360, 3.2 ms at 720p, 6.8 ms at 1080p,
/// 24 ms at 2160p. A 4K frame costs more than a whole 20 ms tick, so one 4K publisher would make
/// every tick of its room late; 1080p fits with room to spare.
pub const MAX_INPUT_PIXELS: u32 = 1920 * 1088;

/// Whether a picture of `w`x`h` is one the mixer decodes.
pub fn input_size_ok(w: u32, h: u32) -> bool {
    w > 0 && h > 0 && w.max(h) <= MAX_INPUT_SIDE && w * h <= MAX_INPUT_PIXELS
}
/// Largest accepted compressed frame (bytes).
pub const MAX_VP8_FRAME: usize = 4 << 20;

static FFMPEG_INIT: Once = Once::new();

/// If `frame` starts like a VP8 keyframe (RFC 6386 9.1: inverted key bit,
/// start code `9d 01 2a`), its `(width, height)`.
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    Some((w, h))
}

/// Whether `frame` is a well-formed-looking VP8 keyframe of acceptable size.
pub fn is_vp8_keyframe(frame: &[u8]) -> bool {
    matches!(vp8_keyframe_size(frame), Some((w, h)) if input_size_ok(w, h))
}

/// One input's VP8 decoder and its last picture.
pub struct Vp8Decoder {
    dec: decoder::Video,
    scratch: frame::Video,
    picture: frame::Video,
    has_picture: bool,
    generation: u64,
}

impl std::fmt::Debug for Vp8Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Decoder")
            .field("has_picture", &self.has_picture)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Vp8Decoder {
    /// Opens a single-threaded VP8 decoder.
    pub fn new() -> Result<Self, MixerError> {
        FFMPEG_INIT.call_once(|| {
            if let Err(e) = ffmpeg_next::init() {
                tracing::warn!(error = %e, "ffmpeg init");
            }
        });
        let codec = decoder::find(codec::Id::VP8).ok_or(ffmpeg_next::Error::DecoderNotFound)?;
        let mut ctx = codec::Context::new_with_codec(codec);
        // Frame threading would add a frame of delay and cores we do not have.
        ctx.set_threading(threading::Config::count(1));
        let dec = ctx.decoder().video()?;
        Ok(Self {
            dec,
            scratch: frame::Video::empty(),
            picture: frame::Video::empty(),
            has_picture: false,
            generation: 0,
        })
    }

    /// Decodes one complete VP8 frame. `Ok(Some(picture))` when it produced a
    /// new picture, `Ok(None)` when it produced none (e.g. an invisible frame).
    /// On error the decoder is flushed; feed a keyframe next.
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<&frame::Video>, MixerError> {
        if data.is_empty() || data.len() > MAX_VP8_FRAME {
            return Err(MixerError::InvalidFrame(format!(
                "vp8 frame of {} bytes",
                data.len()
            )));
        }
        if let Some((w, h)) = vp8_keyframe_size(data)
            && !input_size_ok(w, h)
        {
            return Err(MixerError::InvalidFrame(format!("vp8 keyframe {w}x{h}")));
        }
        // `Packet::copy` adds the zeroed padding libavcodec's bit readers need.
        let packet = Packet::copy(data);
        if let Err(e) = self.dec.send_packet(&packet) {
            self.dec.flush();
            return Err(e.into());
        }
        let mut got = false;
        loop {
            match self.dec.receive_frame(&mut self.scratch) {
                Ok(()) => {
                    std::mem::swap(&mut self.scratch, &mut self.picture);
                    got = true;
                }
                Err(ffmpeg_next::Error::Other { errno })
                    if errno == ffmpeg_next::util::error::EAGAIN =>
                {
                    break;
                }
                Err(ffmpeg_next::Error::Eof) => break,
                Err(e) => {
                    self.dec.flush();
                    return Err(e.into());
                }
            }
        }
        if !got {
            return Ok(None);
        }
        if self.picture.width() == 0 || self.picture.height() == 0 || self.picture.planes() < 3 {
            return Err(MixerError::InvalidFrame(
                "decoder returned an empty picture".into(),
            ));
        }
        self.has_picture = true;
        self.generation += 1;
        Ok(Some(&self.picture))
    }

    /// The last decoded picture.
    pub fn picture(&self) -> Option<&frame::Video> {
        self.has_picture.then_some(&self.picture)
    }

    /// Bumped every time a new picture is decoded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Forgets the reference frames (the next decodable frame is a keyframe).
    pub fn flush(&mut self) {
        self.dec.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyframe_header_parsing() {
        let mut kf = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00];
        assert_eq!(vp8_keyframe_size(&kf), Some((320, 180)));
        assert!(is_vp8_keyframe(&kf));
        kf[0] |= 1; // inter frame
        assert_eq!(vp8_keyframe_size(&kf), None);
        kf[0] &= !1;
        kf[4] = 0; // bad start code
        assert!(!is_vp8_keyframe(&kf));
        assert!(!is_vp8_keyframe(&[0u8; 5]));
        // 16000 x 16000: refused.
        let huge = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x3e, 0x80, 0x3e];
        assert_eq!(vp8_keyframe_size(&huge), Some((16000, 16000)));
        assert!(!is_vp8_keyframe(&huge));
        let mut dec = Vp8Decoder::new().expect("decoder");
        assert!(dec.decode(&huge).is_err());
        // 1080p either way up passes; 4K and 2560x1440 do not.
        assert!(input_size_ok(1920, 1080) && input_size_ok(1080, 1920));
        assert!(!input_size_ok(3840, 2160) && !input_size_ok(2560, 1440));
        assert!(!input_size_ok(1921, 10) && !input_size_ok(0, 10));
    }

    #[test]
    fn garbage_errors_without_panicking() {
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
        let mut dec = Vp8Decoder::new().expect("decoder");
        assert!(dec.decode(&[]).is_err());
        let mut x: u32 = 99;
        for len in [1usize, 3, 10, 11, 50, 300, 5000] {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (x >> 16) as u8
                    })
                    .collect();
                let _ = dec.decode(&bytes);
            }
        }
        // Truncated keyframe header with a valid start code.
        let kf = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00, 0xff,
        ];
        assert!(dec.decode(&kf).is_err());
    }
}
