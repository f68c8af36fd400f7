// The connection to the MCU: the signaling WebSocket and one RTCPeerConnection that sends the
// camera and microphone and receives ONE mixed audio and ONE composite video track.
//
// It recovers by itself:
// - the WebSocket drops (no `closed` message, no refusal): rejoin with a new socket after a
//   back-off; the server treats it as a new session, so a new peer connection is made;
// - ICE disconnects for a few seconds or fails: ICE restart through a new offer on the same
//   socket; after ICE_RESTARTS failed restarts, rejoin as above;
// - several nodes: a socket refused with `wrong_node` (close 4307) reconnects at once to the
//   `ws_url` it names (the node hosting the room, same token); a rejoin after a lost session
//   starts again from this page's server, which places the room anew if its node died; a node
//   shutting down names the node its room moved to in `closed` (`ws_url`): rejoined at once.
// It sends no more video than the server shows (`video_constraints`: scaled to the tile, or
// paused while on no tile).
// What happens is reported as `status` events; the page decides what to show.
//
// Events (CustomEvent, `detail`):
//   welcome   the server's welcome message (a new session: also after a rejoin)
//   message   any other server message (participants, chat, recording, active speaker…)
//   track     a remote MediaStreamTrack
//   status    { phase, ... } phases: connecting, connected, reconnecting, ice-interrupted,
//             ice-restarting, ice-recovered
//   ended     { reason, code?, message? } the call is over and will not come back by itself

/** Delays before rejoin attempts, ms (the last one repeats). */
export const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 10000];
/** How long ICE may stay `disconnected` before we restart it, ms. */
export const ICE_GRACE_MS = 3000;
/** How long an ICE restart may take before the next attempt, ms. */
export const ICE_RESTART_TIMEOUT_MS = 8000;
/** ICE restarts on one session before rejoining instead. */
export const ICE_RESTARTS = 2;

/** Redirects followed in a row before falling back to the back-off (nodes disagreeing). */
export const MAX_REDIRECTS = 3;
/** Delay before asking again when the node we were sent to does not answer, ms. */
export const REDIRECT_RETRY_MS = 1000;
/** Close code of a join sent to another node (`wrong_node`). */
const WRONG_NODE = 4307;

/** Server close codes of refusals (docs/server.md). */
const REFUSED = { 4001: 'unauthorized', 4009: 'room_full', 4403: 'banned', 4404: 'room_not_found', 4503: 'unavailable' };

