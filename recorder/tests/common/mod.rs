//! Shared test helpers: synthetic room output (mixer's real Opus and VP8
//! encoders on tones and solid colours), the ffmpeg CLI, a Goertzel filter.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mixer::{
    FRAME_SAMPLES, I420Frame, OpusEncoder, SAMPLE_RATE, Vp8Encoder, Vp8EncoderConfig, Yuv,
};
use recorder::{AudioParams, VideoParams, WebmWriter};

pub const W: u32 = 640;
pub const H: u32 = 360;
pub const FPS: u32 = 15;
pub const TICK_MS: u64 = 20;
pub const TONES: [f64; 2] = [440.0, 880.0];

/// One packet of room output, in room-clock order.
#[derive(Clone)]
pub enum Media {
    Audio {
        pts_ms: u64,
        data: Arc<[u8]>,
    },
    Video {
        pts_ms: u64,
        data: Arc<[u8]>,
        keyframe: bool,
    },
}

impl Media {
    pub fn pts_ms(&self) -> u64 {
        match self {
            Media::Audio { pts_ms, .. } | Media::Video { pts_ms, .. } => *pts_ms,
        }
    }

    pub fn write(&self, w: &mut WebmWriter) -> Result<(), recorder::RecorderError> {
        match self {
            Media::Audio { pts_ms, data } => w.write_audio(*pts_ms, data),
            Media::Video {
                pts_ms,
                data,
                keyframe,
            } => w.write_video(*pts_ms, data, *keyframe),
        }
    }
}

/// The room's output for `duration_ms` starting at room time `start_ms`:
/// audio = 440 + 880 Hz every 20 ms; video at 15 fps on the room's tick
/// schedule (frame f on the first tick at or after f*1000/15 ms), red for
/// the first `red_ms` then blue, keyframe at start and every 2 s.
/// Returns the packets and the Opus pre-skip.
pub fn room_output(start_ms: u64, duration_ms: u64, red_ms: u64) -> (Vec<Media>, u16) {
    let mut opus = OpusEncoder::new(48_000, 5).expect("opus encoder");
    let pre_skip = u16::try_from(opus.lookahead().expect("lookahead")).expect("pre-skip");
    let mut cfg = Vp8EncoderConfig::realtime(W, H, FPS, 800);
    cfg.kf_max_dist = 1000;
    let mut vp8 = Vp8Encoder::new(cfg).expect("vp8 encoder");
    let red = Yuv::from_rgb(220, 20, 20);
    let blue = Yuv::from_rgb(20, 20, 220);
    let mut frame = I420Frame::new(W, H, red).expect("frame");
    let mut out = Vec::new();
    let mut next_frame: u64 = 0;
    let mut pcm = vec![0i16; FRAME_SAMPLES];
    for tick in 0..duration_ms / TICK_MS {
        let t = tick * TICK_MS;
        for (i, s) in pcm.iter_mut().enumerate() {
            let n = (tick as usize * FRAME_SAMPLES + i) as f64 / f64::from(SAMPLE_RATE);
            let v: f64 = TONES
                .iter()
                .map(|f| 6000.0 * (2.0 * std::f64::consts::PI * f * n).sin())
                .sum();
            *s = v as i16;
        }
        out.push(Media::Audio {
            pts_ms: start_ms + t,
            data: opus.encode(&pcm).expect("opus encode"),
        });
        if t * u64::from(FPS) >= next_frame * 1000 {
            frame.fill(if t < red_ms { red } else { blue });
            if next_frame.is_multiple_of(2 * u64::from(FPS)) {
                vp8.force_keyframe();
            }
            if let Some(f) = vp8
                .encode(&frame, (start_ms + t) as i64)
                .expect("vp8 encode")
            {
                out.push(Media::Video {
                    pts_ms: start_ms + t,
                    data: f.data,
                    keyframe: f.keyframe,
                });
            }
            next_frame += 1;
        }
    }
    (out, pre_skip)
}

pub fn video_params() -> VideoParams {
    VideoParams {
        width: W,
        height: H,
        fps: FPS,
    }
}

pub fn audio_params(pre_skip: u16) -> AudioParams {
    AudioParams {
        sample_rate: 48_000,
        channels: 1,
        pre_skip,
    }
}

