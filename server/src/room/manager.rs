//! The registry of live rooms and their participants.

use crate::config::MediaSettings;
use crate::model::{CloseReason, Layout, Participant};
use crate::room::media::{self, Command, MediaHandle, MediaHandleRef, PacketSender};
use crate::room::pacer::LinkState;
use chrono::Utc;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// Capacity of a session's outgoing event queue. Signaling messages are small and rare; a client
/// that lets 256 pile up is not reading its socket and is disconnected (see `deliver`).
pub const SESSION_QUEUE: usize = 256;

/// What a signaling session is told by the room.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// A JSON message to send to the client as is, serialized once for everyone it goes to.
    Send(Arc<str>),
    /// Send `closed` with this reason and close the socket; with the signaling URL of the node
    /// the room moved to, if any (shutdown of one node of several).
    Close(CloseReason, Option<Arc<str>>),
}

/// Is a room in use, and since when is it empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomActivity {
    /// This many participants are connected.
    Live(usize),
    /// Nobody is connected since this instant (the last one left, or the room was first seen).
    EmptySince(Instant),
    /// This process has never seen the room live.
    Unknown,
}

/// What [`RoomManager::stats`] reports of a live room.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRoomStats {
    /// Connected participants.
    pub participants: u32,
    /// Recording sinks attached to the media thread.
    pub recording_sinks: u32,
    /// Layout in force.
    pub layout: Layout,
    /// The media thread's figures, None when it is not running.
    pub media: Option<MediaStats>,
    /// What each participant's link carries and what we send it.
    pub receivers: Vec<ReceiverStats>,
}

/// One receiver's link, as the server's sending side sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReceiverStats {
    /// The participant.
    pub participant_id: String,
    /// Bandwidth estimate (from transport-wide feedback, `room::estimate`), kbit/s.
    pub estimate_kbps: u64,
    /// Video tier encoded for it, kbit/s (0 while its video is paused).
    pub tier_kbps: u32,
    /// Its video is paused for bandwidth.
    pub video_paused: bool,
    /// RTP sent to it over the last half second, kbit/s.
    pub sent_kbps: u32,
    /// Loss it reports on our streams (RTCP receiver reports), percent.
    pub loss_percent: f64,
    /// Round trip from its receiver reports, ms (0: not known yet).
    pub rtt_ms: u32,
    /// Video waiting in the pacer, ms at the pacing rate.
    pub video_queue_ms: u64,
    /// Queueing delay on the path (one-way delay above its lowest), ms.
    pub path_queue_ms: u32,
    /// Video packets the pacer dropped (queue overflow).
    pub pacer_dropped: u64,
    /// Retransmissions sent (answers to its NACKs, on the RTX stream).
    pub retransmissions: u64,
    /// Retransmissions not sent because they would have arrived too late.
    pub retransmissions_dropped: u64,
    /// What audio redundancy (RED, each packet repeating the one before) adds while it reports
    /// loss, kbit/s (0: plain Opus).
    pub audio_redundancy_kbps: u32,
    /// Rate of the bandwidth probe running now, kbit/s (0: none): the pacer pads what media
    /// leaves of it with copies of recent video on the RTX stream.
    pub probe_kbps: u32,
    /// Padding sent for probes since it joined, bytes.
    pub padding_bytes: u64,
}

/// Figures of a room's media thread since it started (it stops when the room empties).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MediaStats {
    /// 20 ms ticks run.
    pub ticks: u64,
    /// Mean work per tick, µs (the budget is 20 000).
    pub tick_mean_us: u64,
    /// Largest work of one tick, µs.
    pub tick_max_us: u64,
    /// Ticks that started more than a tick late.
    pub deadline_misses: u64,
    /// Live Opus encoders (one per distinct mix).
    pub audio_encoders: u64,
    /// Live VP8 encoders (one per layout and bitrate tier in use).
    pub video_encoders: u64,
    /// Quiet audio packets of inputs not speaking that were not decoded (the sender marked them
    /// with the RFC 6464 audio level), counted over the inputs present; updated each second.
    pub audio_quiet_skipped: u64,
    /// Tier frames held back because a receiver's send queue was full (encoder pushback);
    /// updated each second.
    pub video_frames_held: u64,
    /// Packets that carried two frames of the mix listeners share (a room of at least
    /// `MCU_AUDIO_PAIR_FROM` listeners), each counted once; updated each second.
    pub audio_frames_paired: u64,
}

