//! One input's audio on the room's 20 ms timeline: jitter buffer, Opus decoder, and what is left
//! of a packet longer than a tick.
//!
//! Senders may packetize Opus in 10, 20, 40 or 60 ms (up to 120 ms, what Opus allows; the SDP
//! says `minptime=10`). A tick takes 20 ms of samples: it pops as many packets as that needs
//! (two of 10 ms) or keeps the rest of a longer one for the next ticks (a 60 ms packet feeds
//! three). A lost packet is concealed for the duration of the last one received. Packets shorter
//! than 10 ms are refused at the door (counted as invalid): the buffer's depth is counted in
//! packets, and 2.5 ms ones would leave it shallower than a tick.

use crate::jitter::{JitterBuffer, JitterStats, NO_TAG, Playout, PushOutcome};
use crate::opus_codec::{MAX_PACKET_SAMPLES, OpusDecoder};
use crate::{FRAME_SAMPLES, MixerError, SAMPLE_RATE};

/// Shortest packet duration accepted, in samples (10 ms).
pub const MIN_PACKET_SAMPLES: usize = 480;

/// An RFC 6464 level (−dBov) at or past which a packet counts as quiet: 10 dB under the level at
/// which the mixer starts hearing someone (`activity::SPEAKING_ON_DBOV`, −45), so a quiet
/// packet of someone not speaking would not reach the mix anyway and is not decoded.
pub const QUIET_LEVEL: u8 = 55;

/// What one tick of an input played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Decoded or concealed audio (all or part of the frame).
    Sound,
    /// Nothing: not started, buffering, or a long gap.
    Silence,
}

/// One publisher's audio playout.
pub struct AudioInput {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    /// Decoded samples of the current packet; `carry[start..end]` are still to play.
    carry: Box<[i16; MAX_PACKET_SAMPLES]>,
    start: usize,
    end: usize,
    /// Duration of the last packet played, in samples: what a lost one is concealed as.
    packet_samples: usize,
    /// The jitter target in 20 ms frames, and the packet duration (samples) the buffer is sized
    /// for: its depth counts packets, so a sender of 10 or 60 ms packets gets a buffer of as many
    /// milliseconds as one of 20 ms packets.
    target_frames: usize,
    sized_for: usize,
    /// Counters of buffers replaced when the packet duration changed.
    past: JitterStats,
    /// Packets refused for their duration (under 10 ms or unreadable).
    refused: u64,
    /// Quiet packets played as silence without decoding.
    quiet_skipped: u64,
    /// The last packet played was quiet and skipped: a sender in DTX (RFC 7587: a packet every
    /// 400 ms or so in silence, sequence numbers contiguous) leaves gaps after such packets, and
    /// concealing silence gives silence, so the gap plays as silence without the decoder.
    after_quiet: bool,
    /// Missing frames played as silence after a quiet packet instead of being concealed.
    dtx_silent: u64,
}

impl std::fmt::Debug for AudioInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioInput")
            .field("jitter", &self.jitter)
            .field("packet_samples", &self.packet_samples)
            .finish_non_exhaustive()
    }
}

/// The duration of an Opus packet in samples at 48 kHz, if it is one we play.
fn duration(packet: &[u8]) -> Option<usize> {
    opus::packet::get_nb_samples(packet, SAMPLE_RATE)
        .ok()
        .filter(|n| (MIN_PACKET_SAMPLES..=MAX_PACKET_SAMPLES).contains(n))
}

impl AudioInput {
    /// An input whose jitter buffer starts playing at `target` packets.
    pub fn new(target: usize) -> Result<Self, MixerError> {
        Ok(Self {
            jitter: JitterBuffer::new(target),
            decoder: OpusDecoder::new()?,
            carry: Box::new([0; MAX_PACKET_SAMPLES]),
            start: 0,
            end: 0,
            packet_samples: FRAME_SAMPLES,
            target_frames: target,
            sized_for: FRAME_SAMPLES,
            past: JitterStats::default(),
            refused: 0,
            quiet_skipped: 0,
            after_quiet: false,
            dtx_silent: 0,
        })
    }

