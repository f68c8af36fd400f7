//! Thin wrappers over libopus fixing the formats the room uses: 48 kHz mono,
//! 20 ms frames of [`FRAME_SAMPLES`] i16 samples.

use std::sync::Arc;

use opus::{Application, Bitrate, Channels};

use crate::{FRAME_SAMPLES, MixerError, SAMPLE_RATE};

/// Largest Opus packet the encoder may produce for one 20 ms frame.
const MAX_PACKET: usize = 1500;
/// Longest packet duration Opus allows (120 ms at 48 kHz).
pub const MAX_PACKET_SAMPLES: usize = 5760;
/// Loss rate the encoder assumes; libopus only spends bits on in-band FEC
/// when this is non-zero.
const EXPECTED_LOSS_PERC: i32 = 5;

/// Opus encoder for one outgoing mono stream (VOIP, in-band FEC on, no DTX).
pub struct OpusEncoder {
    inner: opus::Encoder,
    out: Box<[u8; MAX_PACKET]>,
    loss_perc: i32,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// `bitrate` in bit/s, `complexity` 0..=10.
    pub fn new(bitrate: i32, complexity: i32) -> Result<Self, MixerError> {
        let mut inner = opus::Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::Bits(bitrate))?;
        inner.set_complexity(complexity)?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(EXPECTED_LOSS_PERC)?;
        Ok(Self {
            inner,
            out: Box::new([0; MAX_PACKET]),
            loss_perc: EXPECTED_LOSS_PERC,
        })
    }

    /// The loss (percent) the receivers report: in-band FEC is sized for at least
    /// [`EXPECTED_LOSS_PERC`] and at most 30 %.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), MixerError> {
        let p = i32::from(percent).clamp(EXPECTED_LOSS_PERC, 30);
        if p != self.loss_perc {
            self.inner.set_packet_loss_perc(p)?;
            self.loss_perc = p;
        }
        Ok(())
    }

    /// Encodes one 20 ms frame (exactly [`FRAME_SAMPLES`] samples).
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Arc<[u8]>, MixerError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(MixerError::InvalidFrame(format!(
                "opus encode wants {FRAME_SAMPLES} samples, got {}",
                pcm.len()
            )));
        }
        let n = self.inner.encode(pcm, &mut self.out[..])?;
        Ok(Arc::from(&self.out[..n]))
    }

    /// Samples of algorithmic delay (pre-skip for a container).
    pub fn lookahead(&mut self) -> Result<i32, MixerError> {
        Ok(self.inner.get_lookahead()?)
    }

    /// Forgets the signal history (as if newly created).
    pub fn reset(&mut self) -> Result<(), MixerError> {
        Ok(self.inner.reset_state()?)
    }
}

/// Opus decoder producing 48 kHz mono 20 ms frames (stereo packets are downmixed).
pub struct OpusDecoder {
    inner: opus::Decoder,
    scratch: Box<[i16; MAX_PACKET_SAMPLES]>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A fresh decoder.
    pub fn new() -> Result<Self, MixerError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, Channels::Mono)?,
            scratch: Box::new([0; MAX_PACKET_SAMPLES]),
        })
    }

    /// Decodes one packet into `out` and returns how many samples the packet held (its
    /// duration). Samples past `out`'s length are cut, a shorter packet leaves the rest of `out`
    /// zero: give `out` room for [`MAX_PACKET_SAMPLES`] to keep every sample.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, MixerError> {
        if packet.is_empty() {
            // libopus treats an empty packet as loss; callers mean data here.
            return Err(MixerError::InvalidFrame("empty opus packet".into()));
        }
        let n = self.inner.decode(packet, &mut self.scratch[..], false)?;
        let kept = n.min(out.len());
        out[..kept].copy_from_slice(&self.scratch[..kept]);
        out[kept..].fill(0);
        Ok(n)
    }

    /// Recovers the frame *before* `next_packet` from its in-band FEC data
    /// (falls back to PLC inside libopus when the packet carries none). `out`'s length is the
    /// missing duration (a multiple of 2.5 ms).
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<(), MixerError> {
        if next_packet.is_empty() {
            return self.conceal(out);
        }
        // For FEC the output length must be exactly the missing duration.
        self.inner.decode(next_packet, out, true)?;
        Ok(())
    }

    /// Packet loss concealment for one missing packet of `out.len()` samples.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<(), MixerError> {
        self.inner.decode(&[], out, false)?;
        Ok(())
    }
}

