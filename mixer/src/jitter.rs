//! Per-input audio jitter buffer, keyed by RTP sequence number.
//!
//! Invariants:
//! - One [`JitterBuffer::pop`] per 20 ms room tick; every pop advances the
//!   playout point by exactly one sequence number once playing (fixed latency:
//!   a frame that has not arrived in time is concealed, and arrives late).
//! - Memory is bounded: a ring of `target + MARGIN_FRAMES + 1` slots whose
//!   payload buffers are reused (no allocation after warm-up); payloads longer
//!   than [`MAX_AUDIO_PAYLOAD`] or empty are rejected.
//! - When more than `target + MARGIN_FRAMES` frames are buffered (sender clock
//!   faster, burst after a stall) the oldest are dropped down to `target`.
//! - After [`MAX_CONCEALED`] consecutive missing frames the output is
//!   silence; if the buffer is also empty it starts over (re-anchors on the
//!   next packet and waits for `target` frames again), so a sender that pauses
//!   and resumes with contiguous sequence numbers is picked up again.
//! - A sequence jump of more than [`RESET_GAP`] in either direction is taken as
//!   a restarted stream only when the next packet confirms it; a single stray
//!   far packet is dropped as late.

/// Largest accepted audio payload in bytes (one MTU; an Opus frame is at most 1275).
pub const MAX_AUDIO_PAYLOAD: usize = 1500;
/// Frames the buffer may hold beyond its target before the oldest are dropped.
pub const MARGIN_FRAMES: usize = 4;
/// Consecutive missing frames concealed with FEC/PLC before output turns to silence.
pub const MAX_CONCEALED: u32 = 5;
/// Sequence jump (in frames, either direction) treated as a new stream once confirmed.
pub const RESET_GAP: u64 = 50;

/// What to play for this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    /// The frame arrived: decode it.
    Packet(&'a [u8]),
    /// The frame is missing but the next one is buffered: decode this (the
    /// next packet) with `decode_fec` to recover the missing frame.
    Fec(&'a [u8]),
    /// The frame is missing and nothing to recover it from: Opus packet loss
    /// concealment.
    Plc,
    /// Nothing to play (not started, buffering, or a long gap): silence, and
    /// the input counts as not speaking.
    Silence,
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored for playout.
    Accepted,
    /// Same sequence number already buffered: dropped.
    Duplicate,
    /// Its playout time has passed: dropped.
    Late,
    /// Empty or oversized payload: dropped.
    Invalid,
    /// Confirmed sequence discontinuity: the buffer restarted on this packet.
    Reset,
}

/// Counters for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets stored.
    pub accepted: u64,
    /// Packets dropped as duplicates.
    pub duplicate: u64,
    /// Packets dropped as too late.
    pub late: u64,
    /// Packets dropped as empty or oversized.
    pub invalid: u64,
    /// Packets dropped because the buffer exceeded its bound.
    pub overflow_dropped: u64,
    /// Stream restarts after a confirmed sequence jump.
    pub resets: u64,
    /// Frames recovered from the next packet's FEC.
    pub fec: u64,
    /// Frames concealed with PLC.
    pub plc: u64,
}

impl std::ops::AddAssign for JitterStats {
    /// Sums counters (over inputs, or over the buffers one input has had).
    fn add_assign(&mut self, o: JitterStats) {
        self.accepted += o.accepted;
        self.duplicate += o.duplicate;
        self.late += o.late;
        self.invalid += o.invalid;
        self.overflow_dropped += o.overflow_dropped;
        self.resets += o.resets;
        self.fec += o.fec;
        self.plc += o.plc;
    }
}

#[derive(Debug, Default)]
struct Slot {
    seq: u64,
    filled: bool,
    /// The caller's tag of the packet ([`JitterBuffer::push_tagged`]).
    tag: u8,
    data: Vec<u8>,
}

/// The tag of a packet pushed without one.
pub const NO_TAG: u8 = u8::MAX;

