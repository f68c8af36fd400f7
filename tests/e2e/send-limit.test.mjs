// Publishers send what the composite shows (`video_constraints`), measured in real Chromiums with
// camera-like 640x360 video: in a grid of two tiles (cells of 320x360) the two shown send
// 320x180, the third, on no tile, sends no video at all; when a tile frees, the third is asked
// for video at once and appears in the composite.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, samplePixels, joinRoom } from './harness.mjs';
import { makeCameraMedia } from './weaklink.mjs';
import { gridCentres } from './layout.mjs';

// Silent microphones: no active speaker takes a tile, so the tile order is the join order.
const PEOPLE = [
  { name: 'sl-red', color: 'red', rgb: [255, 0, 0] },
  { name: 'sl-green', color: 'lime', rgb: [0, 255, 0] },
  { name: 'sl-blue', color: 'blue', rgb: [0, 0, 255] },
];

let server;
const joined = [];

function close(a, b, tol = 80) {
  return a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

/** The page's outbound video: size sent and bytes so far. */
async function outbound(page) {
  return page.evaluate(async () => {
    const stats = await window.mcu.pc.getStats();
    let out = { width: 0, height: 0, bytes: 0, frames: 0 };
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out = { width: s.frameWidth || 0, height: s.frameHeight || 0, bytes: s.bytesSent || 0, frames: s.framesEncoded || 0 };
      }
    });
    return out;
  });
}

/** The last `video_constraints` the page got and applied. */
async function lastLimit(page) {
  return page.evaluate(() => {
    const ev = window.mcu.events;
    const got = ev.filter((e) => e.type === 'video_constraints').at(-1) || null;
    const applied = ev.filter((e) => e.type === 'video-limit-applied').at(-1) || null;
    return { got, applied };
  });
}

async function until(what, fn, timeout = 10000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last.ok) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what}: ${JSON.stringify(last)}`);
}

before(async () => {
  // Tiers that all encode the full 640x360 canvas: the box is the grid cell whatever tier the
  // receivers are on.
  server = await startServer({ MCU_MAX_TILES: '2', MCU_VIDEO_TIERS: '250,400,800' });
  await joinRoom(server, 'limits', PEOPLE, (p) => makeCameraMedia(p.name, p.color, 0), joined);
});

after(async () => {
  for (const p of joined) await p.browser.close().catch(() => {});
  if (server) await server.stop();
});

test('the two shown send their 320x360 cell (320x180 of a 640x360 camera); the third sends nothing', async () => {
  const [a, b, c] = joined;
  for (const p of [a, b]) {
    const r = await until(`${p.name} sends 320x180`, async () => {
      const { got, applied } = await lastLimit(p.page);
      const o = await outbound(p.page);
      const ok = got?.active === true && got.max_width === 320 && got.max_height === 360
        && applied?.scale === 2 && o.width === 320 && o.height === 180;
      return { ok, got, applied, o };
    });
    assert.ok(r.got.max_kbps >= 100 && r.got.max_kbps <= 800, JSON.stringify(r.got));
  }
  const { got } = await until(`${c.name} told it is not shown`, async () => {
    const l = await lastLimit(c.page);
    return { ok: l.got?.active === false && l.applied?.active === false, ...l };
  });
  assert.equal(got.max_width, 0);
  // Nothing goes out: bytes flat over two seconds (after a second for the encoder to stop).
  await new Promise((r) => setTimeout(r, 1000));
  const before = await outbound(c.page);
  await new Promise((r) => setTimeout(r, 2000));
  const after = await outbound(c.page);
  assert.equal(after.bytes, before.bytes, `${c.name} still sends: ${JSON.stringify([before, after])}`);
  // The shown ones keep sending.
  const a1 = await outbound(a.page);
  assert.ok(a1.frames > 0 && a1.bytes > 0, JSON.stringify(a1));
  // And the composite still shows both, in the third's view.
  const [p0, p1] = gridCentres(2, 640, 360).map(([x, y]) => [x / 640, (y + 40) / 360]);
  const px = await samplePixels(c.page, [p0, p1]);
  assert.ok(close(px.px[0], a.rgb) && close(px.px[1], b.rgb), JSON.stringify(px));
});

test('when a tile frees, the third is asked for video at once and shows up in the composite', async () => {
  const [a, b, c] = joined;
  const t0 = Date.now();
  await a.browser.close();
  joined.shift();
  await until(`${c.name} asked for video again`, async () => {
    const l = await lastLimit(c.page);
    return { ok: l.got?.active === true && l.applied?.active === true, ...l };
  }, 5000);
  const asked = Date.now() - t0;
  const r = await until(`${c.name} in ${b.name}'s composite`, async () => {
    const [p0, p1] = gridCentres(2, 640, 360).map(([x, y]) => [x / 640, (y + 40) / 360]);
    const px = await samplePixels(b.page, [p0, p1]);
    return { ok: close(px.px[0], b.rgb) && close(px.px[1], c.rgb), px };
  }, 10000);
  const shown = Date.now() - t0;
  const o = await outbound(c.page);
  assert.ok(o.width === 320 && o.height === 180, JSON.stringify(o));
  console.log(`# tile freed: video asked of the third after ${asked} ms, seen in the composite after ${shown} ms`);
  assert.ok(r.ok);
});

test('no console errors in any page', () => {
  for (const p of joined) assert.deepEqual(p.errors, [], `${p.name}: ${p.errors.join('\n')}`);
});