/// Why a join is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    /// `max_participants` reached.
    #[error("room is full")]
    RoomFull,
    /// The room's media could not start (encoder initialisation failed).
    #[error("media unavailable: {0}")]
    Media(String),
}

struct Entry {
    info: Participant,
    key: u64,
    events: mpsc::Sender<SessionEvent>,
    /// Its outgoing link, once its peer exists.
    link: Option<Arc<LinkState>>,
}

#[derive(Default)]
struct LiveRoom {
    participants: Vec<Entry>,
    max_participants: u32,
    layout: Layout,
    empty_since: Option<Instant>,
    /// Running while anybody is connected or a recording runs; dropped (thread stops) otherwise.
    media: Option<MediaHandle>,
    /// Recording sinks attached to the media thread.
    sinks: Vec<u64>,
    /// Media keys of the screen sharers, oldest first: the last one is the presenter.
    sharers: Vec<u64>,
    /// Locked mutes by identity (audio, video), so that rejoining does not lift them; kept while
    /// the room is live.
    locks: HashMap<String, (bool, bool)>,
}

impl LiveRoom {
    /// Tells the media thread who presents now, if that changed.
    fn set_sharers(&mut self, sharers: Vec<u64>) {
        let before = self.sharers.last().copied();
        self.sharers = sharers;
        let after = self.sharers.last().copied();
        if before != after
            && let Some(m) = &self.media
        {
            m.command(Command::Presenter(after));
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Rooms with a participant or a recording sink; an entry goes when both are gone.
    rooms: HashMap<String, LiveRoom>,
    /// When rooms that had someone emptied, for the empty-timeout reaper (entries older than the
    /// longest timeout are forgotten: such a room is due, or has no timeout).
    emptied: HashMap<String, Instant>,
    /// Size of `emptied` at which the next sweep of old entries runs (amortized: a leave does
    /// not scan every emptied room under the manager's lock).
    sweep_at: usize,
}

/// The longest `empty_timeout_s` (a day): an emptied-at time older than this decides nothing.
const EMPTIED_MEMORY: std::time::Duration = std::time::Duration::from_secs(86_400);

impl Inner {
    /// After a failed start: drops the live entry a join or sink just made for `room` if nobody
    /// uses it, and puts back when the room had emptied.
    fn undo_unused_entry(&mut self, room: &str, emptied: Option<Instant>) {
        if self
            .rooms
            .get(room)
            .is_some_and(|l| l.participants.is_empty() && l.sinks.is_empty())
        {
            self.rooms.remove(room);
            if let Some(t) = emptied {
                self.emptied.insert(room.to_string(), t);
            }
        }
    }

    /// Forgets the live entry of `room` once nobody and no recording uses it, remembering when
    /// it emptied.
    fn forget_if_unused(&mut self, room: &str) {
        let Some(live) = self.rooms.get(room) else {
            return;
        };
        if !live.participants.is_empty() || !live.sinks.is_empty() {
            return;
        }
        let since = live.empty_since.unwrap_or_else(Instant::now);
        self.rooms.remove(room); // drops the media handle: the thread stops
        if self.emptied.len() >= self.sweep_at {
            self.emptied.retain(|_, t| t.elapsed() < EMPTIED_MEMORY);
            self.sweep_at = (2 * self.emptied.len()).max(64);
        }
        self.emptied.insert(room.to_string(), since);
    }
}

/// Shared handle to every live room of this process. Cheap to clone.
#[derive(Clone)]
pub struct RoomManager {
    inner: Arc<Mutex<Inner>>,
    next_key: Arc<AtomicU64>,
    settings: Arc<MediaSettings>,
    rt: tokio::runtime::Handle,
}

/// A joined participant. Dropping it removes the participant from the room (idempotent with
/// [`RoomManager::leave`]).
#[must_use = "dropping the handle removes the participant"]
pub struct ParticipantHandle {
    manager: RoomManager,
    /// Room name.
    pub room: String,
    /// Participant id.
    pub id: String,
    /// Media key inside the room's mixer.
    pub key: u64,
}

impl Drop for ParticipantHandle {
    fn drop(&mut self) {
        self.manager.leave(&self.room, &self.id);
    }
}

/// A message serialized once, shared by every session it is delivered to.
fn text(msg: &serde_json::Value) -> Arc<str> {
    msg.to_string().into()
}

fn deliver(events: &mpsc::Sender<SessionEvent>, ev: SessionEvent) {
    if let Err(e) = events.try_send(ev) {
        tracing::warn!(error = %e, "session queue full or closed; event dropped");
    }
}

/// The mixer configuration for a room.
pub fn media_config(s: &MediaSettings, layout: Layout) -> mixer::MediaConfig {
    mixer::MediaConfig {
        canvas_width: s.canvas_width,
        canvas_height: s.canvas_height,
        fps: s.fps,
        layout: layout.into(),
        video_tiers_kbps: s.video_tiers_kbps.clone(),
        default_tier_kbps: s.default_tier_kbps,
        opus_bitrate: s.opus_bitrate,
        opus_complexity: s.opus_complexity,
        jitter_target_frames: s.jitter_frames,
        max_tiles: s.max_tiles,
        pair_audio_from: s.audio_pair_from,
    }
}

impl RoomManager {
    /// An empty registry; room event tasks run on `rt`.
    pub fn new(settings: MediaSettings, rt: tokio::runtime::Handle) -> Self {
        RoomManager {
            inner: Arc::default(),
            next_key: Arc::default(),
            settings: Arc::new(settings),
            rt,
        }
    }

    fn start_media(&self, room: &str, layout: Layout) -> Result<MediaHandle, JoinError> {
        let (tx, mut rx) = mpsc::channel(media::EVENT_QUEUE);
        let handle = MediaHandle::start(room, media_config(&self.settings, layout), tx)
            .map_err(|e| JoinError::Media(e.to_string()))?;
        let (mgr, room) = (self.clone(), room.to_string());
        self.rt.spawn(async move {
            while let Some(ev) = rx.recv().await {
                mgr.on_media_event(&room, ev);
            }
        });
        Ok(handle)
    }

    fn on_media_event(&self, room: &str, ev: media::Event) {
        match ev {
            media::Event::ActiveSpeaker(key) => {
                let id = key.and_then(|k| self.id_of_key(room, k));
                if key.is_some() && id.is_none() {
                    return; // left meanwhile
                }
                let msg = serde_json::json!({"type": "active_speaker", "participant_id": id});
                self.broadcast(room, &msg, None);
            }
            media::Event::Speaking(key, speaking) => {
                if let Some(id) = self.id_of_key(room, key) {
                    self.update_participant(room, &id, |p| p.speaking = speaking);
                }
            }
            media::Event::VideoPaused(key, paused) => {
                let msg = if paused {
                    serde_json::json!({"type": "video_paused", "reason": "bandwidth"})
                } else {
                    serde_json::json!({"type": "video_resumed"})
                };
                self.send_to_key(room, key, msg, |id| {
                    tracing::info!(room, participant = id, paused, "video for bandwidth");
                });
            }
            media::Event::SendLimit(key, l) => {
                let msg = serde_json::json!({
                    "type": "video_constraints",
                    "active": l.active,
                    "max_width": l.max_width,
                    "max_height": l.max_height,
                    "max_kbps": l.max_kbps,
                });
                self.send_to_key(room, key, msg, |id| {
                    tracing::debug!(room, participant = id, limit = ?l, "video constraints");
                });
            }
        }
    }

    /// Sends `msg` to the session of the participant with media key `key`, if it is still here
    /// (`log` runs first, with its id).
    fn send_to_key(&self, room: &str, key: u64, msg: serde_json::Value, log: impl FnOnce(&str)) {
        let inner = self.inner.lock();
        if let Some(e) = inner
            .rooms
            .get(room)
            .and_then(|live| live.participants.iter().find(|e| e.key == key))
        {
            log(&e.info.id);
            deliver(&e.events, SessionEvent::Send(text(&msg)));
        }
    }

    /// Records a participant's outgoing link (for the per-receiver stats).
    pub fn set_link(&self, room: &str, id: &str, link: Arc<LinkState>) {
        let mut inner = self.inner.lock();
        if let Some(e) = inner
            .rooms
            .get_mut(room)
            .and_then(|live| live.participants.iter_mut().find(|e| e.info.id == id))
        {
            e.link = Some(link);
        }
    }

    fn id_of_key(&self, room: &str, key: u64) -> Option<String> {
        let inner = self.inner.lock();
        inner
            .rooms
            .get(room)?
            .participants
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.info.id.clone())
    }

    /// The room's media: packet sender and control, if the room is live.
    pub fn media(&self, room: &str) -> Option<(PacketSender, MediaHandleRef)> {
        let inner = self.inner.lock();
        let m = inner.rooms.get(room)?.media.as_ref()?;
        Some((m.packets(), m.control()))
    }

    /// Mean and max media tick work (µs) and deadline misses of a live room.
    pub fn timing(&self, room: &str) -> Option<(u64, u64, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = self.inner.lock();
        let t = &inner.rooms.get(room)?.media.as_ref()?.timing;
        let n = t.ticks.load(Relaxed);
        Some((
            n,
            t.work_us.load(Relaxed) / n.max(1),
            t.max_us.load(Relaxed),
            t.misses.load(Relaxed),
        ))
    }

    /// Live figures of a room (`GET /rooms/{name}/stats`); None when this process has no live
    /// state for it.
    pub fn stats(&self, room: &str) -> Option<LiveRoomStats> {
        use std::sync::atomic::Ordering::Relaxed;
        let inner = self.inner.lock();
        let live = inner.rooms.get(room)?;
        let media = live.media.as_ref().map(|m| {
            let t = &m.timing;
            let ticks = t.ticks.load(Relaxed);
            MediaStats {
                ticks,
                tick_mean_us: t.work_us.load(Relaxed) / ticks.max(1),
                tick_max_us: t.max_us.load(Relaxed),
                deadline_misses: t.misses.load(Relaxed),
                audio_encoders: t.audio_encoders.load(Relaxed),
                video_encoders: t.video_encoders.load(Relaxed),
                audio_quiet_skipped: t.audio_quiet_skipped.load(Relaxed),
                video_frames_held: t.video_frames_held.load(Relaxed),
                audio_frames_paired: t.audio_frames_paired.load(Relaxed),
            }
        });
        let receivers = receiver_stats(live);
        Some(LiveRoomStats {
            participants: live.participants.len() as u32,
            recording_sinks: live.sinks.len() as u32,
            layout: live.layout,
            media,
            receivers,
        })
    }

    /// Every connected participant's link figures, with its room (for `/metrics`).
    pub fn all_receivers(&self) -> Vec<(String, ReceiverStats)> {
        let inner = self.inner.lock();
        inner
            .rooms
            .iter()
            .flat_map(|(name, live)| {
                receiver_stats(live)
                    .into_iter()
                    .map(move |r| (name.clone(), r))
            })
            .collect()
    }

    /// Adds a participant to a live room (creating the live room if needed) and tells the others.
    pub fn join(
        &self,
        room: &str,
        max_participants: u32,
        layout: Layout,
        identity: &str,
        display_name: &str,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<(ParticipantHandle, Participant, Vec<Participant>), JoinError> {
        let mut inner = self.inner.lock();
        let emptied = inner.emptied.remove(room);
        let live = inner.rooms.entry(room.to_string()).or_default();
        live.max_participants = max_participants;
        live.layout = layout;
        if live.participants.len() as u32 >= max_participants {
            return Err(JoinError::RoomFull);
        }
        if live.media.is_none() {
            match self.start_media(room, layout) {
                Ok(m) => live.media = Some(m),
                Err(e) => {
                    inner.undo_unused_entry(room, emptied);
                    return Err(e);
                }
            }
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        // A moderator's locked mute holds across a rejoin of the same identity.
        let (audio_locked, video_locked) =
            live.locks.get(identity).copied().unwrap_or((false, false));
        let info = Participant {
            id: format!("PA_{}", uuid::Uuid::new_v4().simple()),
            identity: identity.to_string(),
            display_name: display_name.to_string(),
            joined_at: Utc::now(),
            audio_muted: audio_locked,
            video_muted: video_locked,
            speaking: false,
            screen_sharing: false,
            audio_locked,
            video_locked,
        };
        let others: Vec<Participant> = live.participants.iter().map(|e| e.info.clone()).collect();
        let joined = text(&serde_json::json!({"type": "participant_joined", "participant": info}));
        for e in &live.participants {
            deliver(&e.events, SessionEvent::Send(joined.clone()));
        }
        live.participants.push(Entry {
            info: info.clone(),
            key,
            events,
            link: None,
        });
        live.empty_since = None;
        tracing::info!(room, participant = %info.id, identity, "participant joined");
        Ok((
            ParticipantHandle {
                manager: self.clone(),
                room: room.to_string(),
                id: info.id.clone(),
                key,
            },
            info,
            others,
        ))
    }

    /// Removes a participant and tells the others. Idempotent.
    pub fn leave(&self, room: &str, id: &str) {
        let mut inner = self.inner.lock();
        let Some(live) = inner.rooms.get_mut(room) else {
            return;
        };
        let Some(pos) = live.participants.iter().position(|e| e.info.id == id) else {
            return;
        };
        let gone = live.participants.remove(pos);
        if let Some(m) = &live.media {
            m.command(Command::Remove(gone.key));
        }
        if gone.info.screen_sharing {
            let rest = live.sharers.iter().copied().filter(|k| *k != gone.key);
            live.set_sharers(rest.collect());
        }
        let left = text(&serde_json::json!({"type": "participant_left", "participant_id": id}));
        for e in &live.participants {
            deliver(&e.events, SessionEvent::Send(left.clone()));
        }
        if live.participants.is_empty() {
            live.empty_since = Some(Instant::now());
            // No one and no recording: the thread stops and the entry goes (an empty room
            // costs nothing, and the map holds only rooms in use).
            inner.forget_if_unused(room);
        }
        tracing::info!(room, participant = id, "participant left");
    }

    /// Attaches a recording sink to the room's media (starting the media thread if nobody is
    /// connected: an empty room records silence and a black canvas). Returns the sink's key.
    pub fn add_sink(
        &self,
        room: &str,
        layout: Layout,
        kbps: u32,
        out: std::sync::mpsc::SyncSender<media::SinkPacket>,
    ) -> Result<u64, JoinError> {
        let mut inner = self.inner.lock();
        let emptied = inner.emptied.remove(room);
        let live = inner.rooms.entry(room.to_string()).or_default();
        if live.media.is_none() {
            live.layout = layout;
            match self.start_media(room, layout) {
                Ok(m) => live.media = Some(m),
                Err(e) => {
                    inner.undo_unused_entry(room, emptied);
                    return Err(e);
                }
            }
        }
        let live = inner.rooms.entry(room.to_string()).or_default();
        if live.participants.is_empty() && live.empty_since.is_none() {
            live.empty_since = Some(emptied.unwrap_or_else(Instant::now));
        }
        let key = self.next_key.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(m) = &live.media {
            m.command(Command::AddSink { key, kbps, out });
        }
        live.sinks.push(key);
        Ok(key)
    }

    /// Detaches a recording sink (its writer then finishes); stops the media of an empty room.
    pub fn remove_sink(&self, room: &str, key: u64) {
        let mut inner = self.inner.lock();
        let Some(live) = inner.rooms.get_mut(room) else {
            return;
        };
        live.sinks.retain(|k| *k != key);
        if let Some(m) = &live.media {
            m.command(Command::RemoveSink(key));
        }
        inner.forget_if_unused(room);
    }

    /// The participants of a live room (empty when nobody is connected).
    pub fn participants(&self, room: &str) -> Vec<Participant> {
        let inner = self.inner.lock();
        inner
            .rooms
            .get(room)
            .map(|l| l.participants.iter().map(|e| e.info.clone()).collect())
            .unwrap_or_default()
    }

    /// One participant of a live room.
    pub fn participant(&self, room: &str, id: &str) -> Option<Participant> {
        let inner = self.inner.lock();
        inner
            .rooms
            .get(room)?
            .participants
            .iter()
            .find(|e| e.info.id == id)
            .map(|e| e.info.clone())
    }

    /// How many are connected to `room`.
    pub fn active_count(&self, room: &str) -> usize {
        self.inner
            .lock()
            .rooms
            .get(room)
            .map_or(0, |l| l.participants.len())
    }

    /// Whether the room is in use, for the empty-timeout reaper.
    pub fn activity(&self, room: &str) -> RoomActivity {
        let inner = self.inner.lock();
        match inner.rooms.get(room) {
            None => inner
                .emptied
                .get(room)
                .map_or(RoomActivity::Unknown, |t| RoomActivity::EmptySince(*t)),
            Some(l) if !l.participants.is_empty() => RoomActivity::Live(l.participants.len()),
            Some(l) => RoomActivity::EmptySince(l.empty_since.unwrap_or_else(Instant::now)),
        }
    }

    /// Disconnects a participant with `closed: kicked`. False if not connected.
    pub fn kick(&self, room: &str, id: &str) -> bool {
        let inner = self.inner.lock();
        let Some(e) = inner
            .rooms
            .get(room)
            .and_then(|l| l.participants.iter().find(|e| e.info.id == id))
        else {
            return false;
        };
        tracing::info!(room, participant = id, "participant kicked");
        deliver(&e.events, SessionEvent::Close(CloseReason::Kicked, None));
        true
    }

    /// A moderator's mute (REST or an `is_admin` participant): sets the flags given (None =
    /// unchanged), tells everyone, returns the updated participant. `lock: Some(true)` locks the
    /// kinds it mutes (the participant cannot unmute them), `Some(false)` lifts the lock of the
    /// kinds given (or of both when none is given); absent keeps a lock in place. Unmuting always
    /// lifts the lock.
    pub fn moderate_mute(
        &self,
        room: &str,
        id: &str,
        audio: Option<bool>,
        video: Option<bool>,
        lock: Option<bool>,
    ) -> Option<Participant> {
        let after = self.update_participant(room, id, |p| {
            let both = audio.is_none() && video.is_none();
            let apply = |muted: &mut bool, locked: &mut bool, want: Option<bool>| {
                if let Some(m) = want {
                    *muted = m;
                }
                match lock {
                    Some(l) if want.is_some() || both => *locked = l && *muted,
                    _ => *locked &= *muted,
                }
            };
            apply(&mut p.audio_muted, &mut p.audio_locked, audio);
            apply(&mut p.video_muted, &mut p.video_locked, video);
        })?;
        let mut inner = self.inner.lock();
        if let Some(live) = inner.rooms.get_mut(room) {
            if after.audio_locked || after.video_locked {
                let locks = (after.audio_locked, after.video_locked);
                live.locks.insert(after.identity.clone(), locks);
            } else {
                live.locks.remove(&after.identity);
            }
        }
        Some(after)
    }

    /// The ids of the participants of `room` who joined as `identity` (one person may have
    /// several sessions: tabs, devices).
    pub fn sessions_of(&self, room: &str, identity: &str) -> Vec<String> {
        let inner = self.inner.lock();
        inner.rooms.get(room).map_or_else(Vec::new, |l| {
            l.participants
                .iter()
                .filter(|e| e.info.identity == identity)
                .map(|e| e.info.id.clone())
                .collect()
        })
    }

    /// The participant's own mute (None = unchanged). A kind a moderator locked cannot be
    /// unmuted: it stays muted and is named in the error; the other kind is applied.
    pub fn self_mute(
        &self,
        room: &str,
        id: &str,
        audio: Option<bool>,
        video: Option<bool>,
    ) -> Result<Option<Participant>, Vec<&'static str>> {
        let mut refused = Vec::new();
        let after = self.update_participant(room, id, |p| {
            if let Some(a) = audio {
                if !a && p.audio_locked {
                    refused.push("audio");
                } else {
                    p.audio_muted = a;
                }
            }
            if let Some(v) = video {
                if !v && p.video_locked {
                    refused.push("video");
                } else {
                    p.video_muted = v;
                }
            }
        });
        if refused.is_empty() {
            Ok(after)
        } else {
            Err(refused)
        }
    }

    /// Marks a participant as sharing their screen (or not), tells everyone, and makes the latest
    /// sharer the presenter of the room's composite. Returns the updated participant.
    pub fn set_screen_sharing(&self, room: &str, id: &str, active: bool) -> Option<Participant> {
        let mut inner = self.inner.lock();
        let live = inner.rooms.get_mut(room)?;
        let entry = live.participants.iter_mut().find(|e| e.info.id == id)?;
        let key = entry.key;
        let changed = entry.info.screen_sharing != active;
        entry.info.screen_sharing = active;
        let after = entry.info.clone();
        if changed {
            let mut sharers: Vec<u64> =
                live.sharers.iter().copied().filter(|k| *k != key).collect();
            if active {
                sharers.push(key);
            }
            live.set_sharers(sharers);
            let msg =
                text(&serde_json::json!({"type": "participant_updated", "participant": after}));
            for e in &live.participants {
                deliver(&e.events, SessionEvent::Send(msg.clone()));
            }
        }
        Some(after)
    }

    /// Applies `f` to a participant; if anything changed, broadcasts `participant_updated`.
    pub fn update_participant(
        &self,
        room: &str,
        id: &str,
        f: impl FnOnce(&mut Participant),
    ) -> Option<Participant> {
        let mut inner = self.inner.lock();
        let live = inner.rooms.get_mut(room)?;
        let entry = live.participants.iter_mut().find(|e| e.info.id == id)?;
        let before = entry.info.clone();
        f(&mut entry.info);
        let after = entry.info.clone();
        if (after.audio_muted, after.video_muted) != (before.audio_muted, before.video_muted)
            && let Some(m) = &live.media
        {
            m.command(Command::Mute {
                key: entry.key,
                audio: after.audio_muted,
                video: after.video_muted,
            });
        }
        if after != before {
            let msg =
                text(&serde_json::json!({"type": "participant_updated", "participant": after}));
            for e in &live.participants {
                deliver(&e.events, SessionEvent::Send(msg.clone()));
            }
        }
        Some(after)
    }

    /// Sends a message to everyone in the room (`except` one participant id).
    pub fn broadcast(&self, room: &str, msg: &serde_json::Value, except: Option<&str>) {
        let msg = text(msg);
        let inner = self.inner.lock();
        if let Some(live) = inner.rooms.get(room) {
            for e in live
                .participants
                .iter()
                .filter(|e| Some(e.info.id.as_str()) != except)
            {
                deliver(&e.events, SessionEvent::Send(msg.clone()));
            }
        }
    }

    /// Disconnects everyone with `closed: reason` and forgets the live room.
    pub fn close_room(&self, room: &str, reason: CloseReason) {
        self.close_room_to(room, reason, None);
    }

    /// Closes a live room, telling its participants where it moved (`ws_url`), if anywhere.
    pub fn close_room_to(&self, room: &str, reason: CloseReason, ws_url: Option<&str>) {
        let mut inner = self.inner.lock();
        inner.emptied.remove(room);
        if let Some(live) = inner.rooms.remove(room) {
            tracing::info!(
                room,
                ?reason,
                n = live.participants.len(),
                moved_to = ws_url,
                "closing room"
            );
            let to: Option<Arc<str>> = ws_url.map(Arc::from);
            for e in &live.participants {
                deliver(&e.events, SessionEvent::Close(reason, to.clone()));
            }
        }
    }

    /// The rooms live here (someone or a recording in them).
    pub fn live_rooms(&self) -> Vec<String> {
        self.inner.lock().rooms.keys().cloned().collect()
    }

    /// Disconnects everyone everywhere (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for n in self.live_rooms() {
            self.close_room(&n, reason);
        }
    }

