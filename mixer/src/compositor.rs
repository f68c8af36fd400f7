//! Tiles pictures into one I420 canvas.
//!
//! Invariants: every [`Compositor::compose`] redraws the whole canvas (black
//! background, then each tile), so a layout change is visible in the very next
//! composite and nothing stale survives. Pictures are scaled
//! aspect-preserving into their tile (black bars); the scaled copy is cached
//! per source and reused while the source's `generation` and the tile size
//! stay the same. Cache entries of sources not drawn in a compose are dropped.
//! What a compose drew is remembered ([`Compositor::unchanged`]): the same tiles with the same
//! generations make the same canvas, which the room then neither composes nor encodes again.

use std::collections::HashMap;

use crate::MixerError;
use crate::image::{I420Frame, I420View, Yuv};
use crate::layout::Rect;
use crate::scale::Scaler;

/// Background of a placeholder tile (no video): dark grey.
pub const PLACEHOLDER_BG: Yuv = Yuv {
    y: 48,
    u: 128,
    v: 128,
};
/// The lighter block centred in a placeholder tile.
pub const PLACEHOLDER_FG: Yuv = Yuv {
    y: 112,
    u: 128,
    v: 128,
};
/// Canvas background and letterbox bars.
pub const BACKGROUND: Yuv = Yuv::BLACK;

/// What to draw in a tile.
#[derive(Debug, Clone, Copy)]
pub enum TileContent<'a> {
    /// A picture from `source` (a stable id, used for caching); its pixels
    /// must change only together with `generation`.
    Picture {
        /// Stable id of the input.
        source: u64,
        /// Bumped by the caller whenever the picture changes.
        generation: u64,
        /// The pixels.
        view: I420View<'a>,
    },
    /// No video: a placeholder that cannot be mistaken for a camera image.
    Placeholder,
}

/// One tile of a composite.
#[derive(Debug, Clone, Copy)]
pub struct Tile<'a> {
    /// Where on the canvas (even coordinates, see [`crate::layout()`]).
    pub rect: Rect,
    /// What goes there.
    pub content: TileContent<'a>,
}

#[derive(Debug)]
struct Cached {
    scaler: Scaler,
    scaled: I420Frame,
    generation: u64,
    used: bool,
}

/// Owns the canvas and the per-source scaling caches.
#[derive(Debug)]
pub struct Compositor {
    canvas: I420Frame,
    cache: HashMap<u64, Cached>,
    /// What the canvas shows: each tile's place and (source, generation), `None` a placeholder.
    drawn: Vec<(Rect, Option<(u64, u64)>)>,
}

/// What a tile shows, as far as the canvas is concerned.
fn identity(tile: &Tile<'_>) -> (Rect, Option<(u64, u64)>) {
    let content = match tile.content {
        TileContent::Placeholder => None,
        TileContent::Picture {
            source, generation, ..
        } => Some((source, generation)),
    };
    (tile.rect, content)
}

impl Compositor {
    /// A black canvas of the given (even) size.
    pub fn new(width: u32, height: u32) -> Result<Self, MixerError> {
        Ok(Self {
            canvas: I420Frame::new(width, height, BACKGROUND)?,
            cache: HashMap::new(),
            drawn: Vec::new(),
        })
    }

    /// The last composite.
    pub fn canvas(&self) -> &I420Frame {
        &self.canvas
    }

    /// Sources with a cached scaled picture.
    pub fn cached_sources(&self) -> usize {
        self.cache.len()
    }

