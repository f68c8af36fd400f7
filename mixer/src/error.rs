//! The crate's single error type.

/// Everything that can go wrong inside the media core.
///
/// Untrusted input (RTP payloads, VP8 frames) never surfaces here through
/// [`crate::MediaRoom`]: the room conceals or drops it and counts it in
/// [`crate::MediaStats`]. These errors come from configuration and from the
/// building blocks when they are used directly.
#[derive(Debug, thiserror::Error)]
pub enum MixerError {
    /// A [`crate::MediaConfig`] value is out of range.
    #[error("invalid media config: {0}")]
    InvalidConfig(String),
    /// libopus rejected a call (bad packet, bad parameter).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// libvpx rejected a call.
    #[error("vp8 encoder: {0}")]
    Vpx(String),
    /// libavcodec rejected a call (typically a corrupt VP8 frame).
    #[error("ffmpeg: {0}")]
    Ffmpeg(#[from] ffmpeg_next::Error),
    /// A frame handed to a codec has the wrong size or format.
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
}
