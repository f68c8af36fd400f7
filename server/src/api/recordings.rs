//! Admin REST handlers for recordings under `/api/v1`: start, stop, list, get, download, delete.
//!
//! Starting, stopping and deleting go through the recording service
//! ([`Recordings`](crate::recording::Recordings)), which owns the media side and the files; reads
//! come straight from the store. The API never shows a filesystem path: a recording's file is
//! reached through its `media_url`, and error texts have the recordings directory stripped.
//!
//! Ids that are not UUIDs are answered 404 `recording_not_found` like unknown ones: to a client
//! both name no recording.
//!
//! Every Recording also carries a `signed_media_url`: the media URL with `?exp=&sig=` (valid for
//! [`SIGNED_URL_TTL_S`]) that the media endpoint accepts in place of the bearer header, so that a
//! page can play a recording in a `<video>` or download it with a plain link
//! ([`TokenKeys::sign_media`](crate::auth::TokenKeys::sign_media)).
//!
//! The media endpoint streams the WebM file in [`MEDIA_CHUNK`] pieces and supports one byte range
//! (`Range: bytes=a-b`, `a-`, `-n`); a header it cannot parse, several ranges or an `If-Range`
//! (no validators are sent, so none can match) get the whole file, as RFC 9110 allows.

use crate::AppState;
use crate::api::body::ApiJson;
use crate::auth::AdminAuth;
use crate::error::{ApiError, ErrorBody};
use crate::model::RecordingStatus;
use crate::store::{RecordingRecord, valid_room_name};
use actix_web::body::SizedStream;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest as _, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::rest::{method_not_allowed, page_limit};

/// Bytes read from the file per streamed chunk.
pub const MEDIA_CHUNK: usize = 64 * 1024;

/// The media type of every recording file.
pub const WEBM: &str = "video/webm";

/// Least lifetime of a `signed_media_url`, seconds (every Recording response carries one valid
/// for 60 to 65 minutes).
pub const SIGNED_URL_TTL_S: i64 = 3600;

/// Routes of this module (inside the `/api/v1` scope; the extractor settings come from
/// [`rest::configure`](super::rest::configure)).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/rooms/{name}/recordings")
            .route(web::post().to(start_recording))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/recordings")
            .route(web::get().to(list_recordings))
            .default_service(method_not_allowed("GET")),
    )
    .service(
        web::resource("/recordings/{id}")
            .route(web::get().to(get_recording))
            .route(web::delete().to(delete_recording))
            .default_service(method_not_allowed("GET, DELETE")),
    )
    .service(
        web::resource("/recordings/{id}/stop")
            .route(web::post().to(stop_recording))
            .default_service(method_not_allowed("POST")),
    )
    .service(
        web::resource("/recordings/{id}/media")
            .route(web::get().to(recording_media))
            .route(web::head().to(recording_media))
            .default_service(method_not_allowed("GET, HEAD")),
    );
}

// ----- shapes ---------------------------------------------------------------------------------

/// A recording of a room's mix (one WebM file: the full audio mix and the composite video).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recording {
    /// Stable id.
    pub id: Uuid,
    /// Name of the recorded room (it may have been deleted since).
    #[schema(example = "standup")]
    pub room: String,
    /// `recording` while running; `completed`, `interrupted` or `failed` once ended.
    pub status: RecordingStatus,
    /// When recording began.
    pub started_at: DateTime<Utc>,
    /// When it ended; null while recording.
    pub ended_at: Option<DateTime<Utc>>,
    /// Media duration in milliseconds; null while recording.
    pub duration_ms: Option<u64>,
    /// File size in bytes; null while recording.
    pub size_bytes: Option<u64>,
    /// Where to download the WebM file (relative to the server), with HTTP Range support.
    #[schema(example = "/api/v1/recordings/5f0c0f5e-8a4e-4c57-9d5e-0f0c3c0c9a11/media")]
    pub media_url: String,
    /// `media_url` with `?exp=&sig=`: fetches the file without the `Authorization` header for an
    /// hour or a little more (for a `<video src>` or a download link). Treat it like a secret.
    #[serde(default)]
    #[schema(
        required = true,
        example = "/api/v1/recordings/5f0c0f5e-8a4e-4c57-9d5e-0f0c3c0c9a11/media?exp=1767225600&sig=9f2c…"
    )]
    pub signed_media_url: String,
    /// Why it failed or was interrupted; null otherwise.
    pub error: Option<String>,
}

