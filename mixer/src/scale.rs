//! Plain-Rust I420 scaler: area averaging when shrinking, bilinear when
//! enlarging, separable, 14-bit fixed-point weights.
//!
//! Why not swscale: ffmpeg-next's `SwsContext` wrapper is not `Send`, and the
//! room must be movable onto its media thread; tiles are small, so a
//! table-driven scaler costs well under a millisecond per tile. A [`Scaler`]
//! is built for one source size -> destination size and caches its tap
//! tables and row buffer (no allocation per frame).

use crate::MixerError;
use crate::image::{I420Frame, I420View};

const WEIGHT_BITS: u32 = 14;
const ONE: i32 = 1 << WEIGHT_BITS;

/// Taps for one axis: output `i` reads `count[i]` inputs from `start[i]`.
#[derive(Debug, Clone)]
struct Axis {
    start: Vec<u32>,
    count: Vec<u16>,
    /// Offset of output `i`'s weights in `weights`.
    offset: Vec<u32>,
    weights: Vec<i16>,
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let mut axis = Axis {
            start: Vec::with_capacity(dst),
            count: Vec::with_capacity(dst),
            offset: Vec::with_capacity(dst),
            weights: Vec::new(),
        };
        let scale = src as f64 / dst as f64;
        let mut w = Vec::new();
        for i in 0..dst {
            w.clear();
            let first;
            if scale > 1.0 {
                // Area average over [i*scale, (i+1)*scale).
                let a = i as f64 * scale;
                let b = ((i + 1) as f64 * scale).min(src as f64);
                first = a.floor() as usize;
                let last = (b.ceil() as usize).clamp(first + 1, src);
                for k in first..last {
                    let cover = (b.min((k + 1) as f64) - a.max(k as f64)).max(0.0);
                    w.push(cover / scale);
                }
            } else {
                // Bilinear, pixel centres aligned.
                let x = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
                first = x.floor() as usize;
                let frac = x - first as f64;
                w.push(1.0 - frac);
                if first + 1 < src {
                    w.push(frac);
                }
            }
            // Quantise so that the weights sum to exactly ONE.
            let mut q: Vec<i32> = w
                .iter()
                .map(|&v| (v * f64::from(ONE)).round() as i32)
                .collect();
            let err = ONE - q.iter().sum::<i32>();
            if let Some(m) = q.iter_mut().max() {
                *m += err;
            }
            axis.start.push(first as u32);
            axis.count.push(q.len() as u16);
            axis.offset.push(axis.weights.len() as u32);
            axis.weights.extend(q.iter().map(|&v| v as i16));
        }
        axis
    }

    #[inline]
    fn taps(&self, i: usize) -> (usize, &[i16]) {
        let o = self.offset[i] as usize;
        (
            self.start[i] as usize,
            &self.weights[o..o + self.count[i] as usize],
        )
    }
}

/// How a plane is scaled. The two exact ratios the server meets most (a picture already at its
/// tile's size; a 640x360 canvas or camera halved) have their own loops, which give the same
/// bytes as the table-driven path (its weights there are exactly 1, and 1/2 x 1/2) at a fraction
/// of its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Copy,
    Half,
    Table,
}

#[derive(Debug, Clone)]
struct PlaneScaler {
    h: Axis,
    v: Axis,
    path: Path,
    src_w: usize,
    dst_w: usize,
    dst_h: usize,
}

impl PlaneScaler {
    fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> Self {
        let path = if (src_w, src_h) == (dst_w, dst_h) {
            Path::Copy
        } else if (src_w, src_h) == (2 * dst_w, 2 * dst_h) {
            Path::Half
        } else {
            Path::Table
        };
        Self {
            h: Axis::new(src_w, dst_w),
            v: Axis::new(src_h, dst_h),
            path,
            src_w,
            dst_w,
            dst_h,
        }
    }