/// Two consecutive 20 ms Opus packets as one 40 ms packet (RFC 6716 3.2.2 and 3.2.3: code 1 for
/// two frames of one size, code 2 for two sizes), as libopus's repacketizer would make it: half the
/// packets for the same audio. `None` when they cannot share a packet: either is not a single
/// frame (code 0) with data, or their TOC bytes differ (another mode, bandwidth or frame size).
pub fn pair_frames(first: &[u8], second: &[u8]) -> Option<Arc<[u8]>> {
    let (&toc, a) = first.split_first()?;
    let (&toc2, b) = second.split_first()?;
    if toc & 0x03 != 0 || toc != toc2 || a.is_empty() || b.is_empty() {
        return None;
    }
    // A frame is at most 1275 bytes (RFC 6716 3.2.1); a packet of ours never comes near.
    if a.len() > 1275 || b.len() > 1275 {
        return None;
    }
    let mut out = Vec::with_capacity(3 + a.len() + b.len());
    if a.len() == b.len() {
        out.push(toc | 0x01);
    } else {
        out.push(toc | 0x02);
        // The first frame's length: one byte below 252, else two (252 + len % 4, len / 4 - 63).
        if a.len() < 252 {
            out.push(a.len() as u8);
        } else {
            let low = 252 + (a.len() & 0x03);
            out.push(low as u8);
            out.push(((a.len() - low) >> 2) as u8);
        }
    }
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    Some(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, amp: f32, frame: usize) -> [i16; FRAME_SAMPLES] {
        let mut pcm = [0i16; FRAME_SAMPLES];
        for (i, s) in pcm.iter_mut().enumerate() {
            let t = (frame * FRAME_SAMPLES + i) as f32 / SAMPLE_RATE as f32;
            *s = (amp * (2.0 * std::f32::consts::PI * freq * t).sin()) as i16;
        }
        pcm
    }

    fn rms(pcm: &[i16]) -> f64 {
        (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn round_trip_keeps_energy_and_fec_and_plc_produce_sound() {
        let mut enc = OpusEncoder::new(32_000, 5).expect("encoder");
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut out = [0i16; FRAME_SAMPLES];
        let mut packets = Vec::new();
        for f in 0..20 {
            packets.push(enc.encode(&tone(440.0, 8000.0, f)).expect("encode"));
        }
        for p in &packets[..10] {
            dec.decode(p, &mut out).expect("decode");
        }
        let r = rms(&out);
        // 8000 amplitude sine: RMS ~5657.
        assert!((4500.0..7000.0).contains(&r), "rms {r}");
        dec.decode_fec(&packets[11], &mut out).expect("fec");
        assert!(rms(&out) > 1000.0, "fec rms {}", rms(&out));
        dec.decode(&packets[11], &mut out).expect("decode");
        dec.conceal(&mut out).expect("plc");
        assert!(rms(&out) > 500.0, "plc rms {}", rms(&out));
    }

    #[test]
    fn output_is_mono_20ms() {
        let mut enc = OpusEncoder::new(32_000, 5).expect("encoder");
        let p = enc.encode(&[0i16; FRAME_SAMPLES]).expect("encode");
        assert_eq!(opus::packet::get_nb_channels(&p).ok(), Some(Channels::Mono));
        assert_eq!(
            opus::packet::get_nb_samples(&p, SAMPLE_RATE).ok(),
            Some(FRAME_SAMPLES)
        );
        assert!(enc.encode(&[0i16; 10]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = OpusDecoder::new().expect("decoder");
        let mut out = [0i16; FRAME_SAMPLES];
        assert!(dec.decode(&[], &mut out).is_err());
        let mut x: u32 = 7;
        for len in 1..300usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            // Either decodes to something or errors; must not panic.
            let _ = dec.decode(&bytes, &mut out);
            let _ = dec.decode_fec(&bytes, &mut out);
        }
    }

    #[test]
    fn two_frames_paired_decode_as_the_two_did_one_after_the_other() {
        let mut enc = OpusEncoder::new(32_000, 5).expect("encoder");
        let packets: Vec<Arc<[u8]>> = (0..40)
            .map(|f| enc.encode(&tone(440.0, 8000.0, f)).expect("encode"))
            .collect();
        let mut apart = OpusDecoder::new().expect("decoder");
        let mut paired = OpusDecoder::new().expect("decoder");
        let mut a = vec![0i16; FRAME_SAMPLES];
        let mut p = vec![0i16; MAX_PACKET_SAMPLES];
        let (mut one_size, mut two_sizes) = (0, 0);
        for two in packets.chunks(2) {
            let pair = pair_frames(&two[0], &two[1]).expect("same encoder, same TOC");
            if two[0].len() == two[1].len() {
                one_size += 1;
            } else {
                two_sizes += 1;
            }
            assert_eq!(
                pair.len(),
                two[0].len() + two[1].len() - usize::from(two[0].len() == two[1].len())
            );
            assert_eq!(
                paired.decode(&pair, &mut p).expect("decode"),
                2 * FRAME_SAMPLES
            );
            for (i, frame) in two.iter().enumerate() {
                assert_eq!(apart.decode(frame, &mut a).expect("decode"), FRAME_SAMPLES);
                let half = &p[i * FRAME_SAMPLES..(i + 1) * FRAME_SAMPLES];
                assert_eq!(
                    half,
                    &a[..],
                    "frame {i} of a pair decodes to the same samples"
                );
            }
        }
        assert!(
            two_sizes > 0,
            "VBR frames of two sizes were paired ({one_size} of one size)"
        );
        // A long first frame takes a two-byte length.
        let long: Vec<u8> = std::iter::once(packets[0][0])
            .chain((0..300).map(|i| i as u8))
            .collect();
        let pair = pair_frames(&long, &packets[1]).expect("pair");
        assert_eq!(pair[0] & 0x03, 2);
        assert_eq!(usize::from(pair[1]) + 4 * usize::from(pair[2]), 300);
        assert_eq!(&pair[3..303], &long[1..]);
        // What cannot share a packet: a DTX frame (TOC alone), another TOC, a packet of two frames.
        assert!(pair_frames(&packets[0][..1], &packets[1]).is_none());
        let mut other = packets[1].to_vec();
        other[0] ^= 0x80;
        assert!(pair_frames(&packets[0], &other).is_none());
        assert!(pair_frames(&pair, &packets[1]).is_none());
        assert!(pair_frames(&[], &packets[1]).is_none());
    }
}
