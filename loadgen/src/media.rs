//! Pre-encoded media of a synthetic participant: encode once, replay.
//!
//! - Audio: 1 s of a sine at the participant's frequency (integral Hz, so the loop is
//!   phase-continuous) as 50 Opus packets, and one Opus packet of silence. A [`Schedule`] says
//!   when the participant talks.
//! - Video: [`VIDEO_LOOP`] VP8 frames at 640x360, camera-like (the participant's colour under a
//!   moving texture and fresh sensor noise every frame, so an encoder and a decoder pay what a
//!   real camera costs them, not what a flat colour does), with two rows of bit blocks drawn in:
//!   the participant's id and a frame counter, readable back from the composite after scaling
//!   (see [`read_marks`]). Encoded at [`VIDEO_KBPS`], a keyframe every [`KEYFRAME_EVERY`] frames,
//!   since a replayed stream cannot answer PLI with a fresh keyframe. Also at half and a quarter
//!   of that size (the same pictures scaled down, as a browser scales its camera), so that the
//!   participant can send what the server's `video_constraints` ask ([`Camera::layer_for`]).

use mixer::{I420Frame, OpusEncoder, Vp8Encoder, Vp8EncoderConfig, Yuv};
use std::sync::Arc;

/// Frames in the replayed video loop (the counter wraps here).
pub const VIDEO_LOOP: usize = 256;
/// Keyframe interval of the pre-encoded video.
pub const KEYFRAME_EVERY: usize = 30;
/// Frame rate of the synthetic camera.
pub const FPS: u32 = 15;
/// Size of the synthetic camera.
pub const WIDTH: u32 = 640;
/// Size of the synthetic camera.
pub const HEIGHT: u32 = 360;
/// Bitrate of the synthetic camera (what a browser sends for 360p), kbit/s.
pub const VIDEO_KBPS: u32 = 600;
/// Bit blocks per row.
const COLS: u32 = 10;

/// When a participant talks: bursts of `talk_ms` every `period_ms`, starting `offset_ms` after
/// the common start instant. `talk_ms == 0`: always silent; `talk_ms >= period_ms`: always talking.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Burst period.
    pub period_ms: u64,
    /// Burst length.
    pub talk_ms: u64,
    /// First burst.
    pub offset_ms: u64,
}

impl Schedule {
    /// Whether the participant talks at `t_ms` after the start.
    pub fn talking(&self, t_ms: u64) -> bool {
        if self.talk_ms == 0 || t_ms < self.offset_ms {
            return false;
        }
        self.talk_ms >= self.period_ms || (t_ms - self.offset_ms) % self.period_ms < self.talk_ms
    }
}

/// Pre-encoded audio.
pub struct Voice {
    /// Tone frequency.
    pub freq: u32,
    tone: Vec<Arc<[u8]>>,
    silence: Arc<[u8]>,
}

impl Voice {
    /// Encodes 1 s of the tone and a silent frame.
    pub fn new(freq: u32) -> anyhow::Result<Voice> {
        let mut enc = OpusEncoder::new(32_000, 5)?;
        let mut tone = Vec::with_capacity(50);
        for f in 0..50 {
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (f * 960 + i) as f64 / 48_000.0;
                    (8000.0 * (2.0 * std::f64::consts::PI * freq as f64 * t).sin()) as i16
                })
                .collect();
            tone.push(enc.encode(&pcm)?);
        }
        let silence = OpusEncoder::new(32_000, 5)?.encode(&[0i16; 960])?;
        Ok(Voice {
            freq,
            tone,
            silence,
        })
    }

    /// The packet for 20 ms frame number `n`.
    pub fn packet(&self, n: u64, talking: bool) -> Arc<[u8]> {
        if talking {
            self.tone[(n % self.tone.len() as u64) as usize].clone()
        } else {
            self.silence.clone()
        }
    }
}

/// The sizes of the pre-encoded loop, largest first: (width, height, kbit/s).
pub const LAYERS: [(u32, u32, u32); 3] =
    [(WIDTH, HEIGHT, VIDEO_KBPS), (320, 180, 200), (160, 90, 80)];

