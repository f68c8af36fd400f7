//! Audio redundancy (RFC 2198 RED, `audio/red` in WebRTC): each packet carries the previous Opus
//! frame next to its own, so one lost packet costs the receiver nothing (its jitter buffer takes
//! the copy from the next one). Opus in-band FEC is weaker here: libopus only codes it for frames
//! its voice detector calls speech, at a reduced rate, and a mix of steady sounds gets none.
//!
//! Sending: [`Redundancy`] decides per receiver whether the copy is worth its bits (only while
//! that receiver reports loss) and builds the payload. Receiving: [`split`] turns a RED payload
//! back into its frames, should a client send RED.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest block a RED header can describe (10-bit length).
const MAX_BLOCK: usize = 1023;
/// Largest timestamp offset a RED header can carry (14 bits).
const MAX_OFFSET: u32 = (1 << 14) - 1;
/// How long redundancy stays on after the last report of loss: reports come about once a second
/// and, at a few percent, many show none.
pub const HOLD: Duration = Duration::from_secs(10);

/// One frame found in a RED payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Block<'a> {
    /// Payload type of the frame (the codec's).
    pub payload_type: u8,
    /// How many packets before the RED packet this frame was first sent (0: the primary).
    pub distance: u16,
    /// How far its timestamp lies before the RED packet's.
    pub timestamp_offset: u32,
    /// The encoded frame.
    pub data: &'a [u8],
}

/// Builds a RED payload: the primary frame, preceded by `previous` (its payload type is the
/// primary's, `offset` its timestamp distance) when there is one that fits a header.
pub fn encode(payload_type: u8, primary: &[u8], previous: Option<(&[u8], u32)>) -> Vec<u8> {
    let previous = previous.filter(|(p, off)| p.len() <= MAX_BLOCK && *off <= MAX_OFFSET);
    let extra = previous.map_or(0, |(p, _)| 4 + p.len());
    let mut out = Vec::with_capacity(1 + extra + primary.len());
    if let Some((p, off)) = previous {
        let len = p.len() as u32;
        out.push(0x80 | (payload_type & 0x7f));
        let word = (off << 10) | len; // 14 bits offset, 10 bits length
        out.extend_from_slice(&word.to_be_bytes()[1..]);
    }
    out.push(payload_type & 0x7f);
    if let Some((p, _)) = previous {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(primary);
    out
}

/// Splits a RED payload into its frames, redundant ones first (oldest first), the primary last.
/// `None` when the headers do not add up (a malformed or truncated packet).
pub fn split(payload: &[u8]) -> Option<Vec<Block<'_>>> {
    // (payload type, length) of each redundant block, then the primary's payload type.
    let mut headers = Vec::new();
    let mut pos = 0;
    let primary_pt = loop {
        let first = *payload.get(pos)?;
        if first & 0x80 == 0 {
            pos += 1;
            break first & 0x7f;
        }
        let h = payload.get(pos..pos + 4)?;
        let word = u32::from_be_bytes([0, h[1], h[2], h[3]]);
        headers.push((first & 0x7f, word >> 10, (word & 0x3ff) as usize));
        pos += 4;
    };
    let n = headers.len();
    let mut blocks = Vec::with_capacity(n + 1);
    for (i, (pt, offset, len)) in headers.into_iter().enumerate() {
        let data = payload.get(pos..pos + len)?;
        pos += len;
        blocks.push(Block {
            payload_type: pt,
            distance: (n - i) as u16,
            timestamp_offset: offset,
            data,
        });
    }
    blocks.push(Block {
        payload_type: primary_pt,
        distance: 0,
        timestamp_offset: 0,
        data: &payload[pos..],
    });
    Some(blocks)
}

/// A receiver's redundancy state: the frame sent last, and whether its link loses packets.
#[derive(Debug, Default)]
pub struct Redundancy {
    previous: Option<Arc<[u8]>>,
    lossy_until: Option<Instant>,
}

impl Redundancy {
    /// Notes the receiver's last reported loss (fraction in 1/256).
    pub fn observe_loss(&mut self, fraction_lost: u32, now: Instant) {
        if fraction_lost > 0 {
            self.lossy_until = Some(now + HOLD);
        }
    }

    /// Whether copies are being sent.
    pub fn active(&self, now: Instant) -> bool {
        self.lossy_until.is_some_and(|t| now < t)
    }

    /// The RED payload for `frame` (with the frame sent before it), or `None` when `frame` goes
    /// out alone as plain Opus: no loss reported, or nothing adjacent to repeat (the first frame,
    /// or `dropped_before` frames lost in our own queues just before it).
    pub fn payload(
        &mut self,
        payload_type: u8,
        frame: &Arc<[u8]>,
        dropped_before: u16,
        frame_samples: u32,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let previous = self.previous.replace(frame.clone());
        let previous =
            previous.filter(|p| dropped_before == 0 && self.active(now) && p.len() <= MAX_BLOCK)?;
        Some(encode(
            payload_type,
            frame,
            Some((&previous, frame_samples)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_primary_and_copy() {
        let red = encode(111, b"new frame", Some((b"old", 960)));
        // Header: F=1 | pt, then 14-bit offset 960 and 10-bit length 3; then F=0 | pt.
        assert_eq!(&red[..5], &[0x80 | 111, 0x0f, 0x00, 0x03, 111]);
        assert_eq!(&red[5..8], b"old");
        let blocks = split(&red).unwrap();
        assert_eq!(
            blocks,
            vec![
                Block {
                    payload_type: 111,
                    distance: 1,
                    timestamp_offset: 960,
                    data: b"old"
                },
                Block {
                    payload_type: 111,
                    distance: 0,
                    timestamp_offset: 0,
                    data: b"new frame"
                },
            ]
        );
    }

    #[test]
    fn primary_alone_has_a_one_byte_header() {
        let red = encode(111, b"x", None);
        assert_eq!(red, vec![111, b'x']);
        assert_eq!(split(&red).unwrap().len(), 1);
    }

    #[test]
    fn oversized_copy_is_left_out() {
        let big = vec![0u8; MAX_BLOCK + 1];
        assert_eq!(encode(111, b"p", Some((&big, 960))), vec![111, b'p']);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert_eq!(split(&[]), None);
        // A header promising 10 bytes of copy, followed by 2.
        assert_eq!(split(&[0x80 | 111, 0x0f, 0x00, 0x0a, 111, 1, 2]), None);
        // A redundant header cut short.
        assert_eq!(split(&[0x80 | 111, 0x00]), None);
    }

    #[test]
    fn copies_only_while_the_receiver_reports_loss() {
        let t0 = Instant::now();
        let mut r = Redundancy::default();
        let f = |b: &[u8]| Arc::<[u8]>::from(b);
        assert_eq!(r.payload(111, &f(b"a"), 0, 960, t0), None);
        r.observe_loss(5, t0);
        let red = r.payload(111, &f(b"b"), 0, 960, t0).unwrap();
        let blocks = split(&red).unwrap();
        assert_eq!((blocks[0].data, blocks[1].data), (&b"a"[..], &b"b"[..]));
        // A frame lost in our queue before this one: no adjacent frame to repeat.
        assert_eq!(r.payload(111, &f(b"d"), 1, 960, t0), None);
        assert!(r.payload(111, &f(b"e"), 0, 960, t0).is_some());
        // Ten seconds without reported loss: copies stop.
        r.observe_loss(0, t0 + HOLD);
        assert_eq!(r.payload(111, &f(b"g"), 0, 960, t0 + HOLD), None);
    }
}
