//! [`WebmWriter`]: one recording, from already-encoded packets to a WebM file.
//!
//! Invariants:
//! - file time 0 is the room-clock time of the first packet accepted (audio,
//!   or a video keyframe): [`WebmWriter::origin_ms`]; packets older than that
//!   are dropped and counted;
//! - the first video packet in the file is a keyframe (earlier inter frames
//!   are dropped and counted);
//! - per stream, timestamps strictly increase: a packet at or before the
//!   previous one of its stream is moved to previous + 1 ms (counted, logged);
//! - an Opus packet of room time T is stored as a block at T with the
//!   track's CodecDelay = pre-skip: players decode it, drop the pre-skip
//!   samples, and the first real sample plays at T, in sync with the video
//!   frame of T. (libavformat 59, FFmpeg 5.1, stores a block at the packet's
//!   pts, so the writer passes T; from libavformat 60 the muxer adds the
//!   CodecDelay itself, so the writer passes T - pre-skip. Passing T -
//!   pre-skip to 5.1 makes negative timestamps, which it "fixes" by
//!   shifting every track, video included, 7 ms late.)
//! - packets are interleaved by file time through a reorder window of
//!   [`REORDER_WINDOW_MS`]: a packet is handed to the muxer once a packet
//!   at least that much newer has arrived (or at `finish`), so a caller
//!   whose audio and video come from different queues may be slightly out
//!   of order across streams;
//! - after a failed write the writer refuses everything
//!   ([`RecorderError::Unusable`]); it never panics.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;

use ffmpeg_next::{Packet, Rational, Rescale, packet};

use crate::mux::{self, Muxer};
use crate::opus::{opus_head, packet_samples};
use crate::{RecorderError, ffi};

/// Opus seek pre-roll written in the track (RFC 7845 recommends 80 ms).
const OPUS_SEEK_PREROLL_SAMPLES: u16 = 3840;
/// The only sample rate Opus has in WebM.
const OPUS_RATE: u32 = 48_000;
/// Largest frame dimension VP8 can code.
const VP8_MAX_DIM: u32 = 16_383;
/// Milliseconds, the unit of every timestamp in the API.
const MS: Rational = Rational(1, 1000);
/// How long (ms of media time) a packet waits for older packets of the
/// other stream before it goes to the muxer. The room clock gives audio
/// and video of one tick together; this absorbs a few ticks of skew between
/// the caller's queues. Part of what a crash can lose.
pub const REORDER_WINDOW_MS: u64 = 100;
/// Hard bound on the reorder queue (a caller sending many packets with the
/// same timestamp cannot grow it): the oldest goes out first.
const MAX_QUEUED: usize = 256;

/// The composite video stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoParams {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Nominal frame rate (sets the frame duration of each packet).
    pub fps: u32,
}

/// The mixed audio stream (Opus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioParams {
    /// Must be 48000: Opus in WebM always runs at 48 kHz.
    pub sample_rate: u32,
    /// 1 (the mixer's output) or 2.
    pub channels: u16,
    /// Encoder lookahead in 48 kHz samples (312 for libopus), written as
    /// the `OpusHead` pre-skip and as the track's CodecDelay.
    pub pre_skip: u16,
}

impl Default for AudioParams {
    /// The mixer's output: 48 kHz mono, libopus' 312-sample lookahead.
    fn default() -> Self {
        Self {
            sample_rate: OPUS_RATE,
            channels: 1,
            pre_skip: 312,
        }
    }
}

/// Result of a finished (or recovered) file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// End of the last packet, ms of file time.
    pub duration_ms: u64,
    /// File size in bytes.
    pub size_bytes: u64,
    /// Byte ranges of the file written again after they were first written
    /// (finishing completes the header: duration, sizes, seek head), so
    /// that a copy made while the file grew can be brought up to date.
    /// Empty for a recovered file.
    pub rewritten: Vec<std::ops::Range<u64>>,
}

