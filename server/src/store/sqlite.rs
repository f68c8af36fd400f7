//! SQLite backend. Timestamps are fixed-width RFC 3339 text (`…T…:…:….ffffffZ`), ids hyphenated
//! UUID text, so `ORDER BY created_at, id` is time order and matches PostgreSQL's order.

use super::{
    Cursor, NodeBeat, NodeRow, PLACE_ROOM, RecordingEnd, RecordingFilter, RecordingRecord,
    RoomPatch, RoomRecord, StoreError, classify, to_i64, to_layout, to_status, to_u32, to_u64,
};
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use std::str::FromStr as _;
use std::time::Duration;
use uuid::Uuid;

/// How long a writer waits for SQLite's lock before the call fails (`Unavailable`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(s: &str, field: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("{field} '{s}': {e}")))
}

fn parse_uuid(s: &str, field: &str) -> Result<Uuid, StoreError> {
    Uuid::try_parse(s).map_err(|e| StoreError::Corrupt(format!("{field} '{s}': {e}")))
}

pub(super) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let opts = SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::BadUrl(e.to_string()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let dir = opts
        .get_filename()
        .parent()
        .filter(|d| !d.as_os_str().is_empty());
    if let (false, Some(dir)) = (memory, dir) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let pool_opts = SqlitePoolOptions::new().acquire_timeout(super::ACQUIRE_TIMEOUT);
    // An in-memory database lives as long as its connections: keep exactly one, forever.
    let pool_opts = if memory {
        pool_opts
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        pool_opts.max_connections(8)
    };
    let pool = pool_opts.connect_with(opts).await.map_err(classify)?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

pub(super) async fn ping(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(classify)
}

const SELECT_ROOM: &str = "SELECT r.id, r.name, r.max_participants, r.layout, r.auto_record, \
     r.empty_timeout_s, r.metadata, r.created_at, r.updated_at, r.node_id, \
     (SELECT rec.id FROM recordings rec WHERE rec.room_name = r.name AND rec.status = 'recording' \
      ORDER BY rec.started_at DESC LIMIT 1) AS recording_id \
     FROM rooms r";

fn room_from_row(row: &SqliteRow) -> Result<RoomRecord, StoreError> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(classify);
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(classify);
    let recording_id: Option<String> = row.try_get("recording_id").map_err(classify)?;
    Ok(RoomRecord {
        id: parse_uuid(&get_s("id")?, "rooms.id")?,
        name: get_s("name")?,
        max_participants: to_u32(get_i("max_participants")?, "max_participants")?,
        layout: to_layout(&get_s("layout")?)?,
        auto_record: row.try_get::<bool, _>("auto_record").map_err(classify)?,
        empty_timeout_s: to_u32(get_i("empty_timeout_s")?, "empty_timeout_s")?,
        metadata: row.try_get("metadata").map_err(classify)?,
        created_at: parse_ts(&get_s("created_at")?, "created_at")?,
        updated_at: parse_ts(&get_s("updated_at")?, "updated_at")?,
        recording_id: recording_id
            .map(|s| parse_uuid(&s, "recordings.id"))
            .transpose()?,
        node_id: row.try_get("node_id").map_err(classify)?,
    })
}

/// Inserts `rec`. With `if_absent`, an existing name is not an error and `false` is returned.
pub(super) async fn insert_room(
    pool: &SqlitePool,
    rec: &RoomRecord,
    if_absent: bool,
) -> Result<bool, StoreError> {
    let sql = if if_absent {
        "INSERT INTO rooms (id, name, max_participants, layout, auto_record, empty_timeout_s, \
         metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (name) DO NOTHING"
    } else {
        "INSERT INTO rooms (id, name, max_participants, layout, auto_record, empty_timeout_s, \
         metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    };
    let res = sqlx::query(sql)
        .bind(rec.id.to_string())
        .bind(&rec.name)
        .bind(i64::from(rec.max_participants))
        .bind(rec.layout.as_str())
        .bind(rec.auto_record)
        .bind(i64::from(rec.empty_timeout_s))
        .bind(rec.metadata.as_deref())
        .bind(ts(rec.created_at))
        .bind(ts(rec.updated_at))
        .execute(pool)
        .await;
    match res {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(StoreError::RoomExists(rec.name.clone()))
        }
        Err(e) => Err(classify(e)),
    }
}

