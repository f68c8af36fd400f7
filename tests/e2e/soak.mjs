// The soak: one server for a long time (default an hour) under churn, measured from /proc and
// /metrics; writes a CSV and a markdown summary. Not a CI test (docs/reliability.md has a run).
//
//   node soak.mjs [minutes=60] [out-dir=../../target/soak]
//
// What happens, all from synthetic participants (mcu-loadgen) and the REST API:
// - a steady room, `soak-main`: 4 participants (2 with camera-like video, 2 talking) for the
//   whole run; its media thread's deadline misses are the "no tick misses caused by churn" figure;
// - churn every 3 s: 2 participants join one of 5 rooms, stay 4 s and leave; every third group
//   is killed with SIGKILL after 2 s instead (sockets dropped without a goodbye, peers left to
//   time out);
// - a mute toggle every 2 s on someone in `soak-main` (alternately locked);
// - a recording of `soak-main` started every 40 s and stopped 20 s later, the previous one
//   deleted (files do not pile up);
// - every 30 s a sample: resident memory, file descriptors and threads of the server process,
//   live-room entries and participants from /metrics, `soak-main`'s tick figures.
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startServer, root } from './harness.mjs';

const minutes = Number(process.argv[2] || 60);
const outDir = path.resolve(process.argv[3] || path.join(root, 'target/soak'));
const loadgen = path.join(process.env.CARGO_TARGET_DIR || path.join(root, 'target'), 'debug', 'mcu-loadgen');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
mkdirSync(outDir, { recursive: true });

