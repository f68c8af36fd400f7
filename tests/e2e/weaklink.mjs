// One weak-link scenario, measured the way a user would notice it: a Chromium participant behind a
// shaped link (rate + random loss both ways) in a mixed room with well-connected Chromiums, all
// sending camera-like video. Or, for the bar we compare against, the same two ends calling each
// other directly (libwebrtc peer to peer) over the same link.
//
// What is measured on the constrained receiver, between two getStats readings `seconds` apart:
// audio concealed (concealedSamples / totalSamplesReceived), video fps (framesDecoded), resolution,
// frozen seconds (Chromium's totalFreezesDuration, plus a trailing gap with no frame at all), and
// the received kbit/s.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BASE_ARGS, root, startServer, toneLevels, samplePixels } from './harness.mjs';
import { makeLinks, shaperStats, SRV_IP, DRIVER_SRV_IP } from './netns.mjs';
import { gridCentres } from './layout.mjs';

const mediaDir = path.join(root, 'tests/e2e/media');

/**
 * Camera-like fake capture: a colour with temporal sensor noise and a moving box (flat colours
 * would cost the encoders nothing and hide every bandwidth problem), and a sine tone.
 */
export function makeCameraMedia(name, color, freq) {
  mkdirSync(mediaDir, { recursive: true });
  const y4m = path.join(mediaDir, `cam-${name}.y4m`);
  const wav = path.join(mediaDir, `cam-${name}.wav`);
  if (!existsSync(y4m)) {
    const vf = `noise=alls=24:allf=t+u,drawbox=x='mod(t*120,600)':y=30:w=40:h=40:color=white:t=fill`;
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'lavfi', '-i', `color=c=${color}:size=640x360:rate=15`,
      '-vf', vf, '-t', '6', '-pix_fmt', 'yuv420p', y4m]);
  }
  if (!existsSync(wav)) {
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'lavfi', '-i', `sine=frequency=${freq}:sample_rate=48000`,
      '-af', 'volume=0.5', '-t', '10', '-c:a', 'pcm_s16le', wav]);
  }
  return { y4m, wav };
}

export const PEOPLE = {
  weak: { name: 'weak', color: 'red', rgb: [255, 0, 0], freq: 500 },
  good: [
    { name: 'good1', color: 'lime', rgb: [0, 255, 0], freq: 800 },
    { name: 'good2', color: 'blue', rgb: [0, 0, 255], freq: 1200 },
  ],
};

export async function launch(wrapperPath, origin, media) {
  const args = [...BASE_ARGS, `--unsafely-treat-insecure-origin-as-secure=${origin}`,
    `--use-file-for-fake-video-capture=${media.y4m}`, `--use-file-for-fake-audio-capture=${media.wav}`];
  const browser = await chromium.launch({ executablePath: wrapperPath, headless: true, args });
  const page = await browser.newPage();
  const events = [];
  // What went wrong in the page, for the error a failed wait reports.
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.problems = problems;
  page.on('websocket', (ws) => ws.on('framereceived', (f) => {
    try {
      const m = JSON.parse(f.payload);
      if (m.type === 'video_paused' || m.type === 'video_resumed') events.push({ type: m.type, at: Date.now() });
    } catch {}
  }));
  return { browser, page, events };
}