/// One size of the pre-encoded video loop.
pub struct Layer {
    /// Width of its pictures.
    pub width: u32,
    /// Height of its pictures.
    pub height: u32,
    /// (frame, keyframe), frame `i` shows counter `i`; keyframes at the same frames in every
    /// layer, so that a sender can switch at any of them.
    pub frames: Vec<(Arc<[u8]>, bool)>,
}

/// Pre-encoded video loop, at each of [`LAYERS`].
pub struct Camera {
    /// Largest first.
    pub layers: Vec<Layer>,
}

/// A distinct colour for participant `id` (hue circle, bright enough to read marks on).
pub fn colour(id: u32) -> Yuv {
    let a = id as f64 * 2.399_963; // golden angle: neighbours differ a lot
    Yuv {
        y: 110,
        u: (128.0 + 90.0 * a.cos()) as u8,
        v: (128.0 + 90.0 * a.sin()) as u8,
    }
}

fn draw_row(f: &mut I420Frame, row_y: u32, row_h: u32, bits: u32) {
    let w = f.width();
    for c in 0..COLS {
        let x0 = c * w / COLS;
        let x1 = (c + 1) * w / COLS;
        let on = bits >> c & 1 == 1;
        let col = if on {
            Yuv {
                y: 235,
                u: 128,
                v: 128,
            }
        } else {
            Yuv {
                y: 16,
                u: 128,
                v: 128,
            }
        };
        f.fill_rect(x0 & !1, row_y, (x1 - x0) & !1, row_h, col);
    }
}

/// Id row: 6 bits of id, then the complement of its low 4 bits (a validity check).
fn id_bits(id: u32) -> u32 {
    (id & 0x3f) | ((!id & 0xf) << 6)
}

/// Paints frame `i` of a camera-like picture in participant `id`'s colour: a texture of soft
/// diagonal bands drifting a few pixels a frame (motion), and fresh noise on every pixel of
/// luma and chroma (a sensor's grain, which no encoder can predict).
fn camera_like(f: &mut I420Frame, id: u32, i: u32, seed: &mut u32) {
    let (w, h) = (f.width(), f.height());
    let c = colour(id);
    let (y, u, v) = f.planes_mut();
    let mut noise = move |amp: i32| {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((((*seed >> 24) as i32) * (2 * amp + 1)) >> 8) - amp
    };
    for row in 0..h {
        for col in 0..w {
            let band = ((col + row + i * 3) / 24) % 4;
            let luma = i32::from(c.y) - 30 + band as i32 * 20 + noise(12);
            y[(row * w + col) as usize] = luma.clamp(16, 235) as u8;
        }
    }
    for (plane, base) in [(u, c.u), (v, c.v)] {
        for p in plane.iter_mut() {
            *p = (i32::from(base) + noise(4)).clamp(16, 240) as u8;
        }
    }
}

impl Camera {
    /// Encodes the loop for participant `id` at every size of [`LAYERS`].
    pub fn new(id: u32) -> anyhow::Result<Camera> {
        let mut layers = Vec::with_capacity(LAYERS.len());
        let mut encoders = Vec::with_capacity(LAYERS.len());
        let mut scaled = Vec::with_capacity(LAYERS.len());
        for (w, h, kbps) in LAYERS {
            encoders.push(Vp8Encoder::new(Vp8EncoderConfig::realtime(
                w, h, FPS, kbps,
            ))?);
            scaled.push(if (w, h) == (WIDTH, HEIGHT) {
                None
            } else {
                let black = Yuv {
                    y: 16,
                    u: 128,
                    v: 128,
                };
                Some((
                    mixer::Scaler::new(WIDTH, HEIGHT, w, h)?,
                    I420Frame::new(w, h, black)?,
                ))
            });
            layers.push(Layer {
                width: w,
                height: h,
                frames: Vec::with_capacity(VIDEO_LOOP),
            });
        }
        let mut f = I420Frame::new(WIDTH, HEIGHT, colour(id))?;
        let rh = (HEIGHT / 6) & !1;
        let mut seed = id.wrapping_mul(2_654_435_761) | 1;
        for i in 0..VIDEO_LOOP {
            camera_like(&mut f, id, i as u32, &mut seed);
            draw_row(&mut f, (HEIGHT * 2 / 8) & !1, rh, id_bits(id));
            draw_row(&mut f, (HEIGHT * 5 / 8) & !1, rh, i as u32);
            for ((enc, scaler), layer) in encoders.iter_mut().zip(&mut scaled).zip(&mut layers) {
                let picture = match scaler {
                    Some((s, small)) => {
                        s.scale(&f.view(), small)?;
                        &*small
                    }
                    None => &f,
                };
                if i % KEYFRAME_EVERY == 0 {
                    enc.force_keyframe();
                }
                // Keep asking until the encoder yields the frame (it may buffer none in realtime).
                let out = enc
                    .encode(picture, (i as i64) * 1000 / FPS as i64)?
                    .ok_or_else(|| anyhow::anyhow!("encoder produced no frame"))?;
                layer.frames.push((out.data, out.keyframe));
            }
        }
        Ok(Camera { layers })
    }

