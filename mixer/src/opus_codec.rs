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
}
