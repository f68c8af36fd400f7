// All media on one UDP port (the default, 40000): three Chromium participants, the server holding
// exactly one UDP socket; an ICE restart keeps media; a participant whose NAT gives it a new
// source port mid-call keeps media; a flood of garbage and of STUN with unknown ufrags at the port
// does not disturb the call.
//
// Topology (netns.mjs, unshaped here): the server and two participants in one namespace, the
// third ("mover") in another behind a port-restricted NAT of its own (SNAT to a port range, and
// nothing but replies on established mappings comes in), so that moving its mapping (new range,
// conntrack flushed) is what a NAT rebinding looks like to the server. Needs root.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, makeMedia, toneLevels } from './harness.mjs';
import { makeLinks, canShape, inNs, SRV_IP, WEAK_IP, DRIVER_SRV_IP } from './netns.mjs';
import { launch, inbound, summary, waitConnected } from './weaklink.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const PORT = 40000;
const PEOPLE = [
  { name: 'left', color: 'red', freq: 500, ns: 'srv' },
  { name: 'right', color: 'lime', freq: 900, ns: 'srv' },
  { name: 'mover', color: 'blue', freq: 1300, ns: 'weak' },
];

let links;
let server;
let origin;
const joined = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** UDP sockets the process holds: local ports, read from its fds and its namespace's tables. */
function udpSockets(pid) {
  const inodes = new Set();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = readlinkSync(`/proc/${pid}/fd/${fd}`).match(/^socket:\[(\d+)\]$/);
      if (m) inodes.add(m[1]);
    } catch {}
  }
  const ports = [];
  for (const table of ['udp', 'udp6']) {
    const lines = readFileSync(`/proc/${pid}/net/${table}`, 'utf8').trim().split('\n').slice(1);
    for (const l of lines) {
      const f = l.trim().split(/\s+/);
      if (inodes.has(f[9])) ports.push(parseInt(f[1].split(':')[1], 16));
    }
  }
  return ports;
}

/** Port-restricted NAT for the mover's namespace, mapping to `range`. */
function nat(range) {
  const dev = `${links.tag}-w`;
  inNs(links.weak, 'iptables', '-t', 'nat', '-F', 'POSTROUTING');
  inNs(links.weak, 'iptables', '-t', 'nat', '-A', 'POSTROUTING', '-o', dev, '-p', 'udp', '-j', 'SNAT',
    '--to-source', `${WEAK_IP}:${range}`);
}

/** The mover's current public source ports (conntrack entries towards the server's port). */
function moverMappings() {
  let out = '';
  try {
    out = inNs(links.weak, 'conntrack', '-L', '-p', 'udp', '--dport', String(PORT));
  } catch (e) {
    out = e.stdout?.toString() ?? '';
  }
  return [...out.matchAll(/dst=10\.199\.0\.2 sport=\d+ dport=(\d+)/g)].map((m) => +m[1]);
}

/** Media flowing into `page` over `ms`: audio concealed, frames, as summary() reports them. */
async function flowOver(page, ms) {
  const a = await inbound(page);
  await sleep(ms);
  const b = await inbound(page);
  return summary(a, b);
}

before(async () => {
  assert.ok(canShape(), 'this test needs root with ip netns, tc, iptables and conntrack');
  links = makeLinks({ kbit: 50000, loss: 0 });
  const dev = `${links.tag}-w`;
  nat('20000-20999');
  // Only replies on a mapping come in: what the server sends to the mover's own (host candidate)
  // port, or to a mapping that is gone, is dropped, as a real NAT would.
  inNs(links.weak, 'iptables', '-A', 'INPUT', '-i', dev, '-p', 'udp', '-m', 'conntrack', '!', '--ctstate',
    'ESTABLISHED,RELATED', '-j', 'DROP');
  // MCU_UDP_PORTS empty (unset for the server): the default, one port.
  server = await startServer({ MCU_LISTEN: '0.0.0.0:0', MCU_RTC_BIND: SRV_IP, MCU_UDP_PORTS: '' }, null, [],
    { netns: links.srv, apiHost: DRIVER_SRV_IP });
  origin = `http://${SRV_IP}:${server.port}`;
  const r = await server.api('POST', '/rooms', { name: 'port', layout: 'grid' });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  for (const p of PEOPLE) {
    const g = await launch(links.wrapper(links[p.ns]), origin, makeMedia(`port-${p.name}`, p.color, p.freq));
    joined.push({ ...p, ...g });
    const token = await server.token('port', p.name);
    await g.page.goto(`${origin}/?autojoin=1&raw_audio=1&token=${encodeURIComponent(token)}`);
    await waitConnected(g.page);
  }
  // Media flowing everywhere before the tests start.
  for (const p of joined) {
    const deadline = Date.now() + 20000;
    while ((await inbound(p.page)).frames < 10 && Date.now() < deadline) await sleep(250);
  }
});

after(async () => {
  for (const p of joined) await p.browser.close().catch(() => {});
  if (server) await server.stop().catch(() => {});
  links?.close();
});

test('three participants, one UDP socket: the server holds exactly one, on the default port', async () => {
  const ports = udpSockets(server.proc.pid);
  assert.deepEqual(ports, [PORT], `UDP sockets of the server: ${ports}`);
  for (const p of joined) {
    const remote = await p.page.evaluate(async () => {
      const stats = await window.mcu.pc.getStats();
      let port = null;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const pair = stats.get(s.selectedCandidatePairId);
          port = stats.get(pair.remoteCandidateId)?.port ?? null;
        }
      });
      return port;
    });
    assert.equal(remote, PORT, `${p.name} talks to the server on ${remote}`);
    const f = await flowOver(p.page, 2000);
    assert.ok(f.fps >= 8 && f.audio_concealed_pct <= 2, `${p.name}: ${JSON.stringify(f)}`);
  }
});

