// The web client and the admin console in real headless Chromium against the real server (one
// server, run with --dev; one Chromium per distinct fake camera/microphone, pages in contexts):
// admin sign-in, room creation and an invite link; the invite's pre-join; a --dev join without a
// token; mute (the other's analyser loses the tone); chat both ways; connection quality; screen
// share taking the speaker layout's large tile; recording started and stopped from the console
// and played back in the page through its signed URL with Range requests; ICE restart; the
// WebSocket cut and rejoined; a kick from the console; clear messages (camera blocked, expired
// invite, room full, server unreachable); a 360 px phone without horizontal overflow; keyboard and
// labels; no console errors. Screenshots of the main screens go to a temporary folder, or to
// docs/screenshots/ with UPDATE_SCREENSHOTS=1 (so that running the tests rewrites no tracked file).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer, makeMedia, waitForMedia, toneLevels, samplePixels, BASE_ARGS, TOKEN_SECRET, root } from './harness.mjs';

const ALICE = { color: 'red', rgb: [255, 0, 0], freq: 400 };
const BOB = { color: 'blue', rgb: [0, 0, 255], freq: 1000 };
const MAGENTA = [255, 0, 255];
const SHOTS = process.env.UPDATE_SCREENSHOTS
  ? path.join(root, 'docs/screenshots')
  : mkdtempSync(path.join(tmpdir(), 'mcu-screenshots-'));
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 360, height: 740 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const close = (a, b, tol = 70) => a.every((v, i) => Math.abs(v - b[i]) <= tol);

let server;
const browsers = [];
/** Pages whose console must stay clean, by name. */
const pages = {};

async function launch(media) {
  const args = [...BASE_ARGS, `--use-file-for-fake-video-capture=${media.y4m}`, `--use-file-for-fake-audio-capture=${media.wav}`];
  const b = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args });
  browsers.push(b);
  return b;
}

/** A page in a fresh context (own storage) of `browser`, with its console errors collected. */
async function open(browser, name, { viewport = DESKTOP, init = null } = {}) {
  const context = await browser.newContext({ viewport });
  if (init) await context.addInitScript(init);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  const p = { page, context, errors, name };
  return p;
}

/** Polls an async predicate until it returns a truthy value. */
async function until(f, what, timeout = 10000, every = 250) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await f();
    if (last) return last;
    await sleep(every);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** An HS256 join token signed like the server's (for tokens the API will not mint: expired). */
function signToken(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', TOKEN_SECRET).update(head).digest('base64url')}`;
}

/** RGB at the centre of the speaker layout's large tile (the top three quarters). */
async function largeTile(page) {
  return (await samplePixels(page, [[0.5, 0.35]])).px[0];
}

async function shot(page, file, fullPage = false) {
  await page.screenshot({ path: path.join(SHOTS, file), fullPage });
}

async function participants() {
  return (await server.api('GET', '/rooms/standup/participants')).body.participants;
}

let bA; // red camera, 400 Hz
let bB; // blue camera, 1000 Hz
let admin;
let alice;
let bob;
let invite;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer({}, null, ['--dev']);
  bA = await launch(makeMedia('red', ALICE.color, ALICE.freq));
  bB = await launch(makeMedia('blue', BOB.color, BOB.freq));
});

after(async () => {
  for (const b of browsers) await b.close().catch(() => {});
  if (server) await server.stop();
});

