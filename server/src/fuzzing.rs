//! What the `cargo fuzz` targets (`fuzz/`) feed with arbitrary bytes, one function per target, so
//! that the regression test (`server/tests/fuzz_regressions.rs`) replays the same code on the
//! inputs committed under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
//!
//! Each function must return normally whatever the input: a panic is the bug the fuzzer finds.
//! They also assert the bounds the code promises (frame sizes, packet counts).

use crate::room::{peer, red, vp8};

/// A target: arbitrary bytes in, returns normally.
pub type Target = fn(&[u8]);

/// The targets, by name (the file names under `fuzz/fuzz_targets/`).
pub const TARGETS: [(&str, Target); 5] = [
    ("rtp_depacketize", rtp_depacketize),
    ("jitter_buffer", jitter_buffer),
    ("signaling_json", signaling_json),
    ("offer_sdp", offer_sdp),
    ("webm_repair", webm_repair),
];

/// Splits `data` into records: a header of `head` bytes then a payload whose length is the
/// header's last byte (cut at the end of the input).
fn records(data: &[u8], head: usize) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < head {
            return None;
        }
        let (h, tail) = rest.split_at(head);
        let n = usize::from(h[head - 1]).min(tail.len());
        let (payload, after) = tail.split_at(n);
        rest = after;
        Some((h, payload))
    })
}

/// RTP payloads of a participant: VP8 packets into the frame assembler (sequence number,
/// timestamp and marker from each record's header; sequence numbers may jump, repeat and wrap),
/// and the same payloads as RFC 2198 RED audio.
pub fn rtp_depacketize(data: &[u8]) {
    let mut asm = vp8::FrameAssembler::new();
    let mut ts = 0u32;
    for (h, payload) in records(data, 5) {
        let seq = u16::from_be_bytes([h[0], h[1]]);
        ts = ts.wrapping_add(u32::from(h[2]) * 3000);
        let marker = h[3] & 1 == 1;
        for frame in asm.push(seq, ts, marker, payload) {
            assert!(
                frame.data.len() <= vp8::MAX_FRAME_BYTES,
                "frame over the bound"
            );
            assert!(frame.complete || frame.data.is_empty());
        }
        let _ = vp8::parse_descriptor(payload);
        if let Some(blocks) = red::split(payload) {
            assert!(blocks.len() <= payload.len(), "more RED blocks than bytes");
        }
    }
}

/// An audio input's jitter buffer and decoder: pushes of arbitrary payloads under arbitrary
/// sequence numbers, played and skipped ticks in between.
pub fn jitter_buffer(data: &[u8]) {
    let Ok(mut input) = mixer::AudioInput::new(3) else {
        return;
    };
    let mut pcm = [0i16; mixer::FRAME_SAMPLES];
    let mut errors = 0;
    for (h, payload) in records(data, 4) {
        let seq = u16::from_be_bytes([h[1], h[2]]);
        match h[0] % 6 {
            0 => {
                let _ = input.push(seq, payload);
            }
            1 => {
                // With an RFC 6464 level, any byte (the V bit included).
                let _ = input.push_with_level(seq, payload, Some(h[0]));
            }
            2 | 3 => {
                let _ = input.play(&mut pcm, &mut errors, h[0] & 0x80 != 0);
            }
            _ => input.skip(),
        }
    }
}

/// A client's signaling frame, as text.
pub fn signaling_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::api::ws::parse_client(text);
    }
}

/// An offer's SDP, as the signaling session reads it: our summary (codecs, media), then the
/// WebRTC stack's own parse, which the answer starts from.
pub fn offer_sdp(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && peer::summarize_offer(text).is_ok()
    {
        let _ = rtc::peer_connection::sdp::RTCSessionDescription::offer(text.to_owned());
    }
}

/// A recording file damaged in any way, given to the crash recovery (remux in place).
pub fn webm_repair(data: &[u8]) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mcu-fuzz-{}-{n}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let path = dir.join("damaged.webm");
    if std::fs::write(&path, data).is_ok()
        && let Ok(done) = recorder::recover(&path)
    {
        // A repaired file reads back, as long as it claims (the recording's duration_ms).
        let ms = recorder::probe_duration_ms(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let ms = ms.expect("a repaired file reads back");
        assert_eq!(ms, done.duration_ms, "read back vs claimed");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
