// Measures, with real browsers against the real server (not a test: prints figures):
//  - time from WebSocket open to the first composite frame, p50/p90 over N joins;
//  - server CPU per participant at the default 640x360@15 (CPU-seconds per participant-minute);
//  - the media thread's time per 20 ms tick (from /metrics).
// Usage: node measure.mjs [joins=10] [participants=3] [seconds=20]
import { readFileSync } from 'node:fs';
import { startServer, makeMedia, launchParticipant, waitForMedia, watchFrames } from './harness.mjs';

const [joins = 10, people = 3, seconds = 20] = process.argv.slice(2).map(Number);
const COLOURS = [['red', 400], ['lime', 700], ['blue', 1000], ['yellow', 1300]];
const ticks = () => {
  const [utime, stime] = readFileSync(`/proc/${server.proc.pid}/stat`, 'utf8').split(') ')[1].split(' ').slice(11, 13).map(Number);
  return (utime + stime) / 100; // USER_HZ = 100
};
const metric = async (name) => {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const m = text.match(new RegExp(`^${name} (\\S+)$`, 'm'));
  return m ? Number(m[1]) : NaN;
};
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];

const server = await startServer();
await server.api('POST', '/rooms', { name: 'bench' });
const parts = [];
try {
  for (let i = 0; i < people; i++) {
    const [c, f] = COLOURS[i % COLOURS.length];
    parts.push(await launchParticipant(server, 'bench', `p${i}`, makeMedia(`m-${c}`, c, f)));
  }
  for (const p of parts) await waitForMedia(p.page);
  await new Promise((r) => setTimeout(r, 2000));

  const cpu0 = ticks(), t0 = Date.now();
  const n0 = await metric('mcu_media_tick_seconds_count'), s0 = await metric('mcu_media_tick_seconds_sum');
  const m0 = await metric('mcu_media_deadline_misses_total');
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpu = ticks() - cpu0, wall = (Date.now() - t0) / 1000;
  const n1 = await metric('mcu_media_tick_seconds_count'), s1 = await metric('mcu_media_tick_seconds_sum');
  const m1 = await metric('mcu_media_deadline_misses_total');
  console.log(`server CPU with ${people} participants at 640x360@15: ${(cpu / wall * 100).toFixed(1)}% of a core`);
  console.log(`  = ${(cpu / (people * wall / 60)).toFixed(2)} CPU-seconds per participant-minute`);
  console.log(`media tick: mean ${((s1 - s0) / (n1 - n0) * 1000).toFixed(2)} ms of work per 20 ms tick over ${n1 - n0} ticks; deadline misses ${m1 - m0}`);

  // Joins: one more browser joins the running room and leaves, N times.
  const [c, f] = COLOURS[3];
  const joiner = await launchParticipant(server, 'bench', 'joiner', makeMedia(`m-${c}`, c, f));
  const firsts = [];
  for (let i = 0; i < joins; i++) {
    if (i > 0) {
      const token = await server.token('bench', `joiner${i}`);
      await joiner.page.goto(`${server.url}/?autojoin=1&raw_audio=1&token=${encodeURIComponent(token)}`);
    }
    await joiner.page.waitForFunction(() => window.mcu?.openedAt !== undefined);
    await watchFrames(joiner.page);
    await joiner.page.waitForFunction(() => window.frameLog?.first !== null, null, { timeout: 20000 });
    firsts.push(await joiner.page.evaluate(() => window.frameLog.first));
  }
  await joiner.browser.close();
  console.log(`socket open -> first composite frame over ${joins} joins: p50 ${pct(firsts, 0.5).toFixed(0)} ms, p90 ${pct(firsts, 0.9).toFixed(0)} ms (all: ${firsts.map((x) => x.toFixed(0)).join(', ')})`);
} finally {
  for (const p of parts) await p.browser.close().catch(() => {});
  await server.stop();
}
