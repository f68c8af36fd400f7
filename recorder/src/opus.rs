//! Opus facts the container needs: the `OpusHead` identification header
//! (RFC 7845 §5.1), which is WebM's Opus CodecPrivate, and the duration of a
//! packet read from its TOC byte (RFC 6716 §3.1).

/// Length of an `OpusHead` with channel mapping family 0.
pub(crate) const OPUS_HEAD_LEN: usize = 19;

/// Longest duration one Opus packet may carry: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES: u32 = 5760;

/// Builds the 19-byte `OpusHead` for mapping family 0 (mono or stereo).
///
/// `input_rate` is informational (decoders always run at 48 kHz); the
/// output gain is 0 dB.
pub(crate) fn opus_head(channels: u8, pre_skip: u16, input_rate: u32) -> [u8; OPUS_HEAD_LEN] {
    let mut h = [0u8; OPUS_HEAD_LEN];
    h[..8].copy_from_slice(b"OpusHead");
    h[8] = 1; // version
    h[9] = channels;
    h[10..12].copy_from_slice(&pre_skip.to_le_bytes());
    h[12..16].copy_from_slice(&input_rate.to_le_bytes());
    // [16..18] output gain 0, [18] mapping family 0.
    h
}

/// Samples at 48 kHz carried by one Opus packet, from its TOC byte and
/// frame count; `None` if the packet is empty or malformed.
pub(crate) fn packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame size in units of 2.5 ms (120 samples at 48 kHz).
    let frame_units: u32 = match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [4, 8, 16, 24][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [4, 8][usize::from(config % 2)],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [1, 2, 4, 8][usize::from(config % 4)],
    };
    let frames: u32 = match toc & 0x3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let samples = frames * frame_units * 120;
    (samples > 0 && samples <= MAX_PACKET_SAMPLES).then_some(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_head_layout() {
        let h = opus_head(1, 312, 48_000);
        assert_eq!(&h[..8], b"OpusHead");
        assert_eq!(h[8], 1);
        assert_eq!(h[9], 1);
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 312);
        assert_eq!(u32::from_le_bytes([h[12], h[13], h[14], h[15]]), 48_000);
        assert_eq!(&h[16..], &[0, 0, 0]);
    }

    #[test]
    fn packet_durations_from_toc() {
        // (packet, samples)
        let table: &[(&[u8], Option<u32>)] = &[
            (&[], None),
            (&[0x08], Some(960)),        // SILK NB 20 ms, 1 frame
            (&[0x18], Some(2880)),       // SILK NB 60 ms
            (&[0x09], Some(1920)),       // SILK 20 ms, 2 frames (code 1)
            (&[0x78], Some(960)),        // hybrid FB 20 ms (config 15)
            (&[0x70], Some(480)),        // hybrid FB 10 ms (config 14)
            (&[0xf8], Some(960)),        // CELT FB 20 ms (config 31)
            (&[0xe0], Some(120)),        // CELT FB 2.5 ms (config 28)
            (&[0xfb, 0x03], Some(2880)), // code 3, 3 frames of 20 ms
            (&[0xfb], None),             // code 3 without count byte
            (&[0xfb, 0x00], None),       // code 3, 0 frames
            (&[0xfb, 0x07], None),       // 7 x 20 ms > 120 ms
            (&[0xe3, 0x30], Some(5760)), // 48 x 2.5 ms = 120 ms
        ];
        for (packet, want) in table {
            assert_eq!(packet_samples(packet), *want, "packet {packet:02x?}");
        }
    }
}
