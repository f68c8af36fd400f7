//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while writing, probing or recovering a file.
///
/// After an `Io` or `Ffmpeg` error from a write, the [`crate::WebmWriter`]
/// is unusable: every later call returns [`RecorderError::Unusable`].
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// `create` refuses to overwrite.
    #[error("{path}: already exists")]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// A system call on the file failed (disk full, permissions, ...).
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// libavformat refused an operation.
    #[error("{path}: {op}: {source}")]
    Ffmpeg {
        /// The file concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// libav's error.
        #[source]
        source: ffmpeg_next::Error,
    },
    /// Stream parameters out of range (size, fps, sample rate, channels).
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    /// A packet the writer will not store (empty, or not an Opus packet).
    /// The writer stays usable.
    #[error("invalid packet: {0}")]
    InvalidPacket(String),
    /// An earlier write failed; the writer accepts nothing more.
    #[error("writer unusable after an earlier failure: {0}")]
    Unusable(String),
    /// A file with no readable header or no readable packet.
    #[error("{path}: no readable media: {reason}")]
    NoMedia {
        /// The file concerned.
        path: PathBuf,
        /// What the demuxer said.
        reason: String,
    },
}
