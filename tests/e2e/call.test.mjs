// Three real Chromium participants in one mixed room: each receives ONE audio and ONE video
// track, hears the other two tones and not its own, and sees the others' colours in the
// composite. A fourth joins and leaves without stalling the others' video.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, makeMedia, launchParticipant, waitForMedia, receiveStats, toneLevels, samplePixels, watchFrames,
  audioReceived, joinRoom,
} from './harness.mjs';
import { gridCentres } from './layout.mjs';

const PEOPLE = [
  { name: 'red', color: 'red', rgb: [255, 0, 0], freq: 400 },
  { name: 'green', color: 'lime', rgb: [0, 255, 0], freq: 700 },
  { name: 'blue', color: 'blue', rgb: [0, 0, 255], freq: 1000 },
];
// The fourth is silent: its microphone sends digital silence, which Chromium marks with the
// RFC 6464 audio level, so the server does not decode it.
const FOURTH = { name: 'yellow-silent', color: 'yellow', rgb: [255, 255, 0], freq: 0 };

let server;
const joined = [];

function close(a, b, tol = 70) {
  return a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

before(async () => {
  server = await startServer();
  await joinRoom(server, 'e2e', PEOPLE, (p) => makeMedia(p.name, p.color, p.freq), joined);
});

after(async () => {
  for (const p of joined) await p.browser.close().catch(() => {});
  if (server) await server.stop();
});

test('each participant receives exactly one audio and one video track, and frames keep coming', async () => {
  for (const p of joined) {
    const a = await receiveStats(p.page);
    assert.deepEqual(a.kinds.sort(), ['audio', 'video'], `${p.name} receivers`);
    await new Promise((r) => setTimeout(r, 1000));
    const b = await receiveStats(p.page);
    assert.ok(b.framesDecoded > a.framesDecoded + 5, `${p.name} framesDecoded ${a.framesDecoded} -> ${b.framesDecoded}`);
    assert.ok(b.audioSamples > a.audioSamples + 24000, `${p.name} audio samples ${a.audioSamples} -> ${b.audioSamples}`);
    const rooms = await server.api('GET', '/rooms/e2e/participants');
    assert.equal(rooms.body.participants.length, 3);
  }
});

test('everyone hears the two others and not themselves', async () => {
  const freqs = PEOPLE.map((p) => p.freq);
  for (const p of joined) {
    const levels = await toneLevels(p.page, freqs);
    const own = levels[PEOPLE.findIndex((q) => q.name === p.name)];
    const others = levels.filter((_, i) => PEOPLE[i].name !== p.name);
    for (const l of others) {
      assert.ok(l > -70, `${p.name} should hear the others: levels ${levels.map((x) => x.toFixed(1))}`);
      assert.ok(l - own > 20, `${p.name}'s own tone must be at least 20 dB below the others: ${levels.map((x) => x.toFixed(1))}`);
    }
  }
});

test('the composite shows every participant in its grid tile', async () => {
  const centres = gridCentres(3, 640, 360);
  for (const p of joined) {
    // Receivers start on a conservative tier (320x180) and probe up: on loopback they reach the
    // full-size tiers within seconds.
    let shot;
    for (const deadline = Date.now() + 20000; Date.now() < deadline;) {
      shot = await samplePixels(p.page, centres.map(([x, y]) => [x / 640, y / 360]));
      if (shot.width === 640) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    const { width, height, px } = shot;
    assert.equal(`${width}x${height}`, '640x360', `${p.name} reaches the full-size composite`);
    PEOPLE.forEach((q, i) => {
      assert.ok(close(px[i], q.rgb), `${p.name} sees ${q.name} at tile ${i}: got rgb ${px[i]}`);
    });
  }
});

/** Audio packets the page has sent so far. */
async function audioPacketsSent(page) {
  return page.evaluate(async () => {
    let n = 0;
    (await window.mcu.pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') n += s.packetsSent || 0;
    });
    return n;
  });
}

test('a fourth participant joins and leaves without stalling the others; its silence is DTX, not decoded', async () => {
  for (const p of joined) await watchFrames(p.page);
  const skipped = async () => (await server.api('GET', '/rooms/e2e/stats')).body.media.audio_quiet_skipped;
  const before = await skipped();
  const fourth = await launchParticipant(server, 'e2e', FOURTH.name, makeMedia(FOURTH.name, FOURTH.color, FOURTH.freq));
  try {
    await waitForMedia(fourth.page);
    // Silence costs next to nothing: the answer asks for DTX (usedtx=1), so the silent
    // microphone sends a packet every 400 ms or so instead of 50 a second, and those it sends
    // (level 127) play as silence undecoded.
    await new Promise((r) => setTimeout(r, 1000));
    const sent0 = await audioPacketsSent(fourth.page);
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 3000));
    const rate = ((await audioPacketsSent(fourth.page)) - sent0) / ((Date.now() - t0) / 1000);
    console.log(`silent participant sends ${rate.toFixed(1)} audio packets/s`);
    assert.ok(rate < 10, `a silent microphone sends DTX, not 50 packets/s: ${rate.toFixed(1)}/s`);
    const quiet = (await skipped()) - before;
    assert.ok(quiet >= 1, `its silent packets are not decoded: ${quiet} skipped`);
    // The others' composite now has four tiles; the fourth's colour shows in tile 3.
    const centres = gridCentres(4, 640, 360);
    await joined[0].page.waitForFunction(() => true);
    await new Promise((r) => setTimeout(r, 1500));
    const { px } = await samplePixels(joined[0].page, [[centres[3][0] / 640, centres[3][1] / 360]]);
    assert.ok(close(px[0], FOURTH.rgb), `tile 3 shows the newcomer: got ${px[0]}`);
  } finally {
    await fourth.browser.close();
  }
  await new Promise((r) => setTimeout(r, 2000));
  for (const p of joined) {
    const gaps = await p.page.evaluate(() => {
      const t = window.frameLog.times;
      let max = 0;
      for (let i = 1; i < t.length; i++) max = Math.max(max, t[i] - t[i - 1]);
      return { max, n: t.length };
    });
    console.log(`${p.name}: ${gaps.n} frames, longest gap ${gaps.max.toFixed(0)} ms`);
    assert.ok(gaps.n > 30, `${p.name} kept receiving frames (${gaps.n})`);
    // Launching a fourth Chromium takes this 2-core machine from the three running ones and the
    // server for about a second: measured 170-1030 ms longest gaps, one receiver at a time (the
    // others' at the same moment stay under 500 ms, and the server's video gate skipped nothing
    // in the runs logged), so the cause of the longest is not established. A join or leave that
    // stalls the composite for seconds still fails here.
    assert.ok(gaps.max < 1500, `${p.name}'s composite stalled ${gaps.max.toFixed(0)} ms`);
  }
  // The others see a three-tile layout again.
  const centres = gridCentres(3, 640, 360);
  const { px } = await samplePixels(joined[1].page, centres.map(([x, y]) => [x / 640, y / 360]));
  PEOPLE.forEach((q, i) => assert.ok(close(px[i], q.rgb), `after leave, tile ${i} is ${q.name}: ${px[i]}`));
});