test('admin console: sign in with the API key, create a room, make an invite link', async () => {
  admin = pages.admin = await open(bB, 'admin');
  const a = admin.page;
  await a.goto(`${server.url}/admin`);
  await a.getByLabel('API key').fill(server.apiKey);
  await a.getByRole('button', { name: 'Sign in' }).click();
  await a.locator('#rooms-view').waitFor();
  assert.equal(await a.evaluate(() => sessionStorage.getItem('mcu.apiKey')), server.apiKey);

  await a.getByText('Create a room').click();
  const form = a.locator('#create-form');
  await form.getByLabel('Name').fill('standup');
  await form.getByLabel('Layout').selectOption('speaker');
  await form.getByRole('button', { name: 'Create room' }).click();
  const row = a.locator('#rooms-table tr[data-room="standup"]');
  await row.waitFor();
  assert.match(await row.innerText(), /standup\s+speaker\s+0 \/ \d+/);
  assert.equal((await server.api('GET', '/rooms/standup')).body.layout, 'speaker');

  await row.getByRole('link', { name: 'standup' }).click();
  await a.locator('#room-view').waitFor();
  await a.locator('#invite-form').getByRole('button', { name: 'Create invite link' }).click();
  await a.locator('#invite-result').waitFor();
  invite = await a.locator('#invite-link').inputValue();
  assert.match(invite, new RegExp(`^${server.url}/r/standup\\?token=[\\w.-]+$`));
  const claims = JSON.parse(Buffer.from(new URL(invite).searchParams.get('token').split('.')[1], 'base64url'));
  assert.equal(claims.room, 'standup');
  assert.match(claims.sub, /^guest-[0-9a-f]{12}$/);
  assert.equal(claims.name, undefined, 'no name: the invitee chooses one');
  assert.ok(claims.exp - claims.iat === 21600, 'valid 6 hours by default');
});

test('the invite link opens the pre-join: camera preview, devices, a name, then the call', async () => {
  alice = pages.alice = await open(bA, 'alice');
  const p = alice.page;
  await p.goto(`${invite}&raw_audio=1`);
  await p.getByRole('heading', { name: 'Join standup' }).waitFor();
  await p.waitForFunction(() => document.getElementById('preview').videoWidth > 0);
  await p.waitForFunction(() => document.getElementById('camera-select').options.length > 0 && document.getElementById('mic-select').options.length > 0);
  const cameras = await p.locator('#camera-select option').allInnerTexts();
  assert.ok(cameras.some((c) => c.includes('red.y4m')), `the fake camera is offered: ${cameras}`);
  assert.equal(await p.locator('#join').isEnabled(), true);
  await p.getByLabel('Your name').fill('Alice');
  await sleep(300); // the level meter moves
  await shot(p, 'prejoin.png');
  await p.getByRole('button', { name: 'Join now' }).click();
  await p.waitForFunction(() => window.mcu.state === 'in-call');
  await waitForMedia(p);
  assert.deepEqual(await p.evaluate(() => window.mcu.local.getTracks().map((t) => t.kind).sort()), ['audio', 'video']);
  const me = (await participants()).find((x) => x.display_name === 'Alice');
  assert.ok(me, 'the server knows Alice by the name typed on the page');
  assert.match(me.identity, /^guest-/);
  assert.equal(await p.locator('#call-room').innerText(), 'standup');
});

test('with --dev, /r/standup works without a token', async () => {
  bob = pages.bob = await open(bB, 'bob');
  const p = bob.page;
  await p.goto(`${server.url}/r/standup?raw_audio=1`);
  await p.getByLabel('Your name').fill('Bob');
  await p.getByRole('button', { name: 'Join now' }).click();
  await waitForMedia(p);
  // Each sees both, themselves marked; Bob's tone makes him "speaking" on Alice's list.
  await alice.page.locator('#participants li', { hasText: 'Bob' }).waitFor();
  assert.match(await alice.page.locator('#participants').innerText(), /Alice\s*\(you\)/);
  assert.equal(await alice.page.locator('#people-count').innerText(), '2');
  await alice.page.locator('#participants li.speaking', { hasText: 'Bob' }).waitFor({ timeout: 5000 });
  assert.equal(await p.locator('#participants li').count(), 2);
});