    /// The layer to send under the server's `video_constraints` (`None`: none received yet,
    /// send the largest): the smallest one that still fills the box it is shown in (the
    /// picture is fitted inside the box, aspect kept); `None` when it is not shown at all.
    pub fn layer_for(&self, limit: Option<&SendLimit>) -> Option<usize> {
        let Some(l) = limit else {
            return Some(0);
        };
        if !l.active || l.max_width == 0 || l.max_height == 0 {
            return None;
        }
        // How much smaller than the camera the picture is shown.
        let factor = (f64::from(WIDTH) / f64::from(l.max_width))
            .max(f64::from(HEIGHT) / f64::from(l.max_height))
            .max(1.0);
        let shown_width = f64::from(WIDTH) / factor;
        let fits = |layer: &&Layer| f64::from(layer.width) >= shown_width * 0.99;
        Some(
            self.layers
                .iter()
                .rposition(|layer| fits(&layer))
                .unwrap_or(0),
        )
    }
}

/// A server's `video_constraints` message, as the synthetic participant reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimit {
    /// Shown at all.
    pub active: bool,
    /// Box the picture is shown in.
    pub max_width: u32,
    /// See `max_width`.
    pub max_height: u32,
}

impl SendLimit {
    /// Reads `{"type":"video_constraints",…}`; `None` for anything else.
    pub fn from_message(v: &serde_json::Value) -> Option<SendLimit> {
        if v["type"] != "video_constraints" {
            return None;
        }
        let dim = |k: &str| v[k].as_u64().and_then(|x| u32::try_from(x).ok());
        Some(SendLimit {
            active: v["active"].as_bool()?,
            max_width: dim("max_width")?,
            max_height: dim("max_height")?,
        })
    }
}

