//! The crate's only FFI: the `AVCodecParameters` fields ffmpeg-next 9 has no
//! safe setters for (frame size, sample rate, channel layout, extradata,
//! codec delay, seek pre-roll), and the one it has no getter for (codec
//! delay).
//!
//! Invariant: every function returns an owned [`codec::Parameters`] whose
//! pointers (extradata) were allocated with `av_malloc`, so that
//! `avcodec_parameters_free` (run by `Parameters`' `Drop`) releases them.
#![allow(unsafe_code)]

use ffmpeg_next::{codec, ffi, media};

use crate::RecorderError;

fn alloc(kind: media::Type, id: codec::Id) -> Result<codec::Parameters, RecorderError> {
    let mut p = codec::Parameters::new();
    // SAFETY: reading a pointer; `Parameters::new` does not check
    // `avcodec_parameters_alloc` for failure.
    if unsafe { p.as_mut_ptr() }.is_null() {
        return Err(RecorderError::InvalidParams(
            "avcodec_parameters_alloc failed".into(),
        ));
    }
    p.set_medium(kind);
    p.set_id(id);
    Ok(p)
}

/// Parameters of a VP8 video stream of `width` x `height`.
pub(crate) fn vp8_parameters(width: u32, height: u32) -> Result<codec::Parameters, RecorderError> {
    let (w, h) = match (i32::try_from(width), i32::try_from(height)) {
        (Ok(w), Ok(h)) => (w, h),
        _ => return Err(RecorderError::InvalidParams("frame size overflows".into())),
    };
    let mut p = alloc(media::Type::Video, codec::Id::VP8)?;
    // SAFETY: `p` owns a valid, non-null AVCodecParameters (checked in
    // `alloc`); plain integer fields.
    unsafe {
        let raw = p.as_mut_ptr();
        (*raw).width = w;
        (*raw).height = h;
    }
    Ok(p)
}

/// Parameters of an Opus audio stream: `extradata` is the `OpusHead`,
/// `initial_padding` the pre-skip in samples (written as CodecDelay), and
/// `seek_preroll` in samples (written as SeekPreRoll).
pub(crate) fn opus_parameters(
    sample_rate: u32,
    channels: u16,
    initial_padding: u16,
    seek_preroll: u16,
    extradata: &[u8],
) -> Result<codec::Parameters, RecorderError> {
    let rate = i32::try_from(sample_rate)
        .map_err(|_| RecorderError::InvalidParams("sample rate overflows".into()))?;
    let extra_len = i32::try_from(extradata.len())
        .map_err(|_| RecorderError::InvalidParams("extradata too long".into()))?;
    let mut p = alloc(media::Type::Audio, codec::Id::OPUS)?;
    // SAFETY: `p` owns a valid, non-null AVCodecParameters with no extradata
    // yet. The extradata buffer is allocated by av_mallocz with the padding
    // libavcodec requires, fully initialised (zeroed padding), and handed to
    // the parameters, which free it with av_free.
    unsafe {
        let raw = p.as_mut_ptr();
        (*raw).sample_rate = rate;
        ffi::av_channel_layout_default(&mut (*raw).ch_layout, i32::from(channels));
        (*raw).initial_padding = i32::from(initial_padding);
        (*raw).seek_preroll = i32::from(seek_preroll);
        let buf = ffi::av_mallocz(extradata.len() + ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize)
            .cast::<u8>();
        if buf.is_null() {
            return Err(RecorderError::InvalidParams("av_mallocz failed".into()));
        }
        std::ptr::copy_nonoverlapping(extradata.as_ptr(), buf, extradata.len());
        (*raw).extradata = buf;
        (*raw).extradata_size = extra_len;
    }
    Ok(p)
}

/// The stream's codec delay in samples (`initial_padding`; for Opus in
/// Matroska, the CodecDelay element read back by the demuxer).
pub(crate) fn initial_padding(params: &codec::Parameters) -> i32 {
    // SAFETY: ffmpeg-next keeps `params` pointing at a live
    // AVCodecParameters (owned, or kept alive by its owner); a plain read.
    unsafe { params.as_ptr().as_ref() }.map_or(0, |p| p.initial_padding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_carry_the_fields() {
        let v = vp8_parameters(640, 360).expect("vp8");
        let a = opus_parameters(48_000, 1, 312, 3840, b"OpusHead\x01\x01").expect("opus");
        assert_eq!(v.id(), codec::Id::VP8);
        assert_eq!(a.id(), codec::Id::OPUS);
        // SAFETY: test-only reads of the fields just written.
        unsafe {
            let (v, a) = (&*v.as_ptr(), &*a.as_ptr());
            assert_eq!((v.width, v.height), (640, 360));
            assert_eq!(a.sample_rate, 48_000);
            assert_eq!(a.ch_layout.nb_channels, 1);
            assert_eq!(a.initial_padding, 312);
            assert_eq!(a.seek_preroll, 3840);
            let extra = std::slice::from_raw_parts(a.extradata, a.extradata_size as usize);
            assert_eq!(extra, b"OpusHead\x01\x01");
        }
        assert!(vp8_parameters(u32::MAX, 2).is_err());
        assert_eq!(initial_padding(&a), 312);
        assert_eq!(initial_padding(&v), 0);
    }
}
