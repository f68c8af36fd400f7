// Shared helpers of the browser tests: media files, the real server binary, tokens, Chromium.
import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, existsSync, mkdirSync, appendFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
export const serverBin = path.join(target, 'debug', 'mcu-server');
const mediaDir = path.join(root, 'tests/e2e/media');

/** Chromium flags from NOTES.md (fake devices, loopback ICE, no background traffic). */
export const BASE_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection',
  '--autoplay-policy=no-user-gesture-required',
];

/** A solid-colour y4m and a sine wav for one fake participant (cached across runs). */
export function makeMedia(name, color, freq) {
  mkdirSync(mediaDir, { recursive: true });
  const y4m = path.join(mediaDir, `${name}.y4m`);
  const wav = path.join(mediaDir, `${name}.wav`);
  if (!existsSync(y4m)) {
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'lavfi', '-i', `color=c=${color}:size=320x180:rate=15`,
      '-t', '4', '-pix_fmt', 'yuv420p', y4m]);
  }
  if (!existsSync(wav)) {
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'lavfi', '-i', `sine=frequency=${freq}:sample_rate=48000`,
      '-af', 'volume=0.5', '-t', '10', '-c:a', 'pcm_s16le', wav]);
  }
  return { y4m, wav };
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** The join-token secret of every test server (tests sign their own tokens with it). */
export const TOKEN_SECRET = 'e2e-token-secret-0123456789abcdef0123456789';

/**
 * Starts the real server binary on loopback with a fresh SQLite database (`args`: e.g. ['--dev']).
 * `netns`: run it inside that network namespace, listening on every address of it, and reach its
 * API at `apiHost` (an address of that namespace the driver can route to).
 */
