//! Crash safety and recovery: a child process is `kill -9`ed mid-recording
//! (the file must play up to ~the last second and `recover` must make it
//! complete); a child whose file size is capped by `ulimit -f` sees its
//! writes fail (the writer must report it and refuse further work); files
//! with nothing readable are refused and left untouched.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use recorder::{RecorderError, WebmWriter, probe_duration_ms, recover};

/// Env var telling [`child_process`] what to do: `crash:<path>` or `fsize:<path>`.
const CHILD_ENV: &str = "RECORDER_TEST_CHILD";
/// Longest a child may take to report.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);
/// Media time after which the crash child reports and waits to be killed.
const KILL_AFTER_MS: u64 = 5000;

/// Kills (SIGKILL) and reaps the child however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(task: &str, path: &Path, shell_prefix: Option<&str>) -> Reaped {
    let exe = std::env::current_exe().expect("test binary");
    let args = [
        "child_process",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    let mut cmd = match shell_prefix {
        Some(prefix) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{prefix}; exec \"$0\" \"$@\""))
                .arg(&exe)
                .args(args);
            c
        }
        None => {
            let mut c = Command::new(&exe);
            c.args(args);
            c
        }
    };
    let child = cmd
        .env(CHILD_ENV, format!("{task}:{}", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    Reaped(child)
}

/// Not a test: the body of the child processes (ignored unless the parent
/// runs it with `--ignored` and [`CHILD_ENV`] set).
#[test]
#[ignore = "child process of the crash tests"]
fn child_process() {
    let Some(task) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let task = task.to_string_lossy().into_owned();
    let (kind, path) = task.split_once(':').expect("task:path");
    let path = PathBuf::from(path);
    match kind {
        "crash" => {
            let (media, pre_skip) = room_output(50_000, 8000, 3000);
            let mut w =
                WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
            let mut last_tick = 0;
            for m in &media {
                // 5x real time: the cluster writes are spaced as in a real
                // recording, compressed.
                if m.pts_ms() != last_tick {
                    last_tick = m.pts_ms();
                    std::thread::sleep(Duration::from_millis(TICK_MS / 5));
                }
                m.write(&mut w).expect("write");
                if w.duration_ms() >= KILL_AFTER_MS {
                    println!("WRITTEN {} {}", w.duration_ms(), w.bytes_written());
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            panic!("media ran out before {KILL_AFTER_MS} ms");
        }
        "fsize" => {
            let (media, pre_skip) = room_output(0, 20_000, 10_000);
            let mut w =
                WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
            let mut failed = None;
            for m in &media {
                if let Err(e) = m.write(&mut w) {
                    failed = Some((m.pts_ms(), e));
                    break;
                }
            }
            let (at, e) = failed.expect("the size limit must make a write fail");
            println!("FAILED_AT {at} {}", matches!(e, RecorderError::Io { .. }));
            println!("ERROR {e}");
            let again = media[0].write(&mut w).expect_err("unusable after failure");
            println!("THEN {}", matches!(again, RecorderError::Unusable(_)));
            let fin = w.finish().expect_err("finish after failure");
            println!("FINISH {}", matches!(fin, RecorderError::Unusable(_)));
        }
        other => panic!("unknown child task {other}"),
    }
}

/// The child's stdout lines, from a reader thread (so waits can time out).
fn stdout_lines(child: &mut Reaped) -> mpsc::Receiver<String> {
    let out = child.0.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What follows `marker` on a line (libtest prints "test name ... " before
/// the child's first line, without a newline).
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// Waits for a line with `marker`; panics after `CHILD_TIMEOUT`.
fn wait_for(lines: &mpsc::Receiver<String>, marker: &str) -> String {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => {
                if let Some(rest) = after(&l, marker) {
                    return rest.to_owned();
                }
            }
            Err(e) => panic!("child never printed {marker}: {e}"),
        }
    }
}

#[test]
fn kill_9_leaves_a_playable_file_and_recover_repairs_it() {
    let dir = temp_dir("kill9");
    let path = dir.join("crashed.webm");
    let mut child = spawn_child("crash", &path, None);
    let lines = stdout_lines(&mut child);
    let line = wait_for(&lines, "WRITTEN ");
    // SIGKILL right after the writer reported KILL_AFTER_MS of media.
    drop(child);
    let reported: u64 = line
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("ms");
    let on_disk = std::fs::metadata(&path).expect("partial file").len();

    let partial_ms = probe_duration_ms(&path).expect("partial file readable");
    println!(
        "killed after {reported} ms written; on disk: {on_disk} bytes, {partial_ms} ms readable (lost {} ms)",
        reported - partial_ms.min(reported)
    );
    assert!(partial_ms >= 4000, "only {partial_ms} ms on disk");
    assert!(partial_ms <= reported, "{partial_ms} > {reported}");
    if !have_ffmpeg("kill_9_recover") {
        let done = recover(&path).expect("recover");
        assert_eq!(done.duration_ms, partial_ms);
        return;
    }
    // The partial file plays as it is (no trailer, no cues).
    assert!(matches!(cue_points(&path), Some(0) | None));
    let pcm = decode_audio(&path);
    assert!(pcm.len() >= 4 * 48_000, "{} samples", pcm.len());

    let before = ffprobe(&path, "packet=stream_index,pts,duration,flags,size");
    let done = recover(&path).expect("recover");
    assert_eq!(
        done.duration_ms, partial_ms,
        "recovery keeps every readable packet"
    );
    let after = ffprobe(&path, "packet=stream_index,pts,duration,flags,size");
    assert!(before.len() > 5 * 250, "{} packet fields", before.len());
    assert!(before == after, "recovery changed packets or timestamps");
    assert_eq!(
        done.size_bytes,
        std::fs::metadata(&path).expect("stat").len()
    );
    assert_eq!(probe_duration_ms(&path).expect("probe"), partial_ms);
    let d = format_duration_s(&path);
    assert!(
        d >= 4.0 && (d * 1000.0 - partial_ms as f64).abs() < 20.0,
        "duration {d}"
    );
    assert!(
        cue_points(&path).is_none_or(|n| n >= 2),
        "cues {:?}",
        cue_points(&path)
    );
    // Seekable: middle frame (red before 3 s, blue after).
    let mid = f64::from(u32::try_from(partial_ms).expect("ms")) / 2000.0;
    let rgb = mean_rgb(&frame_at(&path, mid).expect("frame after seek"));
    assert!(rgb[0] > 170.0 && rgb[2] < 70.0, "{rgb:?} at {mid}");
    let rgb = mean_rgb(&frame_at(&path, 3.5).expect("frame after seek"));
    assert!(rgb[2] > 170.0 && rgb[0] < 70.0, "{rgb:?} at 3.5 s");
    // Audio still decodes, both tones.
    let pcm = decode_audio(&path);
    assert!(pcm.len() >= 4 * 48_000, "{} samples", pcm.len());
    let s = &pcm[48_000..4 * 48_000];
    assert!(goertzel_share(s, 440.0) > 0.3 && goertzel_share(s, 880.0) > 0.3);
    let leftovers: Vec<_> = std::fs::read_dir(&*dir).expect("dir").collect();
    assert_eq!(leftovers.len(), 1, "no temp file left: {leftovers:?}");
}

#[test]
fn write_failure_makes_the_writer_unusable_without_panicking() {
    let dir = temp_dir("fsize");
    let path = dir.join("capped.webm");
    // 64 blocks of 512 bytes: the kernel refuses writes past 32 KiB
    // (EFBIG); SIGXFSZ ignored so that write(2) returns the error.
    let mut child = spawn_child("fsize", &path, Some("trap '' XFSZ; ulimit -f 64"));
    let rx = stdout_lines(&mut child);
    let mut lines = Vec::new();
    let deadline = Instant::now() + CHILD_TIMEOUT;
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(l);
    }
    let status = child.0.wait().expect("wait");
    let find = |p: &str| {
        lines
            .iter()
            .find_map(|l| after(l, p))
            .unwrap_or_else(|| panic!("no {p} in {lines:?}"))
            .to_owned()
    };
    assert!(status.success(), "child failed: {lines:?}");
    let failed_at = find("FAILED_AT ");
    println!("write failed at {failed_at}; {}", find("ERROR "));
    assert!(failed_at.ends_with(" true"), "an Io error: {failed_at}");
    assert!(find("ERROR ").contains("too large"), "{}", find("ERROR "));
    assert_eq!(find("THEN "), "true");
    assert_eq!(find("FINISH "), "true");
    let size = std::fs::metadata(&path).expect("stat").len();
    assert!(size <= 32 * 1024, "{size}");
    // What reached the disk before the failure is still a recording.
    let ms = probe_duration_ms(&path).expect("probe");
    assert!(ms >= 1000, "{ms} ms readable");
    assert_eq!(recover(&path).expect("recover").duration_ms, ms);
}

fn assert_refused_untouched(path: &Path) {
    let before = std::fs::read(path).expect("read");
    let err = recover(path).expect_err("nothing to recover");
    assert!(matches!(err, RecorderError::NoMedia { .. }), "{err}");
    let err = probe_duration_ms(path).expect_err("nothing to probe");
    assert!(matches!(err, RecorderError::NoMedia { .. }), "{err}");
    assert_eq!(std::fs::read(path).expect("read"), before, "file untouched");
    let dir = path.parent().expect("dir");
    let names: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "temp left: {names:?}"
    );
}

#[test]
fn recover_refuses_files_with_nothing_readable() {
    let dir = temp_dir("garbage");
    let empty = dir.join("empty.webm");
    std::fs::write(&empty, b"").expect("write");
    assert_refused_untouched(&empty);

    let garbage = dir.join("garbage.webm");
    let mut x: u32 = 12345;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    std::fs::write(&garbage, &bytes).expect("write");
    assert_refused_untouched(&garbage);

    let text = dir.join("text.webm");
    std::fs::write(&text, "not a video at all\n".repeat(100)).expect("write");
    assert_refused_untouched(&text);

    // A valid WebM with a header and no packet at all.
    let header_only = dir.join("header.webm");
    drop(WebmWriter::create(&header_only, video_params(), audio_params(312)).expect("create"));
    assert_refused_untouched(&header_only);

    // A header cut in the middle.
    let (media, pre_skip) = room_output(0, 1000, 1000);
    let full = dir.join("full.webm");
    let mut w = WebmWriter::create(&full, video_params(), audio_params(pre_skip)).expect("create");
    for m in &media {
        m.write(&mut w).expect("write");
    }
    w.finish().expect("finish");
    let cut = dir.join("cut.webm");
    std::fs::write(&cut, &std::fs::read(&full).expect("read")[..200]).expect("write");
    assert_refused_untouched(&cut);

    let missing = dir.join("missing.webm");
    assert!(matches!(
        recover(&missing),
        Err(RecorderError::NoMedia { .. })
    ));
}

/// A finished file cut anywhere (mid-cluster, mid-cues) recovers to what
/// precedes the cut, and decodes cleanly.
#[test]
fn recover_truncated_files_at_many_points() {
    if !have_ffmpeg("recover_truncated") {
        return;
    }
    let dir = temp_dir("truncated");
    let full = dir.join("full.webm");
    let (media, pre_skip) = room_output(0, 6000, 3000);
    let mut w = WebmWriter::create(&full, video_params(), audio_params(pre_skip)).expect("create");
    for m in &media {
        m.write(&mut w).expect("write");
    }
    let done = w.finish().expect("finish");
    let bytes = std::fs::read(&full).expect("read");
    let mut last = 0;
    for percent in [30usize, 50, 77, 95, 100] {
        let len = (bytes.len() * percent / 100).min(bytes.len());
        let path = dir.join(format!("cut{percent}.webm"));
        std::fs::write(&path, &bytes[..len]).expect("write");
        let r = recover(&path).expect("recover");
        println!(
            "cut at {percent}% ({len} bytes): {} ms recovered",
            r.duration_ms
        );
        assert!(r.duration_ms >= last, "{} < {last}", r.duration_ms);
        assert!(r.duration_ms <= done.duration_ms);
        assert!(
            r.duration_ms * 100 >= done.duration_ms * (percent as u64 - 20),
            "{percent}%: {}",
            r.duration_ms
        );
        assert_decodes(&path);
        let d = format_duration_s(&path);
        assert!(
            (d * 1000.0 - r.duration_ms as f64).abs() < 20.0,
            "{d} vs {}",
            r.duration_ms
        );
        last = r.duration_ms;
    }
    assert!(
        last + 10 >= done.duration_ms,
        "complete file recovers whole: {last}"
    );
    // Packet copy: same packets, same timestamps, same flags.
    let fields = "packet=stream_index,pts,dts,duration,flags,size";
    assert!(
        ffprobe(&full, fields) == ffprobe(&dir.join("cut100.webm"), fields),
        "remux changed packets"
    );
}
