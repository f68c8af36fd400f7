//! Admin REST handlers under `/api/v1`: rooms, join tokens, participants (recordings are in
//! [`recordings`](super::recordings)).
//!
//! Every handler takes [`AdminAuth`] first, so a call without the API key is answered 401 before
//! its body is read. Rooms live in the store; who is connected comes from the live
//! [`RoomManager`](crate::room::RoomManager). Bodies are decoded by [`ApiJson`] (field-named
//! errors, 64 KiB cap) and validated here; every failure is an [`ApiError`].

use crate::AppState;
use crate::api::body::{ApiJson, configure_extractors};
use crate::auth::{AdminAuth, JoinClaims};
use crate::cluster::Host;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::model::{CloseReason, Layout, Participant};
use crate::store::{NewRoom, RoomPatch, RoomRecord, valid_room_name};
use actix_web::{HttpRequest, HttpResponse, http::header, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Largest `metadata`, bytes.
pub const METADATA_MAX: usize = 4096;
/// Largest `empty_timeout_s` (a day).
pub const EMPTY_TIMEOUT_MAX: i64 = 86_400;
/// Longest join-token lifetime (a day).
pub const TOKEN_TTL_MAX: i64 = 86_400;
/// Longest identity / display name, characters.
pub const IDENTITY_MAX: usize = 128;
/// Default page size of `GET /rooms` and `GET /recordings`.
pub const PAGE_DEFAULT: u32 = 50;
/// Largest page size of `GET /rooms` and `GET /recordings`.
pub const PAGE_MAX: u32 = 100;

/// Routes of this module (inside the `/api/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_extractors(cfg);
    cfg.service(
        web::resource("/rooms")
            .route(web::post().to(create_room))
            .route(web::get().to(list_rooms))
            .default_service(method_not_allowed("GET, POST")),
    )
    .service(
        web::resource("/rooms/{name}")
            .route(web::get().to(get_room))
            .route(web::patch().to(update_room))
            .route(web::delete().to(delete_room))
            .default_service(method_not_allowed("GET, PATCH, DELETE")),
    )
    .service(
        web::resource("/rooms/{name}/tokens")
            .route(web::post().to(create_token))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/rooms/{name}/participants")
            .route(web::get().to(list_participants))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/rooms/{name}/participants/{id}")
            .route(web::delete().to(kick_participant))
            .default_service(method_not_allowed("DELETE")),
    )
    .service(
        web::resource("/rooms/{name}/participants/{id}/mute")
            .route(web::post().to(mute_participant))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/nodes")
            .route(web::get().to(list_nodes))
            .default_service(method_not_allowed("GET")),
    )
    .default_service(web::to(not_found));
}

/// The fallback of a resource: 405 with `Allow` and the API error body.
pub(crate) fn method_not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move |req: HttpRequest| async move {
        HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, allow))
            .json(ErrorBody {
                error: ErrorDetail {
                    code: "method_not_allowed".into(),
                    message: format!("{} is not allowed here; use {allow}", req.method()),
                },
            })
    })
}

/// Unknown path under `/api/v1`.
async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

// ----- shapes ---------------------------------------------------------------------------------

/// A room: stored settings plus live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Room {
    /// Stable id.
    pub id: Uuid,
    /// Unique name, `[A-Za-z0-9_-]{1,64}`.
    #[schema(example = "standup")]
    pub name: String,
    /// Capacity.
    pub max_participants: u32,
    /// Composite layout.
    pub layout: Layout,
    /// Recording starts when the first participant joins.
    pub auto_record: bool,
    /// The room is deleted after being empty this many seconds; 0 = never.
    pub empty_timeout_s: u32,
    /// Free-form application data (null when unset).
    pub metadata: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last settings change.
    pub updated_at: DateTime<Utc>,
    /// Participants connected right now.
    pub active_participants: u32,
    /// The running recording, or null.
    pub recording_id: Option<Uuid>,
    /// The node hosting the room (see `GET /nodes`), or null while it is not placed.
    #[serde(default)]
    pub node_id: Option<String>,
}

