//! Tile geometry: pure functions from a tile count to rectangles.
//!
//! Invariants: every rectangle lies inside the canvas, rectangles do not
//! overlap, and all coordinates and sizes are even (I420 chroma is subsampled
//! 2x2, so even rectangles map to whole chroma pixels).

use crate::Layout;

/// Most tiles shown in the grid layout; later joiners are not shown (except
/// the active speaker, who replaces the last tile).
pub const MAX_GRID_TILES: usize = 25;
/// Most small tiles in the speaker layout's strip.
pub const MAX_STRIP_TILES: usize = 6;
/// The strip always has room for at least this many tiles, so that with few
/// participants the small tiles stay small.
const MIN_STRIP_SLOTS: u32 = 4;

/// A rectangle on the canvas, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

fn even(v: u32) -> u32 {
    v & !1
}

impl Rect {
    /// The centre pixel.
    pub fn center(&self) -> (u32, u32) {
        (self.x + self.w / 2, self.y + self.h / 2)
    }

    /// Whether the two rectangles share at least one pixel.
    pub fn intersects(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    /// Whether `o` lies entirely inside `self`.
    pub fn contains(&self, o: &Rect) -> bool {
        o.x >= self.x
            && o.y >= self.y
            && o.x + o.w <= self.x + self.w
            && o.y + o.h <= self.y + self.h
    }

    /// The largest even-sized rectangle with the aspect ratio of a
    /// `src_w` x `src_h` picture that fits inside `self`, centred
    /// (letterbox / pillarbox). Empty if either is empty.
    pub fn fit(&self, src_w: u32, src_h: u32) -> Rect {
        if src_w == 0 || src_h == 0 || self.w < 2 || self.h < 2 {
            return Rect {
                x: self.x,
                y: self.y,
                w: 0,
                h: 0,
            };
        }
        let (sw, sh, w, h) = (
            u64::from(src_w),
            u64::from(src_h),
            u64::from(self.w),
            u64::from(self.h),
        );
        let (fw, fh) = if sw * h <= sh * w {
            // Limited by height: bars left and right.
            (((sw * h + sh / 2) / sh) as u32, self.h)
        } else {
            (self.w, ((sh * w + sw / 2) / sw) as u32)
        };
        let fw = even(fw.clamp(2, self.w));
        let fh = even(fh.clamp(2, self.h));
        Rect {
            x: self.x + even((self.w - fw) / 2),
            y: self.y + even((self.h - fh) / 2),
            w: fw,
            h: fh,
        }
    }
}

/// Grid dimensions `(columns, rows)` for `n` tiles.
pub fn grid_dims(n: usize) -> (u32, u32) {
    if n == 0 {
        return (0, 0);
    }
    let mut cols = (n as f64).sqrt().ceil() as usize;
    // Guard against floating point on perfect squares.
    while cols * cols < n {
        cols += 1;
    }
    while cols > 1 && (cols - 1) * (cols - 1) >= n {
        cols -= 1;
    }
    let rows = n.div_ceil(cols);
    (cols as u32, rows as u32)
}

/// Rectangles for `n` tiles in order. In [`Layout::Speaker`] the tile at
/// `speaker_index` (clamped) is the large one (the whole canvas when alone),
/// the others share a strip below it. [`Layout::Grid`] ignores
/// `speaker_index`: equal cells, row by row, the last row centred.
pub fn layout(
    n: usize,
    layout: Layout,
    canvas_w: u32,
    canvas_h: u32,
    speaker_index: usize,
) -> Vec<Rect> {
    match layout {
        Layout::Grid => grid(n, canvas_w, canvas_h),
        Layout::Speaker => speaker(n, canvas_w, canvas_h, speaker_index),
    }
}

fn grid(n: usize, cw: u32, ch: u32) -> Vec<Rect> {
    if n == 0 {
        return Vec::new();
    }
    let (cols, rows) = grid_dims(n);
    let cell_w = even(cw / cols);
    let cell_h = even(ch / rows);
    let x0 = even((cw - cell_w * cols) / 2);
    let y0 = even((ch - cell_h * rows) / 2);
    (0..n as u32)
        .map(|i| {
            let (r, c) = (i / cols, i % cols);
            let in_row = (n as u32 - r * cols).min(cols);
            let row_x = x0 + even((cols - in_row) * cell_w / 2);
            Rect {
                x: row_x + c * cell_w,
                y: y0 + r * cell_h,
                w: cell_w,
                h: cell_h,
            }
        })
        .collect()
}

fn speaker(n: usize, cw: u32, ch: u32, speaker_index: usize) -> Vec<Rect> {
    if n == 0 {
        return Vec::new();
    }
    let full = Rect {
        x: 0,
        y: 0,
        w: even(cw),
        h: even(ch),
    };
    if n == 1 {
        return vec![full];
    }
    let s = speaker_index.min(n - 1);
    let big_h = even(ch * 3 / 4);
    let big = Rect {
        x: 0,
        y: 0,
        w: full.w,
        h: big_h,
    };
    let others = (n - 1) as u32;
    let cell_w = even(cw / others.max(MIN_STRIP_SLOTS));
    let strip_h = even(ch - big_h);
    let x0 = even((cw - cell_w * others) / 2);
    (0..n)
        .map(|i| {
            if i == s {
                return big;
            }
            let j = if i > s { i - 1 } else { i } as u32;
            Rect {
                x: x0 + j * cell_w,
                y: big_h,
                w: cell_w,
                h: strip_h,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 640;
    const H: u32 = 360;

    fn check_common(rects: &[Rect], n: usize) {
        let canvas = Rect {
            x: 0,
            y: 0,
            w: W,
            h: H,
        };
        assert_eq!(rects.len(), n);
        for (i, r) in rects.iter().enumerate() {
            assert!(canvas.contains(r), "n={n} tile {i} {r:?} outside canvas");
            assert!(r.w > 0 && r.h > 0, "n={n} tile {i} empty");
            assert!(
                r.x % 2 == 0 && r.y % 2 == 0 && r.w % 2 == 0 && r.h % 2 == 0,
                "n={n} tile {i} {r:?} not even"
            );
            for (j, o) in rects.iter().enumerate().skip(i + 1) {
                assert!(
                    !r.intersects(o),
                    "n={n} tiles {i} {r:?} and {j} {o:?} overlap"
                );
            }
        }
    }

    #[test]
    fn grid_table() {
        // n, columns, rows, cell width, cell height (640x360 canvas)
        let table: &[(usize, u32, u32, u32, u32)] = &[
            (1, 1, 1, 640, 360),
            (2, 2, 1, 320, 360),
            (3, 2, 2, 320, 180),
            (4, 2, 2, 320, 180),
            (5, 3, 2, 212, 180),
            (6, 3, 2, 212, 180),
            (7, 3, 3, 212, 120),
            (8, 3, 3, 212, 120),
            (9, 3, 3, 212, 120),
            (10, 4, 3, 160, 120),
            (25, 5, 5, 128, 72),
        ];
        for &(n, cols, rows, cw, ch) in table {
            assert_eq!(grid_dims(n), (cols, rows), "n={n}");
            let rects = layout(n, Layout::Grid, W, H, 0);
            check_common(&rects, n);
            for r in &rects {
                assert_eq!((r.w, r.h), (cw, ch), "n={n}");
            }
            // Row-major order: first tile top-left-most row.
            assert!(
                rects
                    .windows(2)
                    .all(|p| (p[0].y, p[0].x) < (p[1].y, p[1].x))
            );
            // A partial last row is centred.
            let last_row = n - (rows as usize - 1) * cols as usize;
            if last_row < cols as usize {
                let row = &rects[n - last_row..];
                let left = row[0].x;
                let right = W - (row[last_row - 1].x + row[last_row - 1].w);
                assert!(
                    left.abs_diff(right) <= 4,
                    "n={n} last row not centred: {left} vs {right}"
                );
            }
        }
    }

    #[test]
    fn speaker_table() {
        // n, small tile width (big tile 640x270, strip 90 high)
        let table: &[(usize, u32)] = &[
            (2, 160),
            (3, 160),
            (4, 160),
            (5, 160),
            (6, 128),
            (7, 106),
            (8, 90),
            (9, 80),
            (10, 70),
            (25, 26),
        ];
        assert_eq!(
            layout(1, Layout::Speaker, W, H, 0),
            vec![Rect {
                x: 0,
                y: 0,
                w: W,
                h: H
            }]
        );
        for &(n, small_w) in table {
            for s in [0, n / 2, n - 1] {
                let rects = layout(n, Layout::Speaker, W, H, s);
                check_common(&rects, n);
                assert_eq!(
                    rects[s],
                    Rect {
                        x: 0,
                        y: 0,
                        w: 640,
                        h: 270
                    },
                    "n={n} s={s}"
                );
                for (i, r) in rects.iter().enumerate().filter(|(i, _)| *i != s) {
                    assert_eq!((r.w, r.h, r.y), (small_w, 90, 270), "n={n} s={s} tile {i}");
                }
                // Strip in order, left to right, centred.
                let strip: Vec<&Rect> = rects
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != s)
                    .map(|(_, r)| r)
                    .collect();
                assert!(strip.windows(2).all(|p| p[0].x < p[1].x));
                let left = strip[0].x;
                let right = W - (strip[strip.len() - 1].x + small_w);
                assert!(left.abs_diff(right) <= 4, "n={n} strip not centred");
            }
        }
        // Out-of-range speaker index is clamped.
        let rects = layout(3, Layout::Speaker, W, H, 99);
        assert_eq!(rects[2].h, 270);
    }

    #[test]
    fn zero_tiles_and_odd_canvas() {
        assert!(layout(0, Layout::Grid, W, H, 0).is_empty());
        assert!(layout(0, Layout::Speaker, W, H, 0).is_empty());
        for r in layout(7, Layout::Grid, 333, 201, 0) {
            assert!(r.x + r.w <= 333 && r.y + r.h <= 201);
        }
    }

    #[test]
    fn fit_preserves_aspect_and_centres() {
        let cell = Rect {
            x: 100,
            y: 50,
            w: 212,
            h: 180,
        };
        // 16:9 into a 212x180 cell: full width, letterboxed.
        let f = cell.fit(1280, 720);
        assert_eq!((f.w, f.h), (212, 118));
        assert_eq!(f.x, 100);
        assert_eq!(f.y, 50 + 30);
        // 4:3 portrait into a wide cell: full height, pillarboxed.
        let f = cell.fit(480, 640);
        assert_eq!(f.h, 180);
        assert_eq!(f.w, 134);
        assert!(cell.contains(&f));
        // Degenerate inputs.
        assert_eq!(cell.fit(0, 10).w, 0);
        assert!(cell.contains(&cell.fit(1, 10_000)));
    }
}
