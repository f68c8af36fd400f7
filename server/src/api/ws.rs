//! The signaling WebSocket (`GET /api/v1/ws?token=…`), as in API.md.
//!
//! Two halves per connection: a pump on the actix worker that owns the socket (frame limits,
//! flood control, writing), and the session core on the WebRTC runtime that owns the peer and
//! the room membership. They talk through bounded channels; when either side ends, the other
//! follows, and dropping the [`ParticipantHandle`] removes the participant from the room.

use crate::AppState;
use crate::api::rest;
use crate::auth::{JoinClaims, TokenError};
use crate::cluster::{Host, PlaceError};
use crate::model::CloseReason;
use crate::room::manager::JoinError;
use crate::room::media::{Command, OUTPUT_QUEUE};
use crate::room::peer::{
    OfferError, PEER_EVENT_QUEUE, Peer, PeerContext, PeerEvent, summarize_offer,
};
use crate::room::{ParticipantHandle, SessionEvent};
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason as WsClose};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Largest accepted frame (API.md): larger ones close the connection with 1009.
pub const MAX_FRAME: usize = 64 * 1024;
/// Client frames per [`FLOOD_WINDOW`] before the client is disconnected (1008).
pub const FLOOD_LIMIT: u32 = 200;
/// Window of the flood limit.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(1);
/// Client messages queued from the pump to the session core.
const CLIENT_QUEUE: usize = 64;
/// Close code of a join sent to the node hosting the room (`wrong_node`, with its `ws_url`).
pub const WRONG_NODE_CLOSE: u16 = 4307;
/// Longest chat message, in characters.
const MAX_CHAT: usize = 4000;
/// Longest display name chosen with `?name=`, in characters (as for tokens).
const MAX_NAME: usize = 128;

/// Query of the WebSocket URL.
#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    /// Display name chosen on the join page; used only when the token names none.
    name: Option<String>,
}

/// What the core asks the pump to do.
enum Out {
    Text(String),
    Close(CloseCode, String),
}

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(handler));
}

fn msg_error(code: &str, message: impl Into<String>) -> String {
    json!({"type": "error", "code": code, "message": message.into()}).to_string()
}