test('muting the microphone takes the tone out of the other one\'s mix; unmuting brings it back', async () => {
  const [heard] = await toneLevels(bob.page, [ALICE.freq]);
  assert.ok(heard > -70, `Bob hears Alice: ${heard.toFixed(1)} dB`);
  const mic = alice.page.locator('#mute-audio');
  await mic.click();
  assert.equal(await mic.getAttribute('aria-pressed'), 'true');
  assert.equal(await mic.getAttribute('aria-label'), 'Mute microphone', 'a toggle keeps its name');
  assert.equal(await mic.getAttribute('title'), 'Unmute microphone');
  await sleep(800);
  const [muted] = await toneLevels(bob.page, [ALICE.freq]);
  assert.ok(heard - muted > 30, `Alice's tone is gone from Bob's mix: ${heard.toFixed(1)} -> ${muted.toFixed(1)} dB`);
  await bob.page.locator('#participants li[data-audio-muted="true"]', { hasText: 'Alice' }).waitFor({ state: 'attached', timeout: 3000 });
  assert.equal((await participants()).find((x) => x.display_name === 'Alice').audio_muted, true);
  await mic.click();
  await sleep(800);
  const [back] = await toneLevels(bob.page, [ALICE.freq]);
  assert.ok(back > -70, `Alice is heard again: ${back.toFixed(1)} dB`);
});

test('chat goes round: both see both messages, as text, with names', async () => {
  await alice.page.getByRole('tab', { name: /Chat/ }).click();
  await alice.page.getByRole('textbox', { name: 'Chat message' }).fill('Hello from Alice <b>bold</b>');
  await alice.page.getByRole('textbox', { name: 'Chat message' }).press('Enter');
  // Bob has the people tab open: an unread count appears.
  await bob.page.locator('#chat-unread:not([hidden])').waitFor();
  assert.equal(await bob.page.locator('#chat-unread').innerText(), '1');
  await bob.page.getByRole('tab', { name: /Chat/ }).click();
  const first = bob.page.locator('#chat-log li').first();
  assert.match(await first.innerText(), /Alice[\s\S]*Hello from Alice <b>bold<\/b>/);
  assert.equal(await first.locator('b').count(), 0, 'text, never markup');
  await bob.page.getByRole('textbox', { name: 'Chat message' }).fill('Hi Alice');
  await bob.page.getByRole('button', { name: 'Send' }).click();
  await alice.page.locator('#chat-log li', { hasText: 'Hi Alice' }).waitFor();
  const log = await alice.page.locator('#chat-log li').allInnerTexts();
  assert.equal(log.length, 2);
  assert.match(log[0], /Alice \(you\)/);
  assert.match(log[1], /^Bob/);
  assert.equal(await alice.page.getByRole('textbox', { name: 'Chat message' }).inputValue(), '');
});

test('connection quality comes from getStats: round trip, loss, bitrates', async () => {
  const q = await until(() => alice.page.evaluate(() => window.mcu.quality?.down ? window.mcu.quality : null), 'quality figures');
  assert.ok(q.rtt >= 0 && q.rtt < 100, `loopback round trip ${q.rtt} ms`);
  assert.ok(q.loss !== null && q.loss < 0.05, `loss ${q.loss}`);
  assert.ok(q.down > 20_000 && q.up > 5_000, `bitrates down ${q.down} up ${q.up}`);
  assert.equal(q.grade, 'good');
  assert.equal(await alice.page.locator('#quality-label').innerText(), 'Connection: good');
  await alice.page.locator('#quality').click();
  assert.match(await alice.page.locator('#quality-details').innerText(), /Round trip\s+\d+ ms[\s\S]*Receiving\s+\d+ kbit\/s/);
  await alice.page.locator('#quality').click();
});