/// One page of recordings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingList {
    /// Recordings, oldest first (start time, then id).
    pub recordings: Vec<Recording>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Body of `POST /rooms/{name}/recordings`: an empty object (no options yet). The body may also
/// be left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRecordingRequest {}

/// `?room&status&limit&cursor` of `GET /recordings`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRecordingsQuery {
    /// Only recordings of this room (rooms deleted since included).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub room: Option<String>,
    /// Only recordings with this status.
    #[param(value_type = Option<RecordingStatus>)]
    pub status: Option<String>,
    /// Page size, 1..=100 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page; absent or empty for the first page.
    pub cursor: Option<String>,
}

/// The API view of a stored recording. `dir` is stripped from error texts so that no filesystem
/// path leaks (the recorder names the file in its errors).
pub fn recording_json(rec: RecordingRecord, dir: &Path) -> Recording {
    let dir = dir.display().to_string();
    let error = rec.error.map(|e| {
        if dir.is_empty() {
            e
        } else {
            e.replace(&format!("{dir}/"), "").replace(&dir, "")
        }
    });
    Recording {
        media_url: format!("/api/v1/recordings/{}/media", rec.id),
        signed_media_url: String::new(),
        id: rec.id,
        room: rec.room,
        status: rec.status,
        started_at: rec.started_at,
        ended_at: rec.ended_at,
        duration_ms: rec.duration_ms,
        size_bytes: rec.size_bytes,
        error,
    }
}

fn json(state: &AppState, rec: RecordingRecord) -> Recording {
    let mut r = recording_json(rec, &state.config.recordings_dir);
    // Rounded up to 5 minutes: the same URL for a while, so that a page polling the list keeps
    // its `<video src>` (and the browser its cache).
    let t = Utc::now().timestamp() + SIGNED_URL_TTL_S;
    let exp = t + (300 - t.rem_euclid(300)) % 300;
    let sig = state.tokens.sign_media(&r.id, exp);
    r.signed_media_url = format!("{}?exp={exp}&sig={sig}", r.media_url);
    r
}

/// `?exp&sig` of `GET /recordings/{id}/media` (a signed media URL).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedMediaQuery {
    /// Expiry of the signature, Unix seconds (from `signed_media_url`).
    #[param(value_type = Option<i64>)]
    pub exp: Option<String>,
    /// Hex HMAC-SHA256 (from `signed_media_url`).
    pub sig: Option<String>,
}

/// The media endpoint's authorization: a valid signed URL for this recording, or else the API key.
fn media_auth(state: &AppState, req: &HttpRequest, id: &str) -> Result<(), ApiError> {
    // Read by hand: a malformed query is not a signed URL, and falls back to the bearer check.
    let q = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let get = |k: &str| {
        q.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    if let (Some(exp), Some(sig), Ok(id)) = (get("exp"), get("sig"), Uuid::try_parse(id)) {
        match state
            .tokens
            .verify_media(&id, exp, sig, Utc::now().timestamp())
        {
            Ok(()) => return Ok(()),
            Err(e) if !req.headers().contains_key(header::AUTHORIZATION) => {
                return Err(ApiError::Unauthorized(format!(
                    "{e}; ask for the recording again to get a fresh signed_media_url"
                )));
            }
            Err(_) => {}
        }
    }
    AdminAuth::check(req, &state.api_key, &state.auth_limiter).map(|_| ())
}

/// The id in a path; anything that is not a UUID names no recording (404).
fn recording_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::RecordingNotFound(raw.to_string()))
}

