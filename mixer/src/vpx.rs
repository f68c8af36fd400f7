//! Safe wrapper over libvpx's VP8 encoder. The crate's only FFI module: every
//! `unsafe` block of the crate is here.
//!
//! Settings (see docs/mixer.md and NOTES.md for the measurements behind
//! them): realtime deadline, `cpu-used` -12, one thread, CBR, error resilient,
//! no lag. The budget holds on costly content: frames may be dropped when the
//! rate-control buffer runs low, the whole quantizer range is used, and a
//! keyframe is capped at 3x an average frame. Keyframes come on demand
//! ([`Vp8Encoder::force_keyframe`]) plus a safety one every
//! [`KEYFRAME_SAFETY_INTERVAL_S`]. Invariants: the codec context and image header are boxed (stable
//! addresses for the C side) and live exactly as long as the wrapper; the
//! image wraps the caller's [`I420Frame`] only for the duration of one
//! `vpx_codec_encode` call.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_uint, c_ulong};
use std::sync::Arc;

use vpx_sys as ffi;

use crate::MixerError;
use crate::image::I420Frame;

/// Longest time between two keyframes nobody asked for (a receiver that lost one and whose
/// request was lost too recovers at the latest then).
pub const KEYFRAME_SAFETY_INTERVAL_S: u32 = 20;
/// Rate-control buffer level (percent) below which libvpx drops a frame rather than overshoot.
const DROP_FRAME_THRESHOLD: c_uint = 30;

/// Settings of one VP8 encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8EncoderConfig {
    /// Frame width (even).
    pub width: u32,
    /// Frame height (even).
    pub height: u32,
    /// Nominal frame rate; sets the rate control's frame duration.
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// libvpx speed (negative = fixed speed). On a camera-like 640x360 composite at 800 kbit/s
    /// (`cargo run --release -p mixer --example encoder_speed`): -8 3.5 ms a frame, -12 2.7 ms
    /// for 0.3 dB less PSNR, -16 3.0 ms for 3.8 dB less.
    pub cpu_used: i32,
    /// Longest keyframe interval, in frames.
    pub kf_max_dist: u32,
}

impl Vp8EncoderConfig {
    /// Realtime defaults for a `width`x`height`@`fps` stream at `bitrate_kbps`,
    /// with a keyframe at least every [`KEYFRAME_SAFETY_INTERVAL_S`].
    pub fn realtime(width: u32, height: u32, fps: u32, bitrate_kbps: u32) -> Self {
        Self {
            width,
            height,
            fps,
            bitrate_kbps,
            cpu_used: -12,
            kf_max_dist: fps.max(1) * KEYFRAME_SAFETY_INTERVAL_S,
        }
    }
}

/// One encoded VP8 frame.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The frame, ready for the RTP VP8 payloader.
    pub data: Arc<[u8]>,
    /// Whether it is a keyframe.
    pub keyframe: bool,
}

/// A libvpx VP8 encoder. Not shared between threads; movable between them.
pub struct Vp8Encoder {
    ctx: Box<ffi::vpx_codec_ctx_t>,
    cfg: Box<ffi::vpx_codec_enc_cfg_t>,
    img: Box<ffi::vpx_image_t>,
    config: Vp8EncoderConfig,
    force_kf: bool,
    out: Vec<u8>,
}

// SAFETY: the libvpx context has no thread affinity; it is only ever used
// through `&mut self`, so never from two threads at once.
unsafe impl Send for Vp8Encoder {}

