// The admin console (/admin): rooms (list, create, edit, delete, invite links, recording), the
// people in a room (mute, kick), recordings (play in the page, download, stop, delete).
//
// The API key is asked once and kept in sessionStorage (this tab only). Every call carries it as
// `Authorization: Bearer`; recordings play and download through their `signed_media_url`, which
// needs no header (a <video> cannot send one). Views poll while shown; a table is redrawn only
// when its data changed, and keyboard focus survives the redraw.

import { el } from '/js/dom.js';

const $ = (id) => document.getElementById(id);
const KEY = 'mcu.apiKey';
const POLL_MS = { rooms: 5000, room: 2000, recordings: 5000 };
/** Most rooms or recordings listed (pages of 100 are fetched until then). */
const MAX_ITEMS = 1000;

const state = { key: sessionStorage.getItem(KEY), timer: null, view: null, room: null, rendered: {} };
window.admin = state;

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ----- helpers ---------------------------------------------------------------------------------

function button(text, { label, cls, key, onClick } = {}) {
  const b = el('button', { type: 'button', class: cls, 'aria-label': label, 'data-focus-key': key, text });
  b.addEventListener('click', onClick);
  return b;
}

let noticeTimer = null;
function notice(text, isError = false, { keep = false, child = null } = {}) {
  const n = $('notice');
  clearTimeout(noticeTimer);
  n.replaceChildren(el('span', { text }));
  if (child) n.append(child);
  n.classList.toggle('error', isError);
  n.hidden = !text;
  if (text && !keep && !child) noticeTimer = setTimeout(() => (n.hidden = true), isError ? 10000 : 5000);
}

const fmt = {
  date: (iso) => {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? '–' : d.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
  },
  time: (iso) => {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? '' : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  },
  duration: (ms) => {
    if (ms === null || ms === undefined) return '–';
    const s = Math.round(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, '0');
    return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
  },
  size: (b) => {
    if (b === null || b === undefined) return '–';
    if (b < 1024) return `${b} B`;
    if (b < 1024 ** 2) return `${(b / 1024).toFixed(0)} KB`;
    if (b < 1024 ** 3) return `${(b / 1024 ** 2).toFixed(1)} MB`;
    return `${(b / 1024 ** 3).toFixed(2)} GB`;
  },
};

async function api(method, path, body) {
  let r;
  try {
    r = await fetch(`/api/v1${path}`, {
      method,
      headers: {
        authorization: `Bearer ${state.key}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'unreachable', 'Cannot reach the server. Check the connection and try again.');
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (r.status === 401) {
    signOut('The server refused the API key. Sign in again.');
    throw new ApiError(401, 'unauthorized', 'The API key was refused.');
  }
  if (!r.ok) throw new ApiError(r.status, data?.error?.code, data?.error?.message || `HTTP ${r.status}`);
  return data;
}

/** Every page of a cursor-paged list, up to MAX_ITEMS. */
async function listAll(path, field) {
  const items = [];
  let cursor = '';
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api('GET', `${path}${sep}limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...page[field]);
    cursor = page.next_cursor;
  } while (cursor && items.length < MAX_ITEMS);
  return { items, truncated: Boolean(cursor) };
}

/** Runs `f`, reporting failures in the notice area. */
async function attempt(f) {
  try {
    return await f();
  } catch (e) {
    if (e.status !== 401) notice(e.message, true);
    return undefined;
  }
}

/** Asks for confirmation in a modal dialog; resolves true or false. */
function confirmDialog(title, text, okLabel) {
  const d = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  $('confirm-ok').focus();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

/** Redraws `container` with `build()` only when `data` changed; focus is kept by data-focus-key. */
function render(name, container, data, build) {
  const json = JSON.stringify(data);
  if (state.rendered[name] === json) return;
  state.rendered[name] = json;
  const focusKey = document.activeElement?.dataset?.focusKey;
  container.replaceChildren(...build());
  if (focusKey) container.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus();
}

function randomId() {
  const a = new Uint8Array(6);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false;
  }
}

// ----- sign in ---------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(KEY);
  state.key = null;
  stopPolling();
  showView('login');
  if (message) {
    $('login-error').textContent = message;
    $('login-error').hidden = false;
  }
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const key = $('api-key').value.trim();
  if (!key) return;
  state.key = key;
  $('login-error').hidden = true;
  try {
    await api('GET', '/rooms?limit=1');
  } catch (e) {
    if (e.status !== 401) {
      $('login-error').textContent = e.message;
      $('login-error').hidden = false;
    }
    return;
  }
  sessionStorage.setItem(KEY, key);
  $('api-key').value = '';
  route();
});