async fn existing_recording(state: &AppState, raw: &str) -> Result<RecordingRecord, ApiError> {
    let id = recording_id(raw)?;
    state
        .store
        .get_recording(id)
        .await?
        .ok_or_else(|| ApiError::RecordingNotFound(raw.to_string()))
}

// ----- ranges ---------------------------------------------------------------------------------

/// What to send for a `Range` header and a file of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// 200, the whole file (no header, or one to ignore).
    Full,
    /// 206, bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416: a well-formed range that lies outside the file.
    Unsatisfiable,
}

/// Decides the reply to `Range: <header>` for a file of `size` bytes (RFC 9110 §14).
pub fn range_reply(header: Option<&str>, size: u64) -> RangeReply {
    let Some(h) = header else {
        return RangeReply::Full;
    };
    let Some((unit, spec)) = h.trim().split_once('=') else {
        return RangeReply::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        // Another unit, or several ranges: the whole file is a valid answer to both.
        return RangeReply::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeReply::Full;
    };
    let num = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            Some(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            // Digits too many for u64 are still a number: larger than any file.
            Some(Some(s.parse().unwrap_or(u64::MAX)))
        } else {
            None
        }
    };
    let (Some(first), Some(last)) = (num(first), num(last)) else {
        return RangeReply::Full;
    };
    match (first, last) {
        (None, None) => RangeReply::Full,
        // Suffix: the last n bytes (all of them if n exceeds the size).
        (None, Some(n)) => {
            if n == 0 || size == 0 {
                RangeReply::Unsatisfiable
            } else {
                RangeReply::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                }
            }
        }
        (Some(start), last) => {
            if last.is_some_and(|l| l < start) {
                // Invalid syntax: ignored.
                return RangeReply::Full;
            }
            if start >= size {
                return RangeReply::Unsatisfiable;
            }
            let end = last.map_or(size - 1, |l| l.min(size - 1));
            RangeReply::Partial { start, end }
        }
    }
}

/// Streams `len` bytes of `file` from its current position.
fn file_stream(
    file: tokio::fs::File,
    len: u64,
) -> impl futures_util::Stream<Item = Result<web::Bytes, std::io::Error>> {
    futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).map_or(MEDIA_CHUNK, |l| l.min(MEDIA_CHUNK));
        let mut buf = web::BytesMut::zeroed(want);
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "recording file shrank while being sent",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.freeze()), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}

// ----- handlers -------------------------------------------------------------------------------