/// Body of `POST /rooms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// Unique name.
    #[schema(
        pattern = "^[A-Za-z0-9_-]{1,64}$",
        min_length = 1,
        max_length = 64,
        example = "standup"
    )]
    pub name: String,
    /// Capacity; default from the configuration (`rooms.max_participants`), at most
    /// `rooms.max_participants_limit`.
    #[schema(minimum = 1)]
    pub max_participants: Option<i64>,
    /// Composite layout; default `grid`.
    pub layout: Option<Layout>,
    /// Start recording when the first participant joins; default false.
    pub auto_record: Option<bool>,
    /// Delete the room after it has been empty this many seconds; 0 = never; default from the
    /// configuration.
    #[schema(minimum = 0, maximum = 86400)]
    pub empty_timeout_s: Option<i64>,
    /// Free-form application data, at most 4096 bytes.
    #[schema(max_length = 4096)]
    pub metadata: Option<String>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Body of `PATCH /rooms/{name}`: any creatable field but `name`; absent fields are unchanged,
/// `metadata: null` clears the metadata.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomRequest {
    /// New capacity (affects later joins; nobody is disconnected).
    #[schema(minimum = 1)]
    pub max_participants: Option<i64>,
    /// New layout, applied to the live composite.
    pub layout: Option<Layout>,
    /// New auto-record flag.
    pub auto_record: Option<bool>,
    /// New empty timeout, seconds; 0 = never.
    #[schema(minimum = 0, maximum = 86400)]
    pub empty_timeout_s: Option<i64>,
    /// New metadata; null clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 4096)]
    pub metadata: Option<Option<String>>,
}

/// `?limit&cursor` of `GET /rooms`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRoomsQuery {
    /// Page size, 1..=100 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page; absent or empty for the first page.
    pub cursor: Option<String>,
}

/// One page of rooms.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomList {
    /// Rooms, oldest first (creation time, then id).
    pub rooms: Vec<Room>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Body of `POST /rooms/{name}/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// Participant identity, 1..=128 characters.
    #[schema(min_length = 1, max_length = 128, example = "alice")]
    pub identity: String,
    /// Display name, at most 128 characters; defaults to the identity.
    #[schema(max_length = 128)]
    pub display_name: Option<String>,
    /// Lifetime in seconds, 1..=86400; default from the configuration (`rooms.token_ttl_s`).
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_s: Option<i64>,
    /// May send audio/video; default true.
    pub can_publish: Option<bool>,
    /// May receive the mixes; default true.
    pub can_subscribe: Option<bool>,
    /// May moderate the room (kick, mute); default false.
    pub is_admin: Option<bool>,
}

/// A minted join token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT (HS256).
    pub token: String,
    /// WebSocket URL to join with, token included.
    #[schema(example = "wss://mcu.example.com/api/v1/ws?token=eyJ...")]
    pub ws_url: String,
    /// When the token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// Participants of a room.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ParticipantList {
    /// Connected participants, in joining order.
    pub participants: Vec<Participant>,
}

/// Body of `POST /rooms/{name}/participants/{id}/mute`; absent = unchanged.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    /// Mute (true) or unmute (false) the microphone.
    pub audio: Option<bool>,
    /// Mute (true) or unmute (false) the camera.
    pub video: Option<bool>,
    /// true: the kinds muted here stay muted until a moderator unmutes them or lifts the lock
    /// (the participant's own `mute` cannot undo it); false: lifts the lock of the kinds given
    /// (of both when none is given), the mute stays; absent: a lock in place stays.
    pub lock: Option<bool>,
}

/// `?ban_s` of `DELETE /rooms/{name}/participants/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KickQuery {
    /// Seconds the kicked identity may not rejoin the room, 0..=2592000; default
    /// `rooms.kick_ban_s` (300). 0 lets it rejoin at once.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 2592000)]
    pub ban_s: Option<String>,
}

// ----- validation -----------------------------------------------------------------------------

fn in_range(field: &str, v: i64, min: i64, max: i64) -> Result<u32, ApiError> {
    if (min..=max).contains(&v) {
        u32::try_from(v).map_err(|_| ApiError::InvalidRequest(format!("{field} out of range")))
    } else {
        Err(ApiError::InvalidRequest(format!(
            "{field} must be between {min} and {max}, got {v}"
        )))
    }
}

