//! `GET /api/v1/rooms/{name}/stats`: live figures of one room for operators (admin key). The
//! process-wide figures are in `/metrics`; these are per room and need no scraper.

use crate::AppState;
use crate::api::rest::{self, existing_room};
use crate::auth::AdminAuth;
use crate::error::{ApiError, ErrorBody};
use crate::model::Layout;
use crate::room::manager::{MediaStats, ReceiverStats};
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Routes of this module (inside the `/api/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/rooms/{name}/stats")
            .route(web::get().to(room_stats))
            .default_service(rest::method_not_allowed("GET")),
    );
}

/// Live figures of a room on this server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RoomStats {
    /// Room name.
    #[schema(example = "standup")]
    pub room: String,
    /// True while the room's media thread runs (someone is connected or a recording runs).
    pub live: bool,
    /// Participants connected right now.
    pub participants: u32,
    /// The running recording, or null.
    pub recording_id: Option<Uuid>,
    /// The layout in force (the stored one when the room is not live).
    pub layout: Layout,
    /// The media thread's figures since it started, or null when it is not running.
    pub media: Option<MediaStats>,
    /// Per connected participant: its bandwidth estimate, the video tier it gets (or paused),
    /// what we send it, the loss and round trip it reports.
    pub receivers: Vec<ReceiverStats>,
}

/// Live figures of a room: participants, media tick timing, deadline misses, encoders.
#[utoipa::path(
    get, path = "/api/v1/rooms/{name}/stats", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "Live figures of the room", body = RoomStats,
         example = json!({"room": "standup", "live": true, "participants": 3, "recording_id": null,
             "layout": "grid", "media": {"ticks": 1500, "tick_mean_us": 2530, "tick_max_us": 9800,
             "deadline_misses": 0, "audio_encoders": 2, "video_encoders": 1,
             "audio_quiet_skipped": 4210, "video_frames_held": 3,
             "audio_frames_paired": 0},
             "receivers": [{"participant_id": "PA_2fJ3kQ", "estimate_kbps": 280, "tier_kbps": 150,
                 "video_paused": false, "sent_kbps": 205, "loss_percent": 2.0, "rtt_ms": 48,
                 "video_queue_ms": 12, "path_queue_ms": 20, "pacer_dropped": 0, "retransmissions": 31,
                 "retransmissions_dropped": 2, "audio_redundancy_kbps": 34,
                 "probe_kbps": 0, "padding_bytes": 48210}]})),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn room_stats(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = existing_room(&state, &path).await?;
    let live = state.rooms.stats(&room.name);
    let media = live.as_ref().and_then(|l| l.media.clone());
    let receivers = live.as_ref().map_or_else(Vec::new, |l| l.receivers.clone());
    Ok(HttpResponse::Ok().json(RoomStats {
        receivers,
        live: media.is_some(),
        participants: live.as_ref().map_or(0, |l| l.participants),
        recording_id: state.recordings.active_in(&room.name),
        layout: live.as_ref().map_or(room.layout, |l| l.layout),
        media,
        room: room.name,
    }))
}
