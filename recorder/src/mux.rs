//! One WebM output: libavformat's matroska muxer (in WebM mode) writing
//! through a custom AVIO context into a [`File`] this crate opened itself.
//!
//! Opening the file ourselves gives exclusive creation (`create_new`, no
//! check-then-open race), the real OS error of a failed write (libav only
//! keeps an errno), an exact count of the bytes handed to the kernel, and an
//! `fsync` at the end.
//!
//! Crash-safety settings, all verified by tests:
//! - `cluster_time_limit` = [`CLUSTER_TIME_LIMIT_MS`]: the muxer builds a
//!   cluster in memory and writes it out whole when it closes, so a cluster
//!   is at most this long;
//! - `flush_packets=1`: after every packet, libavformat flushes its AVIO
//!   buffer, i.e. a closed cluster reaches the kernel (`write(2)`) at once
//!   instead of waiting for the AVIO buffer to fill (the flush is a no-op
//!   while the muxer is still filling a cluster in memory, so it costs one
//!   `write(2)` per cluster, not per packet).
//!
//! Packets go in with `av_write_frame`, already interleaved by the caller
//! ([`crate::WebmWriter`] keeps a short reorder window). Not
//! `av_interleaved_write_frame`: its queue exempts VP8 streams from
//! `max_interleave_delta`, so while the video pauses it keeps every audio
//! packet in memory and nothing reaches the file (measured: 3 s of audio
//! without video wrote 0 bytes).

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ffmpeg_next::format::context::StreamIo;
use ffmpeg_next::{Dictionary, Packet, Rational, codec, format};

use crate::RecorderError;

/// Longest cluster, in ms of media time. A cluster reaches the file only
/// when it closes, so this bounds what a `kill -9` loses (plus the
/// writer's reorder window and one audio packet the muxer holds back:
/// measured worst case 607 ms).
pub const CLUSTER_TIME_LIMIT_MS: u32 = 500;
/// Largest cluster in bytes (only reached above ~16 Mbit/s at 500 ms).
pub const CLUSTER_SIZE_LIMIT_BYTES: u32 = 1 << 20;
/// AVIO buffer between the muxer and the file. Clusters larger than this
/// reach the kernel in several `write(2)` calls.
const AVIO_BUFFER_BYTES: usize = 64 * 1024;

/// What the sink shares with its owner: the bytes handed to the kernel
/// (highest offset written), the ranges written over after they were first
/// written, and the first write error.
#[derive(Debug, Default)]
struct SinkState {
    end: u64,
    rewritten: Vec<Range<u64>>,
    error: Option<io::Error>,
}

impl SinkState {
    /// Notes a write of `from..to`: the part below `end` was written before.
    fn wrote(&mut self, from: u64, to: u64) {
        let over = from..to.min(self.end);
        if !over.is_empty() {
            match self
                .rewritten
                .iter_mut()
                .find(|r| r.start <= over.end && over.start <= r.end)
            {
                Some(r) => *r = r.start.min(over.start)..r.end.max(over.end),
                None => self.rewritten.push(over),
            }
        }
        self.end = self.end.max(to);
    }
}

fn lock(state: &Mutex<SinkState>) -> MutexGuard<'_, SinkState> {
    // The state is two plain fields; a panic elsewhere cannot leave them
    // inconsistent, so a poisoned lock is still good to read.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies an `io::Error` (which is not `Clone`) keeping errno and kind.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// The `Write + Seek` given to libavformat's AVIO context.
struct Sink {
    file: Arc<File>,
    pos: u64,
    state: Arc<Mutex<SinkState>>,
}