/// The `limit` query parameter of a list: [`PAGE_DEFAULT`] when absent or empty, else
/// 1..=[`PAGE_MAX`].
pub(crate) fn page_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(PAGE_DEFAULT),
        Some(s) => {
            let v: i64 = s.parse().map_err(|_| {
                ApiError::InvalidRequest(format!("limit must be an integer, got '{s}'"))
            })?;
            in_range("limit", v, 1, i64::from(PAGE_MAX))
        }
    }
}

fn check_metadata(m: &str) -> Result<(), ApiError> {
    if m.len() > METADATA_MAX {
        return Err(ApiError::InvalidRequest(format!(
            "metadata must be at most {METADATA_MAX} bytes, got {}",
            m.len()
        )));
    }
    // PostgreSQL text cannot hold NUL; refuse it on every backend alike.
    if m.contains('\0') {
        return Err(ApiError::InvalidRequest(
            "metadata must not contain NUL characters".into(),
        ));
    }
    Ok(())
}

fn check_max_participants(state: &AppState, v: i64) -> Result<u32, ApiError> {
    let limit = i64::from(state.config.rooms.max_participants_limit);
    in_range("max_participants", v, 1, limit)
}

fn room_json(state: &AppState, r: RoomRecord) -> Room {
    let active = state.rooms.active_count(&r.name);
    Room {
        id: r.id,
        active_participants: u32::try_from(active).unwrap_or(u32::MAX),
        name: r.name,
        max_participants: r.max_participants,
        layout: r.layout,
        auto_record: r.auto_record,
        empty_timeout_s: r.empty_timeout_s,
        metadata: r.metadata,
        created_at: r.created_at,
        updated_at: r.updated_at,
        recording_id: r.recording_id,
        node_id: r.node_id,
    }
}

pub(crate) async fn existing_room(state: &AppState, name: &str) -> Result<RoomRecord, ApiError> {
    // A name no room can have is not looked up (PostgreSQL would refuse e.g. a NUL in it).
    if !valid_room_name(name) {
        return Err(ApiError::RoomNotFound(name.to_string()));
    }
    state
        .store
        .get_room(name)
        .await?
        .ok_or_else(|| ApiError::RoomNotFound(name.to_string()))
}

/// A node's base URL with http(s) turned into ws(s).
pub(crate) fn ws_of(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("https://") {
        return format!("wss://{rest}");
    }
    if let Some(rest) = url.strip_prefix("http://") {
        return format!("ws://{rest}");
    }
    url.to_string()
}

