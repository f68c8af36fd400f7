// The weak-link table of docs/low-bandwidth.md: for each link (kbit/s each way, random loss), the
// constrained receiver in our mixed room next to libwebrtc peer to peer over the same link, in
// the same run. Needs root (network namespaces) and a built server.
//   node measure-weak-link.mjs [seconds]            # the whole table (about 20 minutes at 20 s)
//   node measure-weak-link.mjs mcu 300 0.02 40      # one cell
import { runScenario } from './weaklink.mjs';

const args = process.argv.slice(2);
const [mode, kbit, loss, seconds] = args.length === 1 ? [undefined, undefined, undefined, args[0]] : args;
const cells = mode
  ? [{ mode, kbit: +kbit, loss: +loss }]
  : [[600, 0], [600, 0.02], [600, 0.05], [300, 0], [300, 0.02], [300, 0.05], [150, 0], [150, 0.02], [150, 0.05], [120, 0], [120, 0.02], [120, 0.05]]
    .flatMap(([k, l]) => ['mcu', 'p2p'].map((m) => ({ mode: m, kbit: k, loss: l })));
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
    console.log(`| ${r.kbit} kbit/s, ${Math.round(r.loss * 100)} % | ${r.mode === 'mcu' ? 'ours' : 'libwebrtc P2P'} | ${r.audio_concealed_pct} % | ${r.fps} | ${r.resolution} | ${r.frozen_s} of ${r.seconds} | ${r.kbps} |`);
  }
}
