//! The metadata store (sqlx): rooms and recordings.
//!
//! Two backends behind one [`Store`]: SQLite (default, a file under `./data/`, WAL, foreign keys,
//! busy timeout) and PostgreSQL. Each has its own migration directory (`migrations/sqlite`,
//! `migrations/postgres`), embedded at compile time and applied by [`Store::connect`].
//!
//! Invariants:
//! - Timestamps are kept at microsecond precision on both backends (SQLite stores fixed-width
//!   RFC 3339 text, which sorts like time), so what a write returns equals what a read returns.
//! - Room lists are ordered by `(created_at, id)`; the cursor encodes the last row's pair, so a
//!   page walk sees every room that existed throughout exactly once even while rooms are added.
//!   Recording lists work the same way on `(started_at, id)`.
//! - At most one recording per room has status `recording` (a partial unique index); a second
//!   [`Store::create_recording`] for the room fails with `StoreError::RecordingInProgress`.
//! - The pool waits at most [`ACQUIRE_TIMEOUT`] for a connection: an unreachable database answers
//!   `StoreError::Unavailable` quickly instead of hanging requests.

mod postgres;
mod sqlite;

use crate::config::RoomDefaults;
use crate::error::ApiError;
use crate::model::{Layout, RecordingStatus};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// Longest wait for a pooled connection before a request is answered 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refuses service (connection, pool timeout, locked).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A room with this name exists already.
    #[error("room '{0}' already exists")]
    RoomExists(String),
    /// Not a valid room name (`[A-Za-z0-9_-]{1,64}`).
    #[error("invalid room name '{0}': expected 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    InvalidRoomName(String),
    /// The room has a recording with status `recording` already.
    #[error("room '{0}' is already being recorded")]
    RecordingInProgress(String),
    /// A pagination cursor that this store did not produce.
    #[error("cursor is invalid")]
    InvalidCursor,
    /// A stored row that does not fit the model (edited by hand, newer schema).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The URL names no supported backend or does not parse.
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else the driver reports.
    #[error("database error: {0}")]
    Other(sqlx::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "database unavailable");
                ApiError::Unavailable("database unavailable, try again later".into())
            }
            StoreError::RoomExists(name) => ApiError::RoomExists(name),
            StoreError::RecordingInProgress(room) => ApiError::RecordingInProgress(room),
            StoreError::InvalidCursor => ApiError::InvalidRequest("cursor is invalid".into()),
            e @ StoreError::InvalidRoomName(_) => ApiError::InvalidRequest(e.to_string()),
            other => ApiError::Unexpected(anyhow::Error::new(other)),
        }
    }
}

/// Classifies a driver error: connection trouble becomes `Unavailable`.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    let unavailable = match &e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => true,
        E::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL SQLSTATEs: 08xxx connection exceptions, 57P01-57P03 admin shutdown /
            // crash shutdown / cannot connect now, 55000 "database is not currently accepting
            // connections", 53xxx insufficient resources, 3D000 database gone, 28xxx auth.
            let pg = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code.starts_with("28")
                || code == "55000"
                || code == "3D000";
            // SQLite primary result codes: BUSY 5, LOCKED 6, READONLY 8, IOERR 10, FULL 13,
            // CANTOPEN 14 (extended codes keep the primary code in the low byte).
            let sqlite = code
                .parse::<u32>()
                .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13 | 14));
            pg || sqlite
        }
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Other(e)
    }
}

/// Longest room name.
pub const ROOM_NAME_MAX: usize = 64;

/// Is `name` a valid room name (`[A-Za-z0-9_-]{1,64}`)? Every stored room has one.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ROOM_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// Stable id.
    pub id: Uuid,
    /// Unique name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// Capacity.
    pub max_participants: u32,
    /// Composite layout.
    pub layout: Layout,
    /// Start recording when the first participant joins.
    pub auto_record: bool,
    /// Delete the room after it has been empty this long; 0 = never.
    pub empty_timeout_s: u32,
    /// Free-form application data.
    pub metadata: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last settings change.
    pub updated_at: DateTime<Utc>,
    /// The running recording, if a recording row has status `recording`.
    pub recording_id: Option<Uuid>,
    /// The node hosting the room (several nodes on one database), if placed.
    pub node_id: Option<String>,
}

impl RoomRecord {
    /// A fresh row (new id, no recording) for `room`, created at `now`.
    fn new(room: &NewRoom, now: DateTime<Utc>) -> RoomRecord {
        RoomRecord {
            id: Uuid::new_v4(),
            name: room.name.clone(),
            max_participants: room.max_participants,
            layout: room.layout,
            auto_record: room.auto_record,
            empty_timeout_s: room.empty_timeout_s,
            metadata: room.metadata.clone(),
            created_at: now,
            updated_at: now,
            recording_id: None,
            node_id: None,
        }
    }
}

