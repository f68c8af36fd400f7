//! Planar I420 (YUV 4:2:0, 8 bit) pictures.
//!
//! [`I420Frame`] owns one contiguous buffer `Y | U | V` with tight strides
//! (`width`, `width / 2`) and even dimensions: exactly the layout libvpx
//! wraps without copying. [`I420View`] borrows planes with arbitrary strides
//! (a decoded ffmpeg frame) and is what the scaler reads.

use ffmpeg_next::format::Pixel;
use ffmpeg_next::frame;

use crate::MixerError;

/// A YUV triple (BT.601 limited range unless stated otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Yuv {
    /// Luma.
    pub y: u8,
    /// Blue-difference chroma.
    pub u: u8,
    /// Red-difference chroma.
    pub v: u8,
}

impl Yuv {
    /// Limited-range black.
    pub const BLACK: Yuv = Yuv {
        y: 16,
        u: 128,
        v: 128,
    };

    /// BT.601 limited-range conversion from 8-bit RGB.
    pub fn from_rgb(r: u8, g: u8, b: u8) -> Yuv {
        let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
        let y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b;
        let u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b;
        let v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b;
        let c = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        Yuv {
            y: c(y),
            u: c(u),
            v: c(v),
        }
    }

    /// Largest per-component difference.
    pub fn distance(&self, o: &Yuv) -> u8 {
        self.y
            .abs_diff(o.y)
            .max(self.u.abs_diff(o.u))
            .max(self.v.abs_diff(o.v))
    }
}

/// An owned I420 picture with even dimensions and tight strides.
#[derive(Clone, PartialEq, Eq)]
pub struct I420Frame {
    width: u32,
    height: u32,
    data: Vec<u8>,
}

impl std::fmt::Debug for I420Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I420Frame({}x{})", self.width, self.height)
    }
}

impl I420Frame {
    /// A picture filled with `colour`. Dimensions must be even and non-zero.
    pub fn new(width: u32, height: u32, colour: Yuv) -> Result<Self, MixerError> {
        if width == 0
            || height == 0
            || !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
            || width > 8192
            || height > 8192
        {
            return Err(MixerError::InvalidFrame(format!(
                "I420 dimensions {width}x{height} must be even and in 2..=8192"
            )));
        }
        let (w, h) = (width as usize, height as usize);
        let mut data = vec![0u8; w * h * 3 / 2];
        data[..w * h].fill(colour.y);
        data[w * h..w * h * 5 / 4].fill(colour.u);
        data[w * h * 5 / 4..].fill(colour.v);
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The whole `Y | U | V` buffer.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn luma_len(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// `(Y, U, V)` planes.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let l = self.luma_len();
        let (y, uv) = self.data.split_at(l);
        let (u, v) = uv.split_at(l / 4);
        (y, u, v)
    }

    /// `(Y, U, V)` planes, mutable.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let l = self.luma_len();
        let (y, uv) = self.data.split_at_mut(l);
        let (u, v) = uv.split_at_mut(l / 4);
        (y, u, v)
    }

    /// Fills the whole picture with one colour.
    pub fn fill(&mut self, colour: Yuv) {
        let (y, u, v) = self.planes_mut();
        y.fill(colour.y);
        u.fill(colour.u);
        v.fill(colour.v);
    }

    /// Fills a rectangle (clipped to the picture; odd edges round down to even).
    pub fn fill_rect(&mut self, x: u32, y: u32, w: u32, h: u32, colour: Yuv) {
        let (x, y) = (x & !1, y & !1);
        let x1 = (x + w).min(self.width) & !1;
        let y1 = (y + h).min(self.height) & !1;
        if x >= x1 || y >= y1 {
            return;
        }
        let stride = self.width as usize;
        let (yp, up, vp) = self.planes_mut();
        for row in y as usize..y1 as usize {
            yp[row * stride + x as usize..row * stride + x1 as usize].fill(colour.y);
        }
        let cs = stride / 2;
        for row in (y / 2) as usize..(y1 / 2) as usize {
            let r = row * cs + (x / 2) as usize..row * cs + (x1 / 2) as usize;
            up[r.clone()].fill(colour.u);
            vp[r].fill(colour.v);
        }
    }