/// Start recording a room (its full audio mix and the composite video, into one WebM file).
/// An empty room can be recorded: its media keeps running (silence, a black canvas).
#[utoipa::path(
    post, path = "/api/v1/rooms/{name}/recordings", tag = "recordings",
    params(("name" = String, Path, description = "Room name")),
    request_body(content = StartRecordingRequest, content_type = "application/json",
        description = "`{}`; may be left out (the document marks it optional)"),
    responses(
        (status = 201, description = "Recording started (status `recording`)", body = Recording,
         headers(("Location" = String, description = "URL of the new recording"))),
        (status = 400, description = "`invalid_request`: malformed JSON, wrong content type, unknown field (the message names it)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 409, description = "`recording_in_progress`: the room is being recorded already", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error (e.g. the file cannot be created)", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable, or the room's media cannot be started", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn start_recording(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    // No body at all (no Content-Type, no length) stands for `{}`; any body must be `{}`.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let bodyless = !req.headers().contains_key(header::CONTENT_TYPE)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
        && matches!(declared, None | Some("0"));
    if !bodyless {
        let mut payload = payload.into_inner();
        ApiJson::<StartRecordingRequest>::from_request(&req, &mut payload).await?;
    }
    // A name no room can have is not looked up (PostgreSQL would refuse e.g. a NUL in it).
    if !valid_room_name(&name) {
        return Err(ApiError::RoomNotFound(name));
    }
    let rec = state.recordings.start(&name).await?;
    let location = format!("/api/v1/recordings/{}", rec.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(json(&state, rec)))
}

/// Stop a recording and return it finished. Stopping one that has already ended returns it as
/// it is.
#[utoipa::path(
    post, path = "/api/v1/recordings/{id}/stop", tag = "recordings",
    params(("id" = String, Path, description = "Recording id (a UUID; anything else is answered 404)")),
    responses(
        (status = 200, description = "The ended recording (usually `completed`; `failed` if writing failed)", body = Recording),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`recording_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable, or the file is still being finalized (ask again)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stop_recording(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = recording_id(&path)?;
    let rec = state.recordings.stop(id).await?;
    Ok(HttpResponse::Ok().json(json(&state, rec)))
}

/// List recordings, oldest first, with cursor pagination; optionally only one room's and/or
/// those with one status.
#[utoipa::path(
    get, path = "/api/v1/recordings", tag = "recordings",
    params(ListRecordingsQuery),
    responses(
        (status = 200, description = "One page of recordings", body = RecordingList),
        (status = 400, description = "`invalid_request`: bad `room`, `status`, `limit` or `cursor` (the message names it)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_recordings(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    query: web::Query<ListRecordingsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = page_limit(q.limit.as_deref())?;
    let room = q.room.as_deref().filter(|r| !r.is_empty());
    if room.is_some_and(|r| !valid_room_name(r)) {
        return Err(ApiError::InvalidRequest(
            "room must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        ));
    }
    let status = match q.status.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(RecordingStatus::parse(s).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "status must be one of recording, completed, interrupted, failed; got '{s}'"
            ))
        })?),
    };
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let page = state
        .store
        .list_recordings(room, status, limit, cursor)
        .await?;
    Ok(HttpResponse::Ok().json(RecordingList {
        recordings: page
            .recordings
            .into_iter()
            .map(|r| json(&state, r))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Get a recording.
#[utoipa::path(
    get, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = String, Path, description = "Recording id (a UUID; anything else is answered 404)")),
    responses(
        (status = 200, description = "The recording", body = Recording),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`recording_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_recording(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rec = existing_recording(&state, &path).await?;
    Ok(HttpResponse::Ok().json(json(&state, rec)))
}

/// Download a recording's WebM file. One byte range (`Range: bytes=first-last`, `first-`,
/// `-suffix`) is answered 206; several ranges, an unparseable header or `If-Range` get the whole
/// file. `HEAD` is answered with the same headers and no body. The file is available once the
/// recording has ended. Instead of the bearer header, the query of the recording's
/// `signed_media_url` (`exp`, `sig`) authorizes the request until `exp`.
#[utoipa::path(
    get, path = "/api/v1/recordings/{id}/media", tag = "recordings",
    params(
        ("id" = String, Path, description = "Recording id (a UUID; anything else is answered 404)"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-99`, `bytes=100-`, `bytes=-50`"),
        SignedMediaQuery,
    ),
    responses(
        (status = 200, description = "The whole file", content_type = "video/webm", body = String,
         headers(
            ("Accept-Ranges" = String, description = "`bytes`"),
            ("Content-Length" = i64, description = "File size in bytes"),
        )),
        (status = 206, description = "The requested range", content_type = "video/webm", body = String,
         headers(
            ("Accept-Ranges" = String, description = "`bytes`"),
            ("Content-Range" = String, description = "`bytes first-last/size`"),
            ("Content-Length" = i64, description = "Length of the range"),
        )),
        (status = 401, description = "`unauthorized`: missing or wrong API key, and no valid unexpired `exp`/`sig`", body = ErrorBody),
        (status = 404, description = "`recording_not_found`: no such recording, or its file is gone", body = ErrorBody),
        (status = 409, description = "`recording_in_progress`: still recording; stop it first", body = ErrorBody),
        (status = 416, description = "`range_not_satisfiable`: the range lies outside the file", body = ErrorBody,
         headers(("Content-Range" = String, description = "`bytes */size`"))),
        (status = 500, description = "`internal`: unexpected server error", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable, or the object storage holding the recording does not answer", body = ErrorBody),
    ),
    security(("bearer" = []), ())
)]
pub async fn recording_media(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    media_auth(&state, &req, &path)?;
    let rec = existing_recording(&state, &path).await?;
    if rec.status == RecordingStatus::Recording {
        return Err(ApiError::RecordingRunning(rec.id));
    }
    let file_path = state.recordings.path_of(&rec);
    let range_of = |size: u64| {
        if req.headers().contains_key(header::IF_RANGE) {
            RangeReply::Full
        } else {
            let h = req.headers().get(header::RANGE);
            // A header that is not even text cannot be a byte range: ignored.
            range_reply(h.and_then(|v| v.to_str().ok()), size)
        }
    };
    let open = async {
        let mut file = tokio::fs::File::open(&file_path).await?;
        let size = file.metadata().await?.len();
        let range = range_of(size);
        if let RangeReply::Partial { start, .. } = range {
            file.seek(std::io::SeekFrom::Start(start)).await?;
        }
        Ok::<_, std::io::Error>((file, size, range))
    };
    let (file, size, range) = match open.await {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let (Some(s3), Some(key)) =
                (state.recordings.object_store(), rec.object_key.as_deref())
            {
                return object_media(s3, key, &rec, range_of).await;
            }
            tracing::warn!(recording = %rec.id, path = %file_path.display(),
                "recording file missing on disk");
            return Err(ApiError::RecordingNotFound(rec.id.to_string()));
        }
        Err(e) => {
            return Err(ApiError::Unexpected(anyhow::anyhow!(
                "cannot read recording {}: {e}",
                rec.id
            )));
        }
    };
    let (mut res, len) = media_head(&rec, size, range)?;
    Ok(res.body(SizedStream::new(len, file_stream(file, len))))
}

/// The status and headers of a media answer for `range` of a file of `size` bytes, and the
/// length of its body.
fn media_head(
    rec: &RecordingRecord,
    size: u64,
    range: RangeReply,
) -> Result<(actix_web::HttpResponseBuilder, u64), ApiError> {
    let mut res = HttpResponse::build(StatusCode::OK);
    res.insert_header((header::CONTENT_TYPE, WEBM))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{}.webm\"", rec.id),
        ));
    let len = match range {
        RangeReply::Full => size,
        RangeReply::Partial { start, end } => {
            res.status(StatusCode::PARTIAL_CONTENT)
                .insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}")));
            end - start + 1
        }
        RangeReply::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable(size)),
    };
    Ok((res, len))
}

/// A recording's media read from object storage (any node answers it the same).
async fn object_media(
    s3: &crate::objstore::ObjectStore,
    key: &str,
    rec: &RecordingRecord,
    range_of: impl Fn(u64) -> RangeReply,
) -> Result<HttpResponse, ApiError> {
    use futures_util::TryStreamExt as _;
    let unavailable = |e: anyhow::Error| {
        tracing::warn!(recording = %rec.id, key, error = %e, "cannot read a recording from object storage");
        ApiError::Unavailable(format!(
            "object storage does not answer ({e}); try again shortly"
        ))
    };
    let Some(size) = s3.size(key).await.map_err(unavailable)? else {
        tracing::warn!(recording = %rec.id, key, "recording object missing in object storage");
        return Err(ApiError::RecordingNotFound(rec.id.to_string()));
    };
    let range = range_of(size);
    let (mut res, len) = media_head(rec, size, range)?;
    let bytes = match range {
        RangeReply::Partial { start, end } => Some((start, end)),
        _ if size == 0 => return Ok(res.finish()),
        _ => Some((0, size - 1)),
    };
    let body = s3.get_range(key, bytes).await.map_err(unavailable)?;
    let stream = body.bytes_stream().map_err(std::io::Error::other);
    Ok(res.body(SizedStream::new(len, stream)))
}

/// Delete a recording: a running one is stopped first; the file is removed.
#[utoipa::path(
    delete, path = "/api/v1/recordings/{id}", tag = "recordings",
    params(("id" = String, Path, description = "Recording id (a UUID; anything else is answered 404)")),
    responses(
        (status = 204, description = "Deleted, file removed"),
        (status = 401, description = "`unauthorized`: missing or wrong API key", body = ErrorBody),
        (status = 404, description = "`recording_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`: unexpected server error (e.g. the file cannot be removed)", body = ErrorBody),
        (status = 503, description = "`unavailable`: database unreachable, a running recording is still being finalized (ask again), or the object storage holding it does not answer", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_recording(
    _admin: AdminAuth,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = recording_id(&path)?;
    state.recordings.delete(id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReply::{Full, Partial, Unsatisfiable};
        let p = |start, end| Partial { start, end };
        // (header, size, expected)
        let cases: &[(Option<&str>, u64, RangeReply)] = &[
            (None, 1000, Full),
            (Some("bytes=0-99"), 1000, p(0, 99)),
            (Some("bytes=0-0"), 1000, p(0, 0)),
            (Some(" bytes = 10 - 19 "), 1000, p(10, 19)),
            (Some("BYTES=10-19"), 1000, p(10, 19)),
            (Some("bytes=100-"), 1000, p(100, 999)),
            (Some("bytes=-50"), 1000, p(950, 999)),
            (Some("bytes=-5000"), 1000, p(0, 999)),
            (Some("bytes=900-5000"), 1000, p(900, 999)),
            (Some("bytes=999-"), 1000, p(999, 999)),
            (Some("bytes=0-99999999999999999999999"), 1000, p(0, 999)),
            (Some("bytes=1000-"), 1000, Unsatisfiable),
            (Some("bytes=1000-2000"), 1000, Unsatisfiable),
            (Some("bytes=99999999999999999999999-"), 1000, Unsatisfiable),
            (Some("bytes=-0"), 1000, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=-10"), 0, Unsatisfiable),
            // Ignored: whole file.
            (Some("bytes=20-10"), 1000, Full),
            (Some("bytes=0-1,5-6"), 1000, Full),
            (Some("items=0-1"), 1000, Full),
            (Some("bytes=a-b"), 1000, Full),
            (Some("bytes=-"), 1000, Full),
            (Some("bytes=+1-2"), 1000, Full),
            (Some("bytes"), 1000, Full),
            (Some(""), 1000, Full),
        ];
        for (h, size, want) in cases {
            assert_eq!(range_reply(*h, *size), *want, "{h:?} of {size}");
        }
    }

    #[test]
    fn json_hides_paths() {
        let id = Uuid::new_v4();
        let rec = RecordingRecord {
            id,
            room: "r".into(),
            status: RecordingStatus::Failed,
            started_at: Utc::now(),
            ended_at: None,
            duration_ms: None,
            size_bytes: Some(5),
            file_name: format!("{id}.webm"),
            error: Some(format!("/srv/rec/{id}.webm: write: disk full")),
            node_id: None,
            object_key: None,
            upload: None,
        };
        let j = recording_json(rec, Path::new("/srv/rec"));
        assert_eq!(j.media_url, format!("/api/v1/recordings/{id}/media"));
        assert_eq!(
            j.error.as_deref(),
            Some(format!("{id}.webm: write: disk full").as_str())
        );
        assert!(!serde_json::to_string(&j).unwrap().contains("/srv/rec"));
    }

    #[test]
    fn malformed_ids_are_not_found() {
        for bad in ["x", "", "123", "../etc/passwd"] {
            assert!(matches!(
                recording_id(bad),
                Err(ApiError::RecordingNotFound(_))
            ));
        }
        let id = Uuid::new_v4();
        assert_eq!(recording_id(&id.to_string()).unwrap(), id);
    }
}