/// Base of the signaling URL: `public_url` with http(s) turned into ws(s), or the request's own
/// scheme and host.
fn ws_base(public_url: Option<&str>, req: &HttpRequest) -> String {
    if let Some(url) = public_url.map(str::trim).filter(|u| !u.is_empty()) {
        return ws_of(url);
    }
    let info = req.connection_info();
    let scheme = if info.scheme().eq_ignore_ascii_case("https") {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{}", info.host())
}

// ----- handlers -------------------------------------------------------------------------------

/// Create a room.
#[utoipa::path(
    post, path = "/api/v1/rooms", tag = "rooms",
    request_body(content = CreateRoomRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Room created", body = Room,
         headers(("Location" = String, description = "URL of the new room"))),
        (status = 400, description = "`invalid_request`: malformed JSON, wrong content type, unknown or invalid field (the message names it)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 409, description = "`room_exists`: a room with this name exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_room(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    body: ApiJson<CreateRoomRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.0;
    if !valid_room_name(&b.name) {
        return Err(ApiError::InvalidRequest(
            "name must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        ));
    }
    let defaults = &state.config.rooms;
    let mut new = NewRoom::with_defaults(&b.name, defaults);
    if let Some(v) = b.max_participants {
        new.max_participants = check_max_participants(&state, v)?;
    }
    if let Some(l) = b.layout {
        new.layout = l;
    }
    if let Some(a) = b.auto_record {
        new.auto_record = a;
    }
    if let Some(v) = b.empty_timeout_s {
        new.empty_timeout_s = in_range("empty_timeout_s", v, 0, EMPTY_TIMEOUT_MAX)?;
    }
    if let Some(m) = &b.metadata {
        check_metadata(m)?;
    }
    new.metadata = b.metadata;
    let rec = state.store.create_room(&new).await?;
    tracing::info!(
        room = %rec.name, id = %rec.id, max_participants = rec.max_participants,
        layout = rec.layout.as_str(), empty_timeout_s = rec.empty_timeout_s, "room created"
    );
    let location = format!("/api/v1/rooms/{}", rec.name);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(room_json(&state, rec)))
}

/// List rooms, oldest first, with cursor pagination.
#[utoipa::path(
    get, path = "/api/v1/rooms", tag = "rooms",
    params(ListRoomsQuery),
    responses(
        (status = 200, description = "One page of rooms", body = RoomList),
        (status = 400, description = "`invalid_request`: bad `limit` or `cursor`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_rooms(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListRoomsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = page_limit(q.limit.as_deref())?;
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let page = state.store.list_rooms(limit, cursor).await?;
    let mut rooms: Vec<Room> = page
        .rooms
        .into_iter()
        .map(|r| room_json(&state, r))
        .collect();
    // Asked by another node for this node's counts: answered with them alone.
    if !req.headers().contains_key(super::forward::INTERNAL_HEADER) {
        live_counts_elsewhere(&state, &mut rooms, limit, cursor).await?;
    }
    Ok(HttpResponse::Ok().json(RoomList {
        rooms,
        next_cursor: page.next_cursor,
    }))
}

/// Several nodes: the live participant counts of the rooms other live nodes host on this page,
/// asked of them: each such node answers the same page (same `limit` and `cursor`) with its own
/// counts, all at once. A node that does not answer leaves 0.
async fn live_counts_elsewhere(
    state: &AppState,
    rooms: &mut [Room],
    limit: u32,
    cursor: Option<&str>,
) -> Result<(), ApiError> {
    let here = state.cluster.node_id.as_str();
    let elsewhere = |r: &Room| r.node_id.as_deref().is_some_and(|n| n != here);
    if state.store.backend() == "sqlite" || !rooms.iter().any(elsewhere) {
        return Ok(());
    }
    let nodes = state.cluster.nodes(&state.store).await?;
    let hosts: Vec<_> = nodes
        .iter()
        .filter(|n| n.id != here && n.status != "dead")
        .filter(|n| {
            rooms
                .iter()
                .any(|r| r.node_id.as_deref() == Some(n.id.as_str()))
        })
        .collect();
    let asks = hosts.iter().map(|n| async move {
        let counts = super::forward::room_counts(state, &n.url, limit, cursor).await;
        (n.id.as_str(), counts)
    });
    for (node, counts) in futures_util::future::join_all(asks).await {
        let Some(counts) = counts else { continue };
        for room in rooms
            .iter_mut()
            .filter(|r| r.node_id.as_deref() == Some(node))
        {
            if let Some(&n) = counts.get(&room.name) {
                room.active_participants = n;
            }
        }
    }
    Ok(())
}

/// Get a room.
#[utoipa::path(
    get, path = "/api/v1/rooms/{name}", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "The room", body = Room),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_room(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rec = existing_room(&state, &path).await?;
    Ok(HttpResponse::Ok().json(room_json(&state, rec)))
}

/// Change a room's settings; applied to the live room at once.
#[utoipa::path(
    patch, path = "/api/v1/rooms/{name}", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    request_body(content = UpdateRoomRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated room", body = Room),
        (status = 400, description = "`invalid_request`: malformed JSON, wrong content type, unknown or invalid field (the message names it)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn update_room(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: ApiJson<UpdateRoomRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let b = body.0;
    let mut patch = RoomPatch {
        layout: b.layout,
        auto_record: b.auto_record,
        ..RoomPatch::default()
    };
    if let Some(v) = b.max_participants {
        patch.max_participants = Some(check_max_participants(&state, v)?);
    }
    if let Some(v) = b.empty_timeout_s {
        patch.empty_timeout_s = Some(in_range("empty_timeout_s", v, 0, EMPTY_TIMEOUT_MAX)?);
    }
    if let Some(Some(m)) = &b.metadata {
        check_metadata(m)?;
    }
    patch.metadata = b.metadata;
    if !valid_room_name(&name) {
        return Err(ApiError::RoomNotFound(name));
    }
    let rec = state
        .store
        .update_room(&name, &patch)
        .await?
        .ok_or_else(|| ApiError::RoomNotFound(name.clone()))?;
    state
        .rooms
        .update_settings(&rec.name, rec.max_participants, rec.layout);
    tracing::info!(room = %rec.name, ?patch, "room updated");
    Ok(HttpResponse::Ok().json(room_json(&state, rec)))
}

/// Delete a room: everyone in it is disconnected (`closed: room_deleted`) and a running recording
/// is finalized (`completed`; the recording stays listed).
#[utoipa::path(
    delete, path = "/api/v1/rooms/{name}", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    responses(
        (status = 204, description = "Deleted; participants disconnected, recording finalized"),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_room(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    existing_room(&state, &name).await?;
    // Finalize the file while the room's media still runs, then disconnect everyone.
    state.recordings.stop_room(&name).await;
    state.rooms.close_room(&name, CloseReason::RoomDeleted);
    if !state.store.delete_room(&name).await? {
        // Deleted concurrently (another call, the empty-room reaper): same outcome for the caller.
        return Err(ApiError::RoomNotFound(name));
    }
    tracing::info!(room = %name, "room deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// Mint a join token for a room.
#[utoipa::path(
    post, path = "/api/v1/rooms/{name}/tokens", tag = "tokens",
    params(("name" = String, Path, description = "Room name")),
    request_body(content = CreateTokenRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Token minted", body = TokenResponse),
        (status = 400, description = "`invalid_request`: malformed JSON, wrong content type, unknown or invalid field (the message names it)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable; `server_busy`: no node \
            can take the room now (all over their CPU headroom or draining)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_token(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: ApiJson<CreateTokenRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let b = body.0;
    let identity_len = b.identity.chars().count();
    if !(1..=IDENTITY_MAX).contains(&identity_len) {
        return Err(ApiError::InvalidRequest(format!(
            "identity must be 1 to {IDENTITY_MAX} characters, got {identity_len}"
        )));
    }
    if let Some(d) = &b.display_name {
        let n = d.chars().count();
        if n > IDENTITY_MAX {
            return Err(ApiError::InvalidRequest(format!(
                "display_name must be at most {IDENTITY_MAX} characters, got {n}"
            )));
        }
    }
    let ttl = match b.ttl_s {
        Some(v) => in_range("ttl_s", v, 1, TOKEN_TTL_MAX)?,
        None => state.config.rooms.token_ttl_s,
    };
    let room = existing_room(&state, &name).await?;
    let iat = Utc::now().timestamp();
    let exp = iat + i64::from(ttl);
    let claims = JoinClaims {
        room: room.name.clone(),
        sub: b.identity,
        name: b.display_name,
        iat,
        exp,
        can_publish: b.can_publish.unwrap_or(true),
        can_subscribe: b.can_subscribe.unwrap_or(true),
        is_admin: b.is_admin.unwrap_or(false),
        room_id: Some(room.id),
    };
    let token = state.tokens.mint(&claims);
    // Placed now (several nodes): the client connects straight to the hosting node.
    let base = match state.host_of(&room).await? {
        Host::Here => ws_base(state.config.public_url.as_deref(), &req),
        Host::Elsewhere { url, .. } => ws_of(&url),
    };
    let ws_url = format!("{base}/api/v1/ws?token={token}");
    let expires_at = DateTime::from_timestamp(exp, 0)
        .ok_or_else(|| ApiError::InvalidRequest("ttl_s out of range".into()))?;
    tracing::info!(
        room = %room.name, identity = %claims.sub, ttl_s = ttl,
        can_publish = claims.can_publish, can_subscribe = claims.can_subscribe,
        is_admin = claims.is_admin, "join token minted"
    );
    Ok(HttpResponse::Created().json(TokenResponse {
        token,
        ws_url,
        expires_at,
    }))
}

/// The nodes of the cluster (`GET /nodes`).
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Every node that ever registered with this database, by id.
    pub nodes: Vec<crate::cluster::NodeInfo>,
}

/// List the nodes sharing this database: status (`active`, `draining`, or `dead` when silent
/// for `MCU_NODE_TTL_S` or stopped), live rooms, participants, CPU, last heartbeat.
#[utoipa::path(
    get, path = "/api/v1/nodes", tag = "nodes",
    responses(
        (status = 200, description = "The nodes", body = NodeList,
         example = json!({"nodes": [{"id": "node-a", "url": "https://a.mcu.example.com",
             "status": "active", "rooms": 3, "participants": 11, "cpu": 0.42,
             "heartbeat_at": "2026-12-03T16:00:00.000000Z"}]})),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_nodes(
    _admin: AdminAuth,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let nodes = state.cluster.nodes(&state.store).await?;
    Ok(HttpResponse::Ok().json(NodeList { nodes }))
}

/// List the participants connected to a room.
#[utoipa::path(
    get, path = "/api/v1/rooms/{name}/participants", tag = "participants",
    params(("name" = String, Path, description = "Room name")),
    responses(
        (status = 200, description = "Connected participants", body = ParticipantList),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_participants(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = existing_room(&state, &path).await?;
    Ok(HttpResponse::Ok().json(ParticipantList {
        participants: state.rooms.participants(&room.name),
    }))
}

/// Disconnect a participant (`closed: kicked`).
#[utoipa::path(
    delete, path = "/api/v1/rooms/{name}/participants/{id}", tag = "participants",
    params(
        ("name" = String, Path, description = "Room name"),
        ("id" = String, Path, description = "Participant id"),
        KickQuery,
    ),
    responses(
        (status = 204, description = "Kicked; the identity is kept out for `ban_s`"),
        (status = 400, description = "`invalid_request`: `ban_s` out of range", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `participant_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn kick_participant(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<KickQuery>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let ban = match query.ban_s.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<i64>().map_err(|_| {
            ApiError::InvalidRequest(format!("ban_s must be an integer, got '{s}'"))
        })?),
    };
    let ban_s = crate::moderation::ban_seconds(&state, ban)?;
    let room = existing_room(&state, &name).await?;
    crate::moderation::kick(&state, &room, &id, ban_s, "api").await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mute or unmute a participant's microphone and/or camera.
#[utoipa::path(
    post, path = "/api/v1/rooms/{name}/participants/{id}/mute", tag = "participants",
    params(
        ("name" = String, Path, description = "Room name"),
        ("id" = String, Path, description = "Participant id"),
    ),
    request_body(content = MuteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated participant", body = Participant),
        (status = 400, description = "`invalid_request`: malformed JSON, wrong content type, unknown or invalid field (the message names it)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `participant_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn mute_participant(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: ApiJson<MuteRequest>,
) -> Result<HttpResponse, ApiError> {
    let (name, id) = path.into_inner();
    let b = body.0;
    existing_room(&state, &name).await?;
    let p = crate::moderation::mute(&state, &name, &id, b.audio, b.video, b.lock, "api")?;
    Ok(HttpResponse::Ok().json(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        for ok in ["a", "Team-1_x", &"z".repeat(64)] {
            assert!(valid_room_name(ok), "{ok}");
        }
        for bad in ["", "a b", "é", "a/b", &"z".repeat(65), "a.b"] {
            assert!(!valid_room_name(bad), "{bad}");
        }
    }

    #[test]
    fn ranges_name_the_field() {
        assert_eq!(in_range("ttl_s", 5, 1, 10).unwrap(), 5);
        let e = in_range("ttl_s", 0, 1, 10).unwrap_err().to_string();
        assert!(e.contains("ttl_s") && e.contains("between 1 and 10"), "{e}");
    }

    #[test]
    fn ws_base_prefers_public_url() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::HOST, "example.org:8080"))
            .to_http_request();
        assert_eq!(ws_base(None, &req), "ws://example.org:8080");
        assert_eq!(
            ws_base(Some("https://mcu.example.com/"), &req),
            "wss://mcu.example.com"
        );
        assert_eq!(ws_base(Some("http://h/mcu"), &req), "ws://h/mcu");
    }
}