test('an admin mute through REST takes the tone out of the mix within a second, unmute brings it back', async () => {
  const [red, green] = joined;
  const list = (await server.api('GET', '/rooms/e2e/participants')).body.participants;
  const redId = list.find((p) => p.identity === 'red').id;
  const muted = await server.api('POST', `/rooms/e2e/participants/${redId}/mute`, { audio: true });
  assert.equal(muted.status, 200);
  assert.equal(muted.body.audio_muted, true);
  await new Promise((r) => setTimeout(r, 1000));
  let [redLevel, blueLevel] = await toneLevels(green.page, [red.freq, joined[2].freq]);
  assert.ok(blueLevel - redLevel > 20, `muted red is gone from green's mix: red ${redLevel.toFixed(1)} dB, blue ${blueLevel.toFixed(1)} dB`);
  await red.page.waitForFunction(() => [...window.mcu.participants.values()].some((p) => p.identity === 'red' && p.audio_muted));
  assert.equal((await server.api('POST', `/rooms/e2e/participants/${redId}/mute`, { audio: false })).status, 200);
  await new Promise((r) => setTimeout(r, 1000));
  [redLevel] = await toneLevels(green.page, [red.freq]);
  assert.ok(redLevel > -70, `red is heard again: ${redLevel.toFixed(1)} dB`);
});