/// A fresh empty directory under cargo's per-test temp dir, removed when
/// the test passes (kept for inspection when it fails).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn temp_dir(name: &str) -> TempDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "recorder-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    TempDir(d)
}

/// Whether the ffmpeg CLI is usable. Missing tools fail the test under CI
/// (env `CI` set); elsewhere the test is skipped with a notice.
pub fn have_ffmpeg(test: &str) -> bool {
    let ok = ["ffprobe", "ffmpeg"].iter().all(|t| {
        Command::new(t)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        let required = ["CI", "MCU_TEST_REQUIRE_SERVICES"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        assert!(
            !required,
            "{test}: ffmpeg/ffprobe missing, and scripts/test.sh (or CI) requires them \
             (scripts/setup.sh installs them)"
        );
        eprintln!("NOTICE: {test} skipped: ffmpeg/ffprobe not installed");
    }
    ok
}

/// Runs a tool, returns stdout; panics with stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> Vec<u8> {
    let o = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// `ffprobe -show_entries <entries> -of default=nw=1` as (key, value) lines.
pub fn ffprobe(path: &Path, entries: &str) -> Vec<(String, String)> {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            entries,
            "-of",
            "default=nw=1",
            path.to_str().expect("utf-8 path"),
        ],
    );
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

pub fn probe_value(path: &Path, entries: &str, key: &str) -> Vec<String> {
    ffprobe(path, entries)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

/// Container duration as ffprobe reads it (the Duration element), seconds.
pub fn format_duration_s(path: &Path) -> f64 {
    probe_value(path, "format=duration", "duration")
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// FFmpeg decodes the whole file without an error (`run` asserts its exit status).
pub fn assert_decodes(path: &Path) {
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path.to_str().expect("utf-8 path"),
            "-f",
            "null",
            "-",
        ],
    );
    assert!(
        out.is_empty(),
        "unexpected output decoding {}",
        path.display()
    );
}

/// Whole audio track decoded to 48 kHz mono s16.
pub fn decode_audio(path: &Path) -> Vec<i16> {
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path.to_str().expect("utf-8 path"),
            "-map",
            "0:a:0",
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "48000",
            "-",
        ],
    );
    out.chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// One RGB frame decoded after seeking to `at_s`; `None` if no frame came out.
pub fn frame_at(path: &Path, at_s: f64) -> Option<Vec<u8>> {
    let at = format!("{at_s:.3}");
    let out = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-ss",
            &at,
            "-i",
            path.to_str().expect("utf-8 path"),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
    );
    (out.len() == (W * H * 3) as usize).then_some(out)
}

/// Mean RGB of the central quarter of a frame.
pub fn mean_rgb(rgb: &[u8]) -> [f64; 3] {
    let (w, h) = (W as usize, H as usize);
    let mut sum = [0f64; 3];
    let mut n = 0f64;
    for y in h / 4..3 * h / 4 {
        for x in w / 4..3 * w / 4 {
            let p = (y * w + x) * 3;
            for c in 0..3 {
                sum[c] += f64::from(rgb[p + c]);
            }
            n += 1.0;
        }
    }
    sum.map(|s| s / n)
}

/// Power of `freq` in `pcm` relative to the signal's total power (0..1).
pub fn goertzel_share(pcm: &[i16], freq: f64) -> f64 {
    let n = pcm.len() as f64;
    let k = (2.0 * std::f64::consts::PI * freq / 48_000.0).cos() * 2.0;
    let (mut s1, mut s2) = (0f64, 0f64);
    for &x in pcm {
        let s0 = f64::from(x) + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - k * s1 * s2;
    let total: f64 = pcm.iter().map(|&x| f64::from(x).powi(2)).sum();
    // A pure tone of energy E gives Goertzel power E * n / 2.
    if total == 0.0 {
        0.0
    } else {
        power / (total * n / 2.0)
    }
}

/// Number of cue points mkvinfo lists (`None` if mkvinfo is missing).
pub fn cue_points(path: &Path) -> Option<usize> {
    let o = Command::new("mkvinfo")
        .args(["-v", "-v"])
        .arg(path)
        .output()
        .ok()?;
    Some(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("+ Cue point"))
            .count(),
    )
}