    /// The colour at a pixel (chroma of its 2x2 block), if inside.
    pub fn pixel(&self, x: u32, y: u32) -> Option<Yuv> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let (yp, up, vp) = self.planes();
        let (w, cx, cy) = (self.width as usize, (x / 2) as usize, (y / 2) as usize);
        Some(Yuv {
            y: yp[y as usize * w + x as usize],
            u: up[cy * (w / 2) + cx],
            v: vp[cy * (w / 2) + cx],
        })
    }

    /// Mean colour of a rectangle around `(x, y)` (radius `r`, clipped),
    /// which smooths over coding noise when checking decoded pictures.
    pub fn mean_around(&self, x: u32, y: u32, r: u32) -> Option<Yuv> {
        let (x0, y0) = (x.saturating_sub(r), y.saturating_sub(r));
        let (x1, y1) = ((x + r).min(self.width - 1), (y + r).min(self.height - 1));
        let (mut sy, mut su, mut sv, mut n) = (0u64, 0u64, 0u64, 0u64);
        for py in y0..=y1 {
            for px in x0..=x1 {
                let c = self.pixel(px, py)?;
                sy += u64::from(c.y);
                su += u64::from(c.u);
                sv += u64::from(c.v);
                n += 1;
            }
        }
        if n == 0 {
            return None;
        }
        Some(Yuv {
            y: (sy / n) as u8,
            u: (su / n) as u8,
            v: (sv / n) as u8,
        })
    }

    /// A borrowed view of this picture.
    pub fn view(&self) -> I420View<'_> {
        let (y, u, v) = self.planes();
        let w = self.width as usize;
        I420View {
            width: self.width,
            height: self.height,
            planes: [y, u, v],
            strides: [w, w / 2, w / 2],
        }
    }

    /// Copies a view (any strides) into an owned frame. Odd dimensions are
    /// cropped by one pixel.
    pub fn from_view(view: &I420View<'_>) -> Result<Self, MixerError> {
        let mut out = I420Frame::new(view.width & !1, view.height & !1, Yuv::BLACK)?;
        let (w, h) = (out.width as usize, out.height as usize);
        let (yp, up, vp) = out.planes_mut();
        for row in 0..h {
            yp[row * w..(row + 1) * w].copy_from_slice(&view.row(0, row)[..w]);
        }
        for row in 0..h / 2 {
            up[row * w / 2..(row + 1) * w / 2].copy_from_slice(&view.row(1, row)[..w / 2]);
            vp[row * w / 2..(row + 1) * w / 2].copy_from_slice(&view.row(2, row)[..w / 2]);
        }
        Ok(out)
    }

    /// Copies a decoded ffmpeg picture.
    pub fn from_video(frame: &frame::Video) -> Result<Self, MixerError> {
        Self::from_view(&I420View::from_video(frame)?)
    }
}

/// Borrowed I420 planes with arbitrary strides.
#[derive(Debug, Clone, Copy)]
pub struct I420View<'a> {
    /// Width in pixels (may be odd).
    pub width: u32,
    /// Height in pixels (may be odd).
    pub height: u32,
    planes: [&'a [u8]; 3],
    strides: [usize; 3],
}