pub(super) async fn get_room(
    pool: &SqlitePool,
    name: &str,
) -> Result<Option<RoomRecord>, StoreError> {
    let sql = format!("{SELECT_ROOM} WHERE r.name = ?");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(room_from_row).transpose()
}

pub(super) async fn list_rooms(
    pool: &SqlitePool,
    limit: i64,
    after: Option<Cursor>,
) -> Result<Vec<RoomRecord>, StoreError> {
    let rows = match after {
        None => {
            let sql = format!("{SELECT_ROOM} ORDER BY r.created_at, r.id LIMIT ?");
            sqlx::query(&sql).bind(limit).fetch_all(pool).await
        }
        Some(c) => {
            let sql = format!(
                "{SELECT_ROOM} WHERE r.created_at > ?1 OR (r.created_at = ?1 AND r.id > ?2) \
                 ORDER BY r.created_at, r.id LIMIT ?3"
            );
            sqlx::query(&sql)
                .bind(ts(c.created_at))
                .bind(c.id.to_string())
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
    .map_err(classify)?;
    rows.iter().map(room_from_row).collect()
}

pub(super) async fn update_room(
    pool: &SqlitePool,
    name: &str,
    patch: &RoomPatch,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    // One statement, so concurrent patches of different fields do not undo each other.
    let res = sqlx::query(
        "UPDATE rooms SET \
         max_participants = COALESCE(?1, max_participants), \
         layout = COALESCE(?2, layout), \
         auto_record = COALESCE(?3, auto_record), \
         empty_timeout_s = COALESCE(?4, empty_timeout_s), \
         metadata = CASE WHEN ?5 THEN ?6 ELSE metadata END, \
         updated_at = ?7 \
         WHERE name = ?8",
    )
    .bind(patch.max_participants.map(i64::from))
    .bind(patch.layout.map(|l| l.as_str()))
    .bind(patch.auto_record)
    .bind(patch.empty_timeout_s.map(i64::from))
    .bind(patch.metadata.is_some())
    .bind(patch.metadata.clone().flatten())
    .bind(ts(now))
    .bind(name)
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn delete_room(pool: &SqlitePool, name: &str) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM rooms WHERE name = ?")
        .bind(name)
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn ban(
    pool: &SqlitePool,
    room_id: Uuid,
    identity: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Expired bans (of any room, deleted ones too) go as new ones come: the table stays small.
    sqlx::query("DELETE FROM bans WHERE until <= ?")
        .bind(ts(now))
        .execute(pool)
        .await
        .map_err(classify)?;
    sqlx::query(
        "INSERT INTO bans (room_id, identity, until) VALUES (?, ?, ?) \
         ON CONFLICT (room_id, identity) DO UPDATE SET until = MAX(until, excluded.until)",
    )
    .bind(room_id.to_string())
    .bind(identity)
    .bind(ts(until))
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(())
}

pub(super) async fn banned_until(
    pool: &SqlitePool,
    room_id: Uuid,
    identity: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row =
        sqlx::query("SELECT until FROM bans WHERE room_id = ? AND identity = ? AND until > ?")
            .bind(room_id.to_string())
            .bind(identity)
            .bind(ts(now))
            .fetch_optional(pool)
            .await
            .map_err(classify)?;
    row.map(|r| parse_ts(&r.try_get::<String, _>("until").map_err(classify)?, "until"))
        .transpose()
}

pub(super) async fn rooms_with_empty_timeout(
    pool: &SqlitePool,
) -> Result<Vec<RoomRecord>, StoreError> {
    // Only rooms whose timeout has run since their last change can be due: a cheap necessary
    // condition, so that thousands of idle rooms do not cost a full read every pass.
    let sql = format!(
        "{SELECT_ROOM} WHERE r.empty_timeout_s > 0 \
         AND julianday(r.updated_at) + r.empty_timeout_s / 86400.0 <= julianday('now') \
         ORDER BY r.created_at, r.id"
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await.map_err(classify)?;
    rows.iter().map(room_from_row).collect()
}

const RECORDING_COLUMNS: &str = "id, room_name, status, started_at, ended_at, duration_ms, size_bytes, file_name, error, \
     node_id, object_key, upload";

fn recording_from_row(row: &SqliteRow) -> Result<RecordingRecord, StoreError> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(classify);
    let get_opt_i = |c: &'static str| -> Result<Option<u64>, StoreError> {
        row.try_get::<Option<i64>, _>(c)
            .map_err(classify)?
            .map(|v| to_u64(v, c))
            .transpose()
    };
    let ended_at: Option<String> = row.try_get("ended_at").map_err(classify)?;
    Ok(RecordingRecord {
        id: parse_uuid(&get_s("id")?, "recordings.id")?,
        room: get_s("room_name")?,
        status: to_status(&get_s("status")?)?,
        started_at: parse_ts(&get_s("started_at")?, "started_at")?,
        ended_at: ended_at.map(|s| parse_ts(&s, "ended_at")).transpose()?,
        duration_ms: get_opt_i("duration_ms")?,
        size_bytes: get_opt_i("size_bytes")?,
        file_name: get_s("file_name")?,
        error: row.try_get("error").map_err(classify)?,
        node_id: row.try_get("node_id").map_err(classify)?,
        object_key: row.try_get("object_key").map_err(classify)?,
        upload: row.try_get("upload").map_err(classify)?,
    })
}

/// Inserts a running recording; the one-running-per-room index turns a second one into
/// `RecordingInProgress` (the random id cannot realistically collide).
pub(super) async fn insert_recording(
    pool: &SqlitePool,
    rec: &RecordingRecord,
) -> Result<(), StoreError> {
    let res = sqlx::query(
        "INSERT INTO recordings (id, room_name, status, started_at, file_name, node_id) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(rec.id.to_string())
    .bind(&rec.room)
    .bind(rec.status.as_str())
    .bind(ts(rec.started_at))
    .bind(&rec.file_name)
    .bind(rec.node_id.as_deref())
    .execute(pool)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(StoreError::RecordingInProgress(rec.room.clone()))
        }
        Err(e) => Err(classify(e)),
    }
}

pub(super) async fn get_recording(
    pool: &SqlitePool,
    id: Uuid,
) -> Result<Option<RecordingRecord>, StoreError> {
    let sql = format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = ?");
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(recording_from_row).transpose()
}

pub(super) async fn end_recording(
    pool: &SqlitePool,
    id: Uuid,
    end: &RecordingEnd,
) -> Result<Option<RecordingRecord>, StoreError> {
    let sql = format!(
        "UPDATE recordings SET status = ?, ended_at = ?, duration_ms = ?, size_bytes = ?, \
         error = ? WHERE id = ? RETURNING {RECORDING_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(end.status.as_str())
        .bind(ts(end.ended_at))
        .bind(
            end.duration_ms
                .map(|v| to_i64(v, "duration_ms"))
                .transpose()?,
        )
        .bind(
            end.size_bytes
                .map(|v| to_i64(v, "size_bytes"))
                .transpose()?,
        )
        .bind(end.error.as_deref())
        .bind(id.to_string())
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(recording_from_row).transpose()
}

/// Recordings matching `filter` in `(started_at, id)` order; at most `limit` (all if `None`).
pub(super) async fn list_recordings(
    pool: &SqlitePool,
    filter: RecordingFilter<'_>,
    limit: Option<i64>,
) -> Result<Vec<RecordingRecord>, StoreError> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recordings \
         WHERE (?1 IS NULL OR room_name = ?1) AND (?2 IS NULL OR status = ?2) \
         AND (?3 IS NULL OR started_at > ?3 OR (started_at = ?3 AND id > ?4)) \
         ORDER BY started_at, id LIMIT ?5"
    );
    let rows = sqlx::query(&sql)
        .bind(filter.room)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.after.map(|c| ts(c.created_at)))
        .bind(filter.after.map(|c| c.id.to_string()))
        // A negative LIMIT is no limit in SQLite.
        .bind(limit.unwrap_or(-1))
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    rows.iter().map(recording_from_row).collect()
}