/** Inbound figures of the page's RTCPeerConnection (`window.mcu.pc`). */
export async function inbound(page) {
  return page.evaluate(async () => {
    const stats = await window.mcu.pc.getStats();
    const r = { at: performance.now(), concealed: 0, samples: 0, frames: 0, width: 0, height: 0, freezes: 0,
      bytes: 0, lost: 0, packets: 0, rtx: 0, fec: 0, audioCodec: null, lastFrameAt: window.frameLog?.last ?? 0 };
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const pair = stats.get(s.selectedCandidatePairId);
        r.protocol = stats.get(pair?.localCandidateId)?.protocol ?? null;
      }
      if (s.type !== 'inbound-rtp') return;
      r.bytes += s.bytesReceived || 0;
      r.lost += Math.max(0, s.packetsLost || 0);
      r.packets += s.packetsReceived || 0;
      if (s.kind === 'audio') {
        r.concealed += s.concealedSamples || 0;
        r.samples += s.totalSamplesReceived || 0;
        r.fec += s.fecPacketsReceived || 0;
        r.audioLost = Math.max(0, s.packetsLost || 0);
        r.audioPackets = s.packetsReceived || 0;
        r.audioDiscarded = s.packetsDiscarded || 0;
        r.concealmentEvents = s.concealmentEvents || 0;
        r.jbDelay = s.jitterBufferDelay || 0;
        r.jbEmitted = s.jitterBufferEmittedCount || 0;
        r.accelerated = s.removedSamplesForAcceleration || 0;
        r.audioCodec = stats.get(s.codecId)?.mimeType ?? null;
      } else if (s.kind === 'video') {
        r.rtx += s.retransmittedPacketsReceived || 0;
        r.frames += s.framesDecoded || 0;
        r.width = s.frameWidth || r.width;
        r.height = s.frameHeight || r.height;
        r.freezes += s.totalFreezesDuration || 0;
      }
    });
    return r;
  });
}

/** Records presented frame times (requestVideoFrameCallback) of the #remote video. */
export async function watchFrames(page) {
  await page.evaluate(() => {
    const v = document.getElementById('remote');
    window.frameLog = { last: 0 };
    const cb = (now) => { window.frameLog.last = now; v.requestVideoFrameCallback(cb); };
    v.requestVideoFrameCallback(cb);
  });
}

export function summary(a, b) {
  const secs = (b.at - a.at) / 1000;
  const samples = b.samples - a.samples;
  // A trailing stretch with no frame is a freeze Chromium has not counted yet.
  const trailing = b.lastFrameAt ? Math.max(0, (b.at - b.lastFrameAt) / 1000 - 0.5) : secs;
  return {
    seconds: +secs.toFixed(1),
    audio_concealed_pct: samples > 0 ? +((100 * (b.concealed - a.concealed)) / samples).toFixed(2) : 100,
    fps: +((b.frames - a.frames) / secs).toFixed(1),
    resolution: b.width ? `${b.width}x${b.height}` : '-',
    frozen_s: +(b.freezes - a.freezes + trailing).toFixed(1),
    kbps: Math.round(((b.bytes - a.bytes) * 8) / secs / 1000),
    retransmissions_received: b.rtx - a.rtx,
    audio_codec: b.audioCodec,
    // Why audio was concealed: packets lost or discarded (late), and the jitter buffer's depth.
    audio: {
      lost: b.audioLost - a.audioLost,
      packets: b.audioPackets - a.audioPackets,
      discarded: b.audioDiscarded - a.audioDiscarded,
      fec_packets: b.fec - a.fec,
      concealment_events: b.concealmentEvents - a.concealmentEvents,
      jitter_buffer_ms: b.jbEmitted > a.jbEmitted
        ? Math.round((1000 * (b.jbDelay - a.jbDelay)) / (b.jbEmitted - a.jbEmitted)) : null,
      accelerated_ms: Math.round((b.accelerated - a.accelerated) / 48),
    },
    transport: b.protocol,
    loss_pct: b.packets - a.packets > 0
      ? +((100 * (b.lost - a.lost)) / (b.lost - a.lost + b.packets - a.packets)).toFixed(1) : null,
  };
}

export async function waitConnected(page, timeout = 30000) {
  try {
    // The client starts once its modules have loaded. A CI run once saw a page whose script
    // never started (no window.mcu after 30 s, on a loaded machine): that is the page load,
    // not the call, so it is said and the page loaded once more.
    const started = await page.waitForFunction(() => window.mcu !== undefined, null, { timeout: 10000 })
      .then(() => true, () => false);
    if (!started) {
      console.error(`the page's script did not start within 10 s (${JSON.stringify(page.problems ?? [])}); loading it again`);
      await page.reload();
    }
    await page.waitForFunction(() => window.mcu?.pc?.connectionState === 'connected', null, { timeout });
  } catch (e) {
    // Say what the client went through (signaling, ICE, peer states), not only that it timed out.
    const seen = await page.evaluate(() => ({
      state: window.mcu?.state,
      pc: window.mcu?.pc?.connectionState,
      ice: window.mcu?.pc?.iceConnectionState,
      events: (window.mcu?.events ?? []).slice(-30),
    })).catch((err) => String(err));
    if (typeof seen === 'object') seen.page_problems = (page.problems ?? []).slice(-10);
    throw new Error(`not connected within ${timeout} ms: ${JSON.stringify(seen)}`, { cause: e });
  }
}