/// Settings of a room to create (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoom {
    /// Unique name.
    pub name: String,
    /// Capacity.
    pub max_participants: u32,
    /// Composite layout.
    pub layout: Layout,
    /// Start recording when the first participant joins.
    pub auto_record: bool,
    /// Empty timeout, seconds; 0 = never.
    pub empty_timeout_s: u32,
    /// Free-form application data.
    pub metadata: Option<String>,
}

impl NewRoom {
    /// A room named `name` with the configured defaults.
    pub fn with_defaults(name: &str, defaults: &RoomDefaults) -> NewRoom {
        NewRoom {
            name: name.to_string(),
            max_participants: defaults.max_participants,
            layout: Layout::default(),
            auto_record: false,
            empty_timeout_s: defaults.empty_timeout_s,
            metadata: None,
        }
    }
}

/// A partial update; `None` leaves a field unchanged (`metadata: Some(None)` clears it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomPatch {
    /// New capacity.
    pub max_participants: Option<u32>,
    /// New layout.
    pub layout: Option<Layout>,
    /// New auto-record flag.
    pub auto_record: Option<bool>,
    /// New empty timeout.
    pub empty_timeout_s: Option<u32>,
    /// New metadata (`Some(None)` = clear).
    pub metadata: Option<Option<String>>,
}

/// One page of rooms.
#[derive(Debug, Clone)]
pub struct RoomPage {
    /// Rooms in `(created_at, id)` order.
    pub rooms: Vec<RoomRecord>,
    /// Cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A recording as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRecord {
    /// Stable id.
    pub id: Uuid,
    /// Name of the recorded room (the room may have been deleted since).
    pub room: String,
    /// Lifecycle state.
    pub status: RecordingStatus,
    /// When recording began.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` while recording.
    pub ended_at: Option<DateTime<Utc>>,
    /// Media duration in milliseconds, once known.
    pub duration_ms: Option<u64>,
    /// File size in bytes, once known.
    pub size_bytes: Option<u64>,
    /// The file's name inside the recordings directory (never exposed by the API).
    pub file_name: String,
    /// Why it failed or was interrupted.
    pub error: Option<String>,
    /// The node that writes (or wrote) it; crash recovery touches its own and dead nodes' rows.
    pub node_id: Option<String>,
    /// The object holding the file in object storage (`None`: a file in a node's directory).
    pub object_key: Option<String>,
    /// While it records to object storage: the running multipart upload (JSON, see
    /// `recording::upload::UploadState`).
    pub upload: Option<String>,
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingEnd {
    /// Final status (`completed`, `interrupted` or `failed`).
    pub status: RecordingStatus,
    /// End time.
    pub ended_at: DateTime<Utc>,
    /// Media duration in milliseconds.
    pub duration_ms: Option<u64>,
    /// File size in bytes.
    pub size_bytes: Option<u64>,
    /// Why it failed or was interrupted.
    pub error: Option<String>,
}

/// One page of recordings.
#[derive(Debug, Clone)]
pub struct RecordingPage {
    /// Recordings in `(started_at, id)` order.
    pub recordings: Vec<RecordingRecord>,
    /// Cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of a recording list.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecordingFilter<'a> {
    pub room: Option<&'a str>,
    pub status: Option<RecordingStatus>,
    pub after: Option<Cursor>,
}

/// Position after a row in `(created_at, id)` order (`(started_at, id)` for recordings).
/// Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub(crate) fn after(room: &RoomRecord) -> Cursor {
        Cursor {
            created_at: room.created_at,
            id: room.id,
        }
    }

    pub(crate) fn after_recording(rec: &RecordingRecord) -> Cursor {
        Cursor {
            created_at: rec.started_at,
            id: rec.id,
        }
    }

    pub(crate) fn encode(&self) -> String {
        let raw = format!(
            "{}.{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    pub(crate) fn decode(s: &str) -> Result<Cursor, StoreError> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| StoreError::InvalidCursor)?;
        let raw = String::from_utf8(raw).map_err(|_| StoreError::InvalidCursor)?;
        let (micros, id) = raw.split_once('.').ok_or(StoreError::InvalidCursor)?;
        let micros: i64 = micros.parse().map_err(|_| StoreError::InvalidCursor)?;
        let created_at =
            DateTime::from_timestamp_micros(micros).ok_or(StoreError::InvalidCursor)?;
        let id = Uuid::try_parse(id).map_err(|_| StoreError::InvalidCursor)?;
        Ok(Cursor { created_at, id })
    }
}