/// Counters of what the writer fixed or refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Video packets written.
    pub video_packets: u64,
    /// Audio packets written.
    pub audio_packets: u64,
    /// Inter frames dropped because no keyframe had been written yet.
    pub dropped_before_keyframe: u64,
    /// Packets dropped because they were older than the file's origin.
    pub dropped_before_origin: u64,
    /// Packets whose timestamp was moved forward to keep their stream
    /// strictly increasing.
    pub pts_fixups: u64,
}

/// A packet waiting in the reorder window, ordered oldest first.
struct Queued {
    t: u64,
    seq: u64,
    packet: Packet,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed: `BinaryHeap` is a max-heap and the oldest must come first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

#[derive(Debug)]
struct Track {
    index: usize,
    time_base: Rational,
    /// File time (ms) of the previous packet of this stream.
    last_ms: Option<u64>,
}

/// Writes one WebM file (VP8 + Opus) from encoded packets.
///
/// `Send` (move it to the thread that records), not `Sync`. Each `write_*`
/// costs a few µs; the `write(2)` of a closed cluster happens inside the
/// call that closes it, about every [`CLUSTER_TIME_LIMIT_MS`] of media.
/// Dropping a writer without [`WebmWriter::finish`] still writes the
/// trailer (best effort, logged).
///
/// [`CLUSTER_TIME_LIMIT_MS`]: crate::CLUSTER_TIME_LIMIT_MS
pub struct WebmWriter {
    mux: Option<Muxer>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    newest_ms: u64,
    video: Track,
    audio: Track,
    frame_ms: u64,
    /// Samples subtracted from audio pts so that blocks land at T.
    pts_shift: i64,
    origin_ms: Option<u64>,
    keyframe_seen: bool,
    duration_ms: u64,
    stats: WriterStats,
    failed: Option<String>,
}

fn validate(video: &VideoParams, audio: &AudioParams) -> Result<(), RecorderError> {
    let bad = |m: String| Err(RecorderError::InvalidParams(m));
    if !(1..=VP8_MAX_DIM).contains(&video.width) || !(1..=VP8_MAX_DIM).contains(&video.height) {
        return bad(format!("video size {}x{}", video.width, video.height));
    }
    if !(1..=1000).contains(&video.fps) {
        return bad(format!("video fps {}", video.fps));
    }
    if audio.sample_rate != OPUS_RATE {
        return bad(format!(
            "opus sample rate {} (must be 48000)",
            audio.sample_rate
        ));
    }
    if !(1..=2).contains(&audio.channels) {
        return bad(format!("opus channels {} (1 or 2)", audio.channels));
    }
    Ok(())
}

impl WebmWriter {
    /// Creates the file (must not exist: create_new) and writes the header.
    pub fn create(
        path: &Path,
        video: VideoParams,
        audio: AudioParams,
    ) -> Result<Self, RecorderError> {
        validate(&video, &audio)?;
        let file = mux::create_new(path)?;
        let made = Self::with_file(file, path, video, audio);
        if made.is_err() {
            // Nothing useful was written; do not leave a stub behind.
            let _ = std::fs::remove_file(path);
        }
        made
    }

