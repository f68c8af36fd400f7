// Shaped links between network namespaces made for one test run (see ../shared/NOTES.md: no netem
// here, so `tbf` for the rate with a bounded queue and `iptables` for random loss).
//
// Topology (addresses are this test's own, on veth pairs that exist only inside the namespaces):
//
//   root ns  10.199.2.1 ── veth (unshaped) ── 10.199.2.2  <ns>-srv   (server, well-connected browsers)
//                                              10.199.0.1  <ns>-srv ── veth (SHAPED) ── 10.199.0.2  <ns>-weak
//
// The server binds its media to 10.199.0.1; browsers in the srv namespace reach it locally, the
// weak browser through the shaped pair, and the test driver (root namespace) reaches its HTTP API
// through the unshaped pair. Nothing here routes anywhere else: no default route in either namespace.
import { execFileSync } from 'node:child_process';
import { writeFileSync, chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const SRV_IP = '10.199.0.1';
export const WEAK_IP = '10.199.0.2';
export const DRIVER_SRV_IP = '10.199.2.2';

function sh(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts }).toString();
}
const ip = (...a) => sh('ip', a);
export const inNs = (ns, cmd, ...a) => sh('ip', ['netns', 'exec', ns, cmd, ...a]);

/** Whether this process may create namespaces (root with iproute2, tc and iptables). */
export function canShape() {
  try {
    sh('ip', ['netns', 'list']);
    sh('tc', ['-V']);
    sh('iptables', ['--version']);
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
}

/** Rate limit (kbit/s) with a ~300 ms queue, and random UDP loss (0..1), on one end's egress. */
function shape(ns, dev, kbit, loss) {
  // burst: at least one full-size packet plus some, as tbf requires; latency bounds the queue.
  const burst = Math.max(3000, Math.round((kbit * 1000) / 8 / 50));
  inNs(ns, 'tc', 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${kbit}kbit`, 'burst', `${burst}`, 'latency', '300ms');
  if (loss > 0) {
    inNs(ns, 'iptables', '-A', 'OUTPUT', '-o', dev, '-p', 'udp', '-m', 'statistic', '--mode', 'random',
      '--probability', String(loss), '-j', 'DROP');
    // Forwarded traffic (peer-to-peer baseline through the srv namespace) crosses FORWARD, not OUTPUT.
    inNs(ns, 'iptables', '-A', 'FORWARD', '-o', dev, '-p', 'udp', '-m', 'statistic', '--mode', 'random',
      '--probability', String(loss), '-j', 'DROP');
  }
}

/**
 * Creates the namespaces and links. `kbit` and `loss` apply in both directions of the weak link.
 * Returns { srv, weak, wrapper(ns) -> path of a chromium wrapper, close() }.
 */
export function makeLinks({ kbit, loss }) {
  const tag = `mw${process.pid % 100000}`;
  const srv = `${tag}-srv`;
  const weak = `${tag}-weak`;
  const close = () => {
    for (const ns of [srv, weak]) {
      try { ip('netns', 'del', ns); } catch {}
    }
    try { ip('link', 'del', `${tag}-d`); } catch {}
  };
  close();
  try {
    ip('netns', 'add', srv);
    ip('netns', 'add', weak);
    // Shaped pair srv <-> weak.
    ip('link', 'add', `${tag}-s`, 'type', 'veth', 'peer', 'name', `${tag}-w`);
    ip('link', 'set', `${tag}-s`, 'netns', srv);
    ip('link', 'set', `${tag}-w`, 'netns', weak);
    // Unshaped pair root <-> srv for the test driver's HTTP calls.
    ip('link', 'add', `${tag}-d`, 'type', 'veth', 'peer', 'name', `${tag}-r`);
    ip('link', 'set', `${tag}-r`, 'netns', srv);
    ip('addr', 'add', '10.199.2.1/30', 'dev', `${tag}-d`);
    ip('link', 'set', `${tag}-d`, 'up');
    inNs(srv, 'ip', 'addr', 'add', `${SRV_IP}/30`, 'dev', `${tag}-s`);
    inNs(srv, 'ip', 'addr', 'add', `${DRIVER_SRV_IP}/30`, 'dev', `${tag}-r`);
    inNs(weak, 'ip', 'addr', 'add', `${WEAK_IP}/30`, 'dev', `${tag}-w`);
    for (const [ns, dev] of [[srv, `${tag}-s`], [srv, `${tag}-r`], [srv, 'lo'], [weak, `${tag}-w`], [weak, 'lo']]) {
      inNs(ns, 'ip', 'link', 'set', dev, 'up');
    }
    // Off-loads would hand tbf 64 KiB super-packets; shape real packets.
    for (const [ns, dev] of [[srv, `${tag}-s`], [weak, `${tag}-w`]]) {
      try { inNs(ns, 'ethtool', '-K', dev, 'tso', 'off', 'gso', 'off', 'gro', 'off'); } catch {}
    }
    shape(srv, `${tag}-s`, kbit, loss);
    shape(weak, `${tag}-w`, kbit, loss);
  } catch (e) {
    close();
    throw e;
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'mcu-ns-'));
  const wrapper = (ns) => {
    const p = path.join(dir, `chromium-${ns}`);
    writeFileSync(p, `#!/bin/sh\nexec ip netns exec ${ns} /usr/bin/chromium "$@"\n`);
    chmodSync(p, 0o755);
    return p;
  };
  return { srv, weak, wrapper, close, tag };
}

/** Bytes and drops the shaper counted on each end (for the report). */
export function shaperStats(links) {
  const read = (ns, dev) => {
    const out = inNs(ns, 'tc', '-s', 'qdisc', 'show', 'dev', dev);
    const m = out.match(/Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)/);
    return m ? { bytes: +m[1], packets: +m[2], dropped: +m[3] } : null;
  };
  return { down: read(links.srv, `${links.tag}-s`), up: read(links.weak, `${links.tag}-w`) };
}