$('sign-out').addEventListener('click', () => {
  signOut(null);
  notice('Signed out.');
});

// ----- views and routing -----------------------------------------------------------------------

function showView(name) {
  state.view = name;
  for (const v of ['login', 'rooms', 'room', 'recordings']) $(`${v}-view`).hidden = v !== name;
  const signedIn = name !== 'login';
  $('nav').hidden = !signedIn;
  $('sign-out').hidden = !signedIn;
  $('nav-rooms').toggleAttribute('aria-current', name === 'rooms' || name === 'room');
  $('nav-recordings').toggleAttribute('aria-current', name === 'recordings');
  if (name === 'login') $('api-key').focus();
}

function stopPolling() {
  clearInterval(state.timer);
  state.timer = null;
}

function poll(f, ms) {
  stopPolling();
  f();
  state.timer = setInterval(() => {
    if (document.visibilityState === 'visible') f();
  }, ms);
}

function route() {
  if (!state.key) return showView('login');
  const hash = location.hash.replace(/^#\/?/, '');
  const [section, ...rest] = hash.split('/');
  state.rendered = {};
  if (section === 'recordings') {
    showView('recordings');
    document.title = 'Recordings — MCU admin';
    poll(loadRecordings, POLL_MS.recordings);
  } else if (section === 'rooms' && rest.length) {
    let name;
    try {
      name = decodeURIComponent(rest.join('/'));
    } catch {
      name = '';
    }
    state.room = name;
    showView('room');
    document.title = `${name} — MCU admin`;
    $('room-title').textContent = name;
    $('invite-result').hidden = true;
    state.settingsFor = null;
    poll(loadRoom, POLL_MS.room);
  } else {
    showView('rooms');
    document.title = 'Rooms — MCU admin';
    poll(loadRooms, POLL_MS.rooms);
  }
}

window.addEventListener('hashchange', route);

// ----- rooms -----------------------------------------------------------------------------------

function inviteLink(room, token) {
  return `${location.origin}/r/${encodeURIComponent(room)}?token=${encodeURIComponent(token)}`;
}

async function mintInvite(room, { display_name, ttl_s } = {}) {
  const body = { identity: `guest-${randomId()}` };
  if (display_name) body.display_name = display_name;
  if (ttl_s) body.ttl_s = ttl_s;
  const t = await api('POST', `/rooms/${encodeURIComponent(room)}/tokens`, body);
  return { link: inviteLink(room, t.token), expires: t.expires_at };
}

async function copyInvite(room) {
  const r = await attempt(() => mintInvite(room));
  if (!r) return;
  const copied = await copy(r.link);
  const out = el('input', { readonly: true, value: r.link, 'aria-label': `Invite link to ${room}`, class: 'notice-link' });
  notice(copied ? `Invite link to ${room} copied (valid until ${fmt.date(r.expires)}).` : `Invite link to ${room} (copy it from the box):`, false, { child: out });
  out.select();
}

async function startRecording(room) {
  const r = await attempt(() => api('POST', `/rooms/${encodeURIComponent(room)}/recordings`, {}));
  if (r) notice(`Recording of ${room} started.`);
  return r;
}

async function stopRecording(id, room) {
  const r = await attempt(() => api('POST', `/recordings/${id}/stop`));
  if (r) notice(`Recording of ${room} stopped (${fmt.duration(r.duration_ms)}).`);
  return r;
}

async function deleteRoom(name) {
  const ok = await confirmDialog(`Delete room ${name}?`,
    'Everyone in it is disconnected, and a running recording is finalized. Its recordings are kept.', 'Delete room');
  if (!ok) return false;
  const r = await attempt(() => api('DELETE', `/rooms/${encodeURIComponent(name)}`));
  if (r === undefined) return false;
  notice(`Room ${name} deleted.`);
  return true;
}

async function loadRooms() {
  const r = await attempt(() => listAll('/rooms', 'rooms'));
  if (!r || state.view !== 'rooms') return;
  const rooms = r.items;
  $('rooms-empty').hidden = rooms.length > 0;
  $('rooms-table').hidden = rooms.length === 0;
  const data = rooms.map((x) => [x.name, x.layout, x.active_participants, x.max_participants, x.recording_id, x.auto_record]);
  render('rooms', $('rooms-table').tBodies[0], data, () =>
    rooms.map((room) => {
      const n = room.name;
      const rec = room.recording_id
        ? button('Stop recording', { key: `${n}:rec`, label: `Stop recording ${n}`, onClick: async () => {
          if (await stopRecording(room.recording_id, n)) refreshRooms();
        } })
        : button('Start recording', { key: `${n}:rec`, label: `Start recording ${n}`, onClick: async () => {
          if (await startRecording(n)) refreshRooms();
        } });
      return el('tr', { 'data-room': n },
        el('th', { scope: 'row' }, el('a', { href: `#/rooms/${encodeURIComponent(n)}`, text: n })),
        el('td', { 'data-label': 'Layout', text: room.layout }),
        el('td', { 'data-label': 'People', text: `${room.active_participants} / ${room.max_participants}` }),
        el('td', { 'data-label': 'Recording' }, room.recording_id
          ? el('span', { class: 'badge rec-badge', text: 'recording' })
          : el('span', { class: 'hint', text: room.auto_record ? 'automatic' : '—' })),
        el('td', {}, el('div', { class: 'actions' },
          button('Copy invite', { key: `${n}:invite`, label: `Copy an invite link to ${n}`, onClick: () => copyInvite(n) }),
          rec,
          button('Delete', { key: `${n}:delete`, cls: 'danger', label: `Delete room ${n}`, onClick: async () => {
            if (await deleteRoom(n)) refreshRooms();
          } }))));
    }));
}

function refreshRooms() {
  state.rendered.rooms = null;
  loadRooms();
}

$('refresh-rooms').addEventListener('click', refreshRooms);

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = { name: f.name.value.trim(), layout: f.layout.value, auto_record: f.auto_record.checked };
  if (f.max_participants.value) body.max_participants = Number(f.max_participants.value);
  if (f.empty_timeout_s.value) body.empty_timeout_s = Number(f.empty_timeout_s.value);
  const room = await attempt(() => api('POST', '/rooms', body));
  if (!room) return;
  notice(`Room ${room.name} created.`);
  f.reset();
  refreshRooms();
});

