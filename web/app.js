// The join page and the call: landing (pick a room), pre-join (name, camera and microphone preview,
// device choice), the call (composite, own preview, mute, screen share, people, chat, recording
// indicator, connection quality), and the end of a call (why, and what one can do).
//
// Entry points: /r/{room}?token=… (an invite link; with a `--dev` server /r/{room} alone works),
// / (landing), and /?autojoin=1&token=… (joins at once: scripts and tests).
// State is exposed on window.mcu for tests and debugging.

import { Connection } from '/js/connection.js';
import { el } from '/js/dom.js';
import { openMedia, listDevices, levelMeter, mediaErrorMessage } from '/js/devices.js';
import { readReport, summarize, fmt } from '/js/quality.js';
import { decodeToken, isExpired, ROOM_NAME } from '/js/token.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
/** Browser voice processing off (tests measure pure tones). */
const RAW_AUDIO = params.get('raw_audio') === '1';
const QUALITY_INTERVAL_MS = 2000;
/** After our own mute message, the server's echo of it is not a moderator's action. */
const OWN_MUTE_SETTLE_MS = 1500;

const token = params.get('token') || null;
const claims = token ? decodeToken(token) : null;
const pathRoom = (() => {
  const m = location.pathname.match(/^\/r\/([^/]+)\/?$/);
  try {
    return m ? decodeURIComponent(m[1]) : null;
  } catch {
    return null;
  }
})();
const room = claims?.room || pathRoom || params.get('room') || null;
const canPublish = claims ? claims.can_publish !== false : true;
/** Moderators (`is_admin` tokens) get mute and remove buttons beside the others. */
const isModerator = Boolean(claims?.is_admin);

const mcu = (window.mcu = {
  state: 'starting',
  room,
  ws: null,
  pc: null,
  participants: new Map(),
  events: [],
  me: null,
  speaker: null,
  local: null,
  chat: [],
  quality: null,
  recording: null,
  reconnects: 0,
  conn: null,
});

// ----- small helpers ---------------------------------------------------------------------------

function icon(name, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  const use = document.createElementNS(ns, 'use');
  use.setAttribute('href', `#i-${name}`);
  svg.append(use);
  if (!label) return svg;
  return el('span', { class: `flag flag-${name}`, title: label }, svg, el('span', { class: 'visually-hidden', text: label }));
}

function setIcon(button, name) {
  button.querySelector('use')?.setAttribute('href', `#i-${name}`);
}

let statusTimer = null;
/** The status line (a live region). In the call it lies over the video: plain news fades. */
function status(text, isError = false) {
  clearTimeout(statusTimer);
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
  if (!isError && mcu.state === 'in-call') statusTimer = setTimeout(() => ($('status').textContent = ''), 8000);
}

let bannerTimer = null;
/** The banner at the top: reconnection and errors. `action`: {label, run}. */
function banner(text, kind = 'warn', { timeout = 0, action = null } = {}) {
  const b = $('banner');
  clearTimeout(bannerTimer);
  if (!text) {
    b.hidden = true;
    b.replaceChildren();
    return;
  }
  b.dataset.kind = kind;
  b.replaceChildren(el('span', { text }));
  if (action) {
    const btn = el('button', { type: 'button', text: action.label });
    btn.addEventListener('click', action.run);
    b.append(btn);
  }
  b.hidden = false;
  if (timeout) bannerTimer = setTimeout(() => banner(null), timeout);
}

function setScreen(name) {
  for (const s of ['landing', 'prejoin', 'call', 'ended']) $(s).hidden = s !== name;
  document.body.dataset.screen = name;
}

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const s = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || '?').slice(0, 2);
  return s.toUpperCase();
}