test('an ICE restart keeps media on the same port', async () => {
  const mover = joined[2];
  const ufrag = () => mover.page.evaluate(() => window.mcu.pc.remoteDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
  const before = await ufrag();
  await mover.page.evaluate(() => window.mcu.conn.restartIce());
  const deadline = Date.now() + 15000;
  let after = before;
  while (Date.now() < deadline) {
    after = await ufrag();
    const state = await mover.page.evaluate(() => window.mcu.pc.iceConnectionState);
    if (after !== before && ['connected', 'completed'].includes(state)) break;
    await sleep(200);
  }
  assert.notEqual(after, before, 'the server answered the restart with new credentials');
  // The switch to the new candidate pair may cost a moment of audio (seen: 0-0.28 s; Chromium
  // reports `connected` throughout): at most half a second in the 3 s after the new
  // credentials, then clean.
  const first = await flowOver(mover.page, 3000);
  const gap = (first.audio_concealed_pct / 100) * first.seconds;
  console.log(`audio concealed during the ICE restart: ${gap.toFixed(2)} s`);
  assert.ok(gap <= 0.5, `audio right after the restart: ${JSON.stringify(first)}`);
  const f = await flowOver(mover.page, 3000);
  assert.ok(f.fps >= 8, `video after the restart: ${JSON.stringify(f)}`);
  assert.ok(f.audio_concealed_pct <= 5, `audio after the restart: ${JSON.stringify(f)}`);
  assert.deepEqual(udpSockets(server.proc.pid), [PORT], 'still one socket');
});

test('a participant whose source port changes mid-call keeps media both ways', async () => {
  const mover = joined[2];
  const old = moverMappings();
  assert.ok(old.length > 0 && old.every((p) => p >= 20000 && p <= 20999), `mapping before: ${old}`);
  // The NAT rebinds: new range, existing mappings forgotten.
  nat('21000-21999');
  inNs(links.weak, 'conntrack', '-F');
  const moved = Date.now();
  // Media comes back once the server has followed (a consent check from the new port).
  let recovered = null;
  while (Date.now() - moved < 20000) {
    const f = await flowOver(mover.page, 1000);
    if (f.fps >= 8) {
      recovered = (Date.now() - moved) / 1000;
      break;
    }
  }
  const now = moverMappings();
  assert.ok(now.some((p) => p >= 21000 && p <= 21999), `the mover's traffic now leaves from ${now}`);
  assert.ok(recovered !== null, 'video to the mover came back within 20 s of the rebinding');
  console.log(`media back ${recovered.toFixed(1)} s after the NAT rebinding`);
  const f = await flowOver(mover.page, 3000);
  assert.ok(f.fps >= 8 && f.audio_concealed_pct <= 5, `the mover after the rebinding: ${JSON.stringify(f)}`);
  // And what the mover sends still reaches the others.
  const levels = await toneLevels(joined[0].page, [PEOPLE[2].freq]);
  assert.ok(levels[0] > -50, `left hears the mover after its rebinding (${levels[0].toFixed(1)} dB)`);
});

test('a flood of garbage and of STUN with unknown ufrags does not disturb the call', async () => {
  const left = joined[0];
  const base = await flowOver(left.page, 5000);
  const metric = async (outcome) => {
    const r = await fetch(`http://${DRIVER_SRV_IP}:${server.port}/metrics`);
    const m = (await r.text()).match(new RegExp(`mcu_media_udp_datagrams_total\\{outcome="${outcome}"\\} (\\d+)`));
    return m ? +m[1] : NaN;
  };
  const droppedBefore = (await metric('unknown_source')) + (await metric('rate_limited'));
  // 5 000 garbage datagrams and 1 000 STUN requests a second for 8 s, from inside the server's
  // namespace (a host on the same network as the server: the worst case of a scan).
  const flood = new Promise((resolve, reject) => {
    execFile('ip', ['netns', 'exec', links.srv, process.execPath, path.join(here, 'udp-flood.mjs'),
      SRV_IP, String(PORT), '8', '5000', '1000'], (e, stdout) => (e ? reject(e) : resolve(JSON.parse(stdout))));
  });
  await sleep(1000);
  const during = await flowOver(left.page, 6000);
  const sent = await flood;
  const dropped = (await metric('unknown_source')) + (await metric('rate_limited')) - droppedBefore;
  console.log(JSON.stringify({ base, during, sent, dropped }));
  // Everything it sent was dropped by the mux (a few may still sit in the socket buffer).
  assert.ok(dropped >= 0.9 * (sent.garbage + sent.stun), `dropped ${dropped} of ${sent.garbage + sent.stun}`);
  // No audio packet lost to the flood: the mux kept routing media. Concealment may rise a little
  // without loss, from late packets: the flood's sender shares the 2 cores with three browsers
  // and the server (seen: 1.1 % in 6.5 s with nothing lost, one CI run of many).
  assert.ok(during.audio.lost <= Math.max(2, 0.01 * during.audio.packets),
    `audio packets lost during the flood: ${during.audio.lost} of ${during.audio.packets}`);
  assert.ok(during.audio_concealed_pct <= Math.max(2, base.audio_concealed_pct + 2),
    `audio during the flood ${during.audio_concealed_pct} % (before ${base.audio_concealed_pct} %)`);
  assert.ok(during.fps >= Math.min(10, base.fps - 3), `video during the flood ${during.fps} fps (before ${base.fps})`);
  assert.deepEqual(udpSockets(server.proc.pid), [PORT], 'still one socket');
});