// ----- one room --------------------------------------------------------------------------------

async function loadRoom() {
  const name = state.room;
  let room;
  let people;
  try {
    [room, people] = await Promise.all([
      api('GET', `/rooms/${encodeURIComponent(name)}`),
      api('GET', `/rooms/${encodeURIComponent(name)}/participants`),
    ]);
  } catch (e) {
    if (e.status === 404) {
      stopPolling();
      notice(`There is no room ${name}.`, true);
      location.hash = '#/rooms';
    } else if (e.status !== 401) {
      notice(e.message, true);
    }
    return;
  }
  if (state.view !== 'room' || state.room !== name) return;
  state.current = room;
  const recBtn = $('room-record');
  recBtn.textContent = room.recording_id ? 'Stop recording' : 'Start recording';
  recBtn.classList.toggle('danger', Boolean(room.recording_id));
  if (state.settingsFor !== name) {
    // Filled once per visit: polling must not overwrite what is being typed.
    state.settingsFor = name;
    const f = $('settings-form');
    f.max_participants.value = room.max_participants;
    f.layout.value = room.layout;
    f.empty_timeout_s.value = room.empty_timeout_s;
    f.auto_record.checked = room.auto_record;
    f.metadata.value = room.metadata ?? '';
  }
  const list = people.participants;
  $('room-count').textContent = String(list.length);
  $('room-people-empty').hidden = list.length > 0;
  render('people', $('room-people'), list, () => list.map((p) => personItem(name, p)));
}