    /// Applies changed room settings to a live room (layout, capacity).
    pub fn update_settings(&self, room: &str, max_participants: u32, layout: Layout) {
        let mut inner = self.inner.lock();
        if let Some(live) = inner.rooms.get_mut(room) {
            live.max_participants = max_participants;
            if live.layout != layout {
                live.layout = layout;
                if let Some(m) = &live.media {
                    m.command(Command::Layout(layout.into()));
                }
            }
        }
    }

    /// Entries the manager holds: live rooms (someone or a recording in them), and emptied-at
    /// times kept for the reaper. Both stay flat under churn (`mcu_live_room_entries`).
    pub fn entries(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.rooms.len(), inner.emptied.len())
    }

    /// Number of live rooms with at least one participant, and of participants.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        let live = inner.rooms.values().filter(|l| !l.participants.is_empty());
        let (mut rooms, mut people) = (0, 0);
        for l in live {
            rooms += 1;
            people += l.participants.len();
        }
        (rooms, people)
    }

    /// The media key of a participant.
    pub fn key_of(&self, room: &str, id: &str) -> Option<u64> {
        let inner = self.inner.lock();
        inner
            .rooms
            .get(room)?
            .participants
            .iter()
            .find(|e| e.info.id == id)
            .map(|e| e.key)
    }
}

