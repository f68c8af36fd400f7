//! What libvpx's `cpu-used` buys on a camera-like composite: encode time per frame, bitrate
//! reached and luma PSNR, at the tier sizes and rates the server uses.
//!
//! `cargo run --release -p mixer --example encoder_speed` (one thread, as the server encodes;
//! 300 frames per setting, the first 30 not timed).

use mixer::{I420Frame, I420View, Vp8Decoder, Vp8Encoder, Vp8EncoderConfig, Yuv};
use std::time::Instant;

/// A 2x2 grid of camera-like tiles (each a drifting texture in its own colour with sensor
/// noise), as a room of three or four composes it.
fn composite(w: u32, h: u32, n: u32, seed: &mut u32) -> I420Frame {
    let mut f = I420Frame::new(w, h, Yuv::from_rgb(0, 0, 0)).expect("frame");
    let (y, u, v) = f.planes_mut();
    for row in 0..h {
        for col in 0..w {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (*seed >> 28) as i32 - 8;
            let tile = (col * 2 / w) + 2 * (row * 2 / h);
            let band = ((col + row + n * 3 + tile * 17) / 12) % 4;
            let luma = 70 + tile as i32 * 25 + band as i32 * 18 + noise;
            y[(row * w + col) as usize] = luma.clamp(16, 235) as u8;
        }
    }
    let cw = w / 2;
    for (i, (pu, pv)) in u.iter_mut().zip(v.iter_mut()).enumerate() {
        let (col, row) = (i as u32 % cw, i as u32 / cw);
        let tile = (col * 4 / w) + 2 * (row * 4 / h);
        *pu = (90 + tile * 20) as u8;
        *pv = (160 - tile * 15) as u8;
    }
    f
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        99.0
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

fn main() {
    const FRAMES: u32 = 300;
    const WARM: u32 = 30;
    println!("| size | kbit/s | cpu-used | ms per frame | kbit/s reached | luma PSNR dB |");
    println!("|---|---|---|---|---|---|");
    for (w, h, kbps) in [(640, 360, 800), (640, 360, 400), (320, 180, 150)] {
        let mut seed = 11;
        let frames: Vec<I420Frame> = (0..FRAMES).map(|n| composite(w, h, n, &mut seed)).collect();
        for cpu_used in [-6, -8, -12, -16] {
            let cfg = Vp8EncoderConfig {
                cpu_used,
                ..Vp8EncoderConfig::realtime(w, h, 15, kbps)
            };
            let mut enc = Vp8Encoder::new(cfg).expect("encoder");
            let mut dec = Vp8Decoder::new().expect("decoder");
            let (mut secs, mut bytes, mut quality, mut measured) = (0.0, 0usize, 0.0, 0u32);
            for (n, f) in frames.iter().enumerate() {
                let t = Instant::now();
                let out = enc.encode(f, n as i64 * 1000 / 15).expect("encode");
                let dt = t.elapsed().as_secs_f64();
                let Some(out) = out else { continue };
                let pic = dec.decode(&out.data).expect("decode");
                if n as u32 >= WARM {
                    secs += dt;
                    bytes += out.data.len();
                    measured += 1;
                    if let Some(pic) = pic {
                        let view = I420View::from_video(pic).expect("view");
                        let got = I420Frame::from_view(&view).expect("frame");
                        quality += psnr(got.planes().0, f.planes().0);
                    }
                }
            }
            let timed = f64::from(FRAMES - WARM);
            println!(
                "| {w}x{h} | {kbps} | {cpu_used} | {:.2} | {:.0} | {:.1} |",
                secs * 1000.0 / timed,
                bytes as f64 * 8.0 * 15.0 / timed / 1000.0,
                quality / f64::from(measured.max(1)),
            );
        }
    }
}
