// Recording a mixed room to WebM, read back with ffprobe/ffmpeg: codecs, duration against wall
// time, a seek to the middle, every tone in the audio, the colours in the frames; a kill -9
// mid-recording leaves a playable file that the next start marks `interrupted`; auto-record.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, existsSync, statSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { startServer, makeMedia, launchParticipant, waitForMedia } from './harness.mjs';
import { probe, lastPacketTime, decodeAudio, goertzel, frameAt } from './media.mjs';
import { gridCentres } from './layout.mjs';

const PEOPLE = [
  { name: 'red', color: 'red', rgb: [255, 0, 0], freq: 400 },
  { name: 'blue', color: 'blue', rgb: [0, 0, 255], freq: 1000 },
];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const close = (a, b, tol = 70) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

let server;
let people = [];

async function download(rec, file) {
  const r = await fetch(`${server.url}${rec.media_url}`, { headers: { authorization: `Bearer ${server.apiKey}` } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'video/webm');
  writeFileSync(file, Buffer.from(await r.arrayBuffer()));
  return file;
}

before(async () => {
  server = await startServer();
  assert.equal((await server.api('POST', '/rooms', { name: 'rec' })).status, 201);
  for (const p of PEOPLE) {
    const part = await launchParticipant(server, 'rec', p.name, makeMedia(p.name, p.color, p.freq));
    await part.page.waitForFunction(() => window.mcu?.pc?.connectionState === 'connected', null, { timeout: 20000 });
    people.push(part);
  }
  for (const p of people) await waitForMedia(p.page);
});

after(async () => {
  for (const p of people) await p.browser.close().catch(() => {});
  if (server) await server.stop();
});

test('a recording has both codecs, the wall-clock duration, every tone and every colour', async () => {
  const started = await server.api('POST', '/rooms/rec/recordings', {});
  assert.equal(started.status, 201, JSON.stringify(started.body));
  assert.equal(started.body.status, 'recording');
  const t0 = Date.now();
  // Participants are told.
  await people[0].page.waitForFunction(() => window.mcu.events.some((e) => e.type === 'recording' && e.status === 'started'));
  const again = await server.api('POST', '/rooms/rec/recordings', {});
  assert.equal(again.status, 409);
  assert.equal(again.body.error.code, 'recording_in_progress');
  await sleep(8000);
  const stopped = await server.api('POST', `/recordings/${started.body.id}/stop`, {});
  const wall = (Date.now() - t0) / 1000;
  assert.equal(stopped.status, 200, JSON.stringify(stopped.body));
  assert.equal(stopped.body.status, 'completed');

  const file = await download(stopped.body, path.join(server.dir, 'rec.webm'));
  const info = probe(file);
  const codecs = info.streams.map((s) => s.codec_name).sort();
  assert.deepEqual(codecs, ['opus', 'vp8']);
  const v = info.streams.find((s) => s.codec_name === 'vp8');
  assert.equal(`${v.width}x${v.height}`, '640x360');
  const duration = Number(info.format.duration);
  assert.ok(Math.abs(duration - wall) / wall < 0.03, `duration ${duration}s vs wall ${wall}s`);
  assert.ok(Math.abs(stopped.body.duration_ms / 1000 - duration) < 0.2, `API duration ${stopped.body.duration_ms}`);
  assert.equal(stopped.body.size_bytes, statSync(file).size);

  // A seek to the middle decodes, and shows both participants in their grid tiles.
  const px = frameAt(file, duration / 2, 640, 360);
  gridCentres(2, 640, 360).forEach(([x, y], i) => {
    assert.ok(close(px(x, y), PEOPLE[i].rgb), `tile ${i} at mid-file is ${PEOPLE[i].name}: ${px(x, y)}`);
  });
  // Everyone's tone is in the recorded mix.
  const pcm = decodeAudio(file, 1, duration - 2);
  for (const p of PEOPLE) {
    const share = goertzel(pcm, p.freq);
    assert.ok(share > 0.1, `${p.freq} Hz carries ${(share * 100).toFixed(1)}% of the recorded audio power`);
  }
  assert.ok(goertzel(pcm, 700) < 0.01, 'a tone nobody sent is absent');
});

test('kill -9 mid-recording: the file plays, and after a restart it is interrupted and served', async () => {
  const started = await server.api('POST', '/rooms/rec/recordings', {});
  assert.equal(started.status, 201);
  await sleep(5500);
  for (const p of people) await p.browser.close();
  people = [];
  await server.stop('SIGKILL');
  const file = path.join(server.recordingsDir, `${started.body.id}.webm`);
  assert.ok(existsSync(file), 'the partial file exists');
  const audioEnd = lastPacketTime(file, 'a');
  const videoEnd = lastPacketTime(file, 'v');
  assert.ok(audioEnd >= 4 && videoEnd >= 4, `a killed recording keeps >= 4 s: audio ${audioEnd}s video ${videoEnd}s`);

  server = await startServer({}, { dir: server.dir, port: server.port });
  const rec = await server.api('GET', `/recordings/${started.body.id}`);
  assert.equal(rec.status, 200);
  assert.equal(rec.body.status, 'interrupted');
  assert.ok(rec.body.duration_ms >= 4000, `duration ${rec.body.duration_ms}`);
  const served = await download(rec.body, path.join(server.dir, 'interrupted.webm'));
  const info = probe(served);
  assert.ok(Number(info.format.duration) >= 4, `repaired file has a duration: ${info.format.duration}`);
  frameAt(served, Number(info.format.duration) / 2, 640, 360); // seekable after repair
});

test('auto_record starts with the first participant and stops when the room empties', async () => {
  assert.equal((await server.api('POST', '/rooms', { name: 'auto', auto_record: true })).status, 201);
  const p = await launchParticipant(server, 'auto', 'solo', makeMedia('red', 'red', 400));
  let recId;
  try {
    await waitForMedia(p.page);
    const room = await server.api('GET', '/rooms/auto');
    recId = room.body.recording_id;
    assert.ok(recId, `auto-record running: ${JSON.stringify(room.body)}`);
    await sleep(2000);
  } finally {
    await p.browser.close();
  }
  let rec;
  for (let i = 0; i < 50; i++) {
    rec = await server.api('GET', `/recordings/${recId}`);
    if (rec.body.status !== 'recording') break;
    await sleep(200);
  }
  assert.equal(rec.body.status, 'completed');
  assert.ok(rec.body.duration_ms >= 1500, `duration ${rec.body.duration_ms}`);
  assert.equal((await server.api('GET', '/rooms/auto')).body.recording_id, null);
});

test('a full disk fails the recording and the meeting goes on', async (t) => {
  // The recordings directory is a 256 KiB tmpfs with ~24 KiB left: a real ENOSPC a few seconds in.
  const disk = mkdtempSync(path.join(tmpdir(), 'mcu-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', disk]);
  } catch (e) {
    if (process.env.CI || process.env.MCU_TEST_REQUIRE_SERVICES) throw new Error(`cannot mount a tmpfs for the disk-full test: ${e.message}`);
    return t.skip('needs root to mount a small tmpfs');
  }
  const limited = await startServer({ MCU_RECORDINGS_DIR: disk });
  const p = [];
  try {
    writeFileSync(path.join(disk, 'filler'), Buffer.alloc(232 * 1024));
    assert.equal((await limited.api('POST', '/rooms', { name: 'full' })).status, 201);
    for (const q of PEOPLE) p.push(await launchParticipant(limited, 'full', q.name, makeMedia(q.name, q.color, q.freq)));
    for (const q of p) await waitForMedia(q.page);
    const rec = (await limited.api('POST', '/rooms/full/recordings', {})).body;
    let r;
    for (let i = 0; i < 120; i++) {
      r = await limited.api('GET', `/recordings/${rec.id}`);
      if (r.body.status !== 'recording') break;
      await sleep(500);
    }
    assert.equal(r.body.status, 'failed', JSON.stringify(r.body));
    assert.ok(/No space left|ENOSPC|os error 28/.test(limited.logs.join('')), 'the reason is logged');
    // The meeting goes on: frames keep arriving after the failure, nobody was dropped.
    const frames = () => p[0].page.evaluate(async () => {
      let f = 0;
      (await window.mcu.pc.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') f = s.framesDecoded; });
      return f;
    });
    const before = await frames();
    await sleep(1500);
    const after = await frames();
    assert.ok(after > before + 10, `frames keep coming after the failure: ${before} -> ${after}`);
    assert.equal((await limited.api('GET', '/rooms/full/participants')).body.participants.length, 2);
    // With room again on the disk, the room can record again.
    rmSync(path.join(disk, 'filler'));
    const again = await limited.api('POST', '/rooms/full/recordings', {});
    assert.equal(again.status, 201);
    await sleep(1500);
    assert.equal((await limited.api('POST', `/recordings/${again.body.id}/stop`, {})).body.status, 'completed');
  } finally {
    for (const q of p) await q.browser.close().catch(() => {});
    await limited.stop();
    execFileSync('umount', [disk]);
    rmSync(disk, { recursive: true, force: true });
  }
});