    /// Writes into an already open, empty, seekable `file`; `path` names it
    /// in errors.
    pub(crate) fn with_file(
        file: std::fs::File,
        path: &Path,
        video: VideoParams,
        audio: AudioParams,
    ) -> Result<Self, RecorderError> {
        validate(&video, &audio)?;
        let mut mux = Muxer::new(file, path)?;
        let video_index = mux.add_stream(
            ffi::vp8_parameters(video.width, video.height)?,
            Some(video.fps),
        )?;
        // Validated: 1 or 2 channels.
        let head = opus_head(audio.channels as u8, audio.pre_skip, audio.sample_rate);
        let audio_index = mux.add_stream(
            ffi::opus_parameters(
                audio.sample_rate,
                audio.channels,
                audio.pre_skip,
                OPUS_SEEK_PREROLL_SAMPLES,
                &head,
            )?,
            None,
        )?;
        mux.write_header()?;
        let time_base = |i| {
            mux.time_base(i).ok_or_else(|| {
                RecorderError::InvalidParams(format!("stream {i} missing after write_header"))
            })
        };
        let video_tb = time_base(video_index)?;
        let audio_tb = time_base(audio_index)?;
        Ok(Self {
            mux: Some(mux),
            queue: BinaryHeap::new(),
            seq: 0,
            newest_ms: 0,
            video: Track {
                index: video_index,
                time_base: video_tb,
                last_ms: None,
            },
            audio: Track {
                index: audio_index,
                time_base: audio_tb,
                last_ms: None,
            },
            frame_ms: (1000 / u64::from(video.fps)).max(1),
            pts_shift: if mux::muxer_adds_codec_delay() {
                i64::from(audio.pre_skip)
            } else {
                0
            },
            origin_ms: None,
            keyframe_seen: false,
            duration_ms: 0,
            stats: WriterStats::default(),
            failed: None,
        })
    }

    fn check_usable(&self) -> Result<(), RecorderError> {
        match (&self.failed, &self.mux) {
            (Some(why), _) => Err(RecorderError::Unusable(why.clone())),
            (None, None) => Err(RecorderError::Unusable("already finished".into())),
            (None, Some(_)) => Ok(()),
        }
    }

    /// File time of a room-clock timestamp, or `None` (counted) if it is
    /// older than the origin. Sets the origin on the first call.
    fn file_time(&mut self, pts_ms: u64) -> Option<u64> {
        let origin = *self.origin_ms.get_or_insert(pts_ms);
        let t = pts_ms.checked_sub(origin);
        if t.is_none() {
            self.stats.dropped_before_origin += 1;
            tracing::debug!(
                pts_ms,
                origin,
                "packet older than the recording start dropped"
            );
        }
        t
    }

    /// Moves `t` after the stream's previous packet if needed.
    fn monotonic(stats: &mut WriterStats, track: &Track, t: u64, kind: &str) -> u64 {
        match track.last_ms {
            Some(last) if t <= last => {
                stats.pts_fixups += 1;
                // Logged at 1, 2, 4, 8, ... fixups: a broken caller cannot flood the log.
                if stats.pts_fixups.is_power_of_two() {
                    tracing::warn!(
                        kind,
                        pts = t,
                        previous = last,
                        fixups = stats.pts_fixups,
                        "non-increasing timestamp moved to previous + 1 ms"
                    );
                }
                last + 1
            }
            _ => t,
        }
    }

    /// Queues a packet at file time `t`, then hands the muxer every packet
    /// that has left the reorder window.
    fn enqueue(&mut self, t: u64, packet: Packet) -> Result<(), RecorderError> {
        self.queue.push(Queued {
            t,
            seq: self.seq,
            packet,
        });
        self.seq += 1;
        self.newest_ms = self.newest_ms.max(t);
        self.release(false)
    }

