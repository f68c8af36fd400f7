// A large room's listeners get the mix they share two 20 ms Opus frames to a packet (40 ms):
// half the packets. Real Chromiums, with pairing from one listener (MCU_AUDIO_PAIR_FROM=1) so
// that a room of three shows it: the listeners hear the talker at 25 packets a second without
// concealment, and a listener who starts talking moves to its own 20 ms mix without a gap.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, makeMedia, joinRoom, toneLevels, audioReceived } from './harness.mjs';

const RED = { name: 'red', color: 'red', freq: 400 };
const GREEN = { name: 'green', color: 'lime', freq: 700 };
const SILENT = { name: 'yellow-silent', color: 'yellow', freq: 0 };

let server;
const joined = [];

before(async () => {
  server = await startServer({ MCU_AUDIO_PAIR_FROM: '1' });
  await joinRoom(server, 'big', [RED, GREEN, SILENT], (p) => makeMedia(p.name, p.color, p.freq), joined);
});

after(async () => {
  for (const p of joined) await p.browser.close().catch(() => {});
  if (server) await server.stop();
});

/** What each page received over `ms`: packets a second and the share of samples concealed. */
async function received(ms) {
  const a = await Promise.all(joined.map((p) => audioReceived(p.page)));
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, ms));
  const b = await Promise.all(joined.map((p) => audioReceived(p.page)));
  const s = (Date.now() - t0) / 1000;
  return joined.map((p, i) => {
    const played = b[i].samples - a[i].samples;
    return {
      name: p.name,
      rate: (b[i].packets - a[i].packets) / s,
      played_s: played / 48000,
      concealed_pct: (100 * (b[i].concealed - a[i].concealed)) / Math.max(1, played),
    };
  });
}

test('listeners get 40 ms packets and hear the talker without concealment; a listener who talks gets its own mix at once', async () => {
  const [red, green, silent] = joined;
  const list = (await server.api('GET', '/rooms/big/participants')).body.participants;
  const greenId = list.find((q) => q.identity === 'green').id;
  // Green muted: red is the only talker, green and the silent one listen.
  assert.equal((await server.api('POST', `/rooms/big/participants/${greenId}/mute`, { audio: true })).status, 200);
  await new Promise((r) => setTimeout(r, 1000));
  const pairedBefore = (await server.api('GET', '/rooms/big/stats')).body.media.audio_frames_paired;
  const listening = await received(4000);
  console.log(`one talker: ${JSON.stringify(listening)}`);
  for (const who of [green, silent]) {
    const r = listening.find((x) => x.name === who.name);
    assert.ok(r.rate > 20 && r.rate < 30, `${who.name} gets 40 ms packets: ${r.rate.toFixed(1)} a second`);
    assert.ok(r.played_s > 3.2, `${who.name} plays out: ${r.played_s.toFixed(2)} s in 4 s`);
    assert.ok(r.concealed_pct < 1, `${who.name}: ${r.concealed_pct.toFixed(2)} % concealed`);
    const [redLevel] = await toneLevels(who.page, [RED.freq]);
    assert.ok(redLevel > -70, `${who.name} hears red: ${redLevel.toFixed(1)} dB`);
  }
  // Red, alone in talking, hears nobody: DTX (a few packets a second), not 40 ms packets.
  assert.ok(listening[0].rate < 10, `red hears nobody: ${listening[0].rate.toFixed(1)} packets a second`);
  // Counted on the server once a second: about 25 pairs a second of the window.
  const stats = (await server.api('GET', '/rooms/big/stats')).body.media;
  assert.ok(stats.audio_frames_paired - pairedBefore >= 60, `pairs made: ${pairedBefore} -> ${stats.audio_frames_paired}`);

  // Green talks: it leaves the shared mix for its own (red, at 20 ms), red hears green, and the
  // silent one hears both, still paired.
  assert.equal((await server.api('POST', `/rooms/big/participants/${greenId}/mute`, { audio: false })).status, 200);
  const switching = await received(3000);
  console.log(`green starts talking: ${JSON.stringify(switching)}`);
  const g = switching.find((x) => x.name === 'green');
  assert.ok(g.concealed_pct < 1, `green's switch to its own mix: ${g.concealed_pct.toFixed(2)} % concealed`);
  assert.ok(g.rate > 40, `green's own mix goes out at 20 ms: ${g.rate.toFixed(1)} packets a second`);
  const s = switching.find((x) => x.name === SILENT.name);
  assert.ok(s.rate > 20 && s.rate < 30 && s.concealed_pct < 1, `the silent one still paired: ${JSON.stringify(s)}`);
  const [gRed, gGreen] = await toneLevels(green.page, [RED.freq, GREEN.freq]);
  assert.ok(gRed > -70 && gRed - gGreen > 20, `green hears red, not itself: ${gRed.toFixed(1)} / ${gGreen.toFixed(1)} dB`);
  const [rRed, rGreen] = await toneLevels(red.page, [RED.freq, GREEN.freq]);
  assert.ok(rGreen > -70 && rGreen - rRed > 20, `red hears green, not itself: ${rGreen.toFixed(1)} / ${rRed.toFixed(1)} dB`);
  const both = await toneLevels(silent.page, [RED.freq, GREEN.freq]);
  assert.ok(both.every((l) => l > -70), `the silent one hears both: ${both.map((l) => l.toFixed(1))}`);
});

test('no console errors in the pages', () => {
  for (const p of joined) assert.deepEqual(p.errors, [], `${p.name}: ${p.errors.join('; ')}`);
});
