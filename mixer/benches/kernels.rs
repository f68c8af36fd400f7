//! Micro-benchmarks of the mixer's kernels: mix-minus (2..1000 inputs), tiling (1..25 tiles),
//! and what sharing an encoder saves. Run: `cargo bench -p mixer --bench kernels`.
//! Figures go in docs/benchmarks.md; nothing here is asserted.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mixer::{
    AudioMixer, Compositor, I420Frame, I420View, Layout, OpusEncoder, Scaler, Tile, TileContent,
    Vp8Decoder, Vp8Encoder, Vp8EncoderConfig, Yuv, layout,
};
use std::hint::black_box;

const FRAME: usize = 960;

fn tone(freq: f32, phase: usize) -> Vec<i16> {
    (0..FRAME)
        .map(|i| {
            (6000.0 * (2.0 * std::f32::consts::PI * freq * (phase + i) as f32 / 48_000.0).sin())
                as i16
        })
        .collect()
}

/// One tick of mix-minus for N inputs: sum once, then one limited mix per receiver.
fn mix_minus(c: &mut Criterion) {
    let mut g = c.benchmark_group("mix_minus_tick");
    for n in [2usize, 10, 50, 200, 1000] {
        let frames: Vec<Vec<i16>> = (0..n).map(|i| tone(200.0 + i as f32, i * 7)).collect();
        let mut mixer = AudioMixer::new();
        let mut out = vec![0i16; FRAME];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                mixer.clear();
                for f in &frames {
                    mixer.add(f);
                }
                for f in &frames {
                    mixer.render(Some(f), &mut out);
                    black_box(&out);
                }
            })
        });
    }
    g.finish();
}

/// Composing a 640x360 canvas from n live 320x180 inputs (every picture new each frame).
fn tiling(c: &mut Criterion) {
    let mut g = c.benchmark_group("compose_640x360");
    for n in [1usize, 4, 9, 16, 25] {
        let pictures: Vec<I420Frame> = (0..n)
            .map(|i| {
                I420Frame::new(320, 180, Yuv::from_rgb((i * 40) as u8, 90, 200)).expect("frame")
            })
            .collect();
        let rects = layout(n, Layout::Grid, 640, 360, 0);
        let mut comp = Compositor::new(640, 360).expect("compositor");
        let mut generation = 0u64;
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                generation += 1;
                let tiles: Vec<Tile<'_>> = pictures
                    .iter()
                    .zip(&rects)
                    .enumerate()
                    .map(|(i, (p, r))| Tile {
                        rect: *r,
                        content: TileContent::Picture {
                            source: i as u64,
                            generation,
                            view: p.view(),
                        },
                    })
                    .collect();
                black_box(comp.compose(&tiles));
            })
        });
    }
    g.finish();
}

/// What sharing saves: one encode serves every receiver of a tier / every silent receiver,
/// against one encode per receiver (what an MCU without sharing pays).
fn encoder_reuse(c: &mut Criterion) {
    let mut g = c.benchmark_group("encoder_reuse");
    g.sample_size(20);
    let mut canvas = I420Frame::new(640, 360, Yuv::from_rgb(30, 30, 30)).expect("frame");
    let receivers = 4;
    let mut shared = Vp8Encoder::new(Vp8EncoderConfig::realtime(640, 360, 15, 400)).expect("enc");
    let mut own: Vec<Vp8Encoder> = (0..receivers)
        .map(|_| Vp8Encoder::new(Vp8EncoderConfig::realtime(640, 360, 15, 400)).expect("enc"))
        .collect();
    let mut pts = 0i64;
    let moving = |canvas: &mut I420Frame, pts: i64| {
        // A moving block so that every frame has something to encode.
        canvas.fill(Yuv::from_rgb(30, 30, 30));
        let x = ((pts / 10) % 560) as u32 & !1;
        canvas.fill_rect(x, 100, 80, 80, Yuv::from_rgb(230, 200, 20));
    };
    g.bench_function("vp8_640x360_4_receivers_shared", |b| {
        b.iter(|| {
            pts += 66;
            moving(&mut canvas, pts);
            black_box(shared.encode(&canvas, pts).expect("encode"));
        })
    });
    g.bench_function("vp8_640x360_4_receivers_one_each", |b| {
        b.iter(|| {
            pts += 66;
            moving(&mut canvas, pts);
            for e in own.iter_mut() {
                black_box(e.encode(&canvas, pts).expect("encode"));
            }
        })
    });
    let mix = tone(440.0, 0);
    let mut opus_shared = OpusEncoder::new(32_000, 5).expect("opus");
    let mut opus_each: Vec<OpusEncoder> = (0..20)
        .map(|_| OpusEncoder::new(32_000, 5).expect("opus"))
        .collect();
    g.bench_function("opus_20_silent_receivers_shared", |b| {
        b.iter(|| black_box(opus_shared.encode(&mix).expect("encode")))
    });
    g.bench_function("opus_20_silent_receivers_one_each", |b| {
        b.iter(|| {
            for e in opus_each.iter_mut() {
                black_box(e.encode(&mix).expect("encode"));
            }
        })
    });
    g.finish();
}

/// Camera-like content (sensor noise over a moving gradient) at `w`x`h`, frame `n`.
fn camera_like(w: u32, h: u32, n: u32, seed: &mut u32) -> I420Frame {
    let mut f = I420Frame::new(w, h, Yuv::from_rgb(0, 0, 0)).expect("frame");
    let (y, u, v) = f.planes_mut();
    for row in 0..h {
        for col in 0..w {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = *seed >> 28;
            let base = (col + row + n * 6) % 200;
            y[(row * w + col) as usize] = (base + noise + 20) as u8;
        }
    }
    u.fill(110);
    v.fill(140);
    f
}

/// What one input frame costs the media thread by its resolution: VP8 decode plus the scale
/// into a 320x180 tile (a 4K publisher's frame arrives 15-30 times a second; the tick is 20 ms).
fn input_size(c: &mut Criterion) {
    let mut g = c.benchmark_group("input_frame_decode_and_scale");
    g.sample_size(10);
    for (w, h, kbps) in [
        (640, 360, 600),
        (1280, 720, 1500),
        (1920, 1080, 3000),
        (3840, 2160, 8000),
    ] {
        let mut enc = Vp8Encoder::new(Vp8EncoderConfig::realtime(w, h, 15, kbps)).expect("enc");
        let mut seed = 7;
        let frames: Vec<Vec<u8>> = (0..15)
            .filter_map(|n| {
                let f = camera_like(w, h, n, &mut seed);
                enc.encode(&f, i64::from(n) * 66)
                    .expect("encode")
                    .map(|e| e.data.to_vec())
            })
            .collect();
        let mut tile = I420Frame::new(320, 180, Yuv::from_rgb(0, 0, 0)).expect("tile");
        let mut scaler = Scaler::new(w, h, 320, 180).expect("scaler");
        g.bench_function(BenchmarkId::from_parameter(format!("{w}x{h}")), |b| {
            b.iter(|| {
                // The whole group from the keyframe; the figure is per frame.
                let mut dec = Vp8Decoder::new().expect("dec");
                for f in &frames {
                    if let Some(pic) = dec.decode(f).expect("decode") {
                        let view = I420View::from_video(pic).expect("view");
                        scaler.scale(&view, &mut tile).expect("scale");
                    }
                }
                black_box(&tile);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, mix_minus, tiling, encoder_reuse, input_size);
criterion_main!(benches);