/// Reorders, de-duplicates and paces one input's audio packets.
#[derive(Debug)]
pub struct JitterBuffer {
    target: usize,
    max_depth: usize,
    slots: Vec<Slot>,
    /// A playout point exists (`next` is valid).
    anchored: bool,
    /// Initial fill reached; one frame leaves per pop.
    playing: bool,
    next: u64,
    /// Highest extended sequence number stored; also the unwrap reference.
    highest: Option<u64>,
    /// Last frame played from a real packet: the lateness bar while re-anchoring.
    last_real: Option<u64>,
    missing_run: u32,
    far_candidate: Option<u64>,
    /// Tag of the packet being pushed.
    incoming_tag: u8,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer that starts playing once `target` frames (>= 1) are buffered.
    pub fn new(target: usize) -> Self {
        let target = target.max(1);
        let max_depth = target + MARGIN_FRAMES;
        Self {
            target,
            max_depth,
            slots: (0..=max_depth).map(|_| Slot::default()).collect(),
            anchored: false,
            playing: false,
            next: 0,
            highest: None,
            last_real: None,
            missing_run: 0,
            far_candidate: None,
            incoming_tag: NO_TAG,
            stats: JitterStats::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Frames currently spanned by the buffer (holes included).
    pub fn depth(&self) -> usize {
        match (self.anchored, self.highest) {
            (true, Some(h)) if h >= self.next => (h - self.next + 1) as usize,
            _ => 0,
        }
    }

    /// True once the initial fill is reached and frames are being played.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Extends a 16-bit sequence number to the one closest to the highest seen.
    fn unwrap(&self, seq: u16) -> u64 {
        match self.highest {
            // Start far from zero so that earlier packets never underflow.
            None => (1u64 << 32) + u64::from(seq),
            Some(h) => {
                let delta = i64::from(seq.wrapping_sub(h as u16) as i16);
                h.saturating_add_signed(delta)
            }
        }
    }

    fn slot_index(&self, ext: u64) -> usize {
        (ext % self.slots.len() as u64) as usize
    }

    fn is_filled(&self, ext: u64) -> bool {
        let s = &self.slots[self.slot_index(ext)];
        s.filled && s.seq == ext
    }

    fn store(&mut self, ext: u64, payload: &[u8]) {
        let i = self.slot_index(ext);
        let slot = &mut self.slots[i];
        slot.seq = ext;
        slot.filled = true;
        slot.tag = self.incoming_tag;
        slot.data.clear();
        slot.data.extend_from_slice(payload);
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.stats.accepted += 1;
    }

    fn clear(&mut self) {
        for s in &mut self.slots {
            s.filled = false;
        }
    }

    /// A packet far from the current stream: drop it unless the previous push
    /// was also far and just before it, which confirms a restarted stream.
    fn far(&mut self, ext: u64, payload: &[u8]) -> PushOutcome {
        match self.far_candidate {
            Some(c) if ext > c && ext - c <= 5 => {
                self.clear();
                self.highest = None;
                self.anchored = true;
                self.playing = false;
                self.next = ext;
                self.last_real = None;
                self.missing_run = 0;
                self.far_candidate = None;
                self.store(ext, payload);
                self.stats.resets += 1;
                PushOutcome::Reset
            }
            _ => {
                self.far_candidate = Some(ext);
                self.stats.late += 1;
                PushOutcome::Late
            }
        }
    }

    /// [`JitterBuffer::push`] with a one-byte tag kept with the packet and returned by
    /// [`JitterBuffer::played_tag`] when it plays (the audio input keeps the RFC 6464 level there).
    pub fn push_tagged(&mut self, seq: u16, payload: &[u8], tag: u8) -> PushOutcome {
        self.incoming_tag = tag;
        let outcome = self.push(seq, payload);
        self.incoming_tag = NO_TAG;
        outcome
    }

    /// The tag of the packet the next [`JitterBuffer::pop`] plays if it returns
    /// [`Playout::Packet`] ([`NO_TAG`] when it will not play a packet).
    pub fn next_tag(&self) -> u8 {
        if self.anchored && self.is_filled(self.next) {
            self.slots[self.slot_index(self.next)].tag
        } else {
            NO_TAG
        }
    }

    /// Offers one RTP payload. Never panics, whatever the input.
    pub fn push(&mut self, seq: u16, payload: &[u8]) -> PushOutcome {
        if payload.is_empty() || payload.len() > MAX_AUDIO_PAYLOAD {
            self.stats.invalid += 1;
            return PushOutcome::Invalid;
        }
        let ext = self.unwrap(seq);
        if let Some(h) = self.highest
            && ext > h
            && ext - h > RESET_GAP
        {
            return self.far(ext, payload);
        }
        // The earliest sequence number that may still be played.
        let floor = if self.anchored {
            if self.playing {
                Some(self.next)
            } else {
                // Still filling: an earlier packet may move the anchor back,
                // as long as it stays inside the window and after what was played.
                let by_window = self
                    .highest
                    .map(|h| (h + 1).saturating_sub(self.max_depth as u64));
                match (by_window, self.last_real) {
                    (Some(w), Some(r)) => Some(w.max(r + 1)),
                    (w, r) => w.or(r.map(|r| r + 1)),
                }
            }
        } else {
            self.last_real.map(|r| r + 1)
        };
        if let Some(f) = floor
            && ext < f
        {
            if f - ext > RESET_GAP {
                return self.far(ext, payload);
            }
            self.stats.late += 1;
            return PushOutcome::Late;
        }
        self.far_candidate = None;
        if self.is_filled(ext) {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        if !self.anchored {
            self.anchored = true;
            self.next = ext;
        } else if !self.playing && ext < self.next {
            self.next = ext;
        }
        if ext + 1 > self.next + self.max_depth as u64 {
            // Too far ahead: drop the oldest so that `target` frames remain,
            // counting this one.
            let new_next = ext + 1 - self.target as u64;
            for s in self.next..new_next.min(self.next + self.slots.len() as u64) {
                if self.is_filled(s) {
                    let i = self.slot_index(s);
                    self.slots[i].filled = false;
                    self.stats.overflow_dropped += 1;
                }
            }
            self.next = new_next;
        }
        self.store(ext, payload);
        PushOutcome::Accepted
    }

    /// Takes what to play for this tick (call exactly once per tick).
    pub fn pop(&mut self) -> Playout<'_> {
        if !self.anchored {
            return Playout::Silence;
        }
        if !self.playing {
            if self.depth() >= self.target {
                self.playing = true;
            } else {
                return Playout::Silence;
            }
        }
        let s = self.next;
        self.next += 1;
        if self.is_filled(s) {
            self.missing_run = 0;
            self.last_real = Some(s);
            let i = self.slot_index(s);
            let slot = &mut self.slots[i];
            // The data stays in place until the slot is reused by a later push,
            // which cannot happen while the returned borrow lives.
            slot.filled = false;
            return Playout::Packet(&slot.data);
        }
        self.missing_run += 1;
        let buffer_empty = self.highest.is_none_or(|h| h < self.next);
        if self.missing_run > MAX_CONCEALED {
            if buffer_empty {
                // The sender stopped (or paused): start over on its next packet.
                self.anchored = false;
                self.playing = false;
                self.missing_run = 0;
            }
            return Playout::Silence;
        }
        if self.is_filled(s + 1) {
            self.stats.fec += 1;
            let i = self.slot_index(s + 1);
            return Playout::Fec(&self.slots[i].data);
        }
        self.stats.plc += 1;
        Playout::Plc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u16) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    /// What each pop played, as the sequence number encoded in the payload.
    #[derive(Debug, PartialEq)]
    enum Out {
        Pkt(u16),
        Fec(u16),
        Plc,
        Sil,
    }

    fn pop(jb: &mut JitterBuffer) -> Out {
        let seq = |d: &[u8]| u16::from_be_bytes([d[0], d[1]]);
        match jb.pop() {
            Playout::Packet(d) => Out::Pkt(seq(d)),
            Playout::Fec(d) => Out::Fec(seq(d)),
            Playout::Plc => Out::Plc,
            Playout::Silence => Out::Sil,
        }
    }

    #[test]
    fn waits_for_target_then_plays_in_order() {
        let mut jb = JitterBuffer::new(2);
        assert_eq!(pop(&mut jb), Out::Sil);
        jb.push(10, &p(10));
        assert_eq!(pop(&mut jb), Out::Sil);
        jb.push(11, &p(11));
        assert_eq!(pop(&mut jb), Out::Pkt(10));
        jb.push(12, &p(12));
        assert_eq!(pop(&mut jb), Out::Pkt(11));
        assert_eq!(pop(&mut jb), Out::Pkt(12));
    }

    #[test]
    fn reorders() {
        let mut jb = JitterBuffer::new(3);
        for s in [5u16, 7, 6] {
            assert_eq!(jb.push(s, &p(s)), PushOutcome::Accepted);
        }
        assert_eq!(pop(&mut jb), Out::Pkt(5));
        assert_eq!(pop(&mut jb), Out::Pkt(6));
        assert_eq!(pop(&mut jb), Out::Pkt(7));
    }

    #[test]
    fn earlier_packet_during_fill_moves_anchor_back() {
        let mut jb = JitterBuffer::new(2);
        jb.push(8, &p(8));
        jb.push(7, &p(7));
        assert_eq!(pop(&mut jb), Out::Pkt(7));
        assert_eq!(pop(&mut jb), Out::Pkt(8));
    }

    #[test]
    fn drops_duplicates() {
        let mut jb = JitterBuffer::new(2);
        assert_eq!(jb.push(1, &p(1)), PushOutcome::Accepted);
        assert_eq!(jb.push(1, &p(1)), PushOutcome::Duplicate);
        jb.push(2, &p(2));
        assert_eq!(pop(&mut jb), Out::Pkt(1));
        assert_eq!(pop(&mut jb), Out::Pkt(2));
        assert_eq!(jb.stats().duplicate, 1);
    }

    #[test]
    fn drops_late_packets() {
        let mut jb = JitterBuffer::new(2);
        for s in 1..=4u16 {
            jb.push(s, &p(s));
        }
        assert_eq!(pop(&mut jb), Out::Pkt(1));
        assert_eq!(pop(&mut jb), Out::Pkt(2));
        assert_eq!(jb.push(2, &p(2)), PushOutcome::Late);
        assert_eq!(jb.push(1, &p(1)), PushOutcome::Late);
        assert_eq!(pop(&mut jb), Out::Pkt(3));
    }

    #[test]
    fn missing_frame_uses_fec_when_next_is_buffered_else_plc() {
        let mut jb = JitterBuffer::new(2);
        jb.push(1, &p(1));
        jb.push(3, &p(3));
        assert_eq!(pop(&mut jb), Out::Pkt(1));
        // 2 is missing but 3 is here: recover 2 from 3's in-band FEC.
        assert_eq!(pop(&mut jb), Out::Fec(3));
        assert_eq!(pop(&mut jb), Out::Pkt(3));
        // 4 is missing and nothing follows: PLC.
        assert_eq!(pop(&mut jb), Out::Plc);
        assert_eq!(jb.stats().fec, 1);
        assert_eq!(jb.stats().plc, 1);
    }

    #[test]
    fn handles_sequence_wrap_around() {
        let mut jb = JitterBuffer::new(2);
        for s in [65534u16, 0, 65535, 1] {
            assert_eq!(jb.push(s, &p(s)), PushOutcome::Accepted, "seq {s}");
        }
        let played: Vec<Out> = (0..4).map(|_| pop(&mut jb)).collect();
        assert_eq!(
            played,
            vec![Out::Pkt(65534), Out::Pkt(65535), Out::Pkt(0), Out::Pkt(1)]
        );
        // Late detection also works across the wrap.
        assert_eq!(jb.push(65535, &p(65535)), PushOutcome::Late);
    }

    #[test]
    fn long_gap_turns_to_silence_then_resumes_on_contiguous_packets() {
        let mut jb = JitterBuffer::new(2);
        jb.push(1, &p(1));
        jb.push(2, &p(2));
        assert_eq!(pop(&mut jb), Out::Pkt(1));
        assert_eq!(pop(&mut jb), Out::Pkt(2));
        for _ in 0..MAX_CONCEALED {
            assert_eq!(pop(&mut jb), Out::Plc);
        }
        assert_eq!(pop(&mut jb), Out::Sil);
        assert_eq!(pop(&mut jb), Out::Sil);
        // The sender paused and resumes with the next sequence numbers.
        assert_eq!(jb.push(3, &p(3)), PushOutcome::Accepted);
        assert_eq!(pop(&mut jb), Out::Sil);
        jb.push(4, &p(4));
        assert_eq!(pop(&mut jb), Out::Pkt(3));
        assert_eq!(pop(&mut jb), Out::Pkt(4));
    }

    #[test]
    fn hole_longer_than_concealment_is_silence_then_plays_on() {
        let mut jb = JitterBuffer::new(4);
        for s in 1..=4u16 {
            jb.push(s, &p(s));
        }
        for s in 1..=4u16 {
            assert_eq!(pop(&mut jb), Out::Pkt(s));
        }
        // 5..=10 lost, 11 already here (inside the window, so no trimming).
        jb.push(11, &p(11));
        let got: Vec<Out> = (0..7).map(|_| pop(&mut jb)).collect();
        assert_eq!(
            got,
            vec![
                Out::Plc,
                Out::Plc,
                Out::Plc,
                Out::Plc,
                Out::Plc,
                Out::Sil,
                Out::Pkt(11)
            ]
        );
    }

    #[test]
    fn hole_beyond_the_window_is_skipped() {
        let mut jb = JitterBuffer::new(1);
        jb.push(1, &p(1));
        assert_eq!(pop(&mut jb), Out::Pkt(1));
        jb.push(30, &p(30));
        assert_eq!(pop(&mut jb), Out::Pkt(30));
    }

    #[test]
    fn overflow_drops_oldest_down_to_target() {
        let mut jb = JitterBuffer::new(2);
        for s in 0..20u16 {
            jb.push(s, &p(s));
            assert!(jb.depth() <= 2 + MARGIN_FRAMES, "depth {}", jb.depth());
        }
        assert_eq!(pop(&mut jb), Out::Pkt(15));
        assert!(jb.stats().overflow_dropped > 0);
    }

    #[test]
    fn confirmed_far_jump_restarts_single_stray_is_dropped() {
        let mut jb = JitterBuffer::new(1);
        jb.push(100, &p(100));
        assert_eq!(pop(&mut jb), Out::Pkt(100));
        // A single stray far packet is dropped...
        assert_eq!(jb.push(30000, &p(30000)), PushOutcome::Late);
        assert_eq!(jb.push(101, &p(101)), PushOutcome::Accepted);
        assert_eq!(pop(&mut jb), Out::Pkt(101));
        // ...two consecutive ones restart the stream.
        assert_eq!(jb.push(9000, &p(9000)), PushOutcome::Late);
        assert_eq!(jb.push(9001, &p(9001)), PushOutcome::Reset);
        assert_eq!(pop(&mut jb), Out::Pkt(9001));
    }

    #[test]
    fn rejects_empty_and_oversized_payloads() {
        let mut jb = JitterBuffer::new(1);
        assert_eq!(jb.push(1, &[]), PushOutcome::Invalid);
        assert_eq!(
            jb.push(1, &[0u8; MAX_AUDIO_PAYLOAD + 1]),
            PushOutcome::Invalid
        );
        assert_eq!(pop(&mut jb), Out::Sil);
    }

    #[test]
    fn random_sequences_never_panic_and_stay_bounded() {
        let mut jb = JitterBuffer::new(2);
        let mut x: u32 = 12345;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = (x % 40) as usize;
            jb.push((x >> 8) as u16, &vec![0u8; len]);
            if x.is_multiple_of(3) {
                let _ = jb.pop();
            }
            assert!(jb.depth() <= 2 + MARGIN_FRAMES);
        }
    }
}