test('a screen share replaces the camera and takes the large tile from the active speaker', async () => {
  const a = alice.page;
  // Alice goes quiet: Bob becomes the active speaker and has the large tile.
  await a.locator('#mute-audio').click();
  await until(async () => close(await largeTile(bob.page), BOB.rgb), 'Bob in the large tile', 10000);
  // A deterministic "screen": a magenta canvas stands in for the display picker.
  await a.evaluate(() => {
    navigator.mediaDevices.getDisplayMedia = async () => {
      const c = Object.assign(document.createElement('canvas'), { width: 640, height: 360 });
      const g = c.getContext('2d');
      const paint = () => {
        g.fillStyle = '#ff00ff';
        g.fillRect(0, 0, c.width, c.height);
      };
      paint();
      setInterval(paint, 66);
      return c.captureStream(15);
    };
  });
  const share = a.getByRole('button', { name: 'Share your screen' });
  await share.click();
  await a.locator('#share[aria-pressed="true"]').waitFor();
  await until(async () => close(await largeTile(bob.page), MAGENTA), 'the screen in the large tile', 10000);
  await bob.page.locator('#participants li[data-sharing="true"]', { hasText: 'Alice' }).waitFor({ state: 'attached' });
  assert.equal((await participants()).find((x) => x.display_name === 'Alice').screen_sharing, true);
  // Bob keeps speaking, the screen keeps the tile.
  await sleep(1500);
  assert.ok(close(await largeTile(bob.page), MAGENTA), 'still the screen while Bob speaks');
  await share.click();
  await a.locator('#share[aria-pressed="false"]').waitFor();
  await until(async () => close(await largeTile(bob.page), BOB.rgb), 'back to the active speaker', 10000);
  assert.equal((await participants()).find((x) => x.display_name === 'Alice').screen_sharing, false);
  await a.locator('#mute-audio').click();
});

test('recording from the console: participants see it, it plays back in the page with Range requests', async () => {
  const a = admin.page;
  await a.goto(`${server.url}/admin#/rooms`);
  const row = a.locator('#rooms-table tr[data-room="standup"]');
  await row.getByRole('button', { name: 'Start recording standup' }).click();
  await row.locator('.rec-badge').waitFor();
  for (const p of [alice.page, bob.page]) {
    await p.locator('#rec-indicator:not([hidden])').waitFor({ timeout: 3000 });
  }
  assert.match(await alice.page.locator('#rec-indicator').innerText(), /REC/);
  await shot(a, 'admin-rooms.png');
  await shot(alice.page, 'call.png');
  await sleep(3500);
  await row.getByRole('button', { name: 'Stop recording standup' }).click();
  await row.getByRole('button', { name: 'Start recording standup' }).waitFor();
  await alice.page.locator('#rec-indicator').waitFor({ state: 'hidden', timeout: 3000 });

  const media = [];
  a.on('response', (r) => {
    if (r.url().includes('/media?exp=')) media.push({ status: r.status(), range: r.request().headers().range });
  });
  await a.getByRole('link', { name: 'Recordings' }).click();
  const rec = a.locator('#recordings-table tbody tr').first();
  await rec.waitFor();
  assert.equal(await rec.getAttribute('data-status'), 'completed');
  assert.match(await rec.innerText(), /standup[\s\S]*completed[\s\S]*0:0[3-6]/);
  await rec.getByRole('button', { name: /^Play the recording of standup/ }).click();
  await a.waitForFunction(() => {
    const v = document.getElementById('player');
    return v.readyState >= 2 && v.currentTime > 1;
  }, null, { timeout: 15000 });
  const info = await a.evaluate(() => {
    const v = document.getElementById('player');
    return { w: v.videoWidth, h: v.videoHeight, duration: v.duration, paused: v.paused };
  });
  assert.equal(`${info.w}x${info.h}`, '640x360');
  assert.ok(info.duration > 3 && info.duration < 7, `duration ${info.duration}`);
  assert.ok(media.some((m) => m.status === 206 && /^bytes=/.test(m.range || '')), `a Range request got 206: ${JSON.stringify(media)}`);
  await shot(a, 'admin-recordings.png', true);

  // The download link works without the API key; a changed signature does not.
  const href = await rec.getByRole('link', { name: /^Download the recording/ }).getAttribute('href');
  const dl = await fetch(`${server.url}${href}`);
  assert.equal(dl.status, 200);
  assert.equal(dl.headers.get('content-type'), 'video/webm');
  const size = (await dl.arrayBuffer()).byteLength;
  const id = await rec.getAttribute('data-id');
  assert.equal(size, (await server.api('GET', `/recordings/${id}`)).body.size_bytes);
  const forged = href.replace(/sig=([0-9a-f])/, (_, c) => `sig=${c === '0' ? '1' : '0'}`);
  assert.equal((await fetch(`${server.url}${forged}`)).status, 401);

  // Delete, after a confirmation.
  await rec.getByRole('button', { name: /^Delete the recording/ }).click();
  await a.locator('#confirm').getByRole('button', { name: 'Delete recording' }).click();
  await a.locator(`#recordings-table tr[data-id="${id}"]`).waitFor({ state: 'detached' });
  assert.equal((await server.api('GET', `/recordings/${id}`)).status, 404);
  assert.equal(await a.locator('#player-box').isHidden(), true, 'the player closes with its recording');
});