impl std::fmt::Debug for Vp8Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vp8Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn check(
    ctx: &mut ffi::vpx_codec_ctx_t,
    err: ffi::vpx_codec_err_t,
    what: &str,
) -> Result<(), MixerError> {
    if err == ffi::vpx_codec_err_t::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: `ctx` is a valid (initialised or zeroed) context; libvpx returns
    // a static string or the context's own error buffer.
    let detail = unsafe {
        let p = ffi::vpx_codec_error(ctx);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Err(MixerError::Vpx(format!("{what}: {err:?} {detail}")))
}

impl Vp8Encoder {
    /// Creates and configures an encoder.
    pub fn new(config: Vp8EncoderConfig) -> Result<Self, MixerError> {
        if config.width == 0
            || config.height == 0
            || !config.width.is_multiple_of(2)
            || !config.height.is_multiple_of(2)
            || config.width > 4096
            || config.height > 4096
            || config.fps == 0
            || config.bitrate_kbps == 0
        {
            return Err(MixerError::Vpx(format!("invalid config {config:?}")));
        }
        // SAFETY: `vpx_codec_enc_config_default` fully initialises `cfg`
        // (it is read only after it returned OK). A zeroed context and image
        // header are valid starting states (all-null pointers, enum fields
        // whose zero variant exists). All pointers passed point to live,
        // boxed values.
        unsafe {
            let iface = ffi::vpx_codec_vp8_cx();
            let mut ctx: Box<ffi::vpx_codec_ctx_t> = Box::new(MaybeUninit::zeroed().assume_init());
            let mut raw_cfg = MaybeUninit::<ffi::vpx_codec_enc_cfg_t>::uninit();
            let err = ffi::vpx_codec_enc_config_default(iface, raw_cfg.as_mut_ptr(), 0);
            check(&mut ctx, err, "vpx_codec_enc_config_default")?;
            let mut cfg = Box::new(raw_cfg.assume_init());
            cfg.g_w = config.width;
            cfg.g_h = config.height;
            cfg.g_timebase = ffi::vpx_rational { num: 1, den: 1000 };
            cfg.g_threads = 1;
            cfg.g_lag_in_frames = 0;
            cfg.g_error_resilient = ffi::VPX_ERROR_RESILIENT_DEFAULT;
            cfg.g_pass = ffi::vpx_enc_pass::VPX_RC_ONE_PASS;
            cfg.rc_end_usage = ffi::vpx_rc_mode::VPX_CBR;
            cfg.rc_target_bitrate = config.bitrate_kbps;
            // Costly content (motion, sensor noise) must not overrun a weak link: skipping a
            // frame is better than a burst the receiver's queue turns into audio loss.
            cfg.rc_dropframe_thresh = DROP_FRAME_THRESHOLD;
            cfg.rc_resize_allowed = 0;
            cfg.rc_min_quantizer = 2;
            cfg.rc_max_quantizer = 63;
            cfg.rc_undershoot_pct = 100;
            cfg.rc_overshoot_pct = 15;
            // Rate-control buffer in ms (the values WebRTC uses).
            cfg.rc_buf_initial_sz = 500;
            cfg.rc_buf_optimal_sz = 600;
            cfg.rc_buf_sz = 1000;
            cfg.kf_mode = ffi::vpx_kf_mode::VPX_KF_AUTO;
            cfg.kf_min_dist = 0;
            cfg.kf_max_dist = config.kf_max_dist.max(1);
            // On failure libvpx releases what it allocated itself.
            let err = ffi::vpx_codec_enc_init_ver(
                &mut *ctx,
                iface,
                &*cfg,
                0,
                ffi::VPX_ENCODER_ABI_VERSION as c_int,
            );
            check(&mut ctx, err, "vpx_codec_enc_init")?;
            // From here on the context must be destroyed: build `Self` first
            // so that Drop does it on any error below.
            let mut enc = Self {
                ctx,
                cfg,
                img: Box::new(MaybeUninit::zeroed().assume_init()),
                config,
                force_kf: false,
                out: Vec::with_capacity(64 * 1024),
            };
            let err = ffi::vpx_codec_control_(
                &mut *enc.ctx,
                ffi::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int,
                config.cpu_used as c_int,
            );
            check(&mut enc.ctx, err, "VP8E_SET_CPUUSED")?;
            // Cap keyframe size at 3x an average frame so that a forced
            // keyframe does not stall the receiver's link (WebRTC does the same).
            let err = ffi::vpx_codec_control_(
                &mut *enc.ctx,
                ffi::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT as c_int,
                300 as c_uint,
            );
            check(&mut enc.ctx, err, "VP8E_SET_MAX_INTRA_BITRATE_PCT")?;
            Ok(enc)
        }
    }

    /// The configuration in effect.
    pub fn config(&self) -> Vp8EncoderConfig {
        self.config
    }

    /// Changes the target bitrate on the fly (no keyframe).
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), MixerError> {
        if kbps == 0 {
            return Err(MixerError::Vpx("bitrate 0".into()));
        }
        if kbps == self.config.bitrate_kbps {
            return Ok(());
        }
        self.cfg.rc_target_bitrate = kbps;
        // SAFETY: ctx is initialised; cfg is a valid configuration for it.
        let err = unsafe { ffi::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        check(&mut self.ctx, err, "vpx_codec_enc_config_set")?;
        self.config.bitrate_kbps = kbps;
        Ok(())
    }

    /// Makes the next encoded frame a keyframe.
    pub fn force_keyframe(&mut self) {
        self.force_kf = true;
    }

    /// Encodes one picture at `pts_ms` (room clock). Returns `None` if libvpx
    /// produced no frame for it.
    pub fn encode(
        &mut self,
        frame: &I420Frame,
        pts_ms: i64,
    ) -> Result<Option<EncodedFrame>, MixerError> {
        if (frame.width(), frame.height()) != (self.config.width, self.config.height) {
            return Err(MixerError::InvalidFrame(format!(
                "encoder is {}x{}, frame is {}x{}",
                self.config.width,
                self.config.height,
                frame.width(),
                frame.height()
            )));
        }
        let flags: c_long = if self.force_kf {
            ffi::VPX_EFLAG_FORCE_KF as c_long
        } else {
            0
        };
        let duration = (1000 / self.config.fps).max(1) as c_ulong;
        self.out.clear();
        let mut keyframe = false;
        // SAFETY: `frame` has exactly the I420 layout `vpx_img_wrap` computes
        // for these dimensions with stride alignment 1 (tight strides, even
        // size, planes contiguous), and outlives the encode call; libvpx only
        // reads the input image. Packets returned by `vpx_codec_get_cx_data`
        // stay valid until the next encode call, and are copied before that.
        unsafe {
            let img = ffi::vpx_img_wrap(
                &mut *self.img,
                ffi::vpx_img_fmt::VPX_IMG_FMT_I420,
                self.config.width as c_uint,
                self.config.height as c_uint,
                1,
                frame.data().as_ptr() as *mut u8,
            );
            if img.is_null() {
                return Err(MixerError::Vpx("vpx_img_wrap failed".into()));
            }
            let err = ffi::vpx_codec_encode(
                &mut *self.ctx,
                img,
                pts_ms,
                duration,
                flags,
                ffi::VPX_DL_REALTIME as c_ulong,
            );
            // Do not leave a dangling pointer to the caller's frame behind.
            self.img.planes = [std::ptr::null_mut(); 4];
            self.img.img_data = std::ptr::null_mut();
            check(&mut self.ctx, err, "vpx_codec_encode")?;
            let mut iter: ffi::vpx_codec_iter_t = std::ptr::null();
            loop {
                let pkt = ffi::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != ffi::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let f = (*pkt).data.frame;
                if !f.buf.is_null() && f.sz > 0 {
                    self.out.extend_from_slice(std::slice::from_raw_parts(
                        f.buf as *const u8,
                        f.sz as usize,
                    ));
                }
                keyframe |= f.flags & ffi::VPX_FRAME_IS_KEY != 0;
            }
        }
        if self.out.is_empty() {
            return Ok(None);
        }
        if keyframe {
            self.force_kf = false;
        }
        Ok(Some(EncodedFrame {
            data: Arc::from(&self.out[..]),
            keyframe,
        }))
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: ctx was successfully initialised (Self is only built after
        // vpx_codec_enc_init succeeded) and is destroyed exactly once.
        unsafe {
            ffi::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Yuv;
    use crate::vp8_decoder::Vp8Decoder;

    #[test]
    fn first_frame_is_key_forced_keyframes_happen_and_decode_back() {
        let cfg = Vp8EncoderConfig::realtime(320, 180, 15, 300);
        let mut enc = Vp8Encoder::new(cfg).expect("encoder");
        let mut dec = Vp8Decoder::new().expect("decoder");
        let green = Yuv::from_rgb(0, 255, 0);
        let frame = I420Frame::new(320, 180, green).expect("frame");
        let mut kinds = Vec::new();
        for i in 0..10 {
            if i == 6 {
                enc.force_keyframe();
            }
            let out = enc
                .encode(&frame, i * 66)
                .expect("encode")
                .expect("a frame");
            kinds.push(out.keyframe);
            let pic = dec.decode(&out.data).expect("decode").expect("picture");
            let pic = I420Frame::from_video(pic).expect("copy");
            assert_eq!((pic.width(), pic.height()), (320, 180));
            let c = pic.pixel(160, 90).expect("pixel");
            assert!(c.distance(&green) <= 6, "frame {i}: {c:?} vs {green:?}");
        }
        assert_eq!(
            kinds,
            vec![
                true, false, false, false, false, false, true, false, false, false
            ]
        );
        enc.set_bitrate(150).expect("reconfigure");
        assert_eq!(enc.config().bitrate_kbps, 150);
        let out = enc.encode(&frame, 700).expect("encode").expect("frame");
        assert!(!out.keyframe);
    }

    #[test]
    fn rejects_bad_config_and_wrong_frame_size() {
        assert!(Vp8Encoder::new(Vp8EncoderConfig::realtime(321, 180, 15, 300)).is_err());
        assert!(Vp8Encoder::new(Vp8EncoderConfig::realtime(320, 180, 0, 300)).is_err());
        let mut enc =
            Vp8Encoder::new(Vp8EncoderConfig::realtime(320, 180, 15, 300)).expect("encoder");
        let small = I420Frame::new(160, 90, Yuv::BLACK).expect("frame");
        assert!(enc.encode(&small, 0).is_err());
    }
}