test('a room where nobody is heard is DTX on the wire, not concealment, and the first word plays at once', async () => {
  const list = (await server.api('GET', '/rooms/e2e/participants')).body.participants;
  const ids = joined.map((p) => list.find((q) => q.identity === p.name).id);
  for (const id of ids) assert.equal((await server.api('POST', `/rooms/e2e/participants/${id}/mute`, { audio: true })).status, 200);
  try {
    await new Promise((r) => setTimeout(r, 1500));
    const before = await Promise.all(joined.map((p) => audioReceived(p.page)));
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, 3000));
    const after = await Promise.all(joined.map((p) => audioReceived(p.page)));
    const s = (Date.now() - t0) / 1000;
    joined.forEach((p, i) => {
      const rate = (after[i].packets - before[i].packets) / s;
      const played = after[i].samples - before[i].samples;
      const concealed = (100 * (after[i].concealed - before[i].concealed)) / Math.max(1, played);
      console.log(`${p.name} in a silent room: ${rate.toFixed(1)} audio packets/s, ${played} samples played, ${concealed.toFixed(1)} % concealed`);
      // One DTX frame every 400 ms instead of 50 packets a second; the browser keeps playing
      // (comfort noise), and does not count the quiet as lost audio.
      assert.ok(rate < 5, `${p.name} gets DTX: ${rate.toFixed(1)} packets/s`);
      assert.ok(played > 48000 * s * 0.8, `${p.name} keeps playing out: ${played} samples in ${s} s`);
      assert.ok(concealed < 10, `${p.name}: ${concealed.toFixed(1)} % of the quiet concealed`);
    });
  } finally {
    // The first word after the quiet: red's tone is in green's mix within a second.
    assert.equal((await server.api('POST', `/rooms/e2e/participants/${ids[0]}/mute`, { audio: false })).status, 200);
    const t1 = Date.now();
    let level = -Infinity;
    while (Date.now() - t1 < 3000 && level <= -70) [level] = await toneLevels(joined[1].page, [joined[0].freq]);
    const ms = Date.now() - t1;
    console.log(`red heard again after ${ms} ms at ${level.toFixed(1)} dB`);
    for (const id of ids.slice(1)) await server.api('POST', `/rooms/e2e/participants/${id}/mute`, { audio: false });
    assert.ok(level > -70, `red is heard again after the quiet: ${level.toFixed(1)} dB`);
    assert.ok(ms < 2000, `the first word after DTX took ${ms} ms`);
  }
});

test('a kick through REST ends that call with closed: kicked, the others see them leave', async () => {
  const blue = joined[2];
  const list = (await server.api('GET', '/rooms/e2e/participants')).body.participants;
  const blueId = list.find((p) => p.identity === 'blue').id;
  assert.equal((await server.api('DELETE', `/rooms/e2e/participants/${blueId}`)).status, 204);
  await blue.page.waitForFunction(() => window.mcu.events.some((e) => e.type === 'closed' && e.reason === 'kicked'), null, { timeout: 2000 });
  await joined[0].page.waitForFunction((id) => !window.mcu.participants.has(id), blueId, { timeout: 2000 });
  assert.match(await blue.page.evaluate(() => document.getElementById('status').textContent), /kicked/);
  const after = (await server.api('GET', '/rooms/e2e/participants')).body.participants;
  assert.deepEqual(after.map((p) => p.identity).sort(), ['green', 'red']);
  assert.equal((await server.api('DELETE', `/rooms/e2e/participants/${blueId}`)).status, 404);
});

test('no console errors in any page', () => {
  for (const p of joined) assert.deepEqual(p.errors, [], `${p.name} page errors`);
});
