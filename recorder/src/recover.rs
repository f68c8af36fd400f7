//! Reading back and repairing files: [`probe_duration_ms`] and [`recover`].
//!
//! A crash (or `kill -9`) leaves a file whose header and closed clusters
//! are intact but which has no Duration, no Cues and an unknown-size
//! Segment: it plays, but players cannot seek it or show its length.
//! `recover` remuxes it (packet copy, no decode) into a temporary file in
//! the same directory, fsyncs it and renames it over the original, so the
//! original is only ever replaced by a complete file.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ffmpeg_next::{Packet, Rational, Rescale, format, media};

use crate::mux::{self, Muxer};
use crate::{Finished, RecorderError, ffi};

/// Consecutive unreadable packets after which the rest of the file is
/// given up on (a truncated tail yields a few, then EOF).
const MAX_INVALID_IN_A_ROW: u32 = 64;
const MS: Rational = Rational(1, 1000);

fn no_media(path: &Path, reason: impl Into<String>) -> RecorderError {
    RecorderError::NoMedia {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Opens `path` with the matroska demuxer only (a file that merely probes
/// as some other format is not ours to repair).
fn open(path: &Path) -> Result<format::context::Input, RecorderError> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(no_media(path, "path contains a NUL byte"));
    }
    // "file:" stops libavformat from reading a protocol ("http:", "concat:")
    // out of an odd file name.
    let mut url = OsString::from("file:");
    url.push(path.as_os_str());
    let input = format::input(&PathBuf::from(url)).map_err(|e| no_media(path, e.to_string()))?;
    let name = input.format().name().to_owned();
    if !name.split(',').any(|n| n == "matroska" || n == "webm") {
        return Err(no_media(path, format!("not WebM/Matroska ({name})")));
    }
    Ok(input)
}

/// Reads packets until EOF or an unrecoverable read error (the truncated
/// tail of a crashed file), skipping packets flagged corrupt.
struct Reader {
    input: format::context::Input,
    stopped_by: Option<String>,
}

impl Reader {
    fn next(&mut self) -> Option<Packet> {
        let mut invalid = 0;
        loop {
            let mut p = Packet::empty();
            match p.read(&mut self.input) {
                Ok(()) if p.is_corrupt() => continue,
                Ok(()) => return Some(p),
                Err(ffmpeg_next::Error::Eof) => return None,
                Err(ffmpeg_next::Error::InvalidData) if invalid < MAX_INVALID_IN_A_ROW => {
                    invalid += 1;
                }
                Err(e) => {
                    self.stopped_by = Some(e.to_string());
                    return None;
                }
            }
        }
    }

    fn time_base(&self, stream: usize) -> Option<Rational> {
        self.input.stream(stream).map(|s| s.time_base())
    }
}

/// End of a packet (pts + duration), ms.
fn end_ms(p: &Packet, tb: Rational) -> Option<i64> {
    let ts = p.pts().or(p.dts())?;
    Some(ts.saturating_add(p.duration().max(0)).rescale(tb, MS))
}

/// Duration of a WebM file in ms as the demuxer reads it (last packet end),
/// without modifying it. Reads every packet (no decoding): about as fast as
/// the disk, and correct for a file without Duration or Cues.
pub fn probe_duration_ms(path: &Path) -> Result<u64, RecorderError> {
    let mut r = Reader {
        input: open(path)?,
        stopped_by: None,
    };
    let mut end: Option<i64> = None;
    while let Some(p) = r.next() {
        if let Some(e) = r.time_base(p.stream()).and_then(|tb| end_ms(&p, tb)) {
            end = Some(end.map_or(e, |x| x.max(e)));
        }
    }
    let end =
        end.ok_or_else(|| no_media(path, r.stopped_by.unwrap_or_else(|| "no packet".to_owned())))?;
    Ok(u64::try_from(end).unwrap_or(0))
}

/// For a file left behind by a crash (no trailer): reads how long it is
/// (last packet end) and rewrites it (remux, packet copy) so that it has
/// duration and cues; atomic replace (temp file in the same directory,
/// fsync, rename, fsync of the directory). Returns the duration and size.
/// Fails cleanly (error, original untouched) on a file with nothing
/// readable. Also accepts a complete file (the result is equivalent).
pub fn recover(path: &Path) -> Result<Finished, RecorderError> {
    let mut r = Reader {
        input: open(path)?,
        stopped_by: None,
    };
    let Some(first) = r.next() else {
        return Err(no_media(
            path,
            r.stopped_by.unwrap_or_else(|| "no packet".to_owned()),
        ));
    };
    let original = fs::metadata(path).map_err(|source| RecorderError::Io {
        path: path.to_owned(),
        source,
    })?;
    let tmp = temp_path(path)?;
    let file = match mux::create_new(&tmp) {
        Err(RecorderError::AlreadyExists { .. }) => {
            // Left by a recovery that crashed itself; the name is ours.
            let _ = fs::remove_file(&tmp);
            mux::create_new(&tmp)?
        }
        other => other?,
    };
    let copied = copy(&mut r, first, Muxer::new(file, &tmp));
    let result = copied.and_then(|(copied_ms, size_bytes)| {
        // The duration is the repaired file's as a reader sees it: the copy can end later than
        // its input (a packet moved later to keep timestamps increasing, a block given the
        // track's default duration), which the fuzzer found (207 ms read back, 206 claimed).
        // A copy that does not read back (also found by the fuzzer) is no repair: the
        // original stays.
        let duration_ms = probe_duration_ms(&tmp)?;
        tracing::debug!(copied_ms, duration_ms, "repaired file read back");
        if duration_ms + 1000 < copied_ms {
            // Reads back only in part: replacing the original would lose what is past that.
            return Err(no_media(
                &tmp,
                format!("the repaired copy reads back {duration_ms} ms of the {copied_ms} copied"),
            ));
        }
        let io = |source| RecorderError::Io {
            path: tmp.clone(),
            source,
        };
        fs::set_permissions(&tmp, original.permissions()).map_err(io)?;
        fs::rename(&tmp, path).map_err(io)?;
        mux::sync_parent_dir(path)?;
        Ok(Finished {
            duration_ms,
            size_bytes,
            rewritten: Vec::new(),
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Some(why) = &r.stopped_by {
        tracing::info!(path = %path.display(), stopped_by = %why, "recovered up to a read error");
    }
    result
}

/// `.<name>.recover.tmp` next to `path`.
fn temp_path(path: &Path) -> Result<PathBuf, RecorderError> {
    let name = path
        .file_name()
        .ok_or_else(|| no_media(path, "not a file name"))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".recover.tmp");
    Ok(path.with_file_name(tmp))
}

/// Per input stream: output index, input and output time bases, shift
/// (input tb), last dts written.
struct Mapped {
    out: usize,
    in_tb: Rational,
    out_tb: Rational,
    shift: i64,
    last_dts: Option<i64>,
}

/// Copies every audio/video packet into `mux`; returns (duration ms, size).
fn copy(
    r: &mut Reader,
    first: Packet,
    mux: Result<Muxer, RecorderError>,
) -> Result<(u64, u64), RecorderError> {
    let mut mux = mux?;
    let mut map: Vec<Option<Mapped>> = Vec::new();
    for s in r.input.streams() {
        let params = s.parameters();
        let kind = params.medium();
        let m = if kind == media::Type::Video || kind == media::Type::Audio {
            let rate = s.avg_frame_rate();
            let fps = (rate.1 > 0 && rate.0 > 0).then(|| (rate.0 / rate.1).max(1) as u32);
            let in_tb = s.time_base();
            // The demuxer returns Opus blocks CodecDelay early. A muxer
            // that does not add it back (libavformat 59) must get the block
            // times, or it shifts every track (see `mux`).
            let padding = ffi::initial_padding(&params);
            let shift =
                if kind == media::Type::Audio && padding > 0 && !mux::muxer_adds_codec_delay() {
                    i64::from(padding).rescale(Rational(1, 48_000), in_tb)
                } else {
                    0
                };
            let out = mux.add_stream(
                params,
                if kind == media::Type::Video {
                    fps
                } else {
                    None
                },
            )?;
            Some(Mapped {
                out,
                in_tb,
                out_tb: Rational(1, 1000),
                shift,
                last_dts: None,
            })
        } else {
            None
        };
        map.push(m);
    }
    mux.write_header()?;
    for m in map.iter_mut().flatten() {
        m.out_tb = mux.time_base(m.out).unwrap_or(m.out_tb);
    }
    let mut end: i64 = 0;
    let mut next = Some(first);
    while let Some(mut p) = next {
        if let Some(Some(m)) = map.get_mut(p.stream()) {
            let input_end = end_ms(&p, m.in_tb).unwrap_or(0);
            if m.shift != 0 {
                p.set_pts(p.pts().map(|t| t + m.shift));
                p.set_dts(p.dts().map(|t| t + m.shift));
            }
            p.rescale_ts(m.in_tb, m.out_tb);
            // Same rule as the writer: strictly increasing per stream.
            let dts = p.dts().or(p.pts()).unwrap_or(0);
            let dts = match m.last_dts {
                Some(last) if dts <= last => last + 1,
                _ => dts,
            };
            p.set_dts(Some(dts));
            p.set_pts(Some(p.pts().map_or(dts, |pts| pts.max(dts))));
            end = end.max(input_end);
            p.set_position(-1);
            p.set_stream(m.out);
            m.last_dts = Some(dts);
            mux.write(&p)?;
        }
        next = r.next();
    }
    let (size, _) = mux.finish()?;
    Ok((u64::try_from(end).unwrap_or(0), size))
}