    /// Writes the queued packets that are old enough (all if `all`).
    fn release(&mut self, all: bool) -> Result<(), RecorderError> {
        let Some(mux) = self.mux.as_mut() else {
            return Err(RecorderError::Unusable("already finished".into()));
        };
        while let Some(top) = self.queue.peek() {
            let due =
                all || top.t + REORDER_WINDOW_MS <= self.newest_ms || self.queue.len() > MAX_QUEUED;
            if !due {
                break;
            }
            let Some(q) = self.queue.pop() else { break };
            if let Err(e) = mux.write(&q.packet) {
                tracing::error!(path = %mux.path().display(), error = %e, "recording write failed");
                self.failed = Some(e.to_string());
                self.queue.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes one VP8 frame at `pts_ms` of the room clock. Until the first
    /// keyframe, inter frames are dropped (counted in
    /// [`WriterStats::dropped_before_keyframe`]) and `Ok` is returned.
    pub fn write_video(
        &mut self,
        pts_ms: u64,
        data: &[u8],
        keyframe: bool,
    ) -> Result<(), RecorderError> {
        self.check_usable()?;
        if data.is_empty() {
            return Err(RecorderError::InvalidPacket("empty video frame".into()));
        }
        if keyframe && !is_vp8_keyframe(data) {
            // A file must not start on a frame no decoder can start from.
            return Err(RecorderError::InvalidPacket(
                "flagged keyframe is not a VP8 keyframe".into(),
            ));
        }
        if !self.keyframe_seen && !keyframe {
            self.stats.dropped_before_keyframe += 1;
            return Ok(());
        }
        let Some(t) = self.file_time(pts_ms) else {
            return Ok(());
        };
        let t = Self::monotonic(&mut self.stats, &self.video, t, "video");
        let tb = self.video.time_base;
        let mut p = Packet::copy(data);
        p.set_stream(self.video.index);
        let ts = to_i64(t).rescale(MS, tb);
        p.set_pts(Some(ts));
        p.set_dts(Some(ts));
        p.set_duration(to_i64(self.frame_ms).rescale(MS, tb));
        if keyframe {
            p.set_flags(packet::Flags::KEY);
        }
        self.enqueue(t, p)?;
        self.keyframe_seen = true;
        self.video.last_ms = Some(t);
        self.stats.video_packets += 1;
        self.duration_ms = self.duration_ms.max(t + self.frame_ms);
        Ok(())
    }

    /// Writes one Opus packet at `pts_ms` of the room clock. Its duration
    /// comes from the packet's TOC; a packet without a valid TOC is refused
    /// ([`RecorderError::InvalidPacket`], writer still usable).
    pub fn write_audio(&mut self, pts_ms: u64, data: &[u8]) -> Result<(), RecorderError> {
        self.check_usable()?;
        let samples = packet_samples(data).ok_or_else(|| {
            RecorderError::InvalidPacket(format!("not an Opus packet ({} bytes)", data.len()))
        })?;
        let Some(t) = self.file_time(pts_ms) else {
            return Ok(());
        };
        let t = Self::monotonic(&mut self.stats, &self.audio, t, "audio");
        let rate = Rational(1, OPUS_RATE as i32);
        let tb = self.audio.time_base;
        // See the module doc: the block must land at T.
        let start = to_i64(t).saturating_mul(i64::from(OPUS_RATE) / 1000) - self.pts_shift;
        let mut p = Packet::copy(data);
        p.set_stream(self.audio.index);
        let ts = start.rescale(rate, tb);
        p.set_pts(Some(ts));
        p.set_dts(Some(ts));
        p.set_duration(i64::from(samples).rescale(rate, tb));
        p.set_flags(packet::Flags::KEY);
        self.enqueue(t, p)?;
        self.audio.last_ms = Some(t);
        self.stats.audio_packets += 1;
        let dur_ms = (u64::from(samples) * 1000).div_ceil(u64::from(OPUS_RATE));
        self.duration_ms = self.duration_ms.max(t + dur_ms);
        Ok(())
    }

    /// Bytes handed to the kernel so far (closed clusters; the cluster
    /// being built is in memory).
    pub fn bytes_written(&self) -> u64 {
        self.mux.as_ref().map_or(0, Muxer::bytes_written)
    }

    /// Duration so far (ms): end of the latest packet accepted, in file time.
    pub fn duration_ms(&self) -> u64 {
        self.duration_ms
    }

    /// Room-clock time (ms) of file time 0, once a packet was accepted.
    pub fn origin_ms(&self) -> Option<u64> {
        self.origin_ms
    }

    /// What was written, dropped and fixed so far.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Writes the trailer: duration and cues (seekable file), then fsyncs
    /// the file and its directory. Returns final duration_ms and size.
    pub fn finish(mut self) -> Result<Finished, RecorderError> {
        self.check_usable()?;
        self.release(true)?;
        let Some(mux) = self.mux.take() else {
            return Err(RecorderError::Unusable("already finished".into()));
        };
        let path = mux.path().to_owned();
        let (size_bytes, rewritten) = mux.finish()?;
        mux::sync_parent_dir(&path)?;
        Ok(Finished {
            duration_ms: self.duration_ms,
            size_bytes,
            rewritten,
        })
    }
}

impl std::fmt::Debug for WebmWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebmWriter")
            .field("mux", &self.mux)
            .field("queued", &self.queue.len())
            .field("origin_ms", &self.origin_ms)
            .field("duration_ms", &self.duration_ms)
            .field("stats", &self.stats)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for WebmWriter {
    fn drop(&mut self) {
        if self.failed.is_some() || self.mux.is_none() {
            return;
        }
        if self.release(true).is_err() {
            return;
        }
        let Some(mux) = self.mux.take() else {
            return;
        };
        let path = mux.path().to_owned();
        match mux.finish() {
            Ok((size, _)) => tracing::warn!(
                path = %path.display(),
                size,
                "recording dropped without finish(); trailer written"
            ),
            Err(e) => tracing::error!(
                path = %path.display(),
                error = %e,
                "recording dropped without finish(); trailer failed"
            ),
        }
    }
}

/// A VP8 keyframe: frame tag bit 0 clear and the start code 9d 01 2a
/// (RFC 6386 §9.1).
fn is_vp8_keyframe(data: &[u8]) -> bool {
    data.len() >= 10 && data[0] & 1 == 0 && data[3..6] == [0x9d, 0x01, 0x2a]
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn assert_send<T: Send>() {}
    const _: () = assert_send::<WebmWriter>();

    fn params() -> (VideoParams, AudioParams) {
        (
            VideoParams {
                width: 64,
                height: 64,
                fps: 15,
            },
            AudioParams::default(),
        )
    }

    /// A real "disk full": /dev/full fails every write with ENOSPC. The
    /// header is flushed to the kernel inside `create`, so it fails there.
    #[test]
    fn disk_full_is_an_io_error() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("NOTICE: /dev/full not available, skipped");
            return;
        };
        let (v, a) = params();
        let err = WebmWriter::with_file(full, Path::new("/dev/full"), v, a)
            .expect_err("ENOSPC must surface");
        match err {
            RecorderError::Io { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}");
            }
            other => panic!("expected Io, got {other}"),
        }
    }

