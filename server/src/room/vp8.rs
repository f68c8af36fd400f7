//! Reassembles VP8 frames from RTP packets (RFC 7741), tolerating reordering within a few
//! frames. Pure and synchronous; the receive task of each publisher owns one.
//!
//! A frame is complete when its first packet (S=1, PID=0), its last packet (marker) and every
//! sequence number between them are present. A frame that cannot complete (a newer one completed
//! first, or more than [`MAX_PENDING`] frames are open) is reported as lost so that the mixer
//! waits for a keyframe and asks for one.
//!
//! Bounded against a hostile publisher: a frame holds at most [`MAX_FRAME_PACKETS`] packets and
//! [`MAX_FRAME_BYTES`] bytes (past either it is dropped and reported lost, and the rest of its
//! packets are ignored), and a packet is filed in O(log n).

use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};

/// Frames kept open at once while waiting for reordered packets.
pub const MAX_PENDING: usize = 3;
/// Packets one frame may have (a 1080p keyframe is a few hundred).
pub const MAX_FRAME_PACKETS: usize = 2048;
/// Bytes one frame may have.
pub const MAX_FRAME_BYTES: usize = 2 << 20;

/// A reassembled frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp.
    pub ts: u32,
    /// The VP8 bitstream of the frame (empty when `complete` is false).
    pub data: Bytes,
    /// Whether every packet arrived.
    pub complete: bool,
}

/// Parses the VP8 payload descriptor: (starts a frame, descriptor length). None if malformed.
pub fn parse_descriptor(p: &[u8]) -> Option<(bool, usize)> {
    let b0 = *p.first()?;
    let x = b0 & 0x80 != 0;
    let s = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    let mut n = 1;
    if x {
        let b1 = *p.get(1)?;
        n = 2;
        if b1 & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let m = *p.get(n)?;
            n += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if b1 & 0x40 != 0 {
            n += 1; // TL0PICIDX
        }
        if b1 & 0x30 != 0 {
            n += 1; // TID/Y/KEYIDX
        }
    }
    if n >= p.len() {
        return None;
    }
    Some((s && pid == 0, n))
}

struct Partial {
    ts: u32,
    /// Payloads without descriptor, by extended seq.
    packets: BTreeMap<u64, Bytes>,
    bytes: usize,
    first: Option<u64>,
    last: Option<u64>,
    /// Over [`MAX_FRAME_PACKETS`] or [`MAX_FRAME_BYTES`]: its packets are no longer kept, and it
    /// will be reported lost.
    oversized: bool,
}

impl Partial {
    fn min_seq(&self) -> u64 {
        self.packets.keys().next().copied().unwrap_or(u64::MAX)
    }
    fn max_seq(&self) -> u64 {
        self.packets.keys().next_back().copied().unwrap_or(0)
    }
    /// An oversized frame keeps no data, only its span of sequence numbers (widened by `seq`),
    /// for ordering and so that its numbers are not taken for a gap later.
    fn keep_span_only(&mut self, seq: u64) {
        let (lo, hi) = (self.min_seq().min(seq), self.max_seq().max(seq));
        self.packets.clear();
        self.packets.insert(lo, Bytes::new());
        self.packets.insert(hi, Bytes::new());
        self.bytes = 0;
    }
    /// First and last packets present and every one between them (keys are unique and ordered,
    /// so the right count between the two is all of them).
    fn complete(&self) -> bool {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            return false;
        };
        !self.oversized
            && last >= first
            && (last - first + 1) as usize == self.packets.len()
            && self.min_seq() == first
            && self.max_seq() == last
    }
    fn assemble(&self) -> Option<Bytes> {
        if !self.complete() {
            return None;
        }
        let mut out = BytesMut::with_capacity(self.bytes);
        for data in self.packets.values() {
            out.extend_from_slice(data);
        }
        Some(out.freeze())
    }
}

/// The reassembler.
#[derive(Default)]
pub struct FrameAssembler {
    pending: Vec<Partial>,
    highest: Option<u64>,
    /// Packets at or below this extended seq belong to frames already emitted.
    emitted_upto: Option<u64>,
    /// Recent sequence numbers that carried no frame data (padding): not a loss when missing
    /// between two frames.
    padding: VecDeque<u64>,
}

/// Padding sequence numbers remembered.
const PADDING_MEMORY: usize = 64;

impl FrameAssembler {
    /// A fresh assembler.
    pub fn new() -> Self {
        Self::default()
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.highest {
            None => (1u64 << 16) + seq as u64,
            Some(h) => {
                let base = h & !0xffff;
                let cands = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
                let mut best = base + seq as u64;
                for c in cands {
                    let v = c.wrapping_add(seq as u64);
                    if v.abs_diff(h) < best.abs_diff(h) {
                        best = v;
                    }
                }
                best
            }
        };
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }

    /// Adds one RTP packet; returns the frames it finished (in order, lost ones included).
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<Frame> {
        let ext = self.extend(seq);
        let mut out = Vec::new();
        if self.emitted_upto.is_some_and(|e| ext <= e) {
            return out; // late duplicate or retransmission of a frame already handed on
        }
        if payload.is_empty() {
            // Padding (bandwidth probing): its number is used, no frame is.
            self.padding.push_back(ext);
            if self.padding.len() > PADDING_MEMORY {
                self.padding.pop_front();
            }
            return out;
        }
        let Some((starts, hdr)) = parse_descriptor(payload) else {
            return out; // malformed: the frame will be reported lost when it cannot complete
        };
        let idx = match self.pending.iter().position(|p| p.ts == ts) {
            Some(i) => i,
            None => {
                self.pending.push(Partial {
                    ts,
                    packets: BTreeMap::new(),
                    bytes: 0,
                    first: None,
                    last: None,
                    oversized: false,
                });
                self.pending.len() - 1
            }
        };
        let part = &mut self.pending[idx];
        if part.oversized {
            part.keep_span_only(ext);
            return out;
        }
        if part.packets.contains_key(&ext) {
            return out; // a duplicate
        }
        let body = &payload[hdr..];
        if part.packets.len() >= MAX_FRAME_PACKETS || part.bytes + body.len() > MAX_FRAME_BYTES {
            tracing::debug!(
                ts,
                packets = part.packets.len(),
                bytes = part.bytes,
                "VP8 frame over its bounds; dropped"
            );
            part.oversized = true;
            part.keep_span_only(ext);
            return out;
        }
        part.bytes += body.len();
        part.packets.insert(ext, Bytes::copy_from_slice(body));
        if starts {
            part.first = Some(ext);
        }
        if marker {
            part.last = Some(ext);
        }
        self.pending.sort_by_key(Partial::min_seq);
        // Emit everything up to the newest complete frame; older open frames are lost.
        if let Some(done) = (0..self.pending.len())
            .rev()
            .find(|&i| self.pending[i].complete())
        {
            let drained: Vec<Partial> = self.pending.drain(..=done).collect();
            for p in drained {
                let data = p.assemble();
                // A whole frame lost (every packet of it, often its only one) leaves no partial:
                // only the gap in sequence numbers before this one shows it. The decoder must
                // not go on from a reference it never got.
                if let (Some(e), Some(first), true) = (self.emitted_upto, p.first, data.is_some())
                    && (e + 1..first).any(|seq| !self.padding.contains(&seq))
                {
                    out.push(Frame {
                        ts: p.ts.wrapping_sub(1),
                        data: Bytes::new(),
                        complete: false,
                    });
                }
                let upto = p.last.unwrap_or_else(|| p.max_seq());
                self.emitted_upto = Some(self.emitted_upto.map_or(upto, |e| e.max(upto)));
                out.push(match data {
                    Some(data) => Frame {
                        ts: p.ts,
                        data,
                        complete: true,
                    },
                    None => Frame {
                        ts: p.ts,
                        data: Bytes::new(),
                        complete: false,
                    },
                });
            }
        }
        while self.pending.len() > MAX_PENDING {
            let p = self.pending.remove(0);
            let upto = p.max_seq();
            self.emitted_upto = Some(self.emitted_upto.map_or(upto, |e| e.max(upto)));
            out.push(Frame {
                ts: p.ts,
                data: Bytes::new(),
                complete: false,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal descriptor: S bit on the first packet, PID 0, no extensions.
    fn pkt(start: bool, body: &[u8]) -> Vec<u8> {
        let mut v = vec![if start { 0x10 } else { 0x00 }];
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn descriptor_lengths() {
        assert_eq!(parse_descriptor(&[0x10, 0xaa]), Some((true, 1)));
        // X, I with 15-bit picture id, L, T/K.
        assert_eq!(
            parse_descriptor(&[0x90, 0xf0, 0x81, 0x23, 0x05, 0x20, 0xaa]),
            Some((true, 6))
        );
        assert_eq!(parse_descriptor(&[0x90, 0x80, 0x05, 0xaa]), Some((true, 3)));
        assert_eq!(
            parse_descriptor(&[0x11, 0xaa]),
            Some((false, 1)),
            "pid 1 is not a frame start"
        );
        assert_eq!(parse_descriptor(&[0x90]), None);
        assert_eq!(parse_descriptor(&[]), None);
    }

    #[test]
    fn in_order_frames() {
        let mut a = FrameAssembler::new();
        assert!(a.push(10, 100, false, &pkt(true, b"ab")).is_empty());
        let f = a.push(11, 100, true, &pkt(false, b"cd"));
        assert_eq!(
            f,
            vec![Frame {
                ts: 100,
                data: Bytes::from_static(b"abcd"),
                complete: true
            }]
        );
        let f = a.push(12, 200, true, &pkt(true, b"x"));
        assert_eq!(f[0].data, Bytes::from_static(b"x"));
    }

    #[test]
    fn reordered_packets_complete_the_frame() {
        let mut a = FrameAssembler::new();
        assert!(a.push(12, 100, true, &pkt(false, b"3")).is_empty());
        assert!(a.push(10, 100, false, &pkt(true, b"1")).is_empty());
        let f = a.push(11, 100, false, &pkt(false, b"2"));
        assert_eq!(
            f,
            vec![Frame {
                ts: 100,
                data: Bytes::from_static(b"123"),
                complete: true
            }]
        );
    }

    #[test]
    fn a_frame_past_its_bounds_is_dropped_and_its_packets_not_kept() {
        let mut a = FrameAssembler::new();
        let body = vec![0u8; 1200];
        // A publisher that never ends a frame: the packets stop being kept at the bound.
        a.push(1, 100, false, &pkt(true, &body));
        for seq in 2..(MAX_FRAME_PACKETS as u16 + 500) {
            assert!(a.push(seq, 100, false, &pkt(false, &body)).is_empty());
        }
        let kept: usize = a.pending.iter().map(|p| p.packets.len()).sum();
        assert!(kept <= 2, "{kept} packets kept");
        // The next frame completes; the oversized one is reported lost.
        let next = MAX_FRAME_PACKETS as u16 + 500;
        let f = a.push(next, 200, true, &pkt(true, b"k"));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(!f[0].complete && f[0].ts == 100);
        assert!(f[1].complete && f[1].ts == 200);
    }

    #[test]
    fn a_frame_lost_whole_is_reported_from_the_sequence_gap() {
        let mut a = FrameAssembler::new();
        let f = a.push(1, 100, true, &pkt(true, b"a"));
        assert!(f.len() == 1 && f[0].complete);
        // Seq 2 (all of the frame at ts 200) never arrives; seq 3 is a whole frame.
        let f = a.push(3, 300, true, &pkt(true, b"c"));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(!f[0].complete, "the gap is reported as a lost frame first");
        assert!(f[1].complete && f[1].ts == 300);
        // Padding between frames is not a loss.
        assert!(a.push(4, 300, false, &[]).is_empty());
        let f = a.push(5, 400, true, &pkt(true, b"e"));
        assert!(f.len() == 1 && f[0].complete, "{f:?}");
    }

    #[test]
    fn loss_is_reported_when_a_newer_frame_completes() {
        let mut a = FrameAssembler::new();
        a.push(10, 100, false, &pkt(true, b"1"));
        // 11 lost; 12 ends frame 100.
        assert!(a.push(12, 100, true, &pkt(false, b"3")).is_empty());
        let f = a.push(13, 200, true, &pkt(true, b"n"));
        assert_eq!(f.len(), 2);
        assert!(!f[0].complete && f[0].ts == 100);
        assert!(f[1].complete && f[1].ts == 200);
        // The late packet of the lost frame is ignored.
        assert!(a.push(11, 100, false, &pkt(false, b"2")).is_empty());
    }

    #[test]
    fn sequence_wraps() {
        let mut a = FrameAssembler::new();
        a.push(65535, 7, false, &pkt(true, b"a"));
        let f = a.push(0, 7, true, &pkt(false, b"b"));
        assert_eq!(f[0].data, Bytes::from_static(b"ab"));
        let f = a.push(1, 8, true, &pkt(true, b"c"));
        assert!(f[0].complete);
    }

    #[test]
    fn duplicates_and_garbage_do_not_break_it() {
        let mut a = FrameAssembler::new();
        a.push(1, 5, false, &pkt(true, b"a"));
        a.push(1, 5, false, &pkt(true, b"a"));
        assert!(a.push(2, 5, false, &[]).is_empty());
        assert!(a.push(3, 5, false, &[0x90]).is_empty());
        let f = a.push(2, 5, true, &pkt(false, b"b"));
        assert_eq!(f[0].data, Bytes::from_static(b"ab"));
    }

    #[test]
    fn too_many_open_frames_are_dropped_as_lost() {
        let mut a = FrameAssembler::new();
        let mut lost = 0;
        for i in 0..6u16 {
            // Only the middle packet of each frame arrives.
            lost += a.push(i * 3 + 1, i as u32, false, &pkt(false, b"m")).len();
        }
        assert_eq!(lost, 6 - MAX_PENDING);
    }
}