export async function startServer(extraEnv = {}, reuse = null, args = [], { netns = null, apiHost = '127.0.0.1' } = {}) {
  if (!existsSync(serverBin)) throw new Error(`${serverBin} missing: run cargo build first`);
  const port = reuse?.port ?? (await freePort());
  const dir = reuse?.dir ?? mkdtempSync(path.join(tmpdir(), 'mcu-e2e-'));
  const apiKey = 'e2e-test-api-key-0123456789';
  const env = {
    ...process.env,
    MCU_LISTEN: `127.0.0.1:${port}`,
    MCU_RTC_BIND: '127.0.0.1',
    // One media socket on a port the OS picks: a test may start a server while another one still
    // runs (one-port.test.mjs checks the default port, 40000).
    MCU_UDP_PORTS: '0',
    MCU_API_KEY: apiKey,
    MCU_TOKEN_SECRET: TOKEN_SECRET,
    DATABASE_URL: `sqlite://${dir}/mcu.db`,
    MCU_RECORDINGS_DIR: `${dir}/recordings`,
    MCU_WEB_DIR: path.join(root, 'web'),
    MCU_LOG: process.env.MCU_LOG || 'info,webrtc=warn,rtc=warn',
    // stop() sends SIGTERM, which drains (600 s by default while anyone is connected): a test
    // that stops its server with browsers still in the call waits a second, not ten minutes.
    MCU_DRAIN_TIMEOUT_S: '1',
    ...extraEnv,
  };
  if (netns) env.MCU_LISTEN = `0.0.0.0:${port}`;
  const proc = netns
    ? spawn('ip', ['netns', 'exec', netns, serverBin, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    : spawn(serverBin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs = [];
  proc.stdout.on('data', (d) => logs.push(d.toString()));
  proc.stderr.on('data', (d) => logs.push(d.toString()));
  const url = `http://${apiHost}:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`server exited: ${logs.join('')}`);
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) break;
    } catch {}
    if (Date.now() > deadline) throw new Error(`server did not start: ${logs.join('')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const api = async (method, p, body) => {
    const r = await fetch(`${url}/api/v1${p}`, {
      method,
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  };
  return {
    url, apiKey, logs, proc, api, dir, port, recordingsDir: `${dir}/recordings`,
    async token(room, identity, display_name = identity) {
      const r = await api('POST', `/rooms/${room}/tokens`, { identity, display_name });
      if (r.status !== 201) throw new Error(`token: ${r.status} ${JSON.stringify(r.body)}`);
      return r.body.token;
    },
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill(signal);
      await exited;
      // E2E_SERVER_LOG=path keeps every server's log of the run (appended) for a post-mortem.
      if (process.env.E2E_SERVER_LOG) appendFileSync(process.env.E2E_SERVER_LOG, logs.join(''));
    },
  };
}

/** One Chromium process per participant: fake capture files are per process. */
export async function launchParticipant(server, room, name, media) {
  const args = [...BASE_ARGS];
  if (media) args.push(`--use-file-for-fake-video-capture=${media.y4m}`, `--use-file-for-fake-audio-capture=${media.wav}`);
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const token = await server.token(room, name);
  // raw_audio=1: no browser voice processing, so that tones arrive as sent.
  await page.goto(`${server.url}/?autojoin=1&raw_audio=1&token=${encodeURIComponent(token)}`);
  return { browser, page, errors, name };
}

/** Creates a grid `room` and joins `people` one after the other (the composite's tile order is
 * the join order), each with `media(p)`, into `joined` (so that the caller can close them whatever
 * happens); resolves once every page plays media. */
export async function joinRoom(server, room, people, media, joined) {
  const r = await server.api('POST', '/rooms', { name: room, layout: 'grid' });
  if (r.status !== 201) throw new Error(`room ${room}: ${r.status} ${JSON.stringify(r.body)}`);
  for (const p of people) {
    const part = await launchParticipant(server, room, p.name, media(p));
    joined.push({ ...p, ...part });
    await part.page.waitForFunction(() => window.mcu?.pc?.connectionState === 'connected', null, { timeout: 20000 });
  }
  for (const p of joined) await waitForMedia(p.page);
}

/** In the page: starts recording composite frame times and the first-frame latency. */
export async function watchFrames(page) {
  await page.evaluate(() => {
    const v = document.getElementById('remote');
    window.frameLog = { times: [], first: null };
    const cb = (now) => {
      if (window.frameLog.first === null) window.frameLog.first = now - window.mcu.openedAt;
      window.frameLog.times.push(now);
      v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  });
}

/** Waits until the page decodes composite video and plays the mixed audio. (Polls with
 * evaluate: waitForFunction would take an async predicate's Promise for a truthy answer.) */
export async function waitForMedia(page, timeout = 20000) {
  const deadline = Date.now() + timeout;
  let last = null;
  while (Date.now() < deadline) {
    last = await page.evaluate(async () => {
      const pc = window.mcu?.pc;
      if (!pc) return { frames: 0, samples: 0 };
      const stats = await pc.getStats();
      let frames = 0, samples = 0;
      stats.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
        if (s.type === 'inbound-rtp' && s.kind === 'audio') samples = s.totalSamplesReceived || 0;
      });
      return { frames, samples };
    });
    if (last.frames > 10 && last.samples > 48000) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`no media within ${timeout} ms: ${JSON.stringify(last)}`);
}

/** Counts of remote tracks by kind and inbound stats. */
export async function receiveStats(page) {
  return page.evaluate(async () => {
    const pc = window.mcu.pc;
    const kinds = pc.getReceivers().filter((r) => r.track && r.track.readyState === 'live').map((r) => r.track.kind);
    const stats = await pc.getStats();
    const out = { kinds, framesDecoded: 0, audioSamples: 0 };
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') out.framesDecoded = s.framesDecoded || 0;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audioSamples = s.totalSamplesReceived || 0;
    });
    return out;
  });
}

/** Audio packets, samples played and samples concealed so far, from the page's getStats. */
export async function audioReceived(page) {
  return page.evaluate(async () => {
    const r = { packets: 0, samples: 0, concealed: 0 };
    (await window.mcu.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        r.packets += s.packetsReceived || 0;
        r.samples += s.totalSamplesReceived || 0;
        r.concealed += s.concealedSamples || 0;
      }
    });
    return r;
  });
}

/** Level (dB) at each frequency of the remote mixed audio, averaged over ~1 s by an AnalyserNode. */
export async function toneLevels(page, freqs) {
  return page.evaluate(async (freqs) => {
    const track = window.mcu.pc.getReceivers().find((r) => r.track?.kind === 'audio').track;
    const ctx = new AudioContext({ sampleRate: 48000 });
    await ctx.resume();
    const src = ctx.createMediaStreamSource(new MediaStream([track]));
    const an = ctx.createAnalyser();
    an.fftSize = 8192;
    an.smoothingTimeConstant = 0;
    src.connect(an);
    const bins = new Float32Array(an.frequencyBinCount);
    const acc = freqs.map(() => -Infinity);
    const hz = ctx.sampleRate / an.fftSize;
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 100));
      an.getFloatFrequencyData(bins);
      freqs.forEach((f, k) => {
        const b = Math.round(f / hz);
        const peak = Math.max(bins[b - 1], bins[b], bins[b + 1]);
        acc[k] = Math.max(acc[k], peak);
      });
    }
    await ctx.close();
    return acc;
  }, freqs);
}

/** RGB of the composite at relative points [x,y] in 0..1. */
export async function samplePixels(page, points) {
  return page.evaluate((points) => {
    const v = document.getElementById('remote');
    const c = document.createElement('canvas');
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    const g = c.getContext('2d');
    g.drawImage(v, 0, 0);
    return {
      width: c.width,
      height: c.height,
      px: points.map(([x, y]) => Array.from(g.getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1).data.slice(0, 3))),
    };
  }, points);
}
