//! The empty-room reaper: every [`REAP_INTERVAL`] it deletes rooms with `empty_timeout_s > 0`
//! that have been empty at least that long, disconnecting nobody (they are empty) but closing the
//! live room with `room_deleted` in case someone slipped in.
//!
//! "Empty since" is what the [`RoomManager`](crate::room::RoomManager) saw last. For a room this
//! process never saw live, it is the later of its last settings change and the process start, so
//! a restart gives every room a full timeout to be rejoined.

use crate::AppState;
use crate::model::CloseReason;
use crate::room::RoomActivity;
use crate::store::{RoomRecord, StoreError};
use chrono::{DateTime, Utc};
use std::time::{Duration, Instant};

/// How often the reaper looks for expired rooms.
pub const REAP_INTERVAL: Duration = Duration::from_secs(2);

/// Starts the reaper on the current tokio runtime (the actix System in `main` and in tests).
pub fn spawn(state: actix_web::web::Data<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match reap_once(&state).await {
                Ok(_) => failing = false,
                // One warning per outage, not one every two seconds.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "empty-room reaper cannot read the rooms");
                }
                Err(_) => {}
            }
        }
    });
}

/// How long `room` has been empty, or `None` if someone is connected.
pub fn empty_for(
    room: &RoomRecord,
    activity: RoomActivity,
    now: Instant,
    now_utc: DateTime<Utc>,
    uptime: Duration,
) -> Option<Duration> {
    match activity {
        RoomActivity::Live(_) => None,
        RoomActivity::EmptySince(t) => Some(now.saturating_duration_since(t)),
        RoomActivity::Unknown => {
            let since_update = (now_utc - room.updated_at)
                .to_std()
                .unwrap_or(Duration::ZERO);
            Some(since_update.min(uptime))
        }
    }
}

/// Whether `room` has stayed empty for its whole timeout.
pub fn expired(room: &RoomRecord, empty_for: Option<Duration>) -> bool {
    room.empty_timeout_s > 0
        && empty_for.is_some_and(|d| d >= Duration::from_secs(u64::from(room.empty_timeout_s)))
}

/// One pass: deletes the expired rooms, returns their names.
pub async fn reap_once(state: &AppState) -> Result<Vec<String>, StoreError> {
    let rooms = state.store.rooms_with_empty_timeout().await?;
    // A room another live node hosts is that node's to reap (it knows whether anyone is in).
    let nodes = state.cluster.nodes(&state.store).await?;
    let me = &state.cluster.node_id;
    let hosted_elsewhere = |r: &RoomRecord| {
        r.node_id
            .as_ref()
            .is_some_and(|n| n != me && nodes.iter().any(|x| &x.id == n && x.status != "dead"))
    };
    let mut deleted = Vec::new();
    for room in rooms {
        if hosted_elsewhere(&room) {
            continue;
        }
        let activity = state.rooms.activity(&room.name);
        let empty = empty_for(
            &room,
            activity,
            Instant::now(),
            Utc::now(),
            state.started.elapsed(),
        );
        if !expired(&room, empty) {
            continue;
        }
        // Like `DELETE /rooms/{name}`: the running recording is finalized first.
        state.recordings.stop_room(&room.name).await;
        if state.store.delete_room(&room.name).await? {
            state.rooms.close_room(&room.name, CloseReason::RoomDeleted);
            tracing::info!(
                room = %room.name,
                empty_timeout_s = room.empty_timeout_s,
                empty_for_s = empty.map_or(0, |d| d.as_secs()),
                "deleted room that stayed empty past its timeout"
            );
            deleted.push(room.name);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoomDefaults;
    use crate::store::NewRoom;

    fn room(timeout: u32, updated_ago_s: i64) -> RoomRecord {
        let now = Utc::now();
        let new = NewRoom::with_defaults("r", &RoomDefaults::default());
        RoomRecord {
            id: uuid::Uuid::new_v4(),
            name: new.name,
            max_participants: new.max_participants,
            layout: new.layout,
            auto_record: false,
            empty_timeout_s: timeout,
            metadata: None,
            created_at: now - chrono::Duration::seconds(updated_ago_s),
            updated_at: now - chrono::Duration::seconds(updated_ago_s),
            recording_id: None,
            node_id: None,
        }
    }

    #[test]
    fn expiry_table() {
        let now = Instant::now();
        let utc = Utc::now();
        let long = Duration::from_secs(3600);
        let ago = |s| now.checked_sub(Duration::from_secs(s)).unwrap_or(now);
        // (timeout, updated ago, activity, uptime, expected)
        let cases = [
            (10, 100, RoomActivity::Live(2), long, false),
            (10, 100, RoomActivity::EmptySince(ago(11)), long, true),
            (10, 100, RoomActivity::EmptySince(ago(5)), long, false),
            (10, 100, RoomActivity::Unknown, long, true),
            (10, 5, RoomActivity::Unknown, long, false),
            // Restarted 3 s ago: the room gets its full timeout from the start.
            (
                10,
                100,
                RoomActivity::Unknown,
                Duration::from_secs(3),
                false,
            ),
            // 0 = never.
            (0, 100_000, RoomActivity::Unknown, long, false),
            (0, 100_000, RoomActivity::EmptySince(ago(1000)), long, false),
        ];
        for (i, (timeout, updated, activity, uptime, want)) in cases.into_iter().enumerate() {
            let r = room(timeout, updated);
            let d = empty_for(&r, activity, now, utc, uptime);
            assert_eq!(expired(&r, d), want, "case {i}");
        }
    }
}
