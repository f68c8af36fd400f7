//! WebM recording for the MCU: VP8 + Opus packets that are *already
//! encoded* (by `mixer`) go into a WebM file through libavformat's matroska
//! muxer, without decoding or re-encoding; plus crash recovery.
//!
//! - [`WebmWriter`] writes one file. Timestamps are ms of the room clock;
//!   file time 0 is the first packet accepted. It is `Send`, not `Sync`, and
//!   never blocks for long: a `write(2)` of one closed cluster about every
//!   [`CLUSTER_TIME_LIMIT_MS`] of media, inside the `write_*` call that
//!   closes it; `finish` adds the trailer and an `fsync`.
//! - Crash safety: clusters are closed every [`CLUSTER_TIME_LIMIT_MS`] of
//!   media time and flushed to the kernel as they close, so a killed process
//!   leaves a file that plays up to about that much before the last packet.
//! - [`recover`] turns such a file into a complete one (duration, cues) by
//!   remuxing into a temp file and renaming it over the original;
//!   [`probe_duration_ms`] measures any WebM file without changing it.
//!
//! No HTTP, no async, no clock. All `unsafe` code is in the `ffi` module.
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod error;
mod ffi;
mod mux;
mod opus;
mod recover;
mod writer;

pub use error::RecorderError;
pub use mux::{CLUSTER_SIZE_LIMIT_BYTES, CLUSTER_TIME_LIMIT_MS};
pub use recover::{probe_duration_ms, recover};
pub use writer::REORDER_WINDOW_MS;
pub use writer::{AudioParams, Finished, VideoParams, WebmWriter, WriterStats};
