// The weak-link table of docs/low-bandwidth.md: for each link (kbit/s each way, random loss), the
// constrained receiver in our mixed room next to libwebrtc peer to peer over the same link, in
// the same run. Needs root (network namespaces) and a built server.
//   node measure-weak-link.mjs                      # the whole table (about 30 minutes)
//   node measure-weak-link.mjs mcu 300 0.02 40      # one cell
import { runScenario } from './weaklink.mjs';

const [mode, kbit, loss, seconds] = process.argv.slice(2);
const cells = mode
  ? [{ mode, kbit: +kbit, loss: +loss }]
  : [600, 300, 150, 120].flatMap((k) => [0, 0.02, 0.05].flatMap((l) => ['mcu', 'p2p'].map((m) => ({ mode: m, kbit: k, loss: l }))));
const rows = [];
for (const c of cells) {
  const r = await runScenario({ ...c, seconds: +(seconds || 30), log: (m) => console.error(m) });
  const row = { ...c, ...r };
  rows.push(row);
  console.log(JSON.stringify(row));
}
if (!mode) {
  console.log('| link | mode | audio concealed | fps | resolution | frozen s | kbit/s |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.kbit} kbit/s, ${r.loss * 100} % | ${r.mode} | ${r.audio_concealed_pct} % | ${r.fps} | ${r.resolution} | ${r.frozen_s} of ${r.seconds} | ${r.kbps} |`);
  }
}