/** A stable hue per participant for avatars. */
function hue(id) {
  let h = 0;
  for (const c of String(id)) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function timeOf(rfc3339) {
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// ----- join tokens -----------------------------------------------------------------------------

class TokenError extends Error {
  constructor(reason, message, fatal) {
    super(message);
    this.reason = reason;
    this.fatal = fatal;
  }
}

/** Where join tokens come from: the invite's, or (a `--dev` server) minted by the server. */
function tokenSource(name) {
  let minted = null;
  const get = async (fresh) => {
    if (token) return token;
    if (minted && !fresh && !isExpired(decodeToken(minted), Date.now() + 30000)) return minted;
    let r;
    try {
      r = await fetch(`/api/v1/dev/token?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
    } catch {
      throw new TokenError('unreachable', 'cannot reach the server', false);
    }
    if (r.status === 403) {
      throw new TokenError('no_invite', 'This room needs an invite link. Ask the organiser for one.', true);
    }
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      const message = body?.error?.message || `HTTP ${r.status}`;
      throw new TokenError(r.status >= 500 ? 'unavailable' : 'unauthorized', message, r.status < 500);
    }
    minted = (await r.json()).token;
    return minted;
  };
  get.canRefresh = !token;
  return get;
}

// ----- landing ---------------------------------------------------------------------------------

function showLanding() {
  mcu.state = 'landing';
  setScreen('landing');
  if (params.get('room')) $('room').value = params.get('room');
  $('landing-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const r = $('room').value.trim();
    if (!ROOM_NAME.test(r)) return;
    location.href = `/r/${encodeURIComponent(r)}`;
  });
  $('room').focus();
}

// ----- pre-join --------------------------------------------------------------------------------

const pre = {
  stream: null, micOn: true, camOn: true, micId: null, cameraId: null, stopMeter: null, error: null,
  /** The camera and microphone being opened (Join waits for it). */
  opening: Promise.resolve(),
};

function prejoinMessage(text, kind = 'error') {
  const p = $('prejoin-message');
  p.hidden = !text;
  p.textContent = text || '';
  p.dataset.kind = kind;
}

function stopStream(stream) {
  stream?.getTracks().forEach((t) => t.stop());
}

function refreshPreview() {
  pre.opening = pre.opening.then(openPreview, openPreview);
  return pre.opening;
}

async function openPreview() {
  pre.stopMeter?.();
  pre.stopMeter = null;
  stopStream(pre.stream);
  const { stream, error } = await openMedia({ micId: pre.micId, cameraId: pre.cameraId, raw: RAW_AUDIO });
  pre.stream = stream;
  pre.error = error;
  const cam = stream.getVideoTracks()[0] || null;
  const mic = stream.getAudioTracks()[0] || null;
  if (cam) cam.enabled = pre.camOn;
  if (mic) mic.enabled = pre.micOn;
  $('preview').srcObject = cam ? stream : null;
  updatePreviewControls();
  if (error) prejoinMessage(mediaErrorMessage(error));
  else if (!claims || !isExpired(claims)) prejoinMessage(null);
  if (mic) {
    pre.stopMeter = levelMeter(mic, (l) => {
      $('mic-meter').style.transform = `scaleX(${pre.micOn ? l : 0})`;
    });
  }
  await fillDeviceLists(cam, mic);
}

async function fillDeviceLists(cam, mic) {
  const devices = await listDevices().catch(() => ({ video: [], audio: [] }));
  const fill = (select, list, current, none) => {
    select.replaceChildren();
    for (const d of list) select.append(el('option', { value: d.id, text: d.label, selected: d.id === current }));
    if (!list.length) select.append(el('option', { value: '', text: none }));
    select.disabled = !list.length;
  };
  fill($('camera-select'), devices.video, cam?.getSettings().deviceId, 'No camera available');
  fill($('mic-select'), devices.audio, mic?.getSettings().deviceId, 'No microphone available');
}

function updatePreviewControls() {
  const cam = pre.stream?.getVideoTracks()[0];
  const mic = pre.stream?.getAudioTracks()[0];
  const camBtn = $('pre-cam');
  const micBtn = $('pre-mic');
  camBtn.disabled = !cam;
  micBtn.disabled = !mic;
  camBtn.setAttribute('aria-pressed', String(!pre.camOn));
  micBtn.setAttribute('aria-pressed', String(!pre.micOn));
  camBtn.title = pre.camOn ? 'Turn camera off' : 'Turn camera on';
  micBtn.title = pre.micOn ? 'Turn microphone off' : 'Turn microphone on';
  setIcon(camBtn, pre.camOn && cam ? 'cam' : 'cam-off');
  setIcon(micBtn, pre.micOn && mic ? 'mic' : 'mic-off');
  $('preview-off').hidden = Boolean(cam && pre.camOn);
  $('preview-off').textContent = cam ? 'Camera off' : 'No camera';
}

async function showPrejoin() {
  mcu.state = 'prejoin';
  setScreen('prejoin');
  $('prejoin-room').textContent = room;
  document.title = `Join ${room} — MCU`;
  const nameInput = $('name');
  if (claims?.name) {
    nameInput.value = claims.name;
    nameInput.readOnly = true;
    $('name-hint').hidden = false;
  } else {
    nameInput.value = params.get('name') || localStorage.getItem('mcu.name') || '';
  }
  if (!ROOM_NAME.test(room)) {
    prejoinMessage(`“${room}” is not a room name: use letters, digits, “-” and “_” (at most 64).`);
    $('join').disabled = true;
    return;
  }
  if (token && !claims) {
    prejoinMessage('This invite link is not valid: it may have been cut short. Copy the whole link and try again.');
  } else if (isExpired(claims)) {
    prejoinMessage('This invite link has expired. Ask the person who sent it for a new one.');
  }
  pre.micId = localStorage.getItem('mcu.mic');
  pre.cameraId = localStorage.getItem('mcu.camera');
  $('pre-mic').addEventListener('click', () => {
    pre.micOn = !pre.micOn;
    const t = pre.stream?.getAudioTracks()[0];
    if (t) t.enabled = pre.micOn;
    updatePreviewControls();
  });
  $('pre-cam').addEventListener('click', () => {
    pre.camOn = !pre.camOn;
    const t = pre.stream?.getVideoTracks()[0];
    if (t) t.enabled = pre.camOn;
    updatePreviewControls();
  });
  $('camera-select').addEventListener('change', (ev) => {
    pre.cameraId = ev.target.value || null;
    if (pre.cameraId) localStorage.setItem('mcu.camera', pre.cameraId);
    refreshPreview();
  });
  $('mic-select').addEventListener('change', (ev) => {
    pre.micId = ev.target.value || null;
    if (pre.micId) localStorage.setItem('mcu.mic', pre.micId);
    refreshPreview();
  });
  $('prejoin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const name = nameInput.value.trim();
    if (!name) {
      prejoinMessage('Please enter your name.');
      nameInput.focus();
      return;
    }
    if (!claims?.name) localStorage.setItem('mcu.name', name);
    const join = $('join');
    join.disabled = true;
    join.textContent = 'Starting camera…';
    await pre.opening;
    pre.stopMeter?.();
    startCall(pre.stream || new MediaStream(), name, { micOff: !pre.micOn, camOff: !pre.camOn });
  });
  if (!canPublish) {
    prejoinMessage('Your invite lets you listen and watch; you will not be seen or heard.', 'info');
    pre.stream = new MediaStream();
    updatePreviewControls();
    await fillDeviceLists(null, null);
  } else {
    await refreshPreview();
  }
  nameInput.readOnly ? $('join').focus() : nameInput.focus();
}

// ----- the call --------------------------------------------------------------------------------

const media = { stream: null, mic: null, cam: null, micOff: false, camOff: false, screen: null };
let conn = null;
/** When we last told the server our own mute state, per kind. */
const lastMuteSent = { audio: 0, video: 0 };
let reconcileTimer = null;
let qualityTimer = null;
let unread = 0;

/** What we send: muted by our own choice (or nothing to send). */
function wantAudioMuted() {
  return !media.mic || media.micOff;
}

function wantVideoMuted() {
  return !media.screen && (!media.cam || media.camOff);
}

/** The server's flags for us: a moderator may have muted us on top of our own choice. Right
 * after we told the server ours, its echo is still on the way: ours count. */
function serverMuted() {
  const me = mcu.participants.get(mcu.me);
  const settled = (k) => Date.now() - lastMuteSent[k] >= OWN_MUTE_SETTLE_MS;
  return { audio: Boolean(me?.audio_muted) && settled('audio'), video: Boolean(me?.video_muted) && settled('video') };
}

/** Tells the server our own mute state of `kinds` (only those: a moderator's mute of the other
 * kind stays). */
function sendMute(kinds = ['audio', 'video']) {
  if (!canPublish || !kinds.length) return;
  for (const k of kinds) lastMuteSent[k] = Date.now();
  const msg = { type: 'mute' };
  if (kinds.includes('audio')) msg.audio = wantAudioMuted();
  if (kinds.includes('video')) msg.video = wantVideoMuted();
  conn?.send(msg);
}

function updateControls() {
  const mic = $('mute-audio');
  const cam = $('mute-video');
  const share = $('share');
  const server = serverMuted();
  const micMuted = wantAudioMuted() || server.audio;
  const camMuted = !media.cam || media.camOff || (server.video && !media.screen);
  const me = mcu.participants.get(mcu.me);
  const locked = { audio: Boolean(me?.audio_locked), video: Boolean(me?.video_locked) };
  mic.disabled = !media.mic || locked.audio;
  cam.disabled = !media.cam || locked.video;
  // Toggle buttons keep one name and say their state with aria-pressed; the tooltip says what a
  // press does.
  mic.setAttribute('aria-pressed', String(micMuted));
  mic.title = !media.mic ? 'No microphone' : locked.audio ? 'A moderator muted you; you can unmute once they allow it'
    : micMuted ? 'Unmute microphone' : 'Mute microphone';
  setIcon(mic, micMuted ? 'mic-off' : 'mic');
  cam.setAttribute('aria-pressed', String(camMuted));
  cam.title = !media.cam ? 'No camera' : locked.video ? 'A moderator turned your camera off; you can start it once they allow it'
    : camMuted ? 'Start camera' : 'Stop camera';
  setIcon(cam, camMuted ? 'cam-off' : 'cam');
  share.hidden = !canPublish || !navigator.mediaDevices?.getDisplayMedia;
  share.setAttribute('aria-pressed', String(Boolean(media.screen)));
  share.title = media.screen ? 'Stop sharing your screen' : 'Share your screen';
  // The small preview shows what the others see of you: camera (mirrored), screen, or nothing.
  const local = $('local');
  const shown = media.screen || (media.cam && !media.camOff ? media.cam : null);
  const want = shown ? shown.id : '';
  if (local.dataset.track !== want) {
    local.srcObject = shown ? new MediaStream([shown]) : null;
    local.dataset.track = want;
  }
  local.hidden = !shown;
  local.classList.toggle('mirror', shown === media.cam);
  local.setAttribute('aria-label', media.screen ? 'Your shared screen' : 'Your camera preview');
}

function setMicOff(off, send = true) {
  media.micOff = off;
  if (media.mic) media.mic.enabled = !off;
  updateControls();
  if (send) sendMute(['audio']);
}

function setCamOff(off, send = true) {
  media.camOff = off;
  if (media.cam) media.cam.enabled = !off;
  updateControls();
  if (send) sendMute(['video']);
}

async function startShare() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({
      video: { width: { max: 1280 }, height: { max: 720 }, frameRate: { max: 15 } },
      audio: false,
    });
  } catch (e) {
    status(e?.name === 'NotAllowedError' ? 'Screen sharing was cancelled.' : `Cannot share the screen (${e?.name || e}).`, e?.name !== 'NotAllowedError');
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!track) return;
  if ('contentHint' in track) track.contentHint = 'detail';
  track.addEventListener('ended', () => stopShare());
  media.screen = track;
  updateControls();
  await conn?.replaceTrack('video', track);
  conn?.send({ type: 'screen_share', active: true });
  sendMute(['video']);
  status('You are sharing your screen. Everyone sees it in the large tile.');
}

async function stopShare() {
  const track = media.screen;
  if (!track) return;
  media.screen = null;
  track.stop();
  updateControls();
  await conn?.replaceTrack('video', media.cam);
  conn?.send({ type: 'screen_share', active: false });
  sendMute(['video']);
  status('You stopped sharing your screen.');
}

/**
 * Keeps our mute flags and the server's in agreement. A moderator may mute us (REST or the admin
 * console): the server then leaves us out of the mix, we show it and say so; the moderator may
 * also lift that mute. Our own mute is ours: the track is disabled and, when the server says
 * "unmuted" while we are muted by choice (a moderator cannot switch a microphone on), we tell it
 * again.
 */
const moderated = { audio: false, video: false };
let lockedBefore = false;
function reconcile() {
  clearTimeout(reconcileTimer);
  updateControls();
  const me = mcu.participants.get(mcu.me);
  if (!me || !canPublish) return;
  const wait = Math.max(lastMuteSent.audio, lastMuteSent.video) + OWN_MUTE_SETTLE_MS - Date.now();
  if (wait > 0) {
    reconcileTimer = setTimeout(reconcile, wait);
    return;
  }
  const byModerator = { audio: me.audio_muted && !wantAudioMuted(), video: me.video_muted && !wantVideoMuted() };
  if (byModerator.audio && !moderated.audio) {
    status(me.audio_locked ? 'A moderator muted your microphone; you can unmute once they allow it.'
      : 'A moderator muted your microphone. Unmute it when you want to speak.');
  }
  if (moderated.audio && me.audio_muted && !me.audio_locked && lockedBefore) status('A moderator allows you to speak again: unmute when you want.');
  lockedBefore = Boolean(me.audio_locked);
  if (byModerator.video && !moderated.video) status('A moderator turned your camera off. Start it again when you want to be seen.');
  if (moderated.audio && !me.audio_muted) status('A moderator unmuted your microphone: the others hear you again.');
  moderated.audio = byModerator.audio;
  moderated.video = byModerator.video;
  const resend = [];
  if (!me.audio_muted && wantAudioMuted()) resend.push('audio');
  if (!me.video_muted && wantVideoMuted()) resend.push('video');
  sendMute(resend);
}

function renderParticipants() {
  const ul = $('participants');
  ul.replaceChildren();
  for (const p of mcu.participants.values()) {
    const you = p.id === mcu.me;
    const speaking = Boolean(p.speaking) && !p.audio_muted;
    const li = el('li', {
      class: `person${speaking ? ' speaking' : ''}${p.id === mcu.speaker ? ' active' : ''}${you ? ' me' : ''}`,
      'data-id': p.id,
      'data-audio-muted': String(p.audio_muted),
      'data-video-muted': String(p.video_muted),
      'data-sharing': String(Boolean(p.screen_sharing)),
    });
    const avatar = el('span', { class: 'avatar', 'aria-hidden': 'true', text: initials(p.display_name) });
    avatar.style.setProperty('--hue', hue(p.identity || p.id));
    const flags = el('span', { class: 'flags' });
    if (speaking) {
      flags.append(el('span', { class: 'flag speaking-bars', title: 'Speaking' },
        el('i'), el('i'), el('i'), el('span', { class: 'visually-hidden', text: 'speaking' })));
    }
    if (p.screen_sharing) flags.append(icon('screen', 'sharing the screen'));
    if (p.audio_muted) flags.append(icon('mic-off', 'microphone muted'));
    if (p.video_muted) flags.append(icon('cam-off', 'camera off'));
    if (p.audio_locked) flags.append(icon('lock', 'muted by a moderator'));
    li.append(avatar, el('span', { class: 'who' }, el('span', { class: 'pname', text: p.display_name }),
      you ? el('span', { class: 'you', text: ' (you)' }) : null), flags);
    if (isModerator && !you) li.append(moderatorControls(p));
    ul.append(li);
  }
  $('people-count').textContent = String(mcu.participants.size);
}

/** A moderator's buttons for one participant: mute (locked) or let speak again, and remove. */
function moderatorControls(p) {
  const box = el('span', { class: 'mod' });
  const mute = el('button', {
    type: 'button',
    class: 'mod-btn',
    'data-action': p.audio_locked ? 'allow' : 'mute',
    text: p.audio_locked ? 'Allow to speak' : 'Mute',
    title: p.audio_locked ? `Let ${p.display_name} unmute when they are ready` : `Mute ${p.display_name} until you allow them to speak`,
  });
  mute.addEventListener('click', () => {
    // Allowing lifts the lock only: they stay muted until they unmute (no surprise hot mic).
    const msg = p.audio_locked ? { audio: true, lock: false } : { audio: true, lock: true };
    conn?.send({ type: 'mute_participant', participant_id: p.id, ...msg });
  });
  const remove = el('button', {
    type: 'button',
    class: 'mod-btn danger',
    'data-action': 'remove',
    text: 'Remove',
    title: `Remove ${p.display_name} from the room (they cannot rejoin for a while)`,
  });
  remove.addEventListener('click', () => conn?.send({ type: 'kick_participant', participant_id: p.id }));
  box.append(mute, remove);
  return box;
}

function setRecording(id) {
  mcu.recording = id || null;
  $('rec-indicator').hidden = !id;
}

function addChat(msg) {
  const p = mcu.participants.get(msg.from);
  const entry = {
    from: msg.from,
    name: p?.display_name ?? 'Someone who left',
    text: msg.text,
    at: msg.at,
    mine: msg.from === mcu.me,
  };
  mcu.chat.push(entry);
  const log = $('chat-log');
  const li = el('li', { class: `chat-msg${entry.mine ? ' mine' : ''}` },
    el('div', { class: 'meta' }, el('span', { class: 'cname', text: entry.mine ? `${entry.name} (you)` : entry.name }),
      el('time', { datetime: entry.at, text: timeOf(entry.at) })),
    el('p', { class: 'ctext', text: entry.text }));
  log.append(li);
  log.scrollTop = log.scrollHeight;
  if ($('panel-chat').hidden || document.body.classList.contains('side-hidden')) {
    unread += 1;
    $('chat-unread').textContent = String(unread);
    $('chat-unread').hidden = false;
  }
}

function selectTab(which) {
  for (const t of ['people', 'chat']) {
    const on = t === which;
    const tab = $(`tab-${t}`);
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`panel-${t}`).hidden = !on;
  }
  if (which === 'chat') {
    unread = 0;
    $('chat-unread').hidden = true;
    const log = $('chat-log');
    log.scrollTop = log.scrollHeight;
  }
}

function onServerMessage(msg) {
  switch (msg.type) {
    case 'participant_joined':
    case 'participant_updated':
      mcu.participants.set(msg.participant.id, msg.participant);
      renderParticipants();
      if (msg.participant.id === mcu.me) reconcile();
      break;
    case 'participant_left':
      mcu.participants.delete(msg.participant_id);
      if (mcu.speaker === msg.participant_id) mcu.speaker = null;
      renderParticipants();
      break;
    case 'active_speaker':
      mcu.speaker = msg.participant_id;
      renderParticipants();
      break;
    case 'chat':
      addChat(msg);
      break;
    case 'recording':
      setRecording(msg.status === 'started' ? msg.recording_id : null);
      status(msg.status === 'started' ? 'Recording started: this call is being recorded.' : 'Recording stopped.');
      break;
    case 'video_paused':
      // The last frame stays on screen; audio goes on.
      mcu.videoPaused = true;
      $('video-paused').hidden = false;
      break;
    case 'video_resumed':
      mcu.videoPaused = false;
      $('video-paused').hidden = true;
      break;
    case 'error':
      if (mcu.state === 'in-call') status(`Server: ${msg.message}`, true);
      break;
  }
}

function onWelcome(msg) {
  mcu.me = msg.participant_id;
  mcu.participants.clear();
  for (const p of [msg.participant, ...(msg.participants || [])]) if (p) mcu.participants.set(p.id, p);
  mcu.speaker = null;
  setRecording(msg.recording_id);
  mcu.state = 'in-call';
  if (msg.rejoined) {
    mcu.reconnects += 1;
    banner('Reconnected.', 'ok', { timeout: 4000 });
    status('Reconnected to the room.');
  } else {
    banner(null);
    status(`You joined ${msg.room || room}.`);
  }
  sendMute([wantAudioMuted() && 'audio', wantVideoMuted() && 'video'].filter(Boolean));
  if (media.screen) conn.send({ type: 'screen_share', active: true });
  renderParticipants();
  updateControls();
}

function onTrack(track) {
  if (track.kind === 'audio') {
    const a = $('remote-audio');
    a.srcObject = new MediaStream([track]);
    a.play().then(() => ($('unblock-audio').hidden = true)).catch(() => {
      // Autoplay refused (no click yet on this page): ask for one.
      $('unblock-audio').hidden = false;
    });
  } else {
    $('remote').srcObject = new MediaStream([track]);
  }
}

const RECONNECT_TEXT = {
  lost: (d) => `Connection to the server lost. Reconnecting… (attempt ${d.attempt})`,
  unreachable: (d) =>
    `Cannot reach the server${navigator.onLine ? '' : ' (your device is offline)'}. ` +
    `Retrying in ${Math.round(d.delay / 1000) || 1} s… (attempt ${d.attempt})`,
  server_shutdown: () => 'The server is restarting. Reconnecting…',
  unavailable: (d) => `The server cannot start this call right now. Retrying in ${Math.round(d.delay / 1000) || 1} s…`,
};

function onStatus(d) {
  switch (d.phase) {
    case 'connecting':
      if (!conn.everWelcomed && d.attempt === 0) status('Joining…');
      break;
    case 'reconnecting': {
      const text = RECONNECT_TEXT[d.reason];
      if (!text) break; // a token refresh: nothing to tell
      mcu.state = 'reconnecting';
      const t = text(d);
      banner(t, 'warn', { action: { label: 'Retry now', run: () => conn.retryNow() } });
      status(t, true);
      break;
    }
    case 'connected':
      if (!$('banner').hidden && $('banner').dataset.kind === 'warn') banner(null);
      break;
    case 'ice-interrupted':
      banner('The media connection is interrupted. Trying to recover…');
      break;
    case 'ice-restarting':
      banner(`Reconnecting the media… (attempt ${d.attempt})`);
      status('Reconnecting the media (ICE restart)…');
      break;
    case 'ice-recovered':
      banner('Media reconnected.', 'ok', { timeout: 3000 });
      status('Media reconnected.');
      break;
  }
}

const ENDED = {
  kicked: ['You were removed from the call', 'A moderator removed you from this room (you were kicked).', false],
  room_deleted: ['This room was closed', 'The organiser deleted the room, so the call ended.', false],
  token_expired: ['Your invite has expired', 'Your invite link is no longer valid. Ask the organiser for a new one.', false],
  room_full: ['This room is full', 'Every place in this room is taken. Try again in a moment.', true],
  banned: ['You cannot rejoin yet', 'A moderator removed you from this room.', false],
  room_not_found: ['This room no longer exists', 'The room this invite was made for was deleted. Ask the organiser for a new invite.', false],
  unauthorized: ['This invite link is not valid', 'The server did not accept this invite link: it may be incomplete (copy the whole link) or made for another server.', false],
  no_invite: ['You need an invite link', 'This room needs an invite link. Ask the organiser for one.', false],
  left: ['You left the call', 'You can rejoin whenever you like.', true],
};

function endCall(reason, detail = {}) {
  const [title, text, canRejoin] = ENDED[reason] || ['The call ended', detail.message || 'The call ended.', true];
  mcu.state = 'ended';
  mcu.endReason = reason;
  clearInterval(qualityTimer);
  media.screen?.stop();
  media.screen = null;
  stopStream(media.stream);
  banner(null);
  $('ended-title').textContent = title;
  const explained = (reason === 'unauthorized' || reason === 'banned') && detail.message;
  $('ended-text').textContent = explained ? `${text} (${detail.message})` : text;
  $('rejoin').hidden = !canRejoin;
  $('rejoin').textContent = reason === 'room_full' ? 'Try again' : 'Rejoin';
  setScreen('ended');
  status(text, reason !== 'left');
  $('ended-title').tabIndex = -1;
  $('ended-title').focus();
}

async function sampleQuality(state) {
  const pc = conn?.pc;
  if (!pc || pc.connectionState === 'closed') return;
  const cur = readReport(await pc.getStats());
  const q = summarize(state.pc === pc ? state.prev : null, cur);
  state.pc = pc;
  state.prev = cur;
  mcu.quality = q;
  const b = $('quality');
  b.dataset.grade = q.grade;
  $('quality-label').textContent = q.grade === 'unknown' ? 'Connection: measuring' : `Connection: ${q.grade}`;
  b.title = `Round trip ${fmt.rtt(q.rtt)}, loss ${fmt.loss(q.loss)}, receiving ${fmt.rate(q.down)}, sending ${fmt.rate(q.up)}`;
  $('q-rtt').textContent = fmt.rtt(q.rtt);
  $('q-loss').textContent = fmt.loss(q.loss);
  $('q-down').textContent = fmt.rate(q.down);
  $('q-up').textContent = fmt.rate(q.up);
}

function wireCallControls() {
  // A button shows muted when we or a moderator muted; pressing it then unmutes both.
  $('mute-audio').addEventListener('click', () => setMicOff(!(media.micOff || serverMuted().audio)));
  $('mute-video').addEventListener('click', () => setCamOff(!(media.camOff || (serverMuted().video && !media.screen))));
  $('share').addEventListener('click', () => (media.screen ? stopShare() : startShare()));
  $('leave').addEventListener('click', () => {
    conn?.leave();
    endCall('left');
  });
  $('rejoin').addEventListener('click', () => location.reload());
  $('unblock-audio').addEventListener('click', () => {
    $('remote-audio').play().then(() => ($('unblock-audio').hidden = true)).catch(() => {});
  });
  $('toggle-side').addEventListener('click', (ev) => {
    const hide = !document.body.classList.contains('side-hidden');
    document.body.classList.toggle('side-hidden', hide);
    $('side').hidden = hide;
    ev.currentTarget.setAttribute('aria-expanded', String(!hide));
    ev.currentTarget.setAttribute('aria-label', hide ? 'Show people and chat' : 'Hide people and chat');
  });
  $('quality').addEventListener('click', (ev) => {
    const open = ev.currentTarget.getAttribute('aria-expanded') !== 'true';
    ev.currentTarget.setAttribute('aria-expanded', String(open));
    $('quality-details').hidden = !open;
  });
  for (const t of ['people', 'chat']) {
    $(`tab-${t}`).addEventListener('click', () => selectTab(t));
    $(`tab-${t}`).addEventListener('keydown', (ev) => {
      if (ev.key === 'ArrowLeft' || ev.key === 'ArrowRight' || ev.key === 'Home' || ev.key === 'End') {
        ev.preventDefault();
        const next = t === 'people' ? 'chat' : 'people';
        const target = ev.key === 'Home' ? 'people' : ev.key === 'End' ? 'chat' : next;
        selectTab(target);
        $(`tab-${target}`).focus();
      }
    });
  }
  $('chat-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = $('chat-input');
    const text = input.value.trim();
    if (!text) return;
    if (conn?.send({ type: 'chat', text })) input.value = '';
    else status('Not connected: your message was not sent. It is still in the box.', true);
  });
  window.addEventListener('pagehide', () => conn?.leave());
}

function startCall(stream, name, { micOff = false, camOff = false } = {}) {
  mcu.state = 'joining';
  setScreen('call');
  $('call-room').textContent = room;
  document.title = `${room} — MCU`;
  media.stream = stream;
  media.mic = stream?.getAudioTracks()[0] || null;
  media.cam = stream?.getVideoTracks()[0] || null;
  mcu.local = stream;
  wireCallControls();
  setMicOff(micOff, false);
  setCamOff(camOff, false);
  conn = new Connection({ token: tokenSource(name), name: claims?.name ? null : name, publish: canPublish, mcu });
  mcu.conn = conn;
  conn.setTracks(canPublish ? media.mic : null, canPublish ? media.cam : null, stream);
  conn.addEventListener('welcome', (e) => onWelcome(e.detail));
  conn.addEventListener('message', (e) => onServerMessage(e.detail));
  conn.addEventListener('track', (e) => onTrack(e.detail));
  conn.addEventListener('status', (e) => onStatus(e.detail));
  conn.addEventListener('ended', (e) => endCall(e.detail.reason, e.detail));
  const qs = { pc: null, prev: null };
  qualityTimer = setInterval(() => sampleQuality(qs).catch(() => {}), QUALITY_INTERVAL_MS);
  conn.connect();
}

/** Joins at once with the default devices (scripts and tests: ?autojoin=1). */
async function autojoin() {
  const name = claims?.name || params.get('name') || localStorage.getItem('mcu.name') || 'Guest';
  let stream = new MediaStream();
  if (canPublish) {
    const r = await openMedia({ raw: RAW_AUDIO });
    stream = r.stream;
    if (r.error) status(mediaErrorMessage(r.error), true);
  }
  startCall(stream, name);
}

/** Lets tests and the console force an ICE restart. */
mcu.restartIce = () => conn?.restartIce();

if (room && (token || pathRoom || params.get('autojoin') === '1')) {
  if (params.get('autojoin') === '1' && ROOM_NAME.test(room)) autojoin();
  else showPrejoin();
} else {
  showLanding();
}