    /// The reorder window puts slightly out-of-order streams back in order
    /// and holds no more than the window.
    #[test]
    fn reorder_window_sorts_and_releases() {
        let dir = std::env::temp_dir().join(format!("recorder-reorder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let (v, a) = params();
        let mut w = WebmWriter::create(&dir.join("r.webm"), v, a).expect("create");
        let opus = [0xf8u8, 0xff, 0xfe]; // CELT 20 ms
        let key = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 64, 0, 64, 0];
        assert!(
            w.write_video(0, &[0x11, 0x02, 0x00], true).is_err(),
            "not a keyframe"
        );
        w.write_video(0, &key, true).expect("video");
        for t in (0..=200).step_by(20) {
            w.write_audio(t, &opus).expect("audio");
        }
        // Everything older than 200 - REORDER_WINDOW_MS has gone out.
        assert!(w.queue.iter().all(|q| q.t + REORDER_WINDOW_MS > 200));
        // A video frame 60 ms late still goes in order.
        w.write_video(140, &[0x11, 0x02, 0x00], false)
            .expect("late video");
        let mut ts: Vec<u64> = w.queue.iter().map(|q| q.t).collect();
        ts.sort_unstable();
        assert_eq!(ts, [120, 140, 140, 160, 180, 200]);
        let popped: Vec<u64> = std::iter::from_fn(|| w.queue.pop().map(|q| q.t)).collect();
        assert_eq!(
            popped,
            [120, 140, 140, 160, 180, 200],
            "oldest first, stable"
        );
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