    fn run(&self, src: &I420View<'_>, plane: usize, tmp: &mut [i32], dst: &mut [u8]) {
        let w = self.dst_w;
        match self.path {
            Path::Copy => {
                for (oy, out) in dst.chunks_exact_mut(w).take(self.dst_h).enumerate() {
                    out.copy_from_slice(&src.row(plane, oy)[..w]);
                }
            }
            Path::Half => {
                for (oy, out) in dst.chunks_exact_mut(w).take(self.dst_h).enumerate() {
                    let (a, b) = (src.row(plane, 2 * oy), src.row(plane, 2 * oy + 1));
                    for ((o, a), b) in out.iter_mut().zip(a.chunks_exact(2)).zip(b.chunks_exact(2))
                    {
                        let sum =
                            u16::from(a[0]) + u16::from(a[1]) + u16::from(b[0]) + u16::from(b[1]);
                        *o = ((sum + 2) >> 2) as u8;
                    }
                }
            }
            Path::Table => self.run_table(src, plane, tmp, dst),
        }
    }

    /// Vertical pass into `tmp` (one source-width row per output row, in
    /// 14-bit fixed point), then horizontal into `dst`.
    fn run_table(&self, src: &I420View<'_>, plane: usize, tmp: &mut [i32], dst: &mut [u8]) {
        let tmp = &mut tmp[..self.src_w];
        for oy in 0..self.dst_h {
            let (y0, wv) = self.v.taps(oy);
            tmp.fill(0);
            for (k, &wt) in wv.iter().enumerate() {
                let row = src.row(plane, y0 + k);
                let wt = i32::from(wt);
                for (t, &p) in tmp.iter_mut().zip(row) {
                    *t += wt * i32::from(p);
                }
            }
            let out = &mut dst[oy * self.dst_w..(oy + 1) * self.dst_w];
            for (ox, o) in out.iter_mut().enumerate() {
                let (x0, wh) = self.h.taps(ox);
                let mut acc: i64 = 0;
                for (k, &wt) in wh.iter().enumerate() {
                    acc += i64::from(wt) * i64::from(tmp[x0 + k]);
                }
                let v = (acc + (1i64 << (2 * WEIGHT_BITS - 1))) >> (2 * WEIGHT_BITS);
                *o = v.clamp(0, 255) as u8;
            }
        }
    }
}

/// Scales I420 pictures of one fixed size to another.
#[derive(Debug, Clone)]
pub struct Scaler {
    src: (u32, u32),
    dst: (u32, u32),
    luma: PlaneScaler,
    chroma: PlaneScaler,
    tmp: Vec<i32>,
}

impl Scaler {
    /// A scaler from `src_w`x`src_h` (any size) to `dst_w`x`dst_h` (even).
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Result<Self, MixerError> {
        if src_w == 0
            || src_h == 0
            || dst_w == 0
            || dst_h == 0
            || !dst_w.is_multiple_of(2)
            || !dst_h.is_multiple_of(2)
        {
            return Err(MixerError::InvalidFrame(format!(
                "cannot scale {src_w}x{src_h} to {dst_w}x{dst_h}"
            )));
        }
        let (sw, sh, dw, dh) = (
            src_w as usize,
            src_h as usize,
            dst_w as usize,
            dst_h as usize,
        );
        Ok(Self {
            src: (src_w, src_h),
            dst: (dst_w, dst_h),
            luma: PlaneScaler::new(sw, sh, dw, dh),
            chroma: PlaneScaler::new(sw.div_ceil(2), sh.div_ceil(2), dw / 2, dh / 2),
            tmp: vec![0; sw],
        })
    }

    /// Source size this scaler was built for.
    pub fn src_size(&self) -> (u32, u32) {
        self.src
    }

    /// Destination size this scaler was built for.
    pub fn dst_size(&self) -> (u32, u32) {
        self.dst
    }

