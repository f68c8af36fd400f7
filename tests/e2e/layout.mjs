// Centres of the grid tiles, mirroring mixer::layout (Layout::Grid): equal cells row by row,
// cols = ceil(sqrt(n)), rows = ceil(n / cols), sizes rounded down to even, last row centred.
const even = (v) => v - (v % 2);

export function gridCentres(n, cw, ch) {
  const cols = Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const cellW = even(Math.floor(cw / cols));
  const cellH = even(Math.floor(ch / rows));
  const x0 = even(Math.floor((cw - cellW * cols) / 2));
  const y0 = even(Math.floor((ch - cellH * rows) / 2));
  const out = [];
  for (let i = 0; i < n; i++) {
    const r = Math.floor(i / cols), c = i % cols;
    const inRow = Math.min(n - r * cols, cols);
    const rowX = x0 + even(Math.floor(((cols - inRow) * cellW) / 2));
    out.push([rowX + c * cellW + cellW / 2, y0 + r * cellH + cellH / 2]);
  }
  return out;
}
