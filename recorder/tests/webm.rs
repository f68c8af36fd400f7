//! The writer end to end: real Opus/VP8 packets in, the file checked with
//! the ffmpeg CLI (codecs, size, duration, tones, colours, seeking).

mod common;

use std::time::Instant;

use common::*;
use recorder::{RecorderError, WebmWriter, probe_duration_ms};

/// Red then blue, two tones, 6 s: what a room records.
#[test]
fn six_seconds_of_room_output_probe_decode_and_seek() {
    if !have_ffmpeg("six_seconds_of_room_output") {
        return;
    }
    let dir = temp_dir("six");
    let path = dir.join("room.webm");
    // Room clock already at 123.46 s when the recording starts.
    let (media, pre_skip) = room_output(123_460, 6000, 3000);
    let mut w = WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
    for m in &media {
        m.write(&mut w).expect("write");
    }
    assert_eq!(w.origin_ms(), Some(123_460));
    let stats = w.stats();
    assert_eq!((stats.audio_packets, stats.video_packets), (300, 90));
    assert_eq!(stats.pts_fixups + stats.dropped_before_keyframe, 0);
    let done = w.finish().expect("finish");
    // Last video frame at 5940 ms + 66 ms of frame duration.
    assert_eq!(done.duration_ms, 6006);
    assert_eq!(
        done.size_bytes,
        std::fs::metadata(&path).expect("stat").len()
    );

    let codecs = probe_value(&path, "stream=codec_name", "codec_name");
    assert_eq!(codecs, ["vp8", "opus"]);
    assert_eq!(probe_value(&path, "stream=width", "width"), ["640"]);
    assert_eq!(probe_value(&path, "stream=height", "height"), ["360"]);
    assert_eq!(probe_value(&path, "stream=channels", "channels"), ["1"]);
    assert_eq!(
        probe_value(&path, "stream=sample_rate", "sample_rate"),
        ["48000"]
    );
    // Video starts at 0; audio at -pre-skip (6.5 ms, rounded), which the
    // decoder trims, so both start playing at 0.
    let starts = probe_value(&path, "stream=start_time", "start_time");
    assert_eq!(starts, ["0.000000", "-0.007000"]);

    let d = format_duration_s(&path);
    assert!((d - 6.0).abs() <= 0.03 * 6.0, "duration {d}");
    let probed = probe_duration_ms(&path).expect("probe");
    assert!((5990..=6010).contains(&probed), "probe {probed}");
    // One cue per video keyframe (0, 2, 4 s); mkvinfo may be missing.
    assert!(
        matches!(cue_points(&path), Some(3) | None),
        "{:?}",
        cue_points(&path)
    );

    // Audio: both tones, nothing in between, pre-skip trimmed.
    let pcm = decode_audio(&path);
    // Exactly the encoded samples minus the pre-skip: players trim it.
    assert_eq!(pcm.len(), 300 * 960 - usize::from(pre_skip));
    let mid = &pcm[48_000..5 * 48_000];
    let (a, b, off) = (
        goertzel_share(mid, 440.0),
        goertzel_share(mid, 880.0),
        goertzel_share(mid, 660.0),
    );
    println!("tone shares: 440 Hz {a:.3}, 880 Hz {b:.3}, 660 Hz {off:.5}");
    assert!(a > 0.3 && b > 0.3, "tones 440 {a} 880 {b}");
    assert!(off < 0.01, "660 Hz {off}");

    // Video: red in the first half, blue in the second.
    let red = mean_rgb(&frame_at(&path, 1.5).expect("frame at 1.5 s"));
    let blue = mean_rgb(&frame_at(&path, 4.5).expect("frame at 4.5 s"));
    println!("rgb at 1.5 s {red:?}, at 4.5 s {blue:?}");
    assert!(red[0] > 170.0 && red[1] < 70.0 && red[2] < 70.0, "{red:?}");
    assert!(
        blue[2] > 170.0 && blue[0] < 70.0 && blue[1] < 70.0,
        "{blue:?}"
    );

    // Seek to the middle and decode.
    run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-ss",
            "3",
            "-i",
            path.to_str().expect("utf-8"),
            "-frames:v",
            "1",
            "-f",
            "null",
            "-",
        ],
    );
    let after_mid = mean_rgb(&frame_at(&path, 3.2).expect("frame at 3.2 s"));
    assert!(after_mid[2] > 170.0, "{after_mid:?}");
    // The whole file decodes without a complaint.
    assert_decodes(&path);
}