    /// Whether composing `tiles` would draw exactly the last canvas (the same places, the same
    /// pictures at the same generations, the same placeholders). False before the first compose.
    pub fn unchanged(&self, tiles: &[Tile<'_>]) -> bool {
        !self.drawn.is_empty()
            && self.drawn.len() == tiles.len()
            && self.drawn.iter().zip(tiles).all(|(d, t)| *d == identity(t))
    }

    /// Draws all tiles onto a fresh background and returns the canvas.
    pub fn compose(&mut self, tiles: &[Tile<'_>]) -> &I420Frame {
        self.drawn.clear();
        self.drawn.extend(tiles.iter().map(identity));
        self.canvas.fill(BACKGROUND);
        for c in self.cache.values_mut() {
            c.used = false;
        }
        for tile in tiles {
            match tile.content {
                TileContent::Placeholder => draw_placeholder(&mut self.canvas, tile.rect),
                TileContent::Picture {
                    source,
                    generation,
                    view,
                } => {
                    if let Err(e) = self.draw_picture(tile.rect, source, generation, &view) {
                        tracing::debug!(source, error = %e, "tile drawn as placeholder");
                        draw_placeholder(&mut self.canvas, tile.rect);
                    }
                }
            }
        }
        self.cache.retain(|_, c| c.used);
        &self.canvas
    }

    fn draw_picture(
        &mut self,
        rect: Rect,
        source: u64,
        generation: u64,
        view: &I420View<'_>,
    ) -> Result<(), MixerError> {
        let canvas_rect = Rect {
            x: 0,
            y: 0,
            w: self.canvas.width(),
            h: self.canvas.height(),
        };
        let fit = rect.fit(view.width, view.height);
        if fit.w == 0 || fit.h == 0 || !canvas_rect.contains(&fit) {
            return Ok(());
        }
        let src = (view.width, view.height);
        let dst = (fit.w, fit.h);
        let fresh = match self.cache.get(&source) {
            Some(c) => c.scaler.src_size() != src || c.scaler.dst_size() != dst,
            None => true,
        };
        if fresh {
            let scaler = Scaler::new(src.0, src.1, dst.0, dst.1)?;
            let scaled = I420Frame::new(dst.0, dst.1, BACKGROUND)?;
            self.cache.insert(
                source,
                Cached {
                    scaler,
                    scaled,
                    generation: generation.wrapping_sub(1),
                    used: true,
                },
            );
        }
        let Some(c) = self.cache.get_mut(&source) else {
            return Ok(());
        };
        c.used = true;
        if fresh || c.generation != generation {
            c.scaler.scale(view, &mut c.scaled)?;
            c.generation = generation;
        }
        blit(&mut self.canvas, &c.scaled, fit.x, fit.y);
        Ok(())
    }
}

/// Copies `src` into `dst` at an even position (caller guarantees it fits).
fn blit(dst: &mut I420Frame, src: &I420Frame, x: u32, y: u32) {
    let (dw, sw, sh) = (
        dst.width() as usize,
        src.width() as usize,
        src.height() as usize,
    );
    let (x, y) = (x as usize, y as usize);
    let (sy, su, sv) = src.planes();
    let (dy, du, dv) = dst.planes_mut();
    for r in 0..sh {
        let d = (y + r) * dw + x;
        dy[d..d + sw].copy_from_slice(&sy[r * sw..(r + 1) * sw]);
    }
    let (cdw, csw) = (dw / 2, sw / 2);
    for r in 0..sh / 2 {
        let d = (y / 2 + r) * cdw + x / 2;
        du[d..d + csw].copy_from_slice(&su[r * csw..(r + 1) * csw]);
        dv[d..d + csw].copy_from_slice(&sv[r * csw..(r + 1) * csw]);
    }
}

/// Dark grey tile with a lighter block in the middle (a third of each side).
fn draw_placeholder(canvas: &mut I420Frame, r: Rect) {
    canvas.fill_rect(r.x, r.y, r.w, r.h, PLACEHOLDER_BG);
    let (bw, bh) = ((r.w / 3) & !1, (r.h / 3) & !1);
    canvas.fill_rect(
        r.x + (((r.w - bw) / 2) & !1),
        r.y + (((r.h - bh) / 2) & !1),
        bw,
        bh,
        PLACEHOLDER_FG,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layout;
    use crate::layout::layout;

    #[test]
    fn tiles_land_in_their_rects_with_black_bars() {
        let red = Yuv::from_rgb(255, 0, 0);
        let blue = Yuv::from_rgb(0, 0, 255);
        let a = I420Frame::new(320, 180, red).expect("a");
        let b = I420Frame::new(240, 320, blue).expect("b"); // portrait
        let rects = layout(3, Layout::Grid, 640, 360, 0);
        let mut comp = Compositor::new(640, 360).expect("compositor");
        let tiles = [
            Tile {
                rect: rects[0],
                content: TileContent::Picture {
                    source: 1,
                    generation: 0,
                    view: a.view(),
                },
            },
            Tile {
                rect: rects[1],
                content: TileContent::Picture {
                    source: 2,
                    generation: 0,
                    view: b.view(),
                },
            },
            Tile {
                rect: rects[2],
                content: TileContent::Placeholder,
            },
        ];
        let canvas = comp.compose(&tiles).clone();
        let at = |r: &Rect| canvas.pixel(r.center().0, r.center().1);
        assert_eq!(at(&rects[0]), Some(red));
        assert_eq!(at(&rects[1]), Some(blue));
        assert_eq!(at(&rects[2]), Some(PLACEHOLDER_FG));
        assert_eq!(
            canvas.pixel(rects[2].x + 1, rects[2].y + 1),
            Some(PLACEHOLDER_BG)
        );
        // Portrait picture in a 320x180 cell: pillarboxed, bars are black.
        assert_eq!(
            canvas.pixel(rects[1].x + 2, rects[1].center().1),
            Some(BACKGROUND)
        );
        // 16:9 in 16:9: no bars.
        assert_eq!(canvas.pixel(rects[0].x, rects[0].y), Some(red));
        assert_eq!(comp.cached_sources(), 2);

        // Next composite without source 2: its cache entry goes, and the
        // new layout is fully redrawn (no leftovers of the old tiles).
        let rects1 = layout(1, Layout::Grid, 640, 360, 0);
        let tiles = [Tile {
            rect: rects1[0],
            content: TileContent::Picture {
                source: 1,
                generation: 0,
                view: a.view(),
            },
        }];
        let canvas = comp.compose(&tiles);
        assert_eq!(canvas.pixel(630, 350), Some(red));
        assert_eq!(comp.cached_sources(), 1);
    }

    #[test]
    fn cached_scale_is_reused_until_generation_changes() {
        let red = Yuv::from_rgb(255, 0, 0);
        let green = Yuv::from_rgb(0, 255, 0);
        let a = I420Frame::new(320, 180, red).expect("a");
        let b = I420Frame::new(320, 180, green).expect("b");
        let rect = Rect {
            x: 0,
            y: 0,
            w: 160,
            h: 90,
        };
        let mut comp = Compositor::new(320, 180).expect("compositor");
        let tile = |view, generation| {
            [Tile {
                rect,
                content: TileContent::Picture {
                    source: 9,
                    generation,
                    view,
                },
            }]
        };
        assert_eq!(comp.compose(&tile(a.view(), 1)).pixel(80, 45), Some(red));
        // Same generation: the cached (red) tile is reused even though the
        // view now shows green; this is the contract the caller keeps.
        assert_eq!(comp.compose(&tile(b.view(), 1)).pixel(80, 45), Some(red));
        assert_eq!(comp.compose(&tile(b.view(), 2)).pixel(80, 45), Some(green));
    }

    #[test]
    fn the_same_tiles_at_the_same_generations_are_unchanged() {
        let a = I420Frame::new(320, 180, Yuv::from_rgb(255, 0, 0)).expect("a");
        let rect = |x| Rect {
            x,
            y: 0,
            w: 160,
            h: 90,
        };
        let picture = |x, generation| Tile {
            rect: rect(x),
            content: TileContent::Picture {
                source: 9,
                generation,
                view: a.view(),
            },
        };
        let placeholder = |x| Tile {
            rect: rect(x),
            content: TileContent::Placeholder,
        };
        let mut comp = Compositor::new(320, 180).expect("compositor");
        let tiles = [picture(0, 1), placeholder(160)];
        assert!(!comp.unchanged(&tiles), "nothing drawn yet");
        comp.compose(&tiles);
        assert!(comp.unchanged(&tiles));
        // A new picture, a moved tile, a placeholder replaced, a tile more or less: changed.
        assert!(!comp.unchanged(&[picture(0, 2), placeholder(160)]));
        assert!(!comp.unchanged(&[picture(160, 1), placeholder(0)]));
        assert!(!comp.unchanged(&[picture(0, 1), picture(160, 1)]));
        assert!(!comp.unchanged(&[picture(0, 1)]));
        assert!(!comp.unchanged(&[picture(0, 1), placeholder(160), placeholder(0)]));
    }
}