export class Connection extends EventTarget {
  /**
   * @param {object} o
   * @param {(fresh: boolean) => Promise<string>} o.token  a join token (fresh: the last one was refused as expired)
   * @param {string} [o.name]     display name for tokens that name nobody
   * @param {boolean} o.publish   send media (else receive only)
   * @param {object} o.mcu        the page's debug state (ws, pc, events)
   */
  constructor({ token, name, publish, mcu }) {
    super();
    this.tokenSource = token;
    this.name = name;
    this.publish = publish;
    this.mcu = mcu;
    this.ws = null;
    this.pc = null;
    this.tracks = { audio: null, video: null };
    this.senders = { audio: null, video: null };
    this.streams = [];
    this.attempt = 0; // failed connection attempts in a row
    this.everWelcomed = false;
    this.stopped = false;
    this.freshToken = false;
    this.iceRestarts = 0;
    this.iceTimer = null;
    this.retryTimer = null;
    this.pendingCandidates = [];
    this.redirectUrl = null; // the hosting node's ws_url, for the next connect only
    this.redirects = 0;
    this.videoLimit = null; // the server's last `video_constraints` for this session
    this.limitChain = Promise.resolve(); // setParameters calls, one at a time
    this.onOnline = () => {
      if (this.retryTimer && !this.stopped) {
        clearTimeout(this.retryTimer);
        this.retryTimer = null;
        this.connect();
      }
    };
    window.addEventListener('online', this.onOnline);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  log(e) {
    this.mcu.events.push(e);
  }

  /** The tracks to send (either may be null); they survive rejoins. */
  setTracks(audio, video, stream) {
    this.tracks = { audio, video };
    this.streams = stream ? [stream] : [];
  }

  /** Sends another track of `kind` (screen instead of camera): replaceTrack, no renegotiation. */
  async replaceTrack(kind, track) {
    this.tracks[kind] = track;
    const s = this.senders[kind];
    if (s && this.pc && this.pc.signalingState !== 'closed') await s.replaceTrack(track);
    // The limit is a box: another track (a screen) needs another scale to fit it.
    if (kind === 'video') await this.applyVideoLimit();
  }

  /**
   * Sends no more video than the server shows (`video_constraints`): the camera scaled down to
   * fit the tile it is shown in, capped at the bitrate useful there, or nothing while it is on no
   * tile. Pixels beyond that would cost both ends for nothing (the server decodes them and
   * scales them away), and a weak uplink carries the rest better.
   */
  applyVideoLimit() {
    this.limitChain = this.limitChain.then(async () => {
      const s = this.senders.video;
      const lim = this.videoLimit;
      if (!s || !lim || !this.pc || this.pc.signalingState === 'closed') return;
      const params = s.getParameters();
      const enc = params.encodings?.[0];
      if (!enc) return;
      const { width, height } = s.track?.getSettings?.() || {};
      enc.active = lim.active !== false;
      enc.scaleResolutionDownBy = enc.active && width && height && lim.max_width > 0 && lim.max_height > 0
        ? Math.max(1, width / lim.max_width, height / lim.max_height)
        : 1;
      if (lim.max_kbps > 0) enc.maxBitrate = lim.max_kbps * 1000;
      else delete enc.maxBitrate;
      await s.setParameters(params);
      this.log({ type: 'video-limit-applied', active: enc.active, scale: enc.scaleResolutionDownBy, maxBitrate: enc.maxBitrate ?? null });
    }).catch((e) => this.log({ type: 'client-error', message: `video limit: ${e?.message || e}` }));
    return this.limitChain;
  }

  send(msg) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  async connect() {
    if (this.stopped) return;
    this.retryTimer = null;
    this.emit('status', { phase: 'connecting', attempt: this.attempt });
    let url = this.redirectUrl;
    // A moved room's node is asked with a fresh token below; if it does not answer, the next
    // attempt starts again from this page's server, as after a redirect.
    const movedTo = this.movedTo;
    const viaRedirect = Boolean(url || movedTo);
    this.redirectUrl = null;
    this.movedTo = null;
    if (!url) {
      let token;
      try {
        token = await this.tokenSource(this.freshToken);
      } catch (e) {
        if (e.fatal) return this.end(e.reason || 'unauthorized', { message: e.message });
        return this.retry('unreachable');
      }
      if (this.stopped) return;
      this.freshToken = false;
      const proto = location.protocol === 'https:' ? 'wss' : 'ws';
      const base = movedTo || `${proto}://${location.host}/api/v1/ws`;
      url = `${base}?token=${encodeURIComponent(token)}`;
    }
    if (this.name) url += `&name=${encodeURIComponent(this.name)}`;
    const ws = new WebSocket(url);
    this.ws = ws;
    this.mcu.ws = ws;
    this.mcu.openedAt = performance.now();
    const session = { welcomed: false, closed: null, error: null, viaRedirect };
    let chain = Promise.resolve();
    ws.onmessage = (ev) => {
      // Strictly in order: offer/answer/candidates depend on it.
      chain = chain
        .then(() => this.onMessage(ws, session, JSON.parse(ev.data)))
        .catch((e) => this.log({ type: 'client-error', message: String(e?.message || e) }));
    };
    ws.onclose = (ev) => this.onClose(ws, session, ev);
  }

  async onMessage(ws, session, msg) {
    if (ws !== this.ws) return; // a socket we gave up on
    this.log(msg);
    switch (msg.type) {
      case 'welcome': {
        session.welcomed = true;
        this.attempt = 0;
        this.redirects = 0;
        this.iceRestarts = 0;
        const rejoined = this.everWelcomed;
        this.everWelcomed = true;
        this.emit('welcome', { ...msg, rejoined });
        await this.newPeer(msg.ice_servers || []);
        break;
      }
      case 'answer':
        if (!this.pc || this.pc.signalingState !== 'have-local-offer') break;
        await this.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        for (const c of this.pendingCandidates.splice(0)) await this.pc.addIceCandidate(c).catch(() => {});
        break;
      case 'video_constraints':
        this.videoLimit = msg;
        await this.applyVideoLimit();
        break;
      case 'candidate':
        if (!msg.candidate || !this.pc) break;
        if (this.pc.remoteDescription) await this.pc.addIceCandidate(msg.candidate).catch(() => {});
        else this.pendingCandidates.push(msg.candidate);
        break;
      case 'error':
        session.error = msg;
        if (msg.code === 'wrong_node' && typeof msg.ws_url === 'string') {
          session.redirect = msg.ws_url;
          break; // not the person's business: we follow it
        }
        this.emit('message', msg);
        break;
      case 'closed':
        session.closed = msg.reason;
        // A node shutting down names the node its room moved to: rejoin there at once.
        if (msg.reason === 'server_shutdown' && typeof msg.ws_url === 'string') session.movedTo = msg.ws_url;
        // Final reasons end the call now; the socket's close follows and is then ignored.
        if (msg.reason === 'kicked' || msg.reason === 'room_deleted') this.end(msg.reason);
        else if (msg.reason === 'token_expired' && !this.tokenSource.canRefresh) this.end('token_expired');
        break;
      default:
        this.emit('message', msg);
    }
  }

  onClose(ws, session, ev) {
    if (ws !== this.ws) return;
    this.log({ type: 'ws-close', code: ev.code, reason: ev.reason });
    this.closePeer();
    this.ws = null;
    if (this.stopped) return;
    if (!session.welcomed && ev.code === WRONG_NODE && session.redirect) {
      if (this.redirects >= MAX_REDIRECTS) {
        // Nodes sending us round in circles (a placement changing under us): back off, then
        // start again from this page's server.
        this.redirects = 0;
        return this.retry('unavailable');
      }
      this.redirects += 1;
      this.redirectUrl = session.redirect.replace(/&name=[^&]*/, '');
      this.emit('status', { phase: 'connecting', attempt: this.attempt, redirected: true });
      return this.connect();
    }
    const refused = session.welcomed ? null : REFUSED[ev.code];
    switch (session.closed) {
      case 'kicked':
      case 'room_deleted':
        return this.end(session.closed);
      case 'token_expired':
        return this.expired();
      case 'server_shutdown':
        if (session.movedTo) {
          this.movedTo = session.movedTo;
          this.emit('status', { phase: 'connecting', attempt: this.attempt, moved: true });
          return this.connect();
        }
        return this.retry('server_shutdown');
    }
    if (refused === 'unauthorized') {
      return session.error?.code === 'token_expired' ? this.expired() : this.end('unauthorized', { message: session.error?.message });
    }
    if (refused === 'room_full' || refused === 'banned' || refused === 'room_not_found') {
      return this.end(refused, { message: session.error?.message });
    }
    if (refused === 'unavailable') return this.retry('unavailable');
    // The node we were sent to does not answer: it has likely died, and this page's server will
    // place the room elsewhere once its heartbeat is old. Ask again every second meanwhile.
    // Not nodes disagreeing (what MAX_REDIRECTS guards against): the redirect count starts over.
    if (session.viaRedirect && !session.welcomed) {
      this.redirects = 0;
      return this.retry('unreachable', REDIRECT_RETRY_MS);
    }
    return this.retry(this.everWelcomed ? 'lost' : 'unreachable');
  }

  /** The token has expired: a token source that can mint a new one gets a chance. */
  expired() {
    if (this.tokenSource.canRefresh) {
      this.freshToken = true;
      return this.retry('token_refresh');
    }
    return this.end('token_expired');
  }

  retry(reason, maxDelay = Infinity) {
    if (this.stopped) return;
    const delay = Math.min(BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)], maxDelay);
    this.attempt += 1;
    this.emit('status', { phase: 'reconnecting', reason, attempt: this.attempt, delay });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Rejoin at once (the person asked to "retry now"). */
  retryNow() {
    if (this.stopped || !this.retryTimer) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  end(reason, extra = {}) {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.closePeer();
    window.removeEventListener('online', this.onOnline);
    this.emit('ended', { reason, ...extra });
  }

  /** Leaves the room on purpose. */
  leave() {
    if (this.stopped) return;
    this.send({ type: 'leave' });
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000, 'leave');
    this.closePeer();
    window.removeEventListener('online', this.onOnline);
  }