/// What is on disk (read through another file descriptor while the writer
/// is alive) trails what was written by less than a second of media, also
/// while the video pauses (audio alone must keep flowing to the file).
#[test]
fn closed_clusters_reach_the_kernel_within_a_second_of_media() {
    let dir = temp_dir("lag");
    let path = dir.join("lag.webm");
    let (media, pre_skip) = room_output(0, 10_000, 5000);
    // No video from 4 s to 7 s.
    let media: Vec<Media> = media
        .into_iter()
        .filter(|m| {
            !matches!(
                m,
                Media::Video {
                    pts_ms: 4000..7000,
                    ..
                }
            )
        })
        .collect();
    let mut w = WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
    let header = w.bytes_written();
    assert!(header > 0, "the header is flushed at create");
    let (mut worst, mut worst_at, mut probes) = (0u64, 0u64, 0);
    for m in &media {
        m.write(&mut w).expect("write");
        let written = w.duration_ms();
        if matches!(m, Media::Audio { .. }) && m.pts_ms().is_multiple_of(200) && written >= 1000 {
            let on_disk = probe_duration_ms(&path).unwrap_or(0);
            let lag = written.saturating_sub(on_disk);
            if lag > worst {
                (worst, worst_at) = (lag, written);
            }
            probes += 1;
        }
    }
    println!(
        "on-disk lag over {probes} probes: worst {worst} ms (at {worst_at} ms written); cluster limit {} ms, reorder window {} ms",
        recorder::CLUSTER_TIME_LIMIT_MS,
        recorder::REORDER_WINDOW_MS
    );
    assert!(probes >= 40);
    assert!(
        worst < 1000,
        "{worst} ms of media not on disk at {worst_at} ms"
    );
    assert!(w.bytes_written() > header);
    w.finish().expect("finish");
}