/// Whether a page of `origin` may open the signaling socket: the server's own origin (the host
/// the request was sent to, or `MCU_PUBLIC_URL`'s), or one configured in `MCU_ALLOWED_ORIGINS`.
fn origin_allowed(origin: &str, host: &str, public_url: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    authority.eq_ignore_ascii_case(host)
        || public_url.is_some_and(|u| u.trim_end_matches('/').eq_ignore_ascii_case(origin))
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// Whether `origin` is another node's public URL: a page served by one node of the cluster is
/// sent to the node hosting its room (`wrong_node`), and opens its socket there.
async fn cluster_origin(state: &AppState, origin: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    match state.cluster.nodes(&state.store).await {
        Ok(nodes) => nodes
            .iter()
            .any(|n| n.url.trim_end_matches('/').eq_ignore_ascii_case(origin)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the nodes to check an origin");
            false
        }
    }
}

async fn handler(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<WsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    // A page of another site must not use a visitor's token (or the server) behind their back.
    if let Some(origin) = req.headers().get("origin") {
        let origin = origin.to_str().unwrap_or("");
        let host = req.connection_info().host().to_owned();
        let cfg = &state.config;
        if !origin_allowed(
            origin,
            &host,
            cfg.public_url.as_deref(),
            &cfg.allowed_origins,
        ) && !cluster_origin(&state, origin).await
        {
            tracing::info!(origin, "signaling refused: origin not allowed");
            return Ok(HttpResponse::Forbidden().json(json!({"error": {
                "code": "forbidden_origin",
                "message": format!("pages of {origin} may not open this server's signaling \
                    socket (MCU_ALLOWED_ORIGINS)"),
            }})));
        }
    }
    let (resp, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    let WsQuery { token, name } = query.into_inner();
    // The session's log lines keep the upgrade request's span (its `request_id`).
    let session_task = pump(state, token, name, session, stream);
    actix_web::rt::spawn(tracing::Instrument::in_current_span(session_task));
    Ok(resp)
}

async fn refuse(session: actix_ws::Session, code: &str, message: String, close: u16) {
    tracing::info!(code, %message, "signaling connection refused");
    close_with(session, msg_error(code, message), code, close).await;
}

/// Sends `msg` (an `error`), then closes with `close` and `code` as the reason.
async fn close_with(mut session: actix_ws::Session, msg: String, code: &str, close: u16) {
    let _ = session.text(msg).await;
    let _ = session
        .close(Some(WsClose {
            code: CloseCode::Other(close),
            description: Some(code.to_string()),
        }))
        .await;
}

/// Refuses a join the database could not decide (`unavailable`, 4503), logging why.
async fn store_failed(
    session: actix_ws::Session,
    room: &str,
    what: &str,
    e: impl std::fmt::Display,
) {
    tracing::warn!(error = %e, room, "{what} for a join");
    refuse(
        session,
        "unavailable",
        "the room store is unavailable".into(),
        4503,
    )
    .await
}

async fn pump(
    state: web::Data<AppState>,
    token: Option<String>,
    chosen_name: Option<String>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    // Authenticate and join before anything else; the first message is `welcome` or `error`.
    if state
        .shutting_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return refuse(
            session,
            "unavailable",
            "the server is shutting down".into(),
            4503,
        )
        .await;
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return refuse(session, "unauthorized", "missing ?token=".into(), 4001).await;
    };
    let claims = match state.tokens.verify(&token) {
        Ok(c) => c,
        Err(TokenError::Expired) => {
            return refuse(
                session,
                "token_expired",
                "the join token has expired".into(),
                4001,
            )
            .await;
        }
        Err(TokenError::Invalid(e)) => {
            return refuse(
                session,
                "unauthorized",
                format!("invalid join token: {e}"),
                4001,
            )
            .await;
        }
    };
    // A token minted for one room (it names the room's id) admits to that room only: once the
    // room is deleted, it must not bring it back.
    let found = match claims.room_id {
        Some(_) => state.store.get_room(&claims.room).await,
        None => state
            .store
            .ensure_room(&claims.room, &state.config.rooms)
            .await
            .map(Some),
    };
    let room = match found {
        Ok(Some(r)) if claims.room_id.is_none_or(|id| id == r.id) => r,
        Ok(_) => {
            return refuse(
                session,
                "room_not_found",
                format!(
                    "room '{}' was deleted; this token was for it (ask for a new one)",
                    claims.room
                ),
                4404,
            )
            .await;
        }
        Err(e) => return store_failed(session, &claims.room, "cannot load the room", e).await,
    };
    match state.store.banned_until(room.id, &claims.sub).await {
        Ok(None) => {}
        Ok(Some(until)) => {
            let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            return refuse(
                session,
                "banned",
                format!(
                    "you were removed from room '{}' and may rejoin after {until}",
                    room.name
                ),
                4403,
            )
            .await;
        }
        Err(e) => return store_failed(session, &room.name, "cannot read the bans", e).await,
    }
    // Several nodes: the room lives on one. Placed here if it is on no live node; a client on
    // the wrong node is sent to the right one with the same token.
    match state.host_of(&room).await {
        Ok(Host::Here) => {}
        Ok(Host::Elsewhere { node_id, url }) => {
            let ws_url = format!("{}/api/v1/ws?token={token}", rest::ws_of(&url));
            tracing::info!(room = %room.name, node = %node_id, "join sent to the hosting node");
            let msg = json!({"type": "error", "code": "wrong_node",
                "message": format!("room '{}' is hosted by node {node_id}; reconnect there", room.name),
                "ws_url": ws_url});
            return close_with(session, msg.to_string(), "wrong_node", WRONG_NODE_CLOSE).await;
        }
        Err(PlaceError::NoCapacity) => {
            return refuse(
                session,
                "server_busy",
                "no node can take this room now; try again shortly".into(),
                4503,
            )
            .await;
        }
        Err(PlaceError::RoomGone) => {
            return refuse(
                session,
                "room_not_found",
                format!("room '{}' was deleted", room.name),
                4404,
            )
            .await;
        }
        Err(PlaceError::Store(e)) => {
            return store_failed(session, &room.name, "cannot place the room", e).await;
        }
    }
    // Admission control: past its CPU budget the node takes no one more (a client retries, the
    // cluster places rooms elsewhere).
    let budget = state
        .config
        .cpu_budget
        .unwrap_or_else(crate::load::default_budget);
    let cores = state.load.cores();
    if budget > 0.0 && cores >= budget {
        return refuse(
            session,
            "server_busy",
            format!("this server is at its CPU budget ({cores:.2} of {budget:.2} cores); try again shortly"),
            4503,
        )
        .await;
    }
    let (ev_tx, ev_rx) = mpsc::channel(crate::room::manager::SESSION_QUEUE);
    let display = display_name(&claims, chosen_name.as_deref());
    let joined = state.rooms.join(
        &room.name,
        room.max_participants,
        room.layout,
        &claims.sub,
        &display,
        ev_tx,
    );
    let (handle, me, others) = match joined {
        Ok(j) => j,
        Err(JoinError::RoomFull) => {
            return refuse(
                session,
                "room_full",
                format!("room '{}' is full", room.name),
                4009,
            )
            .await;
        }
        Err(e @ JoinError::Media(_)) => {
            return refuse(session, "unavailable", e.to_string(), 4503).await;
        }
    };
    let welcome = json!({
        "type": "welcome",
        "participant_id": me.id,
        "participant": me,
        "room": room.name,
        "layout": room.layout,
        "ice_servers": crate::turn::ice_servers_for(&state.config, &me.id, std::time::SystemTime::now()),
        "participants": others,
        "recording_id": state.recordings.active_in(&room.name),
        "permissions": {
            "can_publish": claims.can_publish,
            "can_subscribe": claims.can_subscribe,
            "is_admin": claims.is_admin,
        },
    });
    if session.text(welcome.to_string()).await.is_err() {
        return; // gone already; dropping the handle leaves the room
    }

    if room.auto_record {
        let (recordings, name) = (state.recordings.clone(), room.name.clone());
        crate::rtc_runtime().spawn(async move { recordings.start_auto(&name).await });
    }
    let (client_tx, client_rx) = mpsc::channel::<String>(CLIENT_QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(CLIENT_QUEUE);
    let core = Core {
        state: state.clone(),
        room,
        claims,
        handle,
        out: out_tx,
        peer: None,
        chat: ChatBudget::new(std::time::Instant::now()),
    };
    crate::rtc_runtime().spawn(tracing::Instrument::in_current_span(
        core.run(client_rx, ev_rx),
    ));

    let mut window = (Instant::now(), 0u32);
    loop {
        tokio::select! {
            frame = stream.next() => {
                let msg = match frame {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Oversized frame or a protocol violation: close, never crash.
                        tracing::info!(error = %e, "signaling protocol error; closing");
                        let code = if matches!(e, actix_ws::ProtocolError::Overflow) { CloseCode::Size } else { CloseCode::Protocol };
                        let _ = session.close(Some(WsClose { code, description: Some(e.to_string()) })).await;
                        break;
                    }
                    None => break,
                };
                if window.0.elapsed() > FLOOD_WINDOW {
                    window = (Instant::now(), 0);
                }
                window.1 += 1;
                if window.1 > FLOOD_LIMIT {
                    tracing::warn!("signaling flood; disconnecting client");
                    let _ = session.close(Some(WsClose { code: CloseCode::Policy, description: Some("flood".into()) })).await;
                    break;
                }
                match msg {
                    actix_ws::AggregatedMessage::Text(t) => {
                        if client_tx.try_send(t.to_string()).is_err() {
                            let _ = session.close(Some(WsClose { code: CloseCode::Policy, description: Some("flood".into()) })).await;
                            break;
                        }
                    }
                    actix_ws::AggregatedMessage::Binary(_) => {
                        let _ = session.text(msg_error("invalid_message", "binary frames are not supported; send JSON text")).await;
                    }
                    actix_ws::AggregatedMessage::Ping(p) => { let _ = session.pong(&p).await; }
                    actix_ws::AggregatedMessage::Pong(_) => {}
                    actix_ws::AggregatedMessage::Close(_) => break,
                }
            }
            out = out_rx.recv() => match out {
                Some(Out::Text(t)) => {
                    if session.text(t).await.is_err() { break; }
                }
                Some(Out::Close(code, why)) => {
                    let _ = session.close(Some(WsClose { code, description: Some(why) })).await;
                    break;
                }
                None => {
                    let _ = session.close(None).await;
                    break;
                }
            },
        }
    }
    // Dropping client_tx ends the core, which closes the peer and leaves the room.
}

/// The display name: the token's `name`, else the one chosen on the join page (`?name=`, trimmed,
/// at most [`MAX_NAME`] characters), else the identity.
fn display_name(claims: &JoinClaims, chosen: Option<&str>) -> String {
    if let Some(n) = &claims.name {
        return n.clone();
    }
    match chosen.map(str::trim).filter(|n| !n.is_empty()) {
        Some(n) => n
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME)
            .collect(),
        None => claims.sub.clone(),
    }
}