function personItem(room, p) {
  const path = `/rooms/${encodeURIComponent(room)}/participants/${encodeURIComponent(p.id)}`;
  const mute = (kind, value) => async () => {
    // A moderator's mute is locked: the participant cannot simply undo it; unmuting lifts it.
    const body = value ? { [kind]: true, lock: true } : { [kind]: false };
    const r = await attempt(() => api('POST', `${path}/mute`, body));
    if (r) {
      notice(`${p.display_name}: ${kind === 'audio' ? 'microphone' : 'camera'} ${value ? 'muted' : 'allowed again'}.`);
      state.rendered.people = null;
      loadRoom();
    }
  };
  const flags = el('span', { class: 'flags' });
  if (p.speaking && !p.audio_muted) flags.append(el('span', { class: 'badge ok-badge', text: 'speaking' }));
  if (p.screen_sharing) flags.append(el('span', { class: 'badge', text: 'sharing screen' }));
  if (p.audio_muted) flags.append(el('span', { class: 'badge warn-badge', text: p.audio_locked ? 'mic muted (locked)' : 'mic muted' }));
  if (p.video_muted) flags.append(el('span', { class: 'badge warn-badge', text: 'camera off' }));
  return el('li', { 'data-id': p.id, 'data-identity': p.identity },
    el('div', { class: 'who' }, el('strong', { text: p.display_name }),
      el('span', { class: 'hint', text: ` ${p.identity} · joined ${fmt.time(p.joined_at)}` })),
    flags,
    el('div', { class: 'actions' },
      button(p.audio_muted ? 'Unmute mic' : 'Mute mic', {
        key: `${p.id}:mic`, label: `${p.audio_muted ? 'Unmute' : 'Mute'} the microphone of ${p.display_name}`,
        onClick: mute('audio', !p.audio_muted),
      }),
      button(p.video_muted ? 'Allow camera' : 'Stop camera', {
        key: `${p.id}:cam`, label: `${p.video_muted ? 'Allow' : 'Stop'} the camera of ${p.display_name}`,
        onClick: mute('video', !p.video_muted),
      }),
      button('Kick', {
        key: `${p.id}:kick`, cls: 'danger', label: `Remove ${p.display_name} from the room`,
        onClick: async () => {
          const ok = await confirmDialog(`Remove ${p.display_name}?`,
            `${p.display_name} leaves ${room} at once, is told that a moderator removed them, and cannot rejoin for a while (5 minutes unless the server sets another time).`, 'Remove');
          if (!ok) return;
          const r = await attempt(() => api('DELETE', path));
          if (r !== undefined) {
            notice(`${p.display_name} was removed from ${room}.`);
            state.rendered.people = null;
            loadRoom();
          }
        },
      })));
}

$('room-record').addEventListener('click', async () => {
  const room = state.current;
  if (!room) return;
  if (room.recording_id) await stopRecording(room.recording_id, room.name);
  else await startRecording(room.name);
  loadRoom();
});

$('room-delete').addEventListener('click', async () => {
  if (await deleteRoom(state.room)) location.hash = '#/rooms';
});

$('invite-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const r = await attempt(() => mintInvite(state.room, { display_name: f.display_name.value.trim(), ttl_s: Number(f.ttl_s.value) }));
  if (!r) return;
  $('invite-result').hidden = false;
  $('invite-link').value = r.link;
  $('invite-open').href = r.link;
  $('invite-expiry').textContent = `Valid until ${fmt.date(r.expires)}.`;
  $('invite-link').select();
  if (await copy(r.link)) notice('Invite link created and copied.');
  else notice('Invite link created: copy it from the box.');
});

$('invite-copy').addEventListener('click', async () => {
  $('invite-link').select();
  notice((await copy($('invite-link').value)) ? 'Invite link copied.' : 'Copying is not allowed here: the link is selected, copy it with Ctrl+C.');
});