    /// Offers one RTP payload (an Opus packet). Never panics, whatever the input.
    pub fn push(&mut self, seq: u16, payload: &[u8]) -> PushOutcome {
        self.push_with_level(seq, payload, None)
    }

    /// [`AudioInput::push`] with the packet's RFC 6464 audio level (0..=127, −dBov) when the
    /// sender gave one.
    pub fn push_with_level(&mut self, seq: u16, payload: &[u8], level: Option<u8>) -> PushOutcome {
        let d = match duration(payload) {
            Some(d) => d,
            None if payload.is_empty() => FRAME_SAMPLES, // refused below, as the buffer does
            None => {
                self.refused += 1;
                return PushOutcome::Invalid;
            }
        };
        if d != self.sized_for {
            self.resize_for(d);
        }
        let tag = level.map_or(NO_TAG, |l| l.min(127));
        self.jitter.push_tagged(seq, payload, tag)
    }

    /// Quiet packets played as silence without being decoded, since the start.
    pub fn quiet_skipped(&self) -> u64 {
        self.quiet_skipped
    }

    /// Missing frames after a quiet packet (a DTX gap) played as silence without concealment.
    pub fn dtx_silent(&self) -> u64 {
        self.dtx_silent
    }

    /// A new buffer holding the same time for packets of `samples` (the sender changed its
    /// packet duration: rare; what the old buffer held is dropped, as at a stream restart).
    fn resize_for(&mut self, samples: usize) {
        let packets = (self.target_frames * FRAME_SAMPLES)
            .div_ceil(samples)
            .max(1);
        let old = std::mem::replace(&mut self.jitter, JitterBuffer::new(packets));
        self.past += old.stats();
        self.past.resets += 1;
        self.sized_for = samples;
        (self.start, self.end) = (0, 0);
    }

    /// The jitter buffer's counters; packets refused for their duration count as invalid.
    pub fn stats(&self) -> JitterStats {
        let mut s = self.past;
        s += self.jitter.stats();
        s.invalid += self.refused;
        s
    }

    /// Plays this tick's 20 ms into `out` (zeros where nothing plays). A packet that does not
    /// decode is concealed and counted in `decode_errors`. With `skip_quiet` (the input is not
    /// speaking), a packet whose audio level says it is quiet ([`QUIET_LEVEL`]) plays as silence
    /// without being decoded: silence is free.
    pub fn play(
        &mut self,
        out: &mut [i16; FRAME_SAMPLES],
        decode_errors: &mut u64,
        skip_quiet: bool,
    ) -> Tick {
        self.advance(Some(out), decode_errors, skip_quiet)
    }

    /// Lets this tick's 20 ms pass without decoding (a muted input keeps its place at the live
    /// edge).
    pub fn skip(&mut self) {
        self.advance(None, &mut 0, false);
    }