/** Waits until the page has decoded some video and played some audio. */
async function waitFlowing(page, timeout = 30000) {
  const deadline = Date.now() + timeout;
  let r;
  while (Date.now() < deadline) {
    r = await inbound(page);
    if (r.samples > 48000 && r.frames > 0) return r;
    await new Promise((res) => setTimeout(res, 250));
  }
  return r;
}

/**
 * Runs one scenario. `mode`: 'mcu' (a mixed room with the weak one and two good ones) or 'p2p'
 * (the weak one calls one good one directly). Returns the weak receiver's summary, and for 'mcu'
 * the tone levels both ways, the composite colours the others see, and the server's stats.
 */
export async function runScenario({ mode, kbit, loss, seconds = 40, warmup = 8, serverEnv = {}, log = () => {} }) {
  const links = makeLinks({ kbit, loss });
  const opened = [];
  let server;
  try {
    server = await startServer({ MCU_LISTEN: `0.0.0.0:0`, MCU_RTC_BIND: SRV_IP, ...serverEnv }, null, [],
      { netns: links.srv, apiHost: DRIVER_SRV_IP });
    const origin = `http://${SRV_IP}:${server.port}`;
    const weakMedia = makeCameraMedia(PEOPLE.weak.name, PEOPLE.weak.color, PEOPLE.weak.freq);
    const weak = await launch(links.wrapper(links.weak), origin, weakMedia);
    opened.push(weak.browser);
    if (mode === 'p2p') return await runP2p({ links, origin, weak, opened, seconds, warmup, log });

    const room = 'weak';
    const r = await server.api('POST', '/rooms', { name: room, layout: 'grid' });
    if (r.status !== 201) throw new Error(`room: ${r.status}`);
    const goods = [];
    for (const p of PEOPLE.good) {
      const g = await launch(links.wrapper(links.srv), origin, makeCameraMedia(p.name, p.color, p.freq));
      opened.push(g.browser);
      const token = await server.token(room, p.name);
      await g.page.goto(`${origin}/?autojoin=1&raw_audio=1&token=${encodeURIComponent(token)}`);
      await waitConnected(g.page);
      goods.push({ ...p, ...g });
    }
    const token = await server.token(room, PEOPLE.weak.name);
    await weak.page.goto(`${origin}/?autojoin=1&raw_audio=1&token=${encodeURIComponent(token)}`);
    await waitConnected(weak.page, 40000);
    await watchFrames(weak.page);
    await waitFlowing(weak.page);
    log(`${mode} ${kbit} kbit/s ${loss * 100}%: connected, warming up ${warmup} s`);
    await new Promise((res) => setTimeout(res, warmup * 1000));
    const a = await inbound(weak.page);
    const before = shaperStats(links);
    await new Promise((res) => setTimeout(res, seconds * 1000));
    const b = await inbound(weak.page);
    const after = shaperStats(links);
    const result = summary(a, b);
    result.shaper_dropped = { down: after.down.dropped - before.down.dropped, up: after.up.dropped - before.up.dropped };
    const freqs = [PEOPLE.weak.freq, ...PEOPLE.good.map((p) => p.freq)];
    result.weak_hears = await toneLevels(weak.page, freqs);
    result.others_hear_weak = [];
    result.others_see_weak = [];
    for (const g of goods) {
      const levels = await toneLevels(g.page, freqs);
      result.others_hear_weak.push({ name: g.name, weak: levels[0], levels });
      // The weak participant joined third: its tile is the third of the grid (the last row,
      // centred). Three points around its centre, clear of the moving box near its top.
      const [cx, cy] = gridCentres(3, 640, 360)[2].map((v, i) => v / (i ? 360 : 640));
      const px = await samplePixels(g.page, [[cx, cy], [cx - 0.05, cy + 0.05], [cx + 0.05, cy + 0.05]]);
      result.others_see_weak.push({ name: g.name, px: px.px });
      const s = await inbound(g.page);
      result[`${g.name}_frames`] = s.frames;
      result[`${g.name}_rtx`] = s.rtx;
    }
    // The server's state and the page's events, read as one snapshot: the events are read
    // between two reads of the server's state that agree on every receiver's pause (a pause or a
    // resume in between would make them disagree: then read again), with time for a message in
    // flight to arrive.
    const pausedOf = (body) => JSON.stringify(body.receivers.map((x) => [x.participant_id, x.video_paused]));
    for (let attempt = 0; ; attempt++) {
      const first = (await server.api('GET', `/rooms/${room}/stats`)).body;
      await new Promise((res) => setTimeout(res, 500));
      result.video_events = weak.events.map((e) => e.type);
      result.paused_notice_shown = await weak.page.evaluate(() => !document.getElementById('video-paused').hidden);
      const second = (await server.api('GET', `/rooms/${room}/stats`)).body;
      result.server = second;
      if (pausedOf(first) === pausedOf(second) || attempt === 9) break;
    }
    return result;
  } finally {
    for (const b of opened) await b.close().catch(() => {});
    if (server) await server.stop().catch(() => {});
    links.close();
    // One file per link (WEAK_LOG.300k): a run of several scenarios keeps every log.
    if (server && process.env.WEAK_LOG) writeFileSync(`${process.env.WEAK_LOG}.${kbit}k`, server.logs.join(''));
  }
}