pub(super) async fn delete_recording(pool: &SqlitePool, id: Uuid) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM recordings WHERE id = ?")
        .bind(id.to_string())
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn set_recording_storage(
    pool: &SqlitePool,
    id: Uuid,
    object_key: Option<&str>,
    upload: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE recordings SET object_key = ?2, upload = ?3 WHERE id = ?1")
        .bind(id.to_string())
        .bind(object_key)
        .bind(upload)
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(())
}

pub(super) async fn claim_recording(
    pool: &SqlitePool,
    id: Uuid,
    from: Option<&str>,
    to: &str,
) -> Result<bool, StoreError> {
    let res = sqlx::query(
        "UPDATE recordings SET node_id = ?3 WHERE id = ?1 AND status = 'recording' \
         AND node_id IS ?2",
    )
    .bind(id.to_string())
    .bind(from)
    .bind(to)
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn heartbeat(
    pool: &SqlitePool,
    n: &NodeBeat,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO nodes (id, url, status, rooms, participants, cpu, cpu_budget, started_at, \
         heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (id) DO UPDATE SET url = ?2, status = ?3, rooms = ?4, participants = ?5, \
         cpu = ?6, cpu_budget = ?7, started_at = ?8, heartbeat_at = ?9",
    )
    .bind(&n.id)
    .bind(&n.url)
    .bind(n.status.as_str())
    .bind(to_i64(n.rooms, "rooms")?)
    .bind(to_i64(n.participants, "participants")?)
    .bind(n.cpu)
    .bind(n.cpu_budget)
    .bind(ts(n.started_at))
    .bind(ts(now))
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(())
}

pub(super) async fn list_nodes(pool: &SqlitePool) -> Result<Vec<NodeRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT n.id, n.url, n.status, n.rooms, n.participants, n.cpu, n.cpu_budget, \
         n.started_at, n.heartbeat_at, \
         (SELECT COUNT(*) FROM rooms r WHERE r.node_id = n.id) AS placed \
         FROM nodes n ORDER BY n.id",
    )
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    rows.iter()
        .map(|row| {
            let get_s = |c: &str| row.try_get::<String, _>(c).map_err(classify);
            let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(classify);
            Ok(NodeRow {
                id: get_s("id")?,
                url: get_s("url")?,
                status: get_s("status")?,
                rooms: to_u64(get_i("rooms")?, "rooms")?,
                participants: to_u64(get_i("participants")?, "participants")?,
                cpu: row.try_get("cpu").map_err(classify)?,
                cpu_budget: row.try_get("cpu_budget").map_err(classify)?,
                started_at: parse_ts(&get_s("started_at")?, "started_at")?,
                heartbeat_at: parse_ts(&get_s("heartbeat_at")?, "heartbeat_at")?,
                placed: to_u64(get_i("placed")?, "placed")?,
            })
        })
        .collect()
}

pub(super) async fn place_room(
    pool: &SqlitePool,
    name: &str,
    node: &str,
    live_since: DateTime<Utc>,
) -> Result<Option<Option<String>>, StoreError> {
    // The same statement as PostgreSQL's, with SQLite's numbered parameters.
    sqlx::query(&PLACE_ROOM.replace('$', "?"))
        .bind(name)
        .bind(node)
        .bind(ts(live_since))
        .execute(pool)
        .await
        .map_err(classify)?;
    let row = sqlx::query("SELECT node_id FROM rooms WHERE name = ?1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.map(|r| r.try_get::<Option<String>, _>("node_id").map_err(classify))
        .transpose()
}