    fn advance(
        &mut self,
        mut out: Option<&mut [i16; FRAME_SAMPLES]>,
        errors: &mut u64,
        skip_quiet: bool,
    ) -> Tick {
        let decode = out.is_some();
        let mut filled = 0;
        let mut played = false;
        while filled < FRAME_SAMPLES {
            if self.start < self.end {
                let n = (FRAME_SAMPLES - filled).min(self.end - self.start);
                if let Some(o) = out.as_deref_mut() {
                    o[filled..filled + n].copy_from_slice(&self.carry[self.start..self.start + n]);
                }
                self.start += n;
                filled += n;
                played = true;
                continue;
            }
            let lost = self.packet_samples;
            let tag = self.jitter.next_tag();
            let got = match self.jitter.pop() {
                Playout::Silence => break,
                Playout::Packet(pkt) => {
                    let n = duration(pkt).unwrap_or(lost);
                    self.packet_samples = n;
                    self.after_quiet = decode && skip_quiet && tag != NO_TAG && tag >= QUIET_LEVEL;
                    if self.after_quiet {
                        self.quiet_skipped += 1;
                        self.carry[..n].fill(0);
                        Ok(n)
                    } else if decode {
                        self.decoder.decode(pkt, &mut self.carry[..]).map(|_| n)
                    } else {
                        Ok(n)
                    }
                }
                Playout::Fec(_) | Playout::Plc if decode && skip_quiet && self.after_quiet => {
                    self.dtx_silent += 1;
                    self.carry[..lost].fill(0);
                    Ok(lost)
                }
                Playout::Fec(next) if decode => self
                    .decoder
                    .decode_fec(next, &mut self.carry[..lost])
                    .map(|()| lost),
                Playout::Plc if decode => {
                    self.decoder.conceal(&mut self.carry[..lost]).map(|()| lost)
                }
                Playout::Fec(_) | Playout::Plc => Ok(lost),
            };
            self.end = match got {
                Ok(n) => n,
                Err(_) => {
                    // A corrupt packet is treated like a lost one.
                    *errors += 1;
                    if self.decoder.conceal(&mut self.carry[..lost]).is_err() {
                        self.carry[..lost].fill(0);
                    }
                    lost
                }
            };
            self.start = 0;
        }
        if let Some(o) = out {
            o[filled..].fill(0);
        }
        if played { Tick::Sound } else { Tick::Silence }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opus::{Application, Channels};

    /// A 440 Hz tone at 48 kHz cut into Opus packets of `ms` milliseconds.
    fn packets(ms: usize, total_ms: usize) -> Vec<Vec<u8>> {
        let mut enc = opus::Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip).unwrap();
        let n = ms * 48;
        (0..total_ms / ms)
            .map(|k| {
                let pcm: Vec<i16> = (0..n)
                    .map(|i| {
                        let t = (k * n + i) as f32 / 48_000.0;
                        (8000.0 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()) as i16
                    })
                    .collect();
                enc.encode_vec(&pcm, 4000).unwrap()
            })
            .collect()
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    /// Feeds `ms`-long packets in real time (one tick = 20 ms) and returns the RMS of each tick.
    fn run(ms: usize, lose: &[usize]) -> (Vec<f64>, JitterStats) {
        let mut input = AudioInput::new(3).unwrap();
        let pkts = packets(ms, 2000);
        let mut out = [0i16; FRAME_SAMPLES];
        let mut levels = Vec::new();
        let mut errors = 0;
        let mut sent = 0;
        for tick in 0..100 {
            // Everything due by the end of this tick has arrived.
            while sent < pkts.len() && sent * ms < (tick + 1) * 20 {
                if !lose.contains(&sent) {
                    input.push(sent as u16, &pkts[sent]);
                }
                sent += 1;
            }
            input.play(&mut out, &mut errors, false);
            levels.push(rms(&out));
        }
        assert_eq!(errors, 0);
        (levels, input.stats())
    }

    #[test]
    fn every_packet_duration_from_10_to_60_ms_plays_continuously() {
        for ms in [10, 20, 40, 60] {
            let (levels, stats) = run(ms, &[]);
            // Once playing (after the initial fill), every tick carries the tone: no gaps, no
            // half-silent ticks from padding, no overflow drops from a too-fast pop.
            let playing: Vec<f64> = levels.iter().copied().skip_while(|l| *l < 1.0).collect();
            assert!(
                playing.len() >= 100 - 10,
                "{ms} ms: started late: {levels:?}"
            );
            let quiet = playing[2..].iter().filter(|l| **l < 3000.0).count();
            assert_eq!(quiet, 0, "{ms} ms: quiet ticks: {levels:?}");
            assert_eq!(stats.overflow_dropped, 0, "{ms} ms: {stats:?}");
            assert_eq!(stats.late, 0, "{ms} ms: {stats:?}");
        }
    }

    #[test]
    fn a_lost_long_packet_is_concealed_for_its_whole_duration() {
        // Losing one 60 ms packet mid-stream: its three ticks are concealed (FEC or PLC), the
        // stream goes on in step afterwards.
        let (levels, stats) = run(60, &[10]);
        let (_, clean) = run(60, &[]);
        // One more concealment than the same run without the loss (a run may end on one: the
        // packets stop at 1 980 ms).
        assert_eq!(
            stats.plc + stats.fec,
            clean.plc + clean.fec + 1,
            "{stats:?}"
        );
        let playing: Vec<f64> = levels.iter().copied().skip_while(|l| *l < 1.0).collect();
        assert!(playing[2..].iter().all(|l| *l > 500.0), "{levels:?}");
    }

    #[test]
    fn quiet_packets_are_not_decoded_unless_asked() {
        let pkts = packets(20, 400);
        let mut input = AudioInput::new(2).unwrap();
        let mut out = [0i16; FRAME_SAMPLES];
        let mut errors = 0;
        let mut loud = 0;
        for (t, pkt) in pkts.iter().enumerate().take(18) {
            // One packet a tick, alternately marked quiet (level 100, -100 dBov) and loud (10).
            let level = if t % 2 == 0 { 100 } else { 10 };
            input.push_with_level(t as u16, pkt, Some(level));
            // Not speaking: quiet ones skipped. Speaking (the caller says so): all decoded.
            let skip = t < 9;
            if input.play(&mut out, &mut errors, skip) == Tick::Sound && rms(&out) > 1000.0 {
                loud += 1;
            }
        }
        let skipped = input.quiet_skipped();
        assert!(
            (3..=5).contains(&skipped),
            "quiet packets skipped while not speaking: {skipped}"
        );
        assert!(
            loud >= 12,
            "the loud ones and, while speaking, the quiet ones play: {loud}"
        );
        // Without a level nothing is skipped.
        let mut plain = AudioInput::new(2).unwrap();
        for (t, p) in pkts.iter().enumerate().take(10) {
            plain.push(t as u16, p);
            plain.play(&mut out, &mut errors, true);
        }
        assert_eq!(plain.quiet_skipped(), 0);
    }

    #[test]
    fn a_dtx_gap_after_a_quiet_packet_plays_silence_without_concealing_and_speech_resumes() {
        // DTX as a browser sends it: in silence one quiet packet (level 127) every 400 ms,
        // sequence numbers contiguous; then a talk spurt at 50 packets a second.
        let tone = packets(20, 1000);
        let mut input = AudioInput::new(2).unwrap();
        let mut out = [0i16; FRAME_SAMPLES];
        let mut errors = 0;
        let mut seq = 0u16;
        for tick in 0..100 {
            if tick % 20 == 0 {
                input.push_with_level(seq, &tone[0], Some(127));
                seq += 1;
            }
            input.play(&mut out, &mut errors, true);
            assert!(out.iter().all(|&x| x == 0), "silence plays as silence");
        }
        assert!(input.quiet_skipped() >= 2, "{}", input.quiet_skipped());
        assert!(
            input.dtx_silent() >= 5,
            "gaps after quiet packets are silence"
        );
        assert_eq!(
            input.stats().plc,
            input.dtx_silent(),
            "no other concealment"
        );
        let before = input.dtx_silent();
        // The spurt: loud within the buffer's target plus a tick, and nothing concealed as silence.
        let mut loud_from = None;
        for (t, pkt) in tone.iter().enumerate().skip(1).take(20) {
            input.push_with_level(seq, pkt, Some(10));
            seq += 1;
            input.play(&mut out, &mut errors, true);
            if loud_from.is_none() && rms(&out) > 1000.0 {
                loud_from = Some(t);
            }
        }
        assert!(
            loud_from.is_some_and(|t| t <= 4),
            "speech resumes: {loud_from:?}"
        );
        assert_eq!(input.dtx_silent(), before);
        assert_eq!(errors, 0);
    }

    #[test]
    fn packets_under_10_ms_are_refused() {
        let mut input = AudioInput::new(2).unwrap();
        let p = packets(5, 20);
        assert_eq!(input.push(0, &p[0]), PushOutcome::Invalid);
        assert_eq!(input.push(1, &[0xff, 0xff, 0xff]), PushOutcome::Invalid);
        assert_eq!(input.stats().invalid, 2);
        // A muted input skips without decoding and keeps its place.
        let p = packets(20, 200);
        for (i, pkt) in p.iter().enumerate() {
            input.push(i as u16, pkt);
        }
        for _ in 0..5 {
            input.skip();
        }
        assert_eq!(input.stats().accepted, 10);
    }
}