test('an ICE restart through a new offer on the same socket keeps the media flowing', async () => {
  const p = alice.page;
  const ufrag = () => p.evaluate(() => window.mcu.pc.localDescription.sdp.match(/a=ice-ufrag:(\S+)/)[1]);
  const before = await ufrag();
  const frames = () => p.evaluate(async () => {
    let f = 0;
    (await window.mcu.pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') f = s.framesDecoded;
    });
    return f;
  });
  await p.evaluate(() => window.mcu.restartIce());
  await p.waitForFunction(() => window.mcu.events.filter((e) => e.type === 'answer').length === 2);
  assert.notEqual(await ufrag(), before, 'new ICE credentials');
  const answers = await p.evaluate(() => window.mcu.events.filter((e) => e.type === 'answer').map((e) => e.sdp.match(/a=ice-ufrag:(\S+)/)[1]));
  assert.notEqual(answers[0], answers[1], 'the server restarted its side too');
  const f0 = await frames();
  await sleep(1500);
  assert.ok((await frames()) > f0 + 10, 'frames keep coming');
  assert.equal(await p.evaluate(() => window.mcu.pc.connectionState), 'connected');
  const [heard] = await toneLevels(bob.page, [ALICE.freq]);
  assert.ok(heard > -70, `Bob still hears Alice: ${heard.toFixed(1)} dB`);
});

test('when the WebSocket drops, the page says it is reconnecting, rejoins, and the media comes back', async () => {
  const p = bob.page;
  await p.evaluate(() => {
    window.bannerLog = [];
    const b = document.getElementById('banner');
    new MutationObserver(() => window.bannerLog.push(b.hidden ? '' : b.textContent)).observe(b, { childList: true, subtree: true, attributes: true });
    window.mcu.ws.close(); // the stand-in for a dropped connection: no `leave` is sent
  });
  await p.waitForFunction(() => window.mcu.reconnects === 1 && window.mcu.state === 'in-call', null, { timeout: 15000 });
  const log = await p.evaluate(() => window.bannerLog);
  assert.ok(log.some((t) => /Connection to the server lost\. Reconnecting…/.test(t)), `reconnecting shown: ${JSON.stringify(log)}`);
  assert.ok(log.some((t) => /^Reconnected\.$/.test(t)), `reconnected shown: ${JSON.stringify(log)}`);
  await waitForMedia(p);
  // A new session: the others see Bob leave and come back, and hear him again.
  await until(async () => (await participants()).length === 2, 'two participants on the server');
  await alice.page.locator('#participants li', { hasText: 'Bob' }).waitFor({ state: 'attached' });
  assert.equal(await alice.page.locator('#people-count').innerText(), '2');
  const [heard] = await toneLevels(alice.page, [BOB.freq]);
  assert.ok(heard > -70, `Alice hears Bob again: ${heard.toFixed(1)} dB`);
  // The chat history stays.
  assert.equal(await p.locator('#chat-log li').count(), 2);
});