/// A message from the client (API.md, and the additions in docs/server.md).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[allow(missing_docs)]
pub enum ClientMsg {
    Offer {
        sdp: String,
    },
    Candidate {
        candidate: Option<CandidateJson>,
    },
    Mute {
        audio: Option<bool>,
        video: Option<bool>,
    },
    Chat {
        text: String,
    },
    ScreenShare {
        active: bool,
    },
    Leave,
    /// Moderators only (`is_admin` tokens).
    KickParticipant {
        participant_id: String,
        ban_s: Option<i64>,
    },
    /// Moderators only (`is_admin` tokens).
    MuteParticipant {
        participant_id: String,
        audio: Option<bool>,
        video: Option<bool>,
        lock: Option<bool>,
    },
}

/// An ICE candidate as the browser sends it.
#[derive(Deserialize)]
pub struct CandidateJson {
    candidate: String,
    #[serde(rename = "sdpMid")]
    sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex")]
    sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment")]
    username_fragment: Option<String>,
}

const KNOWN_TYPES: [&str; 8] = [
    "offer",
    "candidate",
    "mute",
    "chat",
    "screen_share",
    "leave",
    "kick_participant",
    "mute_participant",
];

/// Parses a client frame, or returns the `error` message to send back (public for the fuzz
/// target).
pub fn parse_client(text: &str) -> Result<ClientMsg, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| msg_error("invalid_json", format!("not valid JSON: {e}")))?;
    let Some(t) = v.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Err(msg_error(
            "invalid_message",
            "a message needs a string field 'type'",
        ));
    };
    if !KNOWN_TYPES.contains(&t.as_str()) {
        return Err(msg_error(
            "unknown_type",
            format!("unknown message type '{t}'"),
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| msg_error("invalid_message", format!("bad '{t}' message: {e}")))
}

struct Core {
    state: web::Data<AppState>,
    room: crate::store::RoomRecord,
    claims: JoinClaims,
    handle: ParticipantHandle,
    out: mpsc::Sender<Out>,
    peer: Option<Peer>,
    chat: ChatBudget,
}

/// Chat messages one participant may send in a burst, and how fast the budget refills.
pub const CHAT_BURST: f64 = 10.0;
/// Chat messages per second a participant may keep sending.
pub const CHAT_PER_SECOND: f64 = 1.0;

/// A participant's chat allowance (token bucket): a burst of [`CHAT_BURST`], then
/// [`CHAT_PER_SECOND`]. Past it a message is refused with `rate_limited` and reaches nobody.
#[derive(Debug)]
struct ChatBudget {
    tokens: f64,
    at: std::time::Instant,
}

impl ChatBudget {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: CHAT_BURST,
            at: now,
        }
    }

    /// Takes one message's worth, if there is one.
    fn take(&mut self, now: std::time::Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * CHAT_PER_SECOND;
        self.tokens = (self.tokens + refill).min(CHAT_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Core {
    fn send(&self, v: Value) {
        let _ = self.out.try_send(Out::Text(v.to_string()));
    }
    fn error(&self, code: &str, message: impl Into<String>) {
        let _ = self.out.try_send(Out::Text(msg_error(code, message)));
    }

    async fn run(
        mut self,
        mut client: mpsc::Receiver<String>,
        mut room: mpsc::Receiver<SessionEvent>,
    ) {
        let (peer_tx, mut peer_rx) = mpsc::channel(PEER_EVENT_QUEUE);
        let expires_in = (self.claims.exp - chrono::Utc::now().timestamp()).max(0) as u64;
        let expiry = tokio::time::sleep(Duration::from_secs(expires_in));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                m = client.recv() => match m {
                    Some(text) => {
                        if !self.on_client(&text, &peer_tx).await { break; }
                    }
                    None => break,
                },
                ev = room.recv() => match ev {
                    Some(SessionEvent::Send(t)) => { let _ = self.out.try_send(Out::Text(t.to_string())); }
                    Some(SessionEvent::Close(reason, to)) => { self.close(reason, to.as_deref()); break; }
                    None => break,
                },
                pe = peer_rx.recv() => {
                    if let Some(pe) = pe { self.on_peer(pe); }
                }
                _ = &mut expiry => { self.close(CloseReason::TokenExpired, None); break; }
            }
        }
        if let Some(mut p) = self.peer.take() {
            p.close().await;
        }
        tracing::info!(
            room = self.handle.room,
            participant = self.handle.id,
            "session ended"
        );
        let room = self.handle.room.clone();
        drop(self.handle); // leaves the room
        if self.state.rooms.active_count(&room) == 0 {
            self.state.recordings.stop_auto(&room).await;
        }
    }

    fn close(&self, reason: CloseReason, moved_to: Option<&str>) {
        match moved_to {
            Some(url) => self.send(json!({"type": "closed", "reason": reason, "ws_url": url})),
            None => self.send(json!({"type": "closed", "reason": reason})),
        }
        let why = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = self.out.try_send(Out::Close(CloseCode::Normal, why));
    }

    fn on_peer(&self, ev: PeerEvent) {
        match ev {
            PeerEvent::Candidate(c) => {
                let c = c.map(|c| {
                    json!({"candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index})
                });
                self.send(json!({"type": "candidate", "candidate": c}));
            }
            PeerEvent::State(s) => {
                tracing::info!(room = self.handle.room, participant = self.handle.id, state = %s, "peer connection state");
            }
        }
    }

    /// Handles one client frame; false ends the session.
    async fn on_client(&mut self, text: &str, peer_tx: &mpsc::Sender<PeerEvent>) -> bool {
        let msg = match parse_client(text) {
            Ok(m) => m,
            Err(e) => {
                let _ = self.out.try_send(Out::Text(e));
                return true;
            }
        };
        match msg {
            ClientMsg::Offer { sdp } => self.on_offer(sdp, peer_tx).await,
            ClientMsg::Candidate { candidate } => {
                let Some(peer) = &self.peer else {
                    self.error("no_offer", "send an offer before ICE candidates");
                    return true;
                };
                let Some(c) = candidate else { return true }; // end of candidates
                let init = rtc::peer_connection::transport::RTCIceCandidateInit {
                    candidate: c.candidate,
                    sdp_mid: c.sdp_mid,
                    sdp_mline_index: c.sdp_mline_index,
                    username_fragment: c.username_fragment,
                    ..Default::default()
                };
                if let Err(e) = peer.add_candidate(init).await {
                    self.error("invalid_candidate", e.to_string());
                }
            }
            ClientMsg::Mute { audio, video } => {
                if audio.is_none() && video.is_none() {
                    self.error("invalid_message", "mute needs 'audio' and/or 'video'");
                } else if let Err(locked) =
                    self.state
                        .rooms
                        .self_mute(&self.handle.room, &self.handle.id, audio, video)
                {
                    self.error(
                        "mute_locked",
                        format!(
                            "a moderator muted your {} and locked it; it stays muted until \
                             they allow it",
                            locked.join(" and ")
                        ),
                    );
                }
            }
            ClientMsg::Chat { text } => {
                let text = text.trim();
                if text.is_empty() || text.chars().count() > MAX_CHAT {
                    self.error(
                        "invalid_message",
                        format!("chat text must be 1..={MAX_CHAT} characters"),
                    );
                } else if !self.chat.take(std::time::Instant::now()) {
                    self.error(
                        "rate_limited",
                        format!(
                            "too many chat messages: {CHAT_BURST} at once, then \
                             {CHAT_PER_SECOND} a second; this one was not sent"
                        ),
                    );
                } else {
                    let msg = json!({"type": "chat", "from": self.handle.id, "text": text,
                        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)});
                    self.state.rooms.broadcast(&self.handle.room, &msg, None);
                }
            }
            ClientMsg::ScreenShare { active } => {
                if active && !self.claims.can_publish {
                    self.error(
                        "forbidden",
                        "this token may not publish, so not present a screen",
                    );
                } else {
                    self.state
                        .rooms
                        .set_screen_sharing(&self.handle.room, &self.handle.id, active);
                }
            }
            ClientMsg::KickParticipant {
                participant_id,
                ban_s,
            } => {
                if !self.may_moderate() {
                    return true;
                }
                let by = format!("moderator {}", self.handle.id);
                let done = match crate::moderation::ban_seconds(&self.state, ban_s) {
                    Ok(ban) => {
                        crate::moderation::kick(&self.state, &self.room, &participant_id, ban, &by)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    self.error(e.code(), e.to_string());
                }
            }
            ClientMsg::MuteParticipant {
                participant_id,
                audio,
                video,
                lock,
            } => {
                if !self.may_moderate() {
                    return true;
                }
                let by = format!("moderator {}", self.handle.id);
                let room = &self.handle.room;
                if let Err(e) = crate::moderation::mute(
                    &self.state,
                    room,
                    &participant_id,
                    audio,
                    video,
                    lock,
                    &by,
                ) {
                    self.error(e.code(), e.to_string());
                }
            }
            ClientMsg::Leave => {
                let _ = self
                    .out
                    .try_send(Out::Close(CloseCode::Normal, "leave".into()));
                return false;
            }
        }
        true
    }

    /// Whether this participant may moderate; if not, tells it so.
    fn may_moderate(&self) -> bool {
        if !self.claims.is_admin {
            self.error(
                "forbidden",
                "only moderators (is_admin tokens) may mute or remove others",
            );
        }
        self.claims.is_admin
    }

    async fn on_offer(&mut self, sdp: String, peer_tx: &mpsc::Sender<PeerEvent>) {
        if let Err(e) = summarize_offer(&sdp) {
            let code = match e {
                OfferError::NoCommonCodec(_) => "unsupported_codec",
                OfferError::NoMedia => "no_media",
                _ => "invalid_offer",
            };
            return self.error(code, e.to_string());
        }
        let first = self.peer.is_none();
        let Some((packets, media)) = self.state.rooms.media(&self.handle.room) else {
            return self.error("unavailable", "the room's media is not running");
        };
        if first {
            let ctx = PeerContext {
                key: self.handle.key,
                publishes: self.claims.can_publish,
                packets,
                media: media.clone(),
            };
            let mux = self.state.udp_mux.as_ref();
            match Peer::new(&self.state.config.rtc, mux, ctx, peer_tx.clone()).await {
                Ok(p) => self.peer = Some(p),
                Err(e) => {
                    tracing::error!(error = %e, "cannot create peer connection");
                    return self.error("unavailable", e.to_string());
                }
            }
        }
        let output = if first {
            let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
            Some((tx, rx))
        } else {
            None
        };
        let (out_tx, out_rx) = match output {
            Some((tx, rx)) => (Some(tx), Some(rx)),
            None => (None, None),
        };
        let Some(peer) = self.peer.as_mut() else {
            return;
        };
        let link = peer.link();
        match peer.answer(sdp, out_rx).await {
            Ok(answer) => {
                self.send(json!({"type": "answer", "sdp": answer}));
                if let Some(tx) = out_tx {
                    self.state
                        .rooms
                        .set_link(&self.handle.room, &self.handle.id, link.clone());
                    // Media joins the mix only once the client can receive it.
                    media.command(Command::Add {
                        key: self.handle.key,
                        link,
                        publishes: self.claims.can_publish,
                        out: if self.claims.can_subscribe {
                            tx
                        } else {
                            mpsc::channel(1).0
                        },
                    });
                    if let Some(p) = self
                        .state
                        .rooms
                        .participant(&self.handle.room, &self.handle.id)
                        && (p.audio_muted || p.video_muted)
                    {
                        media.command(Command::Mute {
                            key: self.handle.key,
                            audio: p.audio_muted,
                            video: p.video_muted,
                        });
                    }
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "offer refused");
                if first && let Some(mut p) = self.peer.take() {
                    p.close().await;
                }
                self.error("invalid_offer", e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_own_and_listed_origins_may_open_the_socket() {
        let allowed = vec!["https://app.example.com".to_string()];
        let host = "mcu.example.com:8443";
        assert!(origin_allowed(
            "https://mcu.example.com:8443",
            host,
            None,
            &[]
        ));
        assert!(!origin_allowed("https://evil.example", host, None, &[]));
        assert!(origin_allowed(
            "https://app.example.com/",
            host,
            None,
            &allowed
        ));
        assert!(!origin_allowed(
            "https://app.example.com.evil.example",
            host,
            None,
            &allowed
        ));
        // Behind a TLS proxy the Host may be internal: the public URL's origin is ours.
        let public = Some("https://mcu.example.com/");
        assert!(origin_allowed(
            "https://mcu.example.com",
            "10.0.0.5:8080",
            public,
            &[]
        ));
        assert!(origin_allowed(
            "https://anything.example",
            host,
            None,
            &["*".to_string()]
        ));
    }

    #[test]
    fn the_token_name_wins_over_the_chosen_one() {
        let mut claims = JoinClaims {
            room: "r".into(),
            sub: "guest-1".into(),
            name: Some("Alice".into()),
            iat: 0,
            exp: 1,
            can_publish: true,
            can_subscribe: true,
            is_admin: false,
            room_id: None,
        };
        assert_eq!(display_name(&claims, Some("Mallory")), "Alice");
        claims.name = None;
        assert_eq!(display_name(&claims, Some("  Bob \n")), "Bob");
        assert_eq!(display_name(&claims, Some("a\u{7}b")), "ab");
        assert_eq!(display_name(&claims, Some("   ")), "guest-1");
        assert_eq!(display_name(&claims, None), "guest-1");
        assert_eq!(
            display_name(&claims, Some(&"x".repeat(300)))
                .chars()
                .count(),
            MAX_NAME
        );
    }

    fn code(e: String) -> String {
        serde_json::from_str::<Value>(&e).unwrap()["code"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn bad_frames_get_precise_error_codes() {
        assert_eq!(
            code(parse_client("{not json").err().unwrap()),
            "invalid_json"
        );
        assert_eq!(
            code(parse_client("[1,2]").err().unwrap()),
            "invalid_message"
        );
        assert_eq!(
            code(parse_client(r#"{"type":"dance"}"#).err().unwrap()),
            "unknown_type"
        );
        assert_eq!(
            code(parse_client(r#"{"type":"offer"}"#).err().unwrap()),
            "invalid_message"
        );
        assert_eq!(
            code(
                parse_client(r#"{"type":"mute","audio":"yes"}"#)
                    .err()
                    .unwrap()
            ),
            "invalid_message"
        );
        assert!(matches!(
            parse_client(r#"{"type":"leave"}"#),
            Ok(ClientMsg::Leave)
        ));
        assert!(matches!(
            parse_client(r#"{"type":"screen_share","active":true}"#),
            Ok(ClientMsg::ScreenShare { active: true })
        ));
        assert_eq!(
            code(parse_client(r#"{"type":"screen_share"}"#).err().unwrap()),
            "invalid_message"
        );
        assert!(matches!(
            parse_client(r#"{"type":"candidate","candidate":null}"#),
            Ok(ClientMsg::Candidate { candidate: None })
        ));
    }
}
