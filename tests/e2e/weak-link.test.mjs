// A participant behind a weak link (its own network namespace; rate limit with a 300 ms queue and
// 2 % random UDP loss, both directions) in a mixed room with two well-connected Chromiums, all
// sending camera-like video. What it gets is read from its own getStats: audio concealment,
// frame rate, frozen time; what it hears from the analysed audio; and the others still hear and
// see it. Needs root (network namespaces, tc, iptables): CI runs as root; elsewhere this fails
// loudly rather than skipping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runScenario, PEOPLE } from './weaklink.mjs';
import { canShape } from './netns.mjs';

function close(a, b, tol = 80) {
  return a.every((v, i) => Math.abs(v - b[i]) <= tol);
}

/** The weak one hears both others and not itself; both others hear and see it. */
function assertContent(r, label) {
  const [own, ...others] = r.weak_hears;
  for (const [i, level] of others.entries()) {
    assert.ok(level > -50, `${label}: the weak participant hears ${PEOPLE.good[i].name} (${level.toFixed(1)} dB)`);
  }
  assert.ok(own < Math.max(...others) - 25, `${label}: not itself (${own.toFixed(1)} dB vs ${others.map((l) => l.toFixed(1))})`);
  for (const h of r.others_hear_weak) {
    assert.ok(h.weak > -50, `${label}: ${h.name} hears the weak participant (${h.weak.toFixed(1)} dB)`);
  }
  for (const s of r.others_see_weak) {
    const red = s.px.filter((p) => close(p, PEOPLE.weak.rgb)).length;
    assert.ok(red >= 2, `${label}: ${s.name} sees the weak participant's tile: ${JSON.stringify(s.px)}`);
  }
}

test('shaping is available (root, iproute2, tc, iptables)', () => {
  assert.ok(canShape(), 'this test needs root with ip netns, tc and iptables');
});

// The bar of the issue: at most 3 % concealed, at least 10 fps, at most 2 s frozen in 40 s.
// The receiver's next tier is tried only after a padding probe shows the link carries it, so a
// weak link is not overrun by a tier it cannot carry (that was what froze the picture for up to
// 18 s); and a tier's encoder holds frames back while a receiver's send queue is full, rather
// than the server skipping frames until a keyframe (the last freezes, up to 3.1 s).
// Measured since: docs/low-bandwidth.md.
test('300 kbit/s with 2 % loss: clear audio, video flowing, little frozen in 40 s', { timeout: 240000 }, async () => {
  const r = await runScenario({ mode: 'mcu', kbit: 300, loss: 0.02, seconds: 40 });
  console.log(JSON.stringify({ ...r, server: r.server?.receivers, media: r.server?.media }));
  assertContent(r, '300 kbit/s');
  assert.ok(r.audio_concealed_pct <= 3, `audio concealed ${r.audio_concealed_pct} %`);
  assert.ok(r.fps >= 10, `video ${r.fps} fps`);
  assert.ok(r.frozen_s <= 2, `frozen ${r.frozen_s} s of ${r.seconds}`);
  // Loss reported, so each audio packet repeats the one before (RED), paid for from video.
  const weak = r.server.receivers.reduce((a, b) => (b.estimate_kbps < a.estimate_kbps ? b : a));
  assert.ok(weak.audio_redundancy_kbps > 0, `audio redundancy on the lossy link: ${JSON.stringify(weak)}`);
  // Its next tier was probed with padding, and the others' probes found their links.
  assert.ok(weak.padding_bytes > 0, `the weak receiver was probed: ${JSON.stringify(weak)}`);
  for (const g of r.server.receivers.filter((x) => x !== weak)) {
    assert.ok(g.tier_kbps >= 400, `a well-connected receiver climbed: ${JSON.stringify(g)}`);
  }
  // The media thread kept its clock.
  assert.ok(r.server.media.deadline_misses <= 50, `deadline misses: ${r.server.media.deadline_misses}`);
  // Lost video packets came back as retransmissions on the negotiated RTX stream (Chromium
  // counts only those in retransmittedPacketsReceived).
  assert.ok(r.retransmissions_received > 0, `RTX packets received: ${r.retransmissions_received}`);
  // What we sent fits the link: its own queue dropped (almost) nothing on the way down.
  assert.ok(r.shaper_dropped.down <= 100, `the link dropped ${r.shaper_dropped.down} of our packets`);
});

test('120 kbit/s with 2 % loss: audio still clear (video pauses or runs within what is left)', { timeout: 240000 }, async () => {
  const r = await runScenario({ mode: 'mcu', kbit: 120, loss: 0.02, seconds: 30 });
  console.log(JSON.stringify({ ...r, server: r.server?.receivers, media: r.server?.media }));
  assertContent(r, '120 kbit/s');
  assert.ok(r.audio_concealed_pct <= 3, `audio concealed ${r.audio_concealed_pct} %`);
  // The constrained receiver: the lowest estimate (ours overshoots a 120 kbit/s link by up to
  // ~2x while little is sent, docs/low-bandwidth.md; it stays far below the others').
  const weak = r.server.receivers.reduce((a, b) => (b.estimate_kbps < a.estimate_kbps ? b : a));
  assert.ok(weak.estimate_kbps < 400, `the constrained receiver's estimate in ${JSON.stringify(r.server.receivers)}`);
  // Every pause the client was told of was followed by video it could see again, or is the
  // state the server reports now.
  const paused = r.video_events.filter((e) => e === 'video_paused').length;
  const resumed = r.video_events.filter((e) => e === 'video_resumed').length;
  assert.ok(paused - resumed === (weak.video_paused ? 1 : 0), `events ${r.video_events} vs paused=${weak.video_paused}`);
  // The page says so while it lasts (the last picture stays).
  assert.equal(r.paused_notice_shown, weak.video_paused, 'the "video paused" notice follows the server');
});
