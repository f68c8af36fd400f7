//! Moderation, the same from the REST API (API key) and from a participant whose join token says
//! `is_admin` (WebSocket `kick_participant` / `mute_participant`).
//!
//! A kick bans the identity from the room for a while (stored with the room's id, so it survives
//! a restart and dies with the room); the ban is written before the participant is disconnected,
//! so a client that reconnects at once meets it.

use crate::AppState;
use crate::config::KICK_BAN_MAX_S;
use crate::error::ApiError;
use crate::model::Participant;
use crate::store::RoomRecord;
use chrono::{DateTime, Utc};

/// Parses a kick's `ban_s` (absent or empty: the configured `rooms.kick_ban_s`).
pub fn ban_seconds(state: &AppState, raw: Option<i64>) -> Result<u32, ApiError> {
    match raw {
        None => Ok(state.config.rooms.kick_ban_s),
        Some(v) if (0..=i64::from(KICK_BAN_MAX_S)).contains(&v) => Ok(v as u32),
        Some(v) => Err(ApiError::InvalidRequest(format!(
            "ban_s must be between 0 and {KICK_BAN_MAX_S}, got {v}"
        ))),
    }
}

/// Disconnects participant `id` of `room` with `closed: kicked` and keeps its identity out for
/// `ban_s` seconds (0: none). Returns when the ban ends, if there is one.
pub async fn kick(
    state: &AppState,
    room: &RoomRecord,
    id: &str,
    ban_s: u32,
    by: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let who = state
        .rooms
        .participant(&room.name, id)
        .ok_or_else(|| ApiError::ParticipantNotFound(id.to_string()))?;
    let until = if ban_s > 0 {
        let until = Utc::now() + chrono::Duration::seconds(i64::from(ban_s));
        state.store.ban(room.id, &who.identity, until).await?;
        Some(until)
    } else {
        None
    };
    if !state.rooms.kick(&room.name, id) {
        // Left between the look-up and the kick: the ban stands, nobody to disconnect.
        return Err(ApiError::ParticipantNotFound(id.to_string()));
    }
    // The ban is the identity's: its other sessions (another tab, another device) go too.
    if ban_s > 0 {
        for other in state.rooms.sessions_of(&room.name, &who.identity) {
            state.rooms.kick(&room.name, &other);
        }
    }
    tracing::info!(room = %room.name, participant = id, identity = %who.identity, ban_s, by,
        "participant kicked");
    Ok(until)
}

/// A moderator's mute of participant `id` (see [`crate::room::RoomManager::moderate_mute`]).
pub fn mute(
    state: &AppState,
    room: &str,
    id: &str,
    audio: Option<bool>,
    video: Option<bool>,
    lock: Option<bool>,
    by: &str,
) -> Result<Participant, ApiError> {
    let p = state
        .rooms
        .moderate_mute(room, id, audio, video, lock)
        .ok_or_else(|| ApiError::ParticipantNotFound(id.to_string()))?;
    tracing::info!(
        room,
        participant = id,
        ?audio,
        ?video,
        ?lock,
        by,
        "participant muted by a moderator"
    );
    Ok(p)
}