    /// Scales `src` into `dst`; both must have the sizes given at construction.
    pub fn scale(&mut self, src: &I420View<'_>, dst: &mut I420Frame) -> Result<(), MixerError> {
        if (src.width, src.height) != self.src || (dst.width(), dst.height()) != self.dst {
            return Err(MixerError::InvalidFrame(format!(
                "scaler built for {:?} -> {:?}, got {}x{} -> {}x{}",
                self.src,
                self.dst,
                src.width,
                src.height,
                dst.width(),
                dst.height()
            )));
        }
        let (y, u, v) = dst.planes_mut();
        self.luma.run(src, 0, &mut self.tmp, y);
        self.chroma.run(src, 1, &mut self.tmp, u);
        self.chroma.run(src, 2, &mut self.tmp, v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Yuv;

    #[test]
    fn solid_colour_stays_solid_in_all_directions() {
        let c = Yuv {
            y: 123,
            u: 45,
            v: 210,
        };
        let src = I420Frame::new(320, 180, c).expect("src");
        for (w, h) in [
            (212, 118),
            (640, 360),
            (26, 14),
            (320, 180),
            (2, 2),
            (998, 62),
        ] {
            let mut s = Scaler::new(320, 180, w, h).expect("scaler");
            let mut dst = I420Frame::new(w, h, Yuv::BLACK).expect("dst");
            s.scale(&src.view(), &mut dst).expect("scale");
            for (x, y) in [(0, 0), (w - 1, h - 1), (w / 2, h / 2)] {
                assert_eq!(dst.pixel(x, y), Some(c), "{w}x{h} at {x},{y}");
            }
        }
    }

    #[test]
    fn halving_averages_and_keeps_edges_in_place() {
        // Left half white, right half black: after halving, the boundary stays
        // at the middle and the averages are exact away from it.
        let mut src = I420Frame::new(64, 32, Yuv::BLACK).expect("src");
        src.fill_rect(
            0,
            0,
            32,
            32,
            Yuv {
                y: 235,
                u: 128,
                v: 128,
            },
        );
        let mut s = Scaler::new(64, 32, 32, 16).expect("scaler");
        let mut dst = I420Frame::new(32, 16, Yuv::BLACK).expect("dst");
        s.scale(&src.view(), &mut dst).expect("scale");
        assert_eq!(dst.pixel(15, 8).map(|p| p.y), Some(235));
        assert_eq!(dst.pixel(16, 8).map(|p| p.y), Some(16));
        // Odd source sizes (a decoder can output them) work too.
        let y = vec![100u8; 7 * 5];
        let uv = vec![128u8; 4 * 3];
        let view = I420View::new(7, 5, [&y, &uv, &uv], [7, 4, 4]).expect("view");
        let mut s = Scaler::new(7, 5, 4, 4).expect("scaler");
        let mut dst = I420Frame::new(4, 4, Yuv::BLACK).expect("dst");
        s.scale(&view, &mut dst).expect("scale");
        assert_eq!(dst.pixel(3, 3).map(|p| p.y), Some(100));
    }

    #[test]
    fn the_copy_and_halving_loops_give_the_table_paths_bytes() {
        let mut seed = 5u32;
        let mut noisy = |w: u32, h: u32| {
            let mut f = I420Frame::new(w, h, Yuv::BLACK).expect("frame");
            let (y, u, v) = f.planes_mut();
            for p in y.iter_mut().chain(u.iter_mut()).chain(v.iter_mut()) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *p = (seed >> 24) as u8;
            }
            f
        };
        for ((sw, sh), (dw, dh), path) in [
            ((640, 360), (320, 180), Path::Half),
            ((320, 180), (320, 180), Path::Copy),
            ((160, 90), (80, 46), Path::Table),
        ] {
            let src = noisy(sw, sh);
            let mut s = Scaler::new(sw, sh, dw, dh).expect("scaler");
            assert_eq!(s.luma.path, path);
            let mut fast = I420Frame::new(dw, dh, Yuv::BLACK).expect("dst");
            s.scale(&src.view(), &mut fast).expect("scale");
            let mut reference = I420Frame::new(dw, dh, Yuv::BLACK).expect("dst");
            let (y, u, v) = reference.planes_mut();
            let view = src.view();
            s.luma.run_table(&view, 0, &mut s.tmp, y);
            s.chroma.run_table(&view, 1, &mut s.tmp, u);
            s.chroma.run_table(&view, 2, &mut s.tmp, v);
            assert!(fast.data() == reference.data(), "{sw}x{sh} -> {dw}x{dh}");
        }
    }

    #[test]
    fn rejects_mismatched_sizes() {
        let src = I420Frame::new(32, 32, Yuv::BLACK).expect("src");
        let mut s = Scaler::new(64, 32, 32, 16).expect("scaler");
        let mut dst = I420Frame::new(32, 16, Yuv::BLACK).expect("dst");
        assert!(s.scale(&src.view(), &mut dst).is_err());
        assert!(Scaler::new(0, 1, 2, 2).is_err());
        assert!(Scaler::new(4, 4, 3, 2).is_err());
    }
}