test('a moderator in the call mutes Bob (locked), allows him again, and removes a guest who then cannot rejoin', async () => {
  const mint = async (body) => (await server.api('POST', '/rooms/standup/tokens', body)).body.token;
  const modToken = await mint({ identity: 'moderator', display_name: 'Moderator', is_admin: true });
  const mod = pages.moderator = await open(bA, 'moderator');
  await mod.page.goto(`${server.url}/r/standup?autojoin=1&raw_audio=1&token=${modToken}`);
  await waitForMedia(mod.page);
  // Only a moderator's page has the buttons.
  const bobRow = mod.page.locator('#participants li', { hasText: 'Bob' });
  await bobRow.locator('button[data-action="mute"]').waitFor();
  assert.equal(await alice.page.locator('#participants button[data-action="mute"]').count(), 0);

  const [before] = await toneLevels(alice.page, [BOB.freq]);
  assert.ok(before > -70, `Alice hears Bob: ${before.toFixed(1)} dB`);
  await bobRow.locator('button[data-action="mute"]').click();
  const bobMic = bob.page.locator('#mute-audio');
  await until(async () => bobMic.isDisabled(), "Bob's microphone button locked");
  assert.match(await bobMic.getAttribute('title'), /moderator muted you/);
  await sleep(800);
  const [muted] = await toneLevels(alice.page, [BOB.freq]);
  assert.ok(before - muted > 30, `Bob's tone is gone from Alice's mix: ${before.toFixed(1)} -> ${muted.toFixed(1)} dB`);
  const locked = (await participants()).find((x) => x.display_name === 'Bob');
  assert.equal(locked.audio_muted && locked.audio_locked, true, JSON.stringify(locked));
  // Bob's own unmute cannot undo it (the page would not let him; the server would refuse too).
  await bob.page.evaluate(() => window.mcu.ws?.send(JSON.stringify({ type: 'mute', audio: false })));
  await sleep(500);
  assert.equal((await participants()).find((x) => x.display_name === 'Bob').audio_muted, true);

  // Allowed to speak: the lock goes, Bob stays muted until he unmutes himself.
  await bobRow.locator('button[data-action="allow"]').click();
  await until(async () => bobMic.isEnabled(), "Bob's microphone button free again");
  const allowed = (await participants()).find((x) => x.display_name === 'Bob');
  assert.equal(allowed.audio_muted && !allowed.audio_locked, true, JSON.stringify(allowed));
  await until(async () => /allows you to speak/.test(await bob.page.locator('#status').innerText()), 'Bob is told he may speak');
  await bobMic.click();
  await sleep(800);
  const [back] = await toneLevels(alice.page, [BOB.freq]);
  assert.ok(back > -70, `Bob is heard again once he unmutes: ${back.toFixed(1)} dB`);

  // A guest with an invite for a fixed identity is removed, and the same invite is refused.
  const guestUrl = `${server.url}/r/standup?autojoin=1&raw_audio=1&token=${await mint({ identity: 'carol', display_name: 'Carol' })}`;
  const guest = pages.guest = await open(bB, 'guest');
  await guest.page.goto(guestUrl);
  await waitForMedia(guest.page);
  await mod.page.locator('#participants li', { hasText: 'Carol' }).locator('button[data-action="remove"]').click();
  await guest.page.waitForFunction(() => window.mcu.state === 'ended', null, { timeout: 5000 });
  assert.equal(await guest.page.getByRole('heading', { level: 1 }).innerText(), 'You were removed from the call');
  await guest.page.goto(guestUrl);
  await guest.page.waitForFunction(() => window.mcu.state === 'ended', null, { timeout: 10000 });
  assert.equal(await guest.page.getByRole('heading', { level: 1 }).innerText(), 'You cannot rejoin yet');
  assert.match(await guest.page.locator('#ended-text').innerText(), /may rejoin after \d{4}-\d\d-\d\dT/);
  assert.equal(await guest.page.locator('#rejoin').isHidden(), true);
  assert.ok(!(await participants()).some((x) => x.display_name === 'Carol'));
  await guest.context.close();
  await mod.context.close();
});

