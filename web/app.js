// Minimal join page: token → WebSocket signaling → one RTCPeerConnection that sends the camera
// and microphone and receives ONE mixed audio track and ONE composite video track.
// State is exposed on window.mcu for tests and debugging.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const mcu = (window.mcu = { ws: null, pc: null, participants: new Map(), events: [], me: null, speaker: null });

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

function send(msg) {
  if (mcu.ws && mcu.ws.readyState === WebSocket.OPEN) mcu.ws.send(JSON.stringify(msg));
}

function renderParticipants() {
  const ul = $('participants');
  ul.replaceChildren();
  for (const p of mcu.participants.values()) {
    const li = document.createElement('li');
    li.textContent = `${p.display_name}${p.id === mcu.me ? ' (you)' : ''}${p.audio_muted ? ' 🔇' : ''}${p.video_muted ? ' 📷✕' : ''}`;
    li.classList.toggle('speaking', p.id === mcu.speaker || p.speaking);
    ul.append(li);
  }
}

async function getToken(room, name) {
  const token = params.get('token');
  if (token) return token;
  const r = await fetch(`/api/v1/dev/token?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    throw new Error(body?.error?.message || `cannot get a join token (HTTP ${r.status}); open an invite link with ?token=`);
  }
  return (await r.json()).token;
}

async function localMedia() {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: { width: 640, height: 360, frameRate: 15 },
    });
  } catch (e) {
    status(`No camera/microphone (${e.name}); joining to listen and watch only.`, true);
    return null;
  }
}

async function startPeer(iceServers, stream) {
  const pc = (mcu.pc = new RTCPeerConnection({ iceServers }));
  const remote = new MediaStream();
  pc.ontrack = (ev) => {
    remote.addTrack(ev.track);
    if (ev.track.kind === 'audio') $('remote-audio').srcObject = new MediaStream([ev.track]);
    else $('remote').srcObject = new MediaStream([ev.track]);
  };
  pc.onicecandidate = (ev) => send({ type: 'candidate', candidate: ev.candidate ? ev.candidate.toJSON() : null });
  pc.onconnectionstatechange = () => {
    mcu.events.push({ type: 'pc', state: pc.connectionState });
    if (pc.connectionState === 'connected') status('Connected.');
    if (pc.connectionState === 'failed') status('Media connection failed.', true);
  };
  for (const kind of ['audio', 'video']) {
    const track = stream?.getTracks().find((t) => t.kind === kind);
    if (track) pc.addTransceiver(track, { direction: 'sendrecv', streams: [stream] });
    else pc.addTransceiver(kind, { direction: 'recvonly' });
  }
  await pc.setLocalDescription(await pc.createOffer());
  send({ type: 'offer', sdp: pc.localDescription.sdp });
}

const pendingCandidates = [];

async function onMessage(msg, stream) {
  mcu.events.push(msg);
  switch (msg.type) {
    case 'welcome':
      mcu.me = msg.participant_id;
      for (const p of [msg.participant, ...msg.participants]) if (p) mcu.participants.set(p.id, p);
      renderParticipants();
      await startPeer(msg.ice_servers, stream);
      break;
    case 'answer':
      await mcu.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      for (const c of pendingCandidates.splice(0)) await mcu.pc.addIceCandidate(c);
      break;
    case 'candidate':
      if (!msg.candidate) break;
      if (mcu.pc?.remoteDescription) await mcu.pc.addIceCandidate(msg.candidate);
      else pendingCandidates.push(msg.candidate);
      break;
    case 'participant_joined':
    case 'participant_updated':
      mcu.participants.set(msg.participant.id, msg.participant);
      renderParticipants();
      break;
    case 'participant_left':
      mcu.participants.delete(msg.participant_id);
      renderParticipants();
      break;
    case 'active_speaker':
      mcu.speaker = msg.participant_id;
      renderParticipants();
      break;
    case 'error':
      status(`Server: ${msg.message}`, true);
      break;
    case 'closed':
      status(`Disconnected: ${msg.reason.replace('_', ' ')}.`, true);
      hangUp();
      break;
  }
}

function hangUp() {
  mcu.pc?.close();
  mcu.pc = null;
  $('call').hidden = true;
  $('join-form').hidden = false;
}

async function join(room, name) {
  status('Joining…');
  let token;
  try {
    token = await getToken(room, name);
  } catch (e) {
    return status(e.message, true);
  }
  const stream = await localMedia();
  mcu.local = stream;
  $('local').srcObject = stream;
  $('join-form').hidden = true;
  $('call').hidden = false;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = (mcu.ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?token=${encodeURIComponent(token)}`));
  mcu.openedAt = performance.now();
  let chain = Promise.resolve();
  ws.onmessage = (ev) => {
    // Handle messages strictly in order (offer/answer/candidates depend on it).
    chain = chain.then(() => onMessage(JSON.parse(ev.data), stream)).catch((e) => status(e.message, true));
  };
  ws.onclose = (ev) => {
    mcu.events.push({ type: 'ws-close', code: ev.code, reason: ev.reason });
    if (!$('call').hidden) status(`Signaling closed (${ev.code}${ev.reason ? ': ' + ev.reason : ''}).`, true);
  };
  ws.onerror = () => status('Cannot reach the server.', true);
}

$('join-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  join($('room').value.trim(), $('name').value.trim());
});
$('mute-audio').addEventListener('click', (ev) => {
  const on = ev.target.getAttribute('aria-pressed') !== 'true';
  ev.target.setAttribute('aria-pressed', String(on));
  ev.target.textContent = on ? 'Unmute microphone' : 'Mute microphone';
  mcu.local?.getAudioTracks().forEach((t) => (t.enabled = !on));
  send({ type: 'mute', audio: on });
});
$('mute-video').addEventListener('click', (ev) => {
  const on = ev.target.getAttribute('aria-pressed') !== 'true';
  ev.target.setAttribute('aria-pressed', String(on));
  ev.target.textContent = on ? 'Start camera' : 'Stop camera';
  mcu.local?.getVideoTracks().forEach((t) => (t.enabled = !on));
  send({ type: 'mute', video: on });
});
$('leave').addEventListener('click', () => {
  send({ type: 'leave' });
  hangUp();
  status('You left the room.');
});

if (params.get('room')) $('room').value = params.get('room');
if (params.get('name')) $('name').value = params.get('name');
if (params.get('autojoin') === '1') join($('room').value, $('name').value);