/// Link figures of a live room's participants that have a peer.
fn receiver_stats(live: &LiveRoom) -> Vec<ReceiverStats> {
    use std::sync::atomic::Ordering::Relaxed;
    live.participants
        .iter()
        .filter_map(|e| {
            let l = e.link.as_ref()?;
            Some(ReceiverStats {
                participant_id: e.info.id.clone(),
                estimate_kbps: l.estimate_bps.load(Relaxed) / 1000,
                tier_kbps: l.tier_kbps.load(Relaxed),
                video_paused: l.video_paused.load(Relaxed),
                sent_kbps: l.sent_kbps.load(Relaxed),
                loss_percent: (l.loss_percent() * 10.0).round() / 10.0,
                rtt_ms: l.rtt_ms.load(Relaxed),
                video_queue_ms: l.video_queue_ms(),
                path_queue_ms: l.queue_delay_ms.load(Relaxed),
                pacer_dropped: l.dropped_video.load(Relaxed),
                retransmissions: l.retransmissions.load(Relaxed),
                retransmissions_dropped: l.dropped_rtx.load(Relaxed),
                audio_redundancy_kbps: (l.audio_redundancy_bps.load(Relaxed) / 1000) as u32,
                probe_kbps: (l.probe_rate_bps.load(Relaxed) / 1000) as u32,
                padding_bytes: l.padding_bytes.load(Relaxed),
            })
        })
        .collect()
}