test('a kick from the admin console ends the call with a message, and it stays ended', async () => {
  const a = admin.page;
  await a.goto(`${server.url}/admin#/rooms/standup`);
  const bobRow = a.locator('#room-people li', { hasText: 'Bob' });
  await bobRow.waitFor();
  await shot(a, 'admin-room.png');
  await bobRow.getByRole('button', { name: 'Remove Bob from the room' }).click();
  await a.locator('#confirm').getByRole('button', { name: 'Remove' }).click();
  const p = bob.page;
  await p.waitForFunction(() => window.mcu.state === 'ended', null, { timeout: 5000 });
  assert.equal(await p.getByRole('heading', { level: 1 }).innerText(), 'You were removed from the call');
  assert.match(await p.locator('#ended-text').innerText(), /A moderator removed you from this room \(you were kicked\)/);
  assert.match(await p.locator('#status').innerText(), /kicked/);
  assert.equal(await p.locator('#rejoin').isHidden(), true);
  await sleep(1500);
  assert.deepEqual((await participants()).map((x) => x.display_name), ['Alice'], 'no automatic rejoin');
  await a.locator('#room-people li', { hasText: 'Bob' }).waitFor({ state: 'detached' });
});

test('clear messages: camera blocked, expired invite, room full, server unreachable', async () => {
  // Camera and microphone blocked.
  const blocked = await open(bA, 'blocked', {
    init: () => {
      navigator.mediaDevices.getUserMedia = async () => {
        throw new DOMException('Permission denied', 'NotAllowedError');
      };
    },
  });
  await blocked.page.goto(`${server.url}/r/standup`);
  await blocked.page.locator('#prejoin-message:not([hidden])').waitFor();
  assert.match(await blocked.page.locator('#prejoin-message').innerText(), /Camera and microphone are blocked for this site\. Allow them/);
  assert.equal(await blocked.page.locator('#join').isEnabled(), true, 'one may still join to listen');
  assert.equal(await blocked.page.locator('#pre-cam').isDisabled(), true);
  await blocked.context.close();

  // An expired invite: said on the pre-join, and the server's refusal ends in the same words.
  const now = Math.floor(Date.now() / 1000);
  const expired = signToken({ room: 'standup', sub: 'late', name: 'Late', iat: now - 7200, exp: now - 60 });
  const late = await open(bA, 'late');
  await late.page.goto(`${server.url}/r/standup?token=${expired}`);
  await late.page.locator('#prejoin-message:not([hidden])').waitFor();
  assert.match(await late.page.locator('#prejoin-message').innerText(), /This invite link has expired/);
  assert.equal(await late.page.getByLabel('Your name').inputValue(), 'Late');
  assert.equal(await late.page.getByLabel('Your name').getAttribute('readonly'), '', 'the invite names the person');
  await late.page.getByRole('button', { name: 'Join now' }).click();
  await late.page.waitForFunction(() => window.mcu.state === 'ended');
  assert.equal(await late.page.locator('#ended-title').innerText(), 'Your invite has expired');
  await late.context.close();

  // A full room.
  assert.equal((await server.api('POST', '/rooms', { name: 'tiny', max_participants: 1 })).status, 201);
  const first = await open(bA, 'first');
  await first.page.goto(`${server.url}/?autojoin=1&room=tiny&name=First`);
  await first.page.waitForFunction(() => window.mcu.state === 'in-call');
  const second = await open(bA, 'second');
  await second.page.goto(`${server.url}/r/tiny`);
  await second.page.getByLabel('Your name').fill('Second');
  await second.page.getByRole('button', { name: 'Join now' }).click();
  await second.page.waitForFunction(() => window.mcu.state === 'ended');
  assert.equal(await second.page.locator('#ended-title').innerText(), 'This room is full');
  assert.equal(await second.page.getByRole('button', { name: 'Try again' }).isVisible(), true);
  await first.context.close();
  await second.context.close();

  // The server cannot be reached: the page says so and keeps trying; back online, it joins.
  const offline = await open(bA, 'offline');
  await offline.page.goto(`${server.url}/r/standup?raw_audio=1`);
  await offline.page.getByLabel('Your name').fill('Offline');
  await offline.context.setOffline(true);
  await offline.page.getByRole('button', { name: 'Join now' }).click();
  await offline.page.waitForFunction(() => /Cannot reach the server/.test(document.getElementById('banner').textContent), null, { timeout: 5000 });
  assert.match(await offline.page.locator('#banner').innerText(), /Retrying in \d+ s/);
  await offline.context.setOffline(false);
  await offline.page.waitForFunction(() => window.mcu.state === 'in-call', null, { timeout: 15000 });
  await offline.page.getByRole('button', { name: 'Leave the call' }).click();
  assert.equal(await offline.page.locator('#ended-title').innerText(), 'You left the call');
  await offline.context.close();
  // Only the expected failures were logged: resources that could not load while offline.
  assert.ok(offline.errors.every((e) => /ERR_INTERNET_DISCONNECTED|WebSocket connection/.test(e)), JSON.stringify(offline.errors));
});