/// Reads (participant id, frame counter) from a tile of a decoded composite (luma plane).
pub fn read_marks(
    luma: &[u8],
    stride: usize,
    x: u32,
    y: u32,
    w: u32,
    h: u32,
) -> Option<(u32, u32)> {
    let read_row = |frac: f64| -> Option<u32> {
        let ry = y as f64 + frac * h as f64;
        let mut bits = 0;
        for c in 0..COLS {
            let rx = x as f64 + (c as f64 + 0.5) * w as f64 / COLS as f64;
            let i = ry as usize * stride + rx as usize;
            let v = *luma.get(i)?;
            if v > 160 {
                bits |= 1 << c;
            } else if v > 70 {
                return None; // neither white nor black: not a mark
            }
        }
        Some(bits)
    };
    let rh = 1.0 / 12.0; // half a row: the centre of the drawn band
    let id_row = read_row(2.0 / 8.0 + rh)?;
    let id = id_row & 0x3f;
    if (id_row >> 6) & 0xf != (!id & 0xf) {
        return None;
    }
    let counter = read_row(5.0 / 8.0 + rh)?;
    Some((id, counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let s = Schedule {
            period_ms: 2000,
            talk_ms: 400,
            offset_ms: 100,
        };
        assert!(!s.talking(50));
        assert!(s.talking(100) && s.talking(499) && !s.talking(500));
        assert!(s.talking(2100) && !s.talking(2600));
        let silent = Schedule { talk_ms: 0, ..s };
        assert!(!silent.talking(150));
    }

    #[test]
    fn marks_survive_encode_decode_and_scaling() {
        let cam = Camera::new(13).unwrap();
        let frames = &cam.layers[0].frames;
        assert!(frames[0].1 && frames[KEYFRAME_EVERY].1 && !frames[1].1);
        // Camera-like, not a flat colour: inter frames cost about what the bitrate allows
        // (600 kbit/s at 15 fps is 5 000 bytes a frame; a flat colour takes tens of bytes).
        let inter: Vec<usize> = frames.iter().filter(|f| !f.1).map(|f| f.0.len()).collect();
        let mean = inter.iter().sum::<usize>() / inter.len();
        assert!(mean > 2_500, "mean inter frame {mean} bytes");
        let mut dec = mixer::Vp8Decoder::new().unwrap();
        for (i, (data, _)) in frames.iter().enumerate().take(40) {
            let pic = dec.decode(data).unwrap().expect("picture");
            let view = mixer::I420View::from_video(pic).unwrap();
            let frame = I420Frame::from_view(&view).unwrap();
            let (y, _, _) = frame.planes();
            assert_eq!(
                read_marks(y, WIDTH as usize, 0, 0, WIDTH, HEIGHT),
                Some((13, i as u32))
            );
        }
        // A tile of a 25-tile composite is 128x72: scale down and read again.
        let mut small = I420Frame::new(
            128,
            72,
            Yuv {
                y: 0,
                u: 128,
                v: 128,
            },
        )
        .unwrap();
        let mut scaler = mixer::Scaler::new(WIDTH, HEIGHT, 128, 72).unwrap();
        let pic = dec.decode(&frames[KEYFRAME_EVERY].0).unwrap().expect("pic");
        let view = mixer::I420View::from_video(pic).unwrap();
        scaler.scale(&view, &mut small).unwrap();
        let (y, _, _) = small.planes();
        assert_eq!(
            read_marks(y, 128, 0, 0, 128, 72),
            Some((13, KEYFRAME_EVERY as u32))
        );
    }

    #[test]
    fn smaller_layers_carry_the_same_marks_and_keyframes_and_follow_the_limit() {
        let cam = Camera::new(7).unwrap();
        assert_eq!(cam.layers.len(), LAYERS.len());
        for layer in &cam.layers[1..] {
            let mut dec = mixer::Vp8Decoder::new().unwrap();
            for (i, (data, kf)) in layer.frames.iter().enumerate().take(31) {
                assert_eq!(*kf, cam.layers[0].frames[i].1, "keyframes line up");
                let pic = dec.decode(data).unwrap().expect("picture");
                let frame =
                    I420Frame::from_view(&mixer::I420View::from_video(pic).unwrap()).unwrap();
                assert_eq!((frame.width(), frame.height()), (layer.width, layer.height));
                let (y, _, _) = frame.planes();
                let (w, h) = (layer.width, layer.height);
                assert_eq!(read_marks(y, w as usize, 0, 0, w, h), Some((7, i as u32)));
            }
        }
        // A smaller picture costs fewer bytes.
        let bytes = |l: &Layer| l.frames.iter().map(|f| f.0.len()).sum::<usize>();
        assert!(bytes(&cam.layers[1]) * 2 < bytes(&cam.layers[0]));
        let limit = |w, h| SendLimit {
            active: true,
            max_width: w,
            max_height: h,
        };
        assert_eq!(cam.layer_for(None), Some(0), "nothing asked yet: full size");
        assert_eq!(cam.layer_for(Some(&limit(640, 360))), Some(0));
        // Two in a grid: a 320x360 cell shows a 320x180 picture.
        assert_eq!(cam.layer_for(Some(&limit(320, 360))), Some(1));
        assert_eq!(cam.layer_for(Some(&limit(400, 240))), Some(0));
        assert_eq!(cam.layer_for(Some(&limit(212, 120))), Some(1));
        assert_eq!(cam.layer_for(Some(&limit(128, 72))), Some(2));
        let off = SendLimit {
            active: false,
            ..limit(0, 0)
        };
        assert_eq!(cam.layer_for(Some(&off)), None);
        let msg = serde_json::json!({"type": "video_constraints", "active": true,
            "max_width": 320, "max_height": 360, "max_kbps": 800});
        assert_eq!(SendLimit::from_message(&msg), Some(limit(320, 360)));
        assert_eq!(
            SendLimit::from_message(&serde_json::json!({"type": "chat"})),
            None
        );
    }

    #[test]
    fn colours_differ() {
        for a in 0..25 {
            for b in 0..a {
                assert!(colour(a).distance(&colour(b)) > 8, "{a} vs {b}");
            }
        }
    }
}