const server = await startServer({ MCU_LOG: 'warn' });
const pid = server.proc.pid;
const children = new Set();
const counts = { churn_groups: 0, killed: 0, mutes: 0, recordings: 0, errors: 0 };
function run(room, participants, video, talkers, seconds) {
  const p = spawn(loadgen, ['run', '--url', server.url, '--api-key', server.apiKey, '--room', room,
    '--participants', String(participants), '--video', String(video), '--talkers', String(talkers),
    '--probes', '0', '--seconds', String(seconds)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  p.stderr.on('data', (d) => { err = (err + d).slice(-2000); });
  children.add(p);
  p.on('exit', (code, signal) => {
    children.delete(p);
    if (code !== 0 && signal !== 'SIGKILL') { counts.errors += 1; console.error(`loadgen ${room}: exit ${code}: ${err}`); }
  });
  return p;
}

function proc() {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (k) => Number(status.match(new RegExp(`^${k}:\\s+(\\d+)`, 'm'))[1]);
  return { rss_kib: field('VmRSS'), threads: field('Threads'), fds: readdirSync(`/proc/${pid}/fd`).length,
    cpu_s: (() => { const s = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
      return (Number(s[11]) + Number(s[12])) / 100; })() };
}

async function metrics() {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const g = (name) => Number((text.match(new RegExp(`^${name} (\\S+)$`, 'm')) || [])[1] ?? NaN);
  return { live_rooms: g('mcu_live_room_entries'), emptied: g('mcu_emptied_room_entries'),
    participants: g('mcu_participants') };
}

async function mainStats() {
  const r = await server.api('GET', '/rooms/soak-main/stats');
  const m = r.body?.media || {};
  return { ticks: m.ticks ?? 0, misses: m.deadline_misses ?? 0, tick_max_us: m.tick_max_us ?? 0,
    tick_mean_us: m.tick_mean_us ?? 0 };
}

await server.api('POST', '/rooms', { name: 'soak-main', empty_timeout_s: 0 });
for (let i = 0; i < 5; i++) {
  const r = await server.api('POST', '/rooms', { name: `soak-churn-${i}`, empty_timeout_s: 0 });
  if (r.status !== 201) throw new Error(`cannot create soak-churn-${i}: ${r.status}`);
}
run('soak-main', 4, 2, 2, minutes * 60 + 120);
await sleep(8000);

const samples = [];
const started = Date.now();
const end = started + minutes * 60_000;
let churn = 0;
let recording = null;
let lastRecording = null;
const timers = [
  setInterval(() => {
    const group = run(`soak-churn-${churn % 5}`, 2, 0, 1, 4);
    counts.churn_groups += 1;
    if (churn % 3 === 2) setTimeout(() => { group.kill('SIGKILL'); counts.killed += 1; }, 2000);
    churn += 1;
  }, 3000),
  setInterval(async () => {
    const ps = (await server.api('GET', '/rooms/soak-main/participants')).body?.participants || [];
    if (!ps.length) return;
    const p = ps[counts.mutes % ps.length];
    const mute = !p.audio_muted;
    const r = await server.api('POST', `/rooms/soak-main/participants/${p.id}/mute`,
      mute ? { audio: true, lock: counts.mutes % 4 === 0 } : { audio: false });
    if (r.status !== 200 && r.status !== 404) counts.errors += 1;
    counts.mutes += 1;
  }, 2000),
  setInterval(async () => {
    if (recording) return;
    const r = await server.api('POST', '/rooms/soak-main/recordings', {});
    if (r.status !== 201) { counts.errors += 1; return; }
    recording = r.body.id;
    counts.recordings += 1;
    setTimeout(async () => {
      const s = await server.api('POST', `/recordings/${recording}/stop`);
      if (s.status !== 200) counts.errors += 1;
      if (lastRecording) await server.api('DELETE', `/recordings/${lastRecording}`);
      lastRecording = recording;
      recording = null;
    }, 20000);
  }, 40000),
];

async function sample() {
  const s = { t_s: Math.round((Date.now() - started) / 1000), ...proc(), ...(await metrics()), ...(await mainStats()) };
  samples.push(s);
  console.log(JSON.stringify(s));
}
await sample();
while (Date.now() < end) {
  await sleep(30000);
  await sample();
}
for (const t of timers) clearInterval(t);
await sleep(25000); // the last churn groups and recording finish
await sample();
const after = samples[samples.length - 1];
for (const c of children) c.kill('SIGKILL');
await sleep(3000);
const drained = { ...(await metrics()) };
await server.stop();

const keys = Object.keys(samples[0]);
writeFileSync(path.join(outDir, 'soak.csv'), [keys.join(','), ...samples.map((s) => keys.map((k) => s[k]).join(','))].join('\n') + '\n');
// First and last ten minutes (or thirds of a shorter run), the end state once everyone left.
const window = Math.max(1, Math.min(20, Math.floor(samples.length / 3)));
const avg = (xs, k) => xs.reduce((a, s) => a + s[k], 0) / xs.length;
const first = samples.slice(1, 1 + window);
const last = samples.slice(-1 - window, -1);
const max = (k) => Math.max(...samples.map((s) => s[k]));
const row = (label, k, unit = '', f = (x) => x.toFixed(0)) =>
  `| ${label} | ${f(avg(first, k))}${unit} | ${f(avg(last, k))}${unit} | ${f(max(k))}${unit} |`;
const md = `Soak of ${minutes} min (${new Date(started).toISOString()}), debug build, this machine.

Churn: ${counts.churn_groups} groups of 2 joined and left (${counts.killed} killed without a goodbye),
${counts.mutes} mute toggles, ${counts.recordings} recordings started and stopped; ${counts.errors} API errors.

| figure | first ${window * 0.5} min | last ${window * 0.5} min | max |
|---|---|---|---|
${row('resident memory', 'rss_kib', ' KiB')}
${row('file descriptors', 'fds')}
${row('threads', 'threads')}
${row('live-room entries', 'live_rooms')}
${row('emptied-room entries', 'emptied')}
${row('participants', 'participants')}

soak-main: ${after.ticks} ticks, ${after.misses} deadline misses, tick mean ${(after.tick_mean_us / 1000).toFixed(2)} ms,
max ${(after.tick_max_us / 1000).toFixed(1)} ms. Server CPU ${(after.cpu_s / (after.t_s || 1) * 100).toFixed(0)} % of a core on average.
After everyone left: ${drained.live_rooms} live-room entries, ${drained.participants} participants.
`;
writeFileSync(path.join(outDir, 'soak.md'), md);
console.log(md);
process.exit(0);