  closePeer() {
    clearTimeout(this.iceTimer);
    this.iceTimer = null;
    this.pendingCandidates = [];
    if (this.pc) {
      this.pc.close();
      this.pc = null;
      this.senders = { audio: null, video: null };
    }
  }

  async newPeer(iceServers) {
    this.closePeer();
    this.videoLimit = null; // a new session: the server says it again
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    this.mcu.pc = pc;
    pc.ontrack = (ev) => this.emit('track', ev.track);
    pc.onicecandidate = (ev) => {
      if (pc === this.pc) this.send({ type: 'candidate', candidate: ev.candidate ? ev.candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.log({ type: 'pc', state: pc.connectionState });
      if (pc.connectionState === 'connected') this.emit('status', { phase: 'connected' });
    };
    pc.oniceconnectionstatechange = () => this.onIceState(pc);
    for (const kind of ['audio', 'video']) {
      const track = this.tracks[kind];
      // Send-capable even without a track, so that a screen can be shared later without
      // renegotiating.
      const t = pc.addTransceiver(track || kind, {
        direction: this.publish ? 'sendrecv' : 'recvonly',
        streams: track ? this.streams : [],
      });
      this.senders[kind] = t.sender;
    }
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: 'offer', sdp: pc.localDescription.sdp });
  }