test('on a 360 px phone: pre-join, call and console fit without horizontal overflow', async () => {
  const carol = pages.carol = await open(bB, 'carol', { viewport: PHONE });
  const p = carol.page;
  const overflow = () => p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await p.goto(`${server.url}/r/standup`);
  await p.waitForFunction(() => document.getElementById('preview').videoWidth > 0);
  assert.equal(await overflow(), 0, 'pre-join');
  await p.getByLabel('Your name').fill('Carol');
  await p.getByRole('button', { name: 'Join now' }).click();
  await waitForMedia(p);
  await p.getByRole('tab', { name: /Chat/ }).click();
  await sleep(500);
  assert.equal(await overflow(), 0, 'call');
  for (const id of ['mute-audio', 'mute-video', 'leave']) {
    const box = await p.locator(`#${id}`).boundingBox();
    assert.ok(box.x >= 0 && box.x + box.width <= PHONE.width, `${id} on screen: ${JSON.stringify(box)}`);
  }
  await p.waitForFunction(() => window.mcu.quality?.grade === 'good');
  await shot(p, 'call-phone.png');
  const a = await open(bB, 'phone-admin', { viewport: PHONE });
  await a.page.goto(`${server.url}/admin`);
  await a.page.getByLabel('API key').fill(server.apiKey);
  await a.page.getByRole('button', { name: 'Sign in' }).click();
  await a.page.locator('#rooms-table tr[data-room="standup"]').waitFor();
  assert.equal(await a.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth), 0, 'admin rooms');
  await a.page.goto(`${server.url}/admin#/recordings`);
  await a.page.locator('#recordings-view').waitFor();
  assert.equal(await a.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth), 0, 'admin recordings');
  assert.deepEqual(a.errors, []);
  await a.context.close();
  await p.getByRole('button', { name: 'Leave the call' }).click();
  await p.getByRole('heading', { name: 'You left the call' }).waitFor();
});

test('keyboard and labels: every control has a name, toggles say their state, tabs follow the arrows', async () => {
  const p = alice.page;
  const unnamed = await p.evaluate(() =>
    [...document.querySelectorAll('button, input, select, video, a')]
      .filter((e) => e.offsetParent !== null)
      .filter((e) => {
        const name = e.getAttribute('aria-label') || e.labels?.[0]?.textContent || e.textContent;
        return !name || !name.trim();
      })
      .map((e) => e.outerHTML.slice(0, 80)));
  assert.deepEqual(unnamed, []);
  await p.locator('#mute-video').focus();
  await p.keyboard.press('Space');
  assert.equal(await p.locator('#mute-video').getAttribute('aria-pressed'), 'true');
  await until(async () => (await participants()).find((x) => x.display_name === 'Alice')?.video_muted, 'camera muted on the server');
  await p.keyboard.press('Enter');
  assert.equal(await p.locator('#mute-video').getAttribute('aria-pressed'), 'false');
  await p.getByRole('tab', { name: /People/ }).focus();
  await p.keyboard.press('ArrowRight');
  assert.equal(await p.getByRole('tab', { name: /Chat/ }).getAttribute('aria-selected'), 'true');
  assert.equal(await p.evaluate(() => document.activeElement.id), 'tab-chat');
  await p.keyboard.press('ArrowLeft');
  assert.equal(await p.locator('#panel-people').isVisible(), true);
});

test('no console errors in the pages of the call and the console', () => {
  for (const [name, p] of Object.entries(pages)) assert.deepEqual(p.errors, [], `${name} page errors`);
});