/** libwebrtc peer to peer over the same link: the bar. Signaling through the test driver. */
async function runP2p({ links, origin, weak, opened, seconds, warmup, log }) {
  const goodP = PEOPLE.good[0];
  const good = await launch(links.wrapper(links.srv), origin, makeCameraMedia(goodP.name, goodP.color, goodP.freq));
  opened.push(good.browser);
  const setup = async (page) => {
    await page.goto(`${origin}/healthz`);
    await page.evaluate(async () => {
      document.body.innerHTML = '<video id="remote" autoplay playsinline muted></video><audio id="a" autoplay></audio>';
      const pc = new RTCPeerConnection();
      window.mcu = { pc };
      const media = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
        video: { width: 640, height: 360, frameRate: 15 },
      });
      for (const t of media.getTracks()) pc.addTrack(t, media);
      pc.ontrack = (e) => {
        if (e.track.kind === 'video') document.getElementById('remote').srcObject = new MediaStream([e.track]);
        else document.getElementById('a').srcObject = new MediaStream([e.track]);
      };
    });
  };
  await setup(weak.page);
  await setup(good.page);
  const gathered = (page, fn) => page.evaluate(async (fn) => {
    const pc = window.mcu.pc;
    const d = fn === 'offer' ? await pc.createOffer() : await pc.createAnswer();
    await pc.setLocalDescription(d);
    if (pc.iceGatheringState !== 'complete') {
      await new Promise((r) => pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && r()));
    }
    return pc.localDescription.sdp;
  }, fn);
  // UDP only, as our server uses: over ICE-TCP, TCP's own retransmissions would hide the
  // random loss the link applies to UDP.
  const udpOnly = (sdp) => sdp.split('\r\n').filter((l) => !(l.startsWith('a=candidate') && / tcp /i.test(l))).join('\r\n');
  const offer = udpOnly(await gathered(good.page, 'offer'));
  await weak.page.evaluate((sdp) => window.mcu.pc.setRemoteDescription({ type: 'offer', sdp }), offer);
  const answer = udpOnly(await gathered(weak.page, 'answer'));
  await good.page.evaluate((sdp) => window.mcu.pc.setRemoteDescription({ type: 'answer', sdp }), answer);
  await waitConnected(weak.page);
  await watchFrames(weak.page);
  await waitFlowing(weak.page);
  log(`p2p: connected, warming up ${warmup} s`);
  await new Promise((res) => setTimeout(res, warmup * 1000));
  const a = await inbound(weak.page);
  await new Promise((res) => setTimeout(res, seconds * 1000));
  const b = await inbound(weak.page);
  return summary(a, b);
}