impl<'a> I420View<'a> {
    /// Checks that the planes are large enough for the dimensions.
    pub fn new(
        width: u32,
        height: u32,
        planes: [&'a [u8]; 3],
        strides: [usize; 3],
    ) -> Result<Self, MixerError> {
        let (cw, ch) = (width.div_ceil(2) as usize, height.div_ceil(2) as usize);
        let dims = [(width as usize, height as usize), (cw, ch), (cw, ch)];
        for (i, &(w, h)) in dims.iter().enumerate() {
            // Checked: a stride comes from C (a negative linesize would be huge here).
            let needed = strides[i]
                .checked_mul(h.saturating_sub(1))
                .and_then(|v| v.checked_add(w));
            if width == 0
                || height == 0
                || strides[i] < w
                || needed.is_none_or(|n| planes[i].len() < n)
            {
                return Err(MixerError::InvalidFrame(format!(
                    "plane {i} too small for {width}x{height}"
                )));
            }
        }
        Ok(Self {
            width,
            height,
            planes,
            strides,
        })
    }

    /// Wraps a decoded ffmpeg frame (must be YUV420P / YUVJ420P).
    pub fn from_video(frame: &'a frame::Video) -> Result<Self, MixerError> {
        if !matches!(frame.format(), Pixel::YUV420P | Pixel::YUVJ420P) || frame.planes() < 3 {
            return Err(MixerError::InvalidFrame(format!(
                "unsupported decoded format {:?}",
                frame.format()
            )));
        }
        Self::new(
            frame.width(),
            frame.height(),
            [frame.data(0), frame.data(1), frame.data(2)],
            [frame.stride(0), frame.stride(1), frame.stride(2)],
        )
    }

    /// Width of a plane (0 = luma).
    pub fn plane_width(&self, plane: usize) -> usize {
        if plane == 0 {
            self.width as usize
        } else {
            self.width.div_ceil(2) as usize
        }
    }

    /// Height of a plane (0 = luma).
    pub fn plane_height(&self, plane: usize) -> usize {
        if plane == 0 {
            self.height as usize
        } else {
            self.height.div_ceil(2) as usize
        }
    }

    /// One row of a plane, exactly `plane_width` long.
    pub fn row(&self, plane: usize, row: usize) -> &'a [u8] {
        let start = row * self.strides[plane];
        &self.planes[plane][start..start + self.plane_width(plane)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_rect_and_pixel() {
        let mut f = I420Frame::new(16, 8, Yuv::BLACK).expect("frame");
        let red = Yuv::from_rgb(255, 0, 0);
        f.fill_rect(4, 2, 6, 4, red);
        assert_eq!(f.pixel(4, 2), Some(red));
        assert_eq!(f.pixel(9, 5), Some(red));
        assert_eq!(f.pixel(10, 5), Some(Yuv::BLACK));
        assert_eq!(f.pixel(3, 2), Some(Yuv::BLACK));
        assert_eq!(f.pixel(16, 0), None);
        // Clipped, no panic.
        f.fill_rect(14, 6, 100, 100, red);
        assert_eq!(f.pixel(15, 7), Some(red));
        assert!(I420Frame::new(15, 8, Yuv::BLACK).is_err());
    }

    #[test]
    fn colours_are_bt601_limited() {
        assert_eq!(Yuv::from_rgb(0, 0, 0), Yuv::BLACK);
        assert_eq!(
            Yuv::from_rgb(255, 255, 255),
            Yuv {
                y: 235,
                u: 128,
                v: 128
            }
        );
        assert_eq!(
            Yuv::from_rgb(255, 0, 0),
            Yuv {
                y: 82,
                u: 90,
                v: 240
            }
        );
    }

    #[test]
    fn view_round_trip_with_padding() {
        let mut f = I420Frame::new(8, 4, Yuv::BLACK).expect("frame");
        f.fill_rect(
            0,
            0,
            2,
            2,
            Yuv {
                y: 200,
                u: 10,
                v: 20,
            },
        );
        let g = I420Frame::from_view(&f.view()).expect("copy");
        assert_eq!(f, g);
        // Strided planes: 10-byte luma rows for an 8-wide picture.
        let y = [1u8; 40];
        let uv = [2u8; 12];
        let v = I420View::new(8, 4, [&y, &uv, &uv], [10, 6, 6]).expect("view");
        assert_eq!(v.row(0, 3).len(), 8);
        assert!(I420View::new(8, 4, [&y[..20], &uv, &uv], [10, 6, 6]).is_err());
        assert!(I420View::new(8, 4, [&y, &uv, &uv], [usize::MAX, 6, 6]).is_err());
    }
}
