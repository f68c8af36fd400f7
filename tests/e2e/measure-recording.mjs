// Recorder figures (not a test: prints them). With 2 browser participants in a room:
//  - server CPU for `seconds` without recording, then with a recording running (the difference
//    is what the recorder adds);
//  - a recording of `minutes`: its duration against the wall clock, and the end of the audio
//    track against the end of the video track (A/V drift: both come from the room clock).
// Usage: node measure-recording.mjs [seconds=20] [minutes=10]
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, makeMedia, launchParticipant, waitForMedia } from './harness.mjs';
import { probe, lastPacketTime } from './media.mjs';

const [seconds = 20, minutes = 10] = process.argv.slice(2).map(Number);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const server = await startServer();
const cpu = () => {
  const f = readFileSync(`/proc/${server.proc.pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
};
const parts = [];
try {
  await server.api('POST', '/rooms', { name: 'm' });
  for (const [c, f] of [['red', 400], ['blue', 1000]]) {
    parts.push(await launchParticipant(server, 'm', c, makeMedia(c, c, f)));
  }
  for (const p of parts) await waitForMedia(p.page);
  await sleep(2000);
  let c0 = cpu();
  await sleep(seconds * 1000);
  const without = (cpu() - c0) / seconds;
  const encoders = async () => (await (await fetch(`${server.url}/metrics`)).text()).match(/^mcu_video_encoders (\d+)/m)?.[1];
  const encBefore = await encoders();
  const rec = (await server.api('POST', '/rooms/m/recordings', {})).body;
  const t0 = Date.now();
  c0 = cpu();
  await sleep(seconds * 1000);
  const withRec = (cpu() - c0) / seconds;
  console.log(`VP8 encoders: ${encBefore} without recording, ${await encoders()} with (the recording shares a tier encoder when a receiver is on its bitrate tier)`);
  console.log(`server CPU, 2 participants: ${(without * 100).toFixed(1)}% without recording, ${(withRec * 100).toFixed(1)}% with: the recorder adds ${((withRec - without) * 100).toFixed(1)}% of a core (noise ~±1%)`);
  await sleep(Math.max(0, minutes * 60000 - (Date.now() - t0)));
  const done = (await server.api('POST', `/recordings/${rec.id}/stop`, {})).body;
  const wall = (Date.now() - t0) / 1000;
  const file = path.join(server.dir, 'long.webm');
  const r = await fetch(`${server.url}${done.media_url}`, { headers: { authorization: `Bearer ${server.apiKey}` } });
  writeFileSync(file, Buffer.from(await r.arrayBuffer()));
  const duration = Number(probe(file).format.duration);
  const a = lastPacketTime(file, 'a'), v = lastPacketTime(file, 'v');
  console.log(`${(wall / 60).toFixed(1)} min recording: file ${duration.toFixed(3)} s vs wall ${wall.toFixed(3)} s (${((duration - wall) * 1000).toFixed(0)} ms); audio ends ${a.toFixed(3)} s, video ends ${v.toFixed(3)} s: A/V end difference ${((a - v) * 1000).toFixed(0)} ms (one video frame is ${(1000 / 15).toFixed(0)} ms)`);
  const ticks = await (await fetch(`${server.url}/metrics`)).text();
  console.log(ticks.split('\n').filter((l) => /deadline_misses_total |dropped_packets_total /.test(l)).join('\n'));
} finally {
  for (const p of parts) await p.browser.close().catch(() => {});
  await server.stop();
}
