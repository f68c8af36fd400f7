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
//! - audio timestamps carry the Opus pre-skip the way libavformat expects
//!   (first packet at `-pre_skip` samples, written back to 0 with a CodecDelay
//!   element), so players trim the encoder delay and A/V stay in sync;
//! - after a failed write the writer refuses everything
//!   ([`RecorderError::Unusable`]); it never panics.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// End of the last packet, ms of file time.
    pub duration_ms: u64,
    /// File size in bytes.
    pub size_bytes: u64,
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
#[derive(Debug)]
pub struct WebmWriter {
    mux: Option<Muxer>,
    video: Track,
    audio: Track,
    frame_ms: u64,
    pre_skip: i64,
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
        return bad(format!("opus sample rate {} (must be 48000)", audio.sample_rate));
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
            pre_skip: i64::from(audio.pre_skip),
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
            tracing::debug!(pts_ms, origin, "packet older than the recording start dropped");
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

    fn write_packet(&mut self, packet: &Packet) -> Result<(), RecorderError> {
        let Some(mux) = self.mux.as_mut() else {
            return Err(RecorderError::Unusable("already finished".into()));
        };
        mux.write(packet).inspect_err(|e| {
            tracing::error!(path = %mux.path().display(), error = %e, "recording write failed");
            self.failed = Some(e.to_string());
        })
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
        self.write_packet(&p)?;
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
        // libavformat's convention: the first packet of an encoder with
        // delay D starts at -D; the muxer writes CodecDelay = D and shifts
        // the blocks back to 0.
        let start = to_i64(t).saturating_mul(i64::from(OPUS_RATE) / 1000) - self.pre_skip;
        let mut p = Packet::copy(data);
        p.set_stream(self.audio.index);
        let ts = start.rescale(rate, tb);
        p.set_pts(Some(ts));
        p.set_dts(Some(ts));
        p.set_duration(i64::from(samples).rescale(rate, tb));
        p.set_flags(packet::Flags::KEY);
        self.write_packet(&p)?;
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
        let Some(mux) = self.mux.take() else {
            return Err(RecorderError::Unusable("already finished".into()));
        };
        let path = mux.path().to_owned();
        let size_bytes = mux.finish()?;
        mux::sync_parent_dir(&path)?;
        Ok(Finished {
            duration_ms: self.duration_ms,
            size_bytes,
        })
    }
}

impl Drop for WebmWriter {
    fn drop(&mut self) {
        let Some(mux) = self.mux.take() else {
            return;
        };
        if self.failed.is_some() {
            return;
        }
        let path = mux.path().to_owned();
        match mux.finish() {
            Ok(size) => tracing::warn!(
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