  onIceState(pc) {
    if (pc !== this.pc) return;
    const s = pc.iceConnectionState;
    this.log({ type: 'ice', state: s });
    if (s === 'connected' || s === 'completed') {
      clearTimeout(this.iceTimer);
      this.iceTimer = null;
      if (this.iceRestarts > 0) this.emit('status', { phase: 'ice-recovered' });
      this.iceRestarts = 0;
    } else if (s === 'disconnected') {
      this.emit('status', { phase: 'ice-interrupted' });
      clearTimeout(this.iceTimer);
      this.iceTimer = setTimeout(() => {
        if (pc === this.pc && ['disconnected', 'failed'].includes(pc.iceConnectionState)) this.restartIce();
      }, ICE_GRACE_MS);
    } else if (s === 'failed') {
      this.restartIce();
    }
  }

  /** ICE restart: a new offer with new credentials on the same socket. */
  async restartIce() {
    const pc = this.pc;
    if (!pc || this.stopped || this.ws?.readyState !== WebSocket.OPEN) return;
    clearTimeout(this.iceTimer);
    if (this.iceRestarts >= ICE_RESTARTS) {
      // This session's media will not come back: rejoin from scratch.
      this.log({ type: 'ice-giveup' });
      this.ws.close(4000, 'ice failed');
      return;
    }
    this.iceRestarts += 1;
    this.emit('status', { phase: 'ice-restarting', attempt: this.iceRestarts });
    this.log({ type: 'ice-restart', attempt: this.iceRestarts });
    const offer = await pc.createOffer({ iceRestart: true });
    if (pc !== this.pc) return;
    await pc.setLocalDescription(offer);
    this.send({ type: 'offer', sdp: offer.sdp });
    this.iceTimer = setTimeout(() => {
      if (pc === this.pc && !['connected', 'completed'].includes(pc.iceConnectionState)) this.restartIce();
    }, ICE_RESTART_TIMEOUT_MS);
  }
}