/// Now, truncated to the microsecond precision both backends store.
pub(crate) fn now_micros() -> DateTime<Utc> {
    to_micros(Utc::now())
}

/// Checked conversion of a stored integer to the model's `u32`.
pub(crate) fn to_u32(v: i64, field: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{field} = {v} out of range")))
}

/// Checked conversion of a stored integer to the model's `u64`.
pub(crate) fn to_u64(v: i64, field: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{field} = {v} out of range")))
}

/// Checked conversion of a model `u64` to the stored `BIGINT`.
pub(crate) fn to_i64(v: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{field} = {v} too large to store")))
}

/// Parses a stored recording status.
pub(crate) fn to_status(s: &str) -> Result<RecordingStatus, StoreError> {
    RecordingStatus::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown recording status '{s}'")))
}

/// Truncates `t` to the microsecond precision both backends store.
pub(crate) fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Parses a stored layout name.
pub(crate) fn to_layout(s: &str) -> Result<Layout, StoreError> {
    Layout::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown layout '{s}'")))
}

/// The atomic placement (`$1` room name, `$2` node, `$3` oldest heartbeat of a live node): the
/// room goes to `$2` unless it is on a live node already. Two nodes racing for one room both run
/// it; the row lock orders them and the second sees the first's live node, so exactly one wins.
pub(crate) const PLACE_ROOM: &str = "UPDATE rooms SET node_id = $2 WHERE name = $1 AND \
     (node_id IS NULL OR node_id = $2 OR node_id NOT IN \
      (SELECT id FROM nodes WHERE heartbeat_at >= $3 AND status <> 'stopped'))";

/// What a node says of itself in its heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBeat {
    /// Stable node id.
    pub id: String,
    /// Public base URL (`http(s)://…`) clients and other nodes reach it at.
    pub url: String,
    /// Taking rooms, draining, or stopped.
    pub status: NodeStatus,
    /// Live rooms on it.
    pub rooms: u64,
    /// Connected participants.
    pub participants: u64,
    /// CPU in use, cores.
    pub cpu: f64,
    /// CPU budget, cores (0: none).
    pub cpu_budget: f64,
    /// Process start.
    pub started_at: DateTime<Utc>,
}

/// The status a node writes. `dead` is never written: it is a heartbeat too old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Takes new rooms.
    Active,
    /// SIGTERM: no new rooms, its own go on.
    Draining,
    /// Exited cleanly: its rooms may be placed elsewhere at once.
    Stopped,
}

impl NodeStatus {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Active => "active",
            NodeStatus::Draining => "draining",
            NodeStatus::Stopped => "stopped",
        }
    }
}

/// A node as stored, with the rooms placed on it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// Public base URL.
    pub url: String,
    /// `active`, `draining` or `stopped` as last written.
    pub status: String,
    /// Live rooms it reported.
    pub rooms: u64,
    /// Participants it reported.
    pub participants: u64,
    /// CPU it reported, cores.
    pub cpu: f64,
    /// Its CPU budget, cores (0: none).
    pub cpu_budget: f64,
    /// Its process start.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Rooms placed on it (`rooms.node_id`), live or about to be.
    pub placed: u64,
}