$('settings-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = {
    max_participants: Number(f.max_participants.value),
    layout: f.layout.value,
    empty_timeout_s: Number(f.empty_timeout_s.value),
    auto_record: f.auto_record.checked,
    metadata: f.metadata.value === '' ? null : f.metadata.value,
  };
  const r = await attempt(() => api('PATCH', `/rooms/${encodeURIComponent(state.room)}`, body));
  if (r) notice(`Settings of ${r.name} saved.`);
});

// ----- recordings ------------------------------------------------------------------------------

const STATUS_CLASS = { recording: 'rec-badge', completed: 'ok-badge', interrupted: 'warn-badge', failed: 'err-badge' };

function playable(r) {
  return r.status !== 'recording' && (r.size_bytes ?? 0) > 0;
}

function play(r) {
  const v = $('player');
  $('player-box').hidden = false;
  $('player-title').textContent = `Recording of ${r.room}, ${fmt.date(r.started_at)}`;
  if (v.dataset.id !== r.id) {
    v.dataset.id = r.id;
    v.src = r.signed_media_url;
  }
  v.play().catch(() => {});
  $('player-box').scrollIntoView({ block: 'nearest' });
  v.focus();
}

function closePlayer() {
  const v = $('player');
  v.pause();
  v.removeAttribute('src');
  delete v.dataset.id;
  v.load();
  $('player-box').hidden = true;
}

$('player-close').addEventListener('click', closePlayer);

async function loadRecordings() {
  const room = $('rec-filter').value.trim();
  if (room && !/^[A-Za-z0-9_-]{1,64}$/.test(room)) return;
  const r = await attempt(() => listAll(`/recordings${room ? `?room=${encodeURIComponent(room)}` : ''}`, 'recordings'));
  if (!r || state.view !== 'recordings') return;
  const list = r.items.slice().reverse(); // newest first
  $('recordings-empty').hidden = list.length > 0;
  $('recordings-table').hidden = list.length === 0;
  render('recordings', $('recordings-table').tBodies[0], list, () =>
    list.map((rec) => {
      const when = fmt.date(rec.started_at);
      const actions = el('div', { class: 'actions' });
      if (playable(rec)) {
        actions.append(
          button('Play', { key: `${rec.id}:play`, label: `Play the recording of ${rec.room} from ${when}`, onClick: () => play(rec) }),
          el('a', {
            class: 'button', href: rec.signed_media_url, download: `${rec.room}-${rec.started_at.slice(0, 19).replace(/:/g, '-')}.webm`,
            'aria-label': `Download the recording of ${rec.room} from ${when}`, 'data-focus-key': `${rec.id}:download`, text: 'Download',
          }));
      }
      if (rec.status === 'recording') {
        actions.append(button('Stop', { key: `${rec.id}:stop`, label: `Stop recording ${rec.room}`, onClick: async () => {
          if (await stopRecording(rec.id, rec.room)) refreshRecordings();
        } }));
      }
      actions.append(button('Delete', { key: `${rec.id}:delete`, cls: 'danger', label: `Delete the recording of ${rec.room} from ${when}`,
        onClick: async () => {
          const ok = await confirmDialog('Delete this recording?', `The recording of ${rec.room} from ${when} and its file are removed for good.`, 'Delete recording');
          if (!ok) return;
          const done = await attempt(() => api('DELETE', `/recordings/${rec.id}`));
          if (done === undefined) return;
          if ($('player').dataset.id === rec.id) closePlayer();
          notice('Recording deleted.');
          refreshRecordings();
        } }));
      return el('tr', { 'data-id': rec.id, 'data-status': rec.status },
        el('th', { scope: 'row', text: rec.room }),
        el('td', { 'data-label': 'Status' }, el('span', { class: `badge ${STATUS_CLASS[rec.status] || ''}`, text: rec.status, title: rec.error || '' })),
        el('td', { 'data-label': 'Started', text: when }),
        el('td', { 'data-label': 'Length', text: fmt.duration(rec.duration_ms) }),
        el('td', { 'data-label': 'Size', text: fmt.size(rec.size_bytes) }),
        el('td', {}, actions));
    }));
}

function refreshRecordings() {
  state.rendered.recordings = null;
  loadRecordings();
}

$('refresh-recordings').addEventListener('click', refreshRecordings);
$('rec-filter').addEventListener('change', refreshRecordings);

route();