impl Sink {
    fn record(&self, e: &io::Error) {
        if e.kind() != io::ErrorKind::Interrupted {
            lock(&self.state).error.get_or_insert_with(|| copy_error(e));
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match (&*self.file).write(buf) {
            Ok(n) => {
                let from = self.pos;
                self.pos += n as u64;
                lock(&self.state).wrote(from, self.pos);
                Ok(n)
            }
            Err(e) => {
                self.record(&e);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Sink {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match (&*self.file).seek(to) {
            Ok(p) => {
                self.pos = p;
                Ok(p)
            }
            Err(e) => {
                self.record(&e);
                Err(e)
            }
        }
    }
}

/// A WebM muxer on an open file. Not `Sync`; `Send`.
pub(crate) struct Muxer {
    out: format::context::Output,
    file: Arc<File>,
    state: Arc<Mutex<SinkState>>,
    path: PathBuf,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Creates `path`, failing if anything exists there (even a dangling link).
pub(crate) fn create_new(path: &Path) -> Result<File, RecorderError> {
    File::create_new(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            RecorderError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            RecorderError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    })
}

impl Muxer {
    /// A WebM muxer writing into `file` (positioned at 0); `path` names it
    /// in errors.
    pub(crate) fn new(file: File, path: &Path) -> Result<Self, RecorderError> {
        let file = Arc::new(file);
        let state = Arc::new(Mutex::new(SinkState::default()));
        let sink = Sink {
            file: Arc::clone(&file),
            pos: 0,
            state: Arc::clone(&state),
        };
        let ff = |op| {
            move |source| RecorderError::Ffmpeg {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let io = StreamIo::from_write_seek_with_capacity(sink, AVIO_BUFFER_BYTES)
            .map_err(ff("avio_alloc_context"))?;
        let out = format::output_to_stream(io, None, Some("webm"))
            .map_err(ff("avformat_alloc_output_context2"))?;
        Ok(Self {
            out,
            file,
            state,
            path: path.to_owned(),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Turns a libav error into ours, preferring the OS error the sink saw.
    fn error(&self, op: &'static str, source: ffmpeg_next::Error) -> RecorderError {
        match lock(&self.state).error.take() {
            Some(io) => RecorderError::Io {
                path: self.path.clone(),
                source: io,
            },
            None => RecorderError::Ffmpeg {
                path: self.path.clone(),
                op,
                source,
            },
        }
    }

    /// Adds a stream; returns its index. Before [`Muxer::write_header`].
    pub(crate) fn add_stream(
        &mut self,
        params: codec::Parameters,
        frame_rate: Option<u32>,
    ) -> Result<usize, RecorderError> {
        let mut stream = match self.out.add_stream(None::<ffmpeg_next::Codec>) {
            Ok(s) => s,
            Err(e) => return Err(self.error("avformat_new_stream", e)),
        };
        stream.set_parameters(params);
        // A hint only: the matroska muxer always picks 1/1000.
        stream.set_time_base(Rational::new(1, 1000));
        if let Some(fps) = frame_rate.and_then(|f| i32::try_from(f).ok()) {
            stream.set_avg_frame_rate(Rational::new(fps, 1));
            stream.set_rate(Rational::new(fps, 1));
        }
        Ok(stream.index())
    }

    /// Writes the header with the crash-safety options. Fails if the muxer
    /// did not recognise one of them (a changed libavformat must not
    /// silently lose crash safety).
    pub(crate) fn write_header(&mut self) -> Result<(), RecorderError> {
        let mut opts = Dictionary::new();
        opts.set("cluster_time_limit", &CLUSTER_TIME_LIMIT_MS.to_string());
        opts.set("cluster_size_limit", &CLUSTER_SIZE_LIMIT_BYTES.to_string());
        opts.set("flush_packets", "1");
        let written = self
            .out
            .write_header_with(opts)
            .map(|left| left.iter().map(|(k, _)| k.to_owned()).collect::<Vec<_>>());
        let ignored = match written {
            Ok(ignored) => ignored,
            Err(e) => return Err(self.error("avformat_write_header", e)),
        };
        if !ignored.is_empty() {
            return Err(RecorderError::InvalidParams(format!(
                "the muxer ignored options {ignored:?}"
            )));
        }
        // avformat_write_header flushes the header but does not report a
        // failed flush.
        self.check_sink()
    }

    /// The first write error the sink saw, if libav did not report it.
    fn check_sink(&self) -> Result<(), RecorderError> {
        match lock(&self.state).error.take() {
            Some(source) => Err(RecorderError::Io {
                path: self.path.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// The stream's time base as the muxer chose it (valid after the header).
    pub(crate) fn time_base(&self, index: usize) -> Option<Rational> {
        self.out.stream(index).map(|s| s.time_base())
    }

    /// Hands one packet to the muxer. Packets must come in dts order per
    /// stream and (roughly) across streams.
    pub(crate) fn write(&mut self, packet: &Packet) -> Result<(), RecorderError> {
        match packet.write(&mut self.out) {
            Ok(_) => self.check_sink(),
            Err(e) => Err(self.error("av_write_frame", e)),
        }
    }

    /// Bytes handed to the kernel so far.
    pub(crate) fn bytes_written(&self) -> u64 {
        lock(&self.state).end
    }

    /// Writes the trailer (duration, cues, seek head), flushes, fsyncs.
    /// Returns the file size and the byte ranges written over (in the order
    /// first written over; the trailer completes the header).
    pub(crate) fn finish(self) -> Result<(u64, Vec<Range<u64>>), RecorderError> {
        let Muxer {
            mut out,
            file,
            state,
            path,
        } = self;
        let trailer = out.write_trailer();
        // Dropping the context flushes what the AVIO buffer still holds.
        drop(out);
        if let Some(source) = lock(&state).error.take() {
            return Err(RecorderError::Io { path, source });
        }
        if let Err(source) = trailer {
            return Err(RecorderError::Ffmpeg {
                path,
                op: "av_write_trailer",
                source,
            });
        }
        let io = |source| RecorderError::Io {
            path: path.clone(),
            source,
        };
        file.sync_all().map_err(io)?;
        let rewritten = std::mem::take(&mut lock(&state).rewritten);
        Ok((file.metadata().map_err(io)?.len(), rewritten))
    }
}

/// Whether the matroska muxer shifts Opus blocks by the CodecDelay itself
/// (libavformat 60 and later). libavformat 59 (FFmpeg 5.1) writes blocks
/// at the packet's pts and, if that is negative, shifts *every* track to
/// make it non-negative.
pub(crate) fn muxer_adds_codec_delay() -> bool {
    format::version() >> 16 >= 60
}

/// Makes a rename or creation in `path`'s directory durable.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), RecorderError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RecorderError::Io {
            path: dir.to_owned(),
            source,
        })
}