/// The metadata store. Cheap to clone (pools are reference counted).
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite file (or memory).
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Opens the database named by `url` (`sqlite://path`, `sqlite::memory:`, `postgres://…`),
    /// creating a SQLite file and its directory if missing, and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("sqlite:") {
            Store::Sqlite(sqlite::connect(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Store::Postgres(postgres::connect(url).await?)
        } else {
            return Err(StoreError::BadUrl(
                "expected sqlite://… or postgres://…".into(),
            ));
        };
        tracing::info!(
            backend = store.backend(),
            "database ready, migrations applied"
        );
        Ok(store)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Checks that the database answers (`/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::ping(p).await,
            Store::Postgres(p) => postgres::ping(p).await,
        }
    }

    /// Closes the pool; every later call answers `Unavailable` (shutdown, tests).
    pub async fn close(&self) {
        match self {
            Store::Sqlite(p) => p.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }

    /// Inserts a room; `RoomExists` if the name is taken.
    pub async fn create_room(&self, room: &NewRoom) -> Result<RoomRecord, StoreError> {
        let rec = RoomRecord::new(room, now_micros());
        match self {
            Store::Sqlite(p) => sqlite::insert_room(p, &rec, false).await?,
            Store::Postgres(p) => postgres::insert_room(p, &rec, false).await?,
        };
        Ok(rec)
    }

    /// The room named `name`.
    pub async fn get_room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::get_room(p, name).await,
            Store::Postgres(p) => postgres::get_room(p, name).await,
        }
    }

    /// The room named `name`, created with `defaults` if it does not exist (race-safe: two
    /// concurrent callers get the same row).
    pub async fn ensure_room(
        &self,
        name: &str,
        defaults: &RoomDefaults,
    ) -> Result<RoomRecord, StoreError> {
        // Tokens minted elsewhere may name anything; only valid names become rooms.
        if !valid_room_name(name) {
            return Err(StoreError::InvalidRoomName(name.to_string()));
        }
        if let Some(r) = self.get_room(name).await? {
            return Ok(r);
        }
        let rec = RoomRecord::new(&NewRoom::with_defaults(name, defaults), now_micros());
        let inserted = match self {
            Store::Sqlite(p) => sqlite::insert_room(p, &rec, true).await?,
            Store::Postgres(p) => postgres::insert_room(p, &rec, true).await?,
        };
        if inserted {
            tracing::info!(room = name, "room created on first join");
        }
        self.get_room(name).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("room '{name}' vanished right after its creation"))
        })
    }

    /// One page of rooms after `cursor`, at most `limit` long.
    pub async fn list_rooms(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<RoomPage, StoreError> {
        let after = cursor.map(Cursor::decode).transpose()?;
        let limit = limit.max(1);
        // One extra row tells whether another page follows.
        let mut rooms = match self {
            Store::Sqlite(p) => sqlite::list_rooms(p, i64::from(limit) + 1, after).await?,
            Store::Postgres(p) => postgres::list_rooms(p, i64::from(limit) + 1, after).await?,
        };
        let next_cursor = if rooms.len() > limit as usize {
            rooms.truncate(limit as usize);
            rooms.last().map(|r| Cursor::after(r).encode())
        } else {
            None
        };
        Ok(RoomPage { rooms, next_cursor })
    }

    /// Applies `patch`; `None` if the room does not exist.
    pub async fn update_room(
        &self,
        name: &str,
        patch: &RoomPatch,
    ) -> Result<Option<RoomRecord>, StoreError> {
        let updated = match self {
            Store::Sqlite(p) => sqlite::update_room(p, name, patch, now_micros()).await?,
            Store::Postgres(p) => postgres::update_room(p, name, patch, now_micros()).await?,
        };
        if !updated {
            return Ok(None);
        }
        self.get_room(name).await
    }

    /// Deletes the room row; false if there was none. Recordings of the room are kept.
    pub async fn delete_room(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::delete_room(p, name).await,
            Store::Postgres(p) => postgres::delete_room(p, name).await,
        }
    }

    /// Keeps `identity` out of the room with id `room_id` until `until` (a later kick can extend
    /// a ban, never shorten it).
    pub async fn ban(
        &self,
        room_id: Uuid,
        identity: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (until, now) = (to_micros(until), now_micros());
        match self {
            Store::Sqlite(p) => sqlite::ban(p, room_id, identity, until, now).await,
            Store::Postgres(p) => postgres::ban(p, room_id, identity, until, now).await,
        }
    }

    /// Until when `identity` is kept out of the room with id `room_id`, if it is now.
    pub async fn banned_until(
        &self,
        room_id: Uuid,
        identity: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = now_micros();
        match self {
            Store::Sqlite(p) => sqlite::banned_until(p, room_id, identity, now).await,
            Store::Postgres(p) => postgres::banned_until(p, room_id, identity, now).await,
        }
    }

    /// Rooms with an empty timeout (`empty_timeout_s > 0`) that has run since their last change
    /// (`updated_at + empty_timeout_s <= now`), for the reaper: only those can be due. A room whose
    /// settings changed recently is looked at once that much time has passed (at most one timeout
    /// late), which keeps a pass over thousands of idle rooms cheap.
    pub async fn rooms_with_empty_timeout(&self) -> Result<Vec<RoomRecord>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::rooms_with_empty_timeout(p).await,
            Store::Postgres(p) => postgres::rooms_with_empty_timeout(p).await,
        }
    }

    /// Inserts a running recording (status `recording`) of `room`; `RecordingInProgress` if the
    /// room has one already. The room itself is not checked (recordings outlive rooms).
    /// `node_id`: the node writing it.
    pub async fn create_recording(
        &self,
        id: Uuid,
        room: &str,
        file_name: &str,
        started_at: DateTime<Utc>,
        node_id: Option<&str>,
    ) -> Result<RecordingRecord, StoreError> {
        let rec = RecordingRecord {
            id,
            room: room.to_string(),
            status: RecordingStatus::Recording,
            started_at: to_micros(started_at),
            ended_at: None,
            duration_ms: None,
            size_bytes: None,
            file_name: file_name.to_string(),
            error: None,
            node_id: node_id.map(str::to_string),
            object_key: None,
            upload: None,
        };
        match self {
            Store::Sqlite(p) => sqlite::insert_recording(p, &rec).await?,
            Store::Postgres(p) => postgres::insert_recording(p, &rec).await?,
        }
        Ok(rec)
    }

    /// The recording `id`.
    pub async fn get_recording(&self, id: Uuid) -> Result<Option<RecordingRecord>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::get_recording(p, id).await,
            Store::Postgres(p) => postgres::get_recording(p, id).await,
        }
    }

    /// Records how `id` ended (status, end time, duration, size, error), whatever its status
    /// was; `None` if there is no such recording.
    pub async fn end_recording(
        &self,
        id: Uuid,
        end: &RecordingEnd,
    ) -> Result<Option<RecordingRecord>, StoreError> {
        let end = RecordingEnd {
            ended_at: to_micros(end.ended_at),
            ..end.clone()
        };
        match self {
            Store::Sqlite(p) => sqlite::end_recording(p, id, &end).await,
            Store::Postgres(p) => postgres::end_recording(p, id, &end).await,
        }
    }

    /// Every recording with `status`, in `(started_at, id)` order (crash recovery).
    pub async fn recordings_with_status(
        &self,
        status: RecordingStatus,
    ) -> Result<Vec<RecordingRecord>, StoreError> {
        let filter = RecordingFilter {
            status: Some(status),
            ..RecordingFilter::default()
        };
        match self {
            Store::Sqlite(p) => sqlite::list_recordings(p, filter, None).await,
            Store::Postgres(p) => postgres::list_recordings(p, filter, None).await,
        }
    }

    /// One page of recordings after `cursor`, at most `limit` long, optionally only those of
    /// `room` and/or with `status`.
    pub async fn list_recordings(
        &self,
        room: Option<&str>,
        status: Option<RecordingStatus>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<RecordingPage, StoreError> {
        let filter = RecordingFilter {
            room,
            status,
            after: cursor.map(Cursor::decode).transpose()?,
        };
        let limit = limit.max(1);
        // One extra row tells whether another page follows.
        let fetch = Some(i64::from(limit) + 1);
        let mut recordings = match self {
            Store::Sqlite(p) => sqlite::list_recordings(p, filter, fetch).await?,
            Store::Postgres(p) => postgres::list_recordings(p, filter, fetch).await?,
        };
        let next_cursor = if recordings.len() > limit as usize {
            recordings.truncate(limit as usize);
            recordings
                .last()
                .map(|r| Cursor::after_recording(r).encode())
        } else {
            None
        };
        Ok(RecordingPage {
            recordings,
            next_cursor,
        })
    }

    /// Where recording `id`'s file is in object storage (`object_key`), and its running upload.
    pub async fn set_recording_storage(
        &self,
        id: Uuid,
        object_key: Option<&str>,
        upload: Option<&str>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::set_recording_storage(p, id, object_key, upload).await,
            Store::Postgres(p) => postgres::set_recording_storage(p, id, object_key, upload).await,
        }
    }

    /// Takes running recording `id` over from node `from` (none: a row from before nodes) for
    /// node `to`; false if it is not running or another node took it first (one repairer).
    pub async fn claim_recording(
        &self,
        id: Uuid,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::claim_recording(p, id, from, to).await,
            Store::Postgres(p) => postgres::claim_recording(p, id, from, to).await,
        }
    }

    /// Writes node `n`'s heartbeat (its row created on the first).
    pub async fn heartbeat(&self, n: &NodeBeat, now: DateTime<Utc>) -> Result<(), StoreError> {
        let now = to_micros(now);
        match self {
            Store::Sqlite(p) => sqlite::heartbeat(p, n, now).await,
            Store::Postgres(p) => postgres::heartbeat(p, n, now).await,
        }
    }

    /// Every node that ever heartbeat, by id.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::list_nodes(p).await,
            Store::Postgres(p) => postgres::list_nodes(p).await,
        }
    }

    /// Places room `name` on `node` unless a live node (heartbeat at or after `live_since`, not
    /// stopped) hosts it already, in one atomic statement ([`PLACE_ROOM`]). Returns the hosting
    /// node after the statement, `None` if there is no such room (or it was deleted meanwhile).
    pub async fn place_room(
        &self,
        name: &str,
        node: &str,
        live_since: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let live_since = to_micros(live_since);
        let host = match self {
            Store::Sqlite(p) => sqlite::place_room(p, name, node, live_since).await?,
            Store::Postgres(p) => postgres::place_room(p, name, node, live_since).await?,
        };
        Ok(host.flatten())
    }

    /// Deletes the recording row; false if there was none. The file is the caller's business.
    pub async fn delete_recording(&self, id: Uuid) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(p) => sqlite::delete_recording(p, id).await,
            Store::Postgres(p) => postgres::delete_recording(p, id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            created_at: now_micros(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "!!", "bm9wZQ", "MTIzLm5vdC1hLXV1aWQ"] {
            assert!(
                matches!(Cursor::decode(bad), Err(StoreError::InvalidCursor)),
                "{bad}"
            );
        }
    }

    #[actix_web::test]
    async fn sqlite_memory_crud_and_pagination() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        store.ping().await.unwrap();
        let defaults = RoomDefaults::default();
        let mut names = Vec::new();
        for i in 0..5 {
            let name = format!("r{i}");
            let r = store
                .create_room(&NewRoom::with_defaults(&name, &defaults))
                .await
                .unwrap();
            assert_eq!(store.get_room(&name).await.unwrap(), Some(r));
            names.push(name);
        }
        let dup = store
            .create_room(&NewRoom::with_defaults("r0", &defaults))
            .await;
        assert!(matches!(dup, Err(StoreError::RoomExists(n)) if n == "r0"));
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.list_rooms(2, cursor.as_deref()).await.unwrap();
            assert!(page.rooms.len() <= 2);
            seen.extend(page.rooms.into_iter().map(|r| r.name));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, names);
        let patched = store
            .update_room(
                "r1",
                &RoomPatch {
                    layout: Some(Layout::Speaker),
                    metadata: Some(Some("m".into())),
                    ..RoomPatch::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (patched.layout, patched.metadata.as_deref()),
            (Layout::Speaker, Some("m"))
        );
        assert_eq!(patched.max_participants, defaults.max_participants);
        assert!(store.delete_room("r1").await.unwrap());
        assert!(!store.delete_room("r1").await.unwrap());
        assert!(matches!(
            store.ensure_room("bad name", &defaults).await,
            Err(StoreError::InvalidRoomName(_))
        ));
        assert!(valid_room_name("Team-1_x") && !valid_room_name("a\0b") && !valid_room_name(""));
        let ensured = store.ensure_room("fresh", &defaults).await.unwrap();
        assert_eq!(
            store.ensure_room("fresh", &defaults).await.unwrap(),
            ensured
        );
        store.close().await;
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 123_456_789).unwrap()
    }

    /// The recording API of one backend, on a fresh database.
    async fn recordings_crud(store: &Store) {
        use RecordingStatus::*;
        // Five recordings over three rooms; two share a start time (the id breaks the tie).
        let mut ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        ids[1..3].sort();
        let plan = [("a", 0), ("b", 1), ("c", 1), ("a", 2), ("d", 3)];
        let mut recs = Vec::new();
        for (i, (room, t)) in plan.iter().enumerate() {
            if i == 3 {
                // "a" is still recording: a second running one is refused.
                let dup = store
                    .create_recording(Uuid::new_v4(), room, "x.webm", at(*t), None)
                    .await;
                assert!(matches!(&dup, Err(StoreError::RecordingInProgress(r)) if r == "a"));
                assert!(matches!(
                    ApiError::from(dup.unwrap_err()),
                    ApiError::RecordingInProgress(r) if r == "a"
                ));
                let ended = store
                    .end_recording(
                        ids[0],
                        &RecordingEnd {
                            status: Completed,
                            ended_at: at(1),
                            duration_ms: Some(1000),
                            size_bytes: Some(u64::from(u32::MAX) + 7),
                            error: None,
                        },
                    )
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(ended.status, Completed);
                assert_eq!(ended.ended_at, Some(to_micros(at(1))));
                assert_eq!(ended.size_bytes, Some(u64::from(u32::MAX) + 7));
                assert_eq!(
                    store.get_recording(ids[0]).await.unwrap(),
                    Some(ended.clone())
                );
                recs[0] = ended;
            }
            let file = format!("{}.webm", ids[i]);
            let r = store
                .create_recording(ids[i], room, &file, at(*t), Some("n1"))
                .await
                .unwrap();
            assert_eq!(
                (
                    r.status,
                    r.started_at,
                    r.ended_at,
                    r.duration_ms,
                    r.size_bytes
                ),
                (Recording, to_micros(at(*t)), None, None, None)
            );
            assert_eq!(r.file_name, file);
            assert_eq!(store.get_recording(ids[i]).await.unwrap(), Some(r.clone()));
            recs.push(r);
        }
        assert_eq!(store.get_recording(Uuid::new_v4()).await.unwrap(), None);

        // The room row shows its running recording.
        store
            .create_room(&NewRoom::with_defaults("a", &RoomDefaults::default()))
            .await
            .unwrap();
        let room = store.get_room("a").await.unwrap().unwrap();
        assert_eq!(room.recording_id, Some(ids[3]));

        // Fail one: status, error and missing numbers are kept as given.
        let failed = store
            .end_recording(
                ids[2],
                &RecordingEnd {
                    status: Failed,
                    ended_at: at(5),
                    duration_ms: None,
                    size_bytes: Some(10),
                    error: Some("disk full".into()),
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (failed.status, failed.error.as_deref(), failed.duration_ms),
            (Failed, Some("disk full"), None)
        );
        recs[2] = failed;
        let missing = RecordingEnd {
            status: Completed,
            ended_at: at(9),
            duration_ms: None,
            size_bytes: None,
            error: None,
        };
        assert_eq!(
            store.end_recording(Uuid::new_v4(), &missing).await.unwrap(),
            None
        );

        let running = store.recordings_with_status(Recording).await.unwrap();
        assert_eq!(
            running,
            vec![recs[1].clone(), recs[3].clone(), recs[4].clone()]
        );

        // Paging: every recording exactly once, in (started_at, id) order, whatever the size.
        for limit in [1, 2, 3, 5, 100] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = store
                    .list_recordings(None, None, limit, cursor.as_deref())
                    .await
                    .unwrap();
                assert!(page.recordings.len() <= limit as usize);
                seen.extend(page.recordings);
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(seen, recs, "limit {limit}");
        }
        // Filters, alone and together, also across pages.
        let page = store
            .list_recordings(Some("a"), None, 1, None)
            .await
            .unwrap();
        assert_eq!(page.recordings, vec![recs[0].clone()]);
        let page = store
            .list_recordings(Some("a"), None, 1, page.next_cursor.as_deref())
            .await
            .unwrap();
        assert_eq!(page.recordings, vec![recs[3].clone()]);
        assert!(page.next_cursor.is_none());
        let page = store
            .list_recordings(None, Some(Completed), 10, None)
            .await
            .unwrap();
        assert_eq!(page.recordings, vec![recs[0].clone()]);
        let page = store
            .list_recordings(Some("a"), Some(Recording), 10, None)
            .await
            .unwrap();
        assert_eq!(page.recordings, vec![recs[3].clone()]);
        let page = store
            .list_recordings(Some("nope"), None, 10, None)
            .await
            .unwrap();
        assert!(page.recordings.is_empty() && page.next_cursor.is_none());
        assert!(matches!(
            store.list_recordings(None, None, 10, Some("garbage")).await,
            Err(StoreError::InvalidCursor)
        ));

        assert!(store.delete_recording(ids[0]).await.unwrap());
        assert!(!store.delete_recording(ids[0]).await.unwrap());
        assert_eq!(store.get_recording(ids[0]).await.unwrap(), None);
        // Ending the running one frees the room for a new recording.
        store
            .end_recording(ids[3], &missing)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store.get_room("a").await.unwrap().unwrap().recording_id,
            None
        );
        store
            .create_recording(Uuid::new_v4(), "a", "y.webm", at(10), None)
            .await
            .unwrap();
    }

    /// A kick's ban holds until it ends, names one identity of one room (by id), and a later
    /// kick moves it.
    async fn bans(store: &Store) {
        let (room, other) = (Uuid::new_v4(), Uuid::new_v4());
        let soon = Utc::now() + chrono::Duration::seconds(300);
        assert_eq!(store.banned_until(room, "mallory").await.unwrap(), None);
        store.ban(room, "mallory", soon).await.unwrap();
        assert_eq!(
            store.banned_until(room, "mallory").await.unwrap(),
            Some(to_micros(soon))
        );
        assert_eq!(store.banned_until(room, "alice").await.unwrap(), None);
        assert_eq!(store.banned_until(other, "mallory").await.unwrap(), None);
        let later = soon + chrono::Duration::seconds(600);
        store.ban(room, "mallory", later).await.unwrap();
        assert_eq!(
            store.banned_until(room, "mallory").await.unwrap(),
            Some(to_micros(later))
        );
        // A shorter kick later does not shorten it.
        store.ban(room, "mallory", soon).await.unwrap();
        assert_eq!(
            store.banned_until(room, "mallory").await.unwrap(),
            Some(to_micros(later))
        );
        // An ended ban no longer counts, and is swept when the next one is written.
        store
            .ban(room, "eve", Utc::now() - chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(store.banned_until(room, "eve").await.unwrap(), None);
    }

    #[actix_web::test]
    async fn sqlite_recordings() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        recordings_crud(&store).await;
        bans(&store).await;
        placement(&store).await;
    }

    fn beat(id: &str, status: NodeStatus) -> NodeBeat {
        NodeBeat {
            id: id.into(),
            url: format!("http://{id}.example:8080"),
            status,
            rooms: 1,
            participants: 2,
            cpu: 0.5,
            cpu_budget: 1.7,
            started_at: at(0),
        }
    }

    /// Nodes register, a room is placed exactly once however many race for it, and moves only
    /// when its node is dead (silent past the TTL) or stopped.
    async fn placement(store: &Store) {
        use NodeStatus::*;
        let ttl = chrono::Duration::seconds(10);
        let t0 = at(1_000);
        for id in ["a", "b"] {
            store.heartbeat(&beat(id, Active), t0).await.unwrap();
        }
        store
            .create_room(&NewRoom::with_defaults("placed", &RoomDefaults::default()))
            .await
            .unwrap();
        assert_eq!(
            store.get_room("placed").await.unwrap().unwrap().node_id,
            None
        );
        // 16 placements at once, half for each node: all see the same single winner.
        let tries = (0..16).map(|i| store.place_room("placed", ["a", "b"][i % 2], t0 - ttl));
        let hosts = futures_util::future::join_all(tries).await;
        let first = hosts[0].as_ref().unwrap().clone().unwrap();
        assert!(
            hosts
                .iter()
                .all(|h| h.as_ref().unwrap().as_deref() == Some(first.as_str())),
            "{hosts:?}"
        );
        let other = if first == "a" { "b" } else { "a" };
        let room = store.get_room("placed").await.unwrap().unwrap();
        assert_eq!(room.node_id.as_deref(), Some(first.as_str()));
        let nodes = store.list_nodes().await.unwrap();
        assert_eq!(nodes.len(), 2);
        let n = nodes.iter().find(|n| n.id == first).unwrap();
        assert_eq!(
            (n.placed, n.participants, n.status.as_str()),
            (1, 2, "active")
        );
        assert_eq!(n.heartbeat_at, to_micros(t0));
        assert_eq!(n.url, format!("http://{first}.example:8080"));
        // Later, with its node still live (a heartbeat within the TTL): it stays.
        let t1 = t0 + chrono::Duration::seconds(8);
        store.heartbeat(&beat(&first, Active), t1).await.unwrap();
        store.heartbeat(&beat(other, Active), t1).await.unwrap();
        let host = store.place_room("placed", other, t1 - ttl).await.unwrap();
        assert_eq!(host.as_deref(), Some(first.as_str()));
        // Its node falls silent past the TTL: the room moves.
        let t2 = t1 + chrono::Duration::seconds(11);
        store.heartbeat(&beat(other, Active), t2).await.unwrap();
        let host = store.place_room("placed", other, t2 - ttl).await.unwrap();
        assert_eq!(host.as_deref(), Some(other));
        // A node that says it stopped gives its rooms up at once.
        store.heartbeat(&beat(&first, Active), t2).await.unwrap();
        assert_eq!(
            store
                .place_room("placed", &first, t2 - ttl)
                .await
                .unwrap()
                .as_deref(),
            Some(other)
        );
        store.heartbeat(&beat(other, Stopped), t2).await.unwrap();
        assert_eq!(
            store
                .place_room("placed", &first, t2 - ttl)
                .await
                .unwrap()
                .as_deref(),
            Some(first.as_str())
        );
        // No such room.
        assert_eq!(
            store.place_room("nowhere", "a", t2 - ttl).await.unwrap(),
            None
        );
    }

    /// The same on a fresh PostgreSQL database (`MCU_TEST_PG_URL`, default the local `test`
    /// database); skipped with a notice when PostgreSQL is unreachable, unless `CI` is set.
    #[actix_web::test]
    async fn postgres_recordings() {
        use sqlx::{Connection as _, Executor as _};
        let admin_url = std::env::var("MCU_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e)
                if ["CI", "MCU_TEST_REQUIRE_SERVICES"]
                    .iter()
                    .all(|v| std::env::var_os(v).is_none_or(|x| x.is_empty())) =>
            {
                eprintln!("NOTICE: skipping the PostgreSQL store test: {e}");
                return;
            }
            Err(e) => panic!("PostgreSQL unreachable: {e}"),
        };
        let db = format!("mcu_store_test_{}", Uuid::new_v4().simple());
        admin
            .execute(format!("CREATE DATABASE {db}").as_str())
            .await
            .unwrap();
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = format!("{base}/{db}{query}");
        // In a task, so that a failed assertion still lets us drop the database.
        let run = actix_web::rt::spawn(async move {
            let store = Store::connect(&url).await.unwrap();
            recordings_crud(&store).await;
            bans(&store).await;
            placement(&store).await;
            store.close().await;
        })
        .await;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
            .await
            .unwrap();
        if let Err(e) = run {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}