/// Inter frames before the first keyframe are dropped; timestamps that do
/// not increase are moved to previous + 1 ms.
#[test]
fn leading_inter_frames_dropped_and_non_monotonic_pts_fixed() {
    if !have_ffmpeg("leading_inter_frames_dropped") {
        return;
    }
    let dir = temp_dir("fixups");
    let path = dir.join("f.webm");
    let (media, pre_skip) = room_output(0, 2000, 2000);
    let mut w = WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
    // Two inter frames (from later in the stream) before any keyframe.
    let inter: Vec<_> = media
        .iter()
        .filter_map(|m| match m {
            Media::Video {
                data,
                keyframe: false,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .take(2)
        .collect();
    w.write_video(1000, &inter[0], false).expect("inter");
    w.write_video(1060, &inter[1], false).expect("inter");
    assert_eq!(w.stats().dropped_before_keyframe, 2);
    assert_eq!(w.origin_ms(), None, "dropped frames do not start the file");
    let mut audio = media.iter().filter_map(|m| match m {
        Media::Audio { data, .. } => Some(data.clone()),
        _ => None,
    });
    let mut next_audio = || audio.next().expect("audio packet");
    let key = match &media[1] {
        Media::Video {
            data,
            keyframe: true,
            ..
        } => data.clone(),
        _ => panic!("second packet is the first keyframe"),
    };
    w.write_audio(2000, &next_audio()).expect("audio");
    w.write_video(2000, &key, true).expect("key");
    w.write_video(2080, &inter[0], false).expect("inter");
    // Video goes back in time, then repeats a timestamp.
    w.write_video(2040, &inter[1], false).expect("back");
    w.write_video(2081, &inter[1], false).expect("repeat");
    for t in [2020, 2040, 2040, 2030, 2060] {
        w.write_audio(t, &next_audio()).expect("audio");
    }
    // Older than the file's origin: dropped, not fixed up.
    w.write_audio(1980, &next_audio()).expect("old audio");
    let s = w.stats();
    assert_eq!(s.pts_fixups, 4, "{s:?}");
    assert_eq!(s.dropped_before_origin, 1, "{s:?}");
    assert_eq!((s.video_packets, s.audio_packets), (4, 6), "{s:?}");
    w.finish().expect("finish");

    let packets = ffprobe(&path, "packet=stream_index,pts,flags");
    let mut per_stream: [Vec<(i64, String)>; 2] = [Vec::new(), Vec::new()];
    let mut cur = (0usize, 0i64);
    for (k, v) in packets {
        match k.as_str() {
            "stream_index" => cur.0 = v.parse().expect("index"),
            "pts" => cur.1 = v.parse().expect("pts"),
            "flags" => per_stream[cur.0].push((cur.1, v)),
            _ => {}
        }
    }
    let video: Vec<i64> = per_stream[0].iter().map(|p| p.0).collect();
    assert_eq!(video, [0, 80, 81, 82], "video pts");
    assert!(
        per_stream[0][0].1.starts_with('K'),
        "first video packet is a keyframe"
    );
    let audio: Vec<i64> = per_stream[1].iter().map(|p| p.0).collect();
    // File times 0, 20, 40, 41, 42, 60, each read back 6.5 ms early
    // (CodecDelay).
    assert_eq!(audio, [-7, 13, 33, 34, 35, 53], "audio pts");
}

#[test]
fn create_refuses_to_overwrite() {
    let dir = temp_dir("overwrite");
    let path = dir.join("exists.webm");
    std::fs::write(&path, b"precious").expect("write");
    let err =
        WebmWriter::create(&path, video_params(), audio_params(312)).expect_err("must refuse");
    assert!(matches!(err, RecorderError::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
    // A dangling symlink counts as existing (no writing through it).
    let link = dir.join("link.webm");
    std::os::unix::fs::symlink(dir.join("nowhere.webm"), &link).expect("symlink");
    let err =
        WebmWriter::create(&link, video_params(), audio_params(312)).expect_err("must refuse");
    assert!(matches!(err, RecorderError::AlreadyExists { .. }), "{err}");
    assert!(!dir.join("nowhere.webm").exists());
    // A missing directory is an I/O error, not a panic.
    let err = WebmWriter::create(
        &dir.join("no/such/dir.webm"),
        video_params(),
        audio_params(312),
    )
    .expect_err("no dir");
    assert!(matches!(err, RecorderError::Io { .. }), "{err}");
}

#[test]
fn invalid_parameters_and_packets_are_refused() {
    let dir = temp_dir("invalid");
    let mut v = video_params();
    v.fps = 0;
    let err = WebmWriter::create(&dir.join("a.webm"), v, audio_params(312)).expect_err("fps 0");
    assert!(matches!(err, RecorderError::InvalidParams(_)), "{err}");
    assert!(!dir.join("a.webm").exists(), "no stub left behind");
    let mut a = audio_params(312);
    a.sample_rate = 44_100;
    let err = WebmWriter::create(&dir.join("b.webm"), video_params(), a).expect_err("44.1k");
    assert!(matches!(err, RecorderError::InvalidParams(_)), "{err}");
    a.sample_rate = 48_000;
    a.channels = 3;
    assert!(WebmWriter::create(&dir.join("c.webm"), video_params(), a).is_err());

    let (media, pre_skip) = room_output(0, 200, 200);
    let mut w = WebmWriter::create(&dir.join("d.webm"), video_params(), audio_params(pre_skip))
        .expect("create");
    let err = w.write_audio(0, &[]).expect_err("empty opus");
    assert!(matches!(err, RecorderError::InvalidPacket(_)), "{err}");
    let err = w.write_audio(0, &[0xfb]).expect_err("bad toc");
    assert!(matches!(err, RecorderError::InvalidPacket(_)), "{err}");
    let err = w.write_video(0, &[], true).expect_err("empty vp8");
    assert!(matches!(err, RecorderError::InvalidPacket(_)), "{err}");
    let inter = media
        .iter()
        .find_map(|m| match m {
            Media::Video {
                data,
                keyframe: false,
                ..
            } => Some(data.clone()),
            _ => None,
        })
        .expect("an inter frame");
    let err = w
        .write_video(0, &inter, true)
        .expect_err("inter frame flagged key");
    assert!(matches!(err, RecorderError::InvalidPacket(_)), "{err}");
    // Still usable after refused packets.
    for m in &media {
        m.write(&mut w).expect("write after refusal");
    }
    assert_eq!(w.stats().audio_packets, 10);
    // Last video frame at 140 ms + 66 ms.
    assert_eq!(w.finish().expect("finish").duration_ms, 206);
}

/// Dropping a writer without `finish` still leaves a complete file.
#[test]
fn drop_without_finish_writes_the_trailer() {
    if !have_ffmpeg("drop_without_finish") {
        return;
    }
    let dir = temp_dir("drop");
    let path = dir.join("dropped.webm");
    let (media, pre_skip) = room_output(0, 2000, 2000);
    {
        let mut w =
            WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
        for m in &media {
            m.write(&mut w).expect("write");
        }
    }
    let d = format_duration_s(&path);
    assert!((d - 2.0).abs() < 0.05, "duration {d}");
    assert!(
        matches!(cue_points(&path), Some(1) | None),
        "{:?}",
        cue_points(&path)
    );
}

/// Writes `media` replayed `rounds` times (timestamps shifted) and prints
/// the cost per packet; returns the finished file and its duration.
fn measure_cost(label: &str, media: &[Media], pre_skip: u16, rounds: u64) -> (TempDir, u64) {
    let dir = temp_dir("cost");
    let path = dir.join("cost.webm");
    let span = media.last().map_or(0, |m| m.pts_ms() + TICK_MS);
    let mut w = WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
    let mut times = Vec::with_capacity(media.len() * rounds as usize);
    let start = Instant::now();
    for round in 0..rounds {
        for m in media {
            let shifted = match m {
                Media::Audio { pts_ms, data } => Media::Audio {
                    pts_ms: pts_ms + round * span,
                    data: data.clone(),
                },
                Media::Video {
                    pts_ms,
                    data,
                    keyframe,
                } => Media::Video {
                    pts_ms: pts_ms + round * span,
                    data: data.clone(),
                    keyframe: *keyframe,
                },
            };
            let t = Instant::now();
            shifted.write(&mut w).expect("write");
            times.push(t.elapsed());
        }
    }
    let writing = start.elapsed();
    let t = Instant::now();
    let done = w.finish().expect("finish");
    let finishing = t.elapsed();
    times.sort();
    let n = times.len();
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    let media_s = (span * rounds) as f64 / 1000.0;
    println!(
        "write cost, {label}: {n} packets, {media_s} s of media, {} KiB ({:.0} kbit/s): \
         mean {:.1} us/packet, median {:.1}, p99 {:.1}, max {:.1}; \
         finish (trailer + fsync) {:.2} ms; {:.3}% of one core",
        done.size_bytes / 1024,
        done.size_bytes as f64 * 8.0 / media_s / 1000.0,
        us(writing) / n as f64,
        us(times[n / 2]),
        us(times[n * 99 / 100]),
        us(times[n - 1]),
        finishing.as_secs_f64() * 1e3,
        writing.as_secs_f64() / media_s * 100.0,
    );
    (dir, done.duration_ms)
}

/// CPU cost of writing, printed (run with --nocapture); not asserted.
#[test]
fn write_cost() {
    // Real packets: 10 s of room output replayed 6 times (60 s).
    let (media, pre_skip) = room_output(0, 10_000, 5000);
    let (dir, duration) = measure_cost("mixer packets (solid colours)", &media, pre_skip, 6);
    // Last video frame at 59 940 ms + 66 ms.
    assert_eq!(duration, 60_006);
    let path = dir.join("cost.webm");
    let t = Instant::now();
    let probed = probe_duration_ms(&path).expect("probe");
    let probing = t.elapsed();
    let t = Instant::now();
    let recovered = recorder::recover(&path).expect("recover");
    let recovering = t.elapsed();
    println!(
        "60 s file: probe_duration_ms {:.1} ms, recover (remux + fsync + rename) {:.1} ms",
        probing.as_secs_f64() * 1e3,
        recovering.as_secs_f64() * 1e3
    );
    assert_eq!((probed, recovered.duration_ms), (60_006, 60_006));

    // Same timeline with video packets the size of a 1.5 Mbit/s composite
    // (keyframes 40 KB, inter frames 11 KB; the muxer never parses VP8
    // beyond the keyframe header the writer checks).
    let mut noise: u32 = 1;
    let mut fill = |len: usize, key: bool| -> std::sync::Arc<[u8]> {
        let mut v: Vec<u8> = (0..len)
            .map(|_| {
                noise = noise.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (noise >> 24) as u8
            })
            .collect();
        v[0] = if key { 0x10 } else { 0x11 };
        v[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        v.into()
    };
    let heavy: Vec<Media> = media
        .iter()
        .map(|m| match m {
            Media::Video {
                pts_ms, keyframe, ..
            } => Media::Video {
                pts_ms: *pts_ms,
                data: fill(if *keyframe { 40_000 } else { 11_000 }, *keyframe),
                keyframe: *keyframe,
            },
            other => other.clone(),
        })
        .collect();
    let (_dir, duration) = measure_cost("1.5 Mbit/s-sized video packets", &heavy, pre_skip, 6);
    assert_eq!(duration, 60_006);
}

/// A copy of the file taken while it grows (what an uploader sends in parts), brought up to date
/// with the ranges `finish` reports as written over and the bytes after it, is the finished
/// file byte for byte; and what is written over is the header only.
#[test]
fn a_copy_made_while_growing_plus_rewritten_ranges_is_the_finished_file() {
    let dir = temp_dir("rewritten");
    let path = dir.join("grow.webm");
    let (media, pre_skip) = room_output(0, 6_000, 6_000);
    let mut w = WebmWriter::create(&path, video_params(), audio_params(pre_skip)).expect("create");
    let mut copy = Vec::new();
    for (i, m) in media.iter().enumerate() {
        m.write(&mut w).expect("write");
        if i % 50 == 0 {
            // Append what the file gained since the last look, as an uploader does.
            let now = std::fs::read(&path).expect("read");
            copy.extend_from_slice(&now[copy.len()..]);
        }
    }
    let copied = copy.len() as u64;
    let done = w.finish().expect("finish");
    let last = std::fs::read(&path).expect("read");
    assert_eq!(done.size_bytes, last.len() as u64);
    assert!(copied > 10_000, "{copied} bytes copied while growing");
    assert!(
        !done.rewritten.is_empty(),
        "finishing writes the header again"
    );
    for r in &done.rewritten {
        assert!(r.end <= 4096, "{r:?} written over: beyond the header");
        let (s, e) = (r.start as usize, (r.end.min(copied)) as usize);
        copy[s..e].copy_from_slice(&last[s..e]);
    }
    copy.extend_from_slice(&last[copy.len()..]);
    assert!(
        copy == last,
        "the patched copy differs from the finished file"
    );
}
