//! PostgreSQL backend: native `uuid`, `timestamptz` (microseconds), `boolean`, `bigint`.

use super::{
    Cursor, NodeBeat, NodeRow, PLACE_ROOM, RecordingEnd, RecordingFilter, RecordingRecord,
    RoomPatch, RoomRecord, StoreError, classify, to_i64, to_layout, to_status, to_u32, to_u64,
};
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use std::str::FromStr as _;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

pub(super) async fn connect(url: &str) -> Result<PgPool, StoreError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl(e.to_string()))?;
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .connect_with(opts)
        .await
        .map_err(classify)?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

pub(super) async fn ping(pool: &PgPool) -> Result<(), StoreError> {
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

fn room_from_row(row: &PgRow) -> Result<RoomRecord, StoreError> {
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(classify);
    Ok(RoomRecord {
        id: row.try_get::<Uuid, _>("id").map_err(classify)?,
        name: row.try_get("name").map_err(classify)?,
        max_participants: to_u32(get_i("max_participants")?, "max_participants")?,
        layout: to_layout(&row.try_get::<String, _>("layout").map_err(classify)?)?,
        auto_record: row.try_get("auto_record").map_err(classify)?,
        empty_timeout_s: to_u32(get_i("empty_timeout_s")?, "empty_timeout_s")?,
        metadata: row.try_get("metadata").map_err(classify)?,
        created_at: row.try_get("created_at").map_err(classify)?,
        updated_at: row.try_get("updated_at").map_err(classify)?,
        recording_id: row.try_get("recording_id").map_err(classify)?,
        node_id: row.try_get("node_id").map_err(classify)?,
    })
}

/// Inserts `rec`. With `if_absent`, an existing name is not an error and `false` is returned.
pub(super) async fn insert_room(
    pool: &PgPool,
    rec: &RoomRecord,
    if_absent: bool,
) -> Result<bool, StoreError> {
    let sql = if if_absent {
        "INSERT INTO rooms (id, name, max_participants, layout, auto_record, empty_timeout_s, \
         metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (name) DO NOTHING"
    } else {
        "INSERT INTO rooms (id, name, max_participants, layout, auto_record, empty_timeout_s, \
         metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    };
    let res = sqlx::query(sql)
        .bind(rec.id)
        .bind(&rec.name)
        .bind(i64::from(rec.max_participants))
        .bind(rec.layout.as_str())
        .bind(rec.auto_record)
        .bind(i64::from(rec.empty_timeout_s))
        .bind(rec.metadata.as_deref())
        .bind(rec.created_at)
        .bind(rec.updated_at)
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

pub(super) async fn get_room(pool: &PgPool, name: &str) -> Result<Option<RoomRecord>, StoreError> {
    let sql = format!("{SELECT_ROOM} WHERE r.name = $1");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(room_from_row).transpose()
}

pub(super) async fn list_rooms(
    pool: &PgPool,
    limit: i64,
    after: Option<Cursor>,
) -> Result<Vec<RoomRecord>, StoreError> {
    let rows = match after {
        None => {
            let sql = format!("{SELECT_ROOM} ORDER BY r.created_at, r.id LIMIT $1");
            sqlx::query(&sql).bind(limit).fetch_all(pool).await
        }
        Some(c) => {
            let sql = format!(
                "{SELECT_ROOM} WHERE (r.created_at, r.id) > ($1, $2) \
                 ORDER BY r.created_at, r.id LIMIT $3"
            );
            sqlx::query(&sql)
                .bind(c.created_at)
                .bind(c.id)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
    .map_err(classify)?;
    rows.iter().map(room_from_row).collect()
}

pub(super) async fn update_room(
    pool: &PgPool,
    name: &str,
    patch: &RoomPatch,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    // One statement, so concurrent patches of different fields do not undo each other.
    let res = sqlx::query(
        "UPDATE rooms SET \
         max_participants = COALESCE($1, max_participants), \
         layout = COALESCE($2, layout), \
         auto_record = COALESCE($3, auto_record), \
         empty_timeout_s = COALESCE($4, empty_timeout_s), \
         metadata = CASE WHEN $5 THEN $6 ELSE metadata END, \
         updated_at = $7 \
         WHERE name = $8",
    )
    .bind(patch.max_participants.map(i64::from))
    .bind(patch.layout.map(|l| l.as_str()))
    .bind(patch.auto_record)
    .bind(patch.empty_timeout_s.map(i64::from))
    .bind(patch.metadata.is_some())
    .bind(patch.metadata.clone().flatten())
    .bind(now)
    .bind(name)
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn delete_room(pool: &PgPool, name: &str) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM rooms WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn ban(
    pool: &PgPool,
    room_id: Uuid,
    identity: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Expired bans (of any room, deleted ones too) go as new ones come: the table stays small.
    sqlx::query("DELETE FROM bans WHERE until <= $1")
        .bind(now)
        .execute(pool)
        .await
        .map_err(classify)?;
    sqlx::query(
        "INSERT INTO bans (room_id, identity, until) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id, identity) DO UPDATE SET until = GREATEST(bans.until, EXCLUDED.until)",
    )
    .bind(room_id)
    .bind(identity)
    .bind(until)
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(())
}

pub(super) async fn banned_until(
    pool: &PgPool,
    room_id: Uuid,
    identity: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let row =
        sqlx::query("SELECT until FROM bans WHERE room_id = $1 AND identity = $2 AND until > $3")
            .bind(room_id)
            .bind(identity)
            .bind(now)
            .fetch_optional(pool)
            .await
            .map_err(classify)?;
    row.map(|r| r.try_get::<DateTime<Utc>, _>("until").map_err(classify))
        .transpose()
}

pub(super) async fn rooms_with_empty_timeout(pool: &PgPool) -> Result<Vec<RoomRecord>, StoreError> {
    // Only rooms whose timeout has run since their last change can be due (see sqlite.rs).
    let sql = format!(
        "{SELECT_ROOM} WHERE r.empty_timeout_s > 0 \
         AND r.updated_at + r.empty_timeout_s * interval '1 second' <= now() \
         ORDER BY r.created_at, r.id"
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await.map_err(classify)?;
    rows.iter().map(room_from_row).collect()
}

const RECORDING_COLUMNS: &str = "id, room_name, status, started_at, ended_at, duration_ms, size_bytes, file_name, error, \
     node_id, object_key, upload";

fn recording_from_row(row: &PgRow) -> Result<RecordingRecord, StoreError> {
    let get_opt_i = |c: &'static str| -> Result<Option<u64>, StoreError> {
        row.try_get::<Option<i64>, _>(c)
            .map_err(classify)?
            .map(|v| to_u64(v, c))
            .transpose()
    };
    Ok(RecordingRecord {
        id: row.try_get("id").map_err(classify)?,
        room: row.try_get("room_name").map_err(classify)?,
        status: to_status(&row.try_get::<String, _>("status").map_err(classify)?)?,
        started_at: row.try_get("started_at").map_err(classify)?,
        ended_at: row.try_get("ended_at").map_err(classify)?,
        duration_ms: get_opt_i("duration_ms")?,
        size_bytes: get_opt_i("size_bytes")?,
        file_name: row.try_get("file_name").map_err(classify)?,
        error: row.try_get("error").map_err(classify)?,
        node_id: row.try_get("node_id").map_err(classify)?,
        object_key: row.try_get("object_key").map_err(classify)?,
        upload: row.try_get("upload").map_err(classify)?,
    })
}

/// Inserts a running recording; the one-running-per-room index turns a second one into
/// `RecordingInProgress` (the random id cannot realistically collide).
pub(super) async fn insert_recording(
    pool: &PgPool,
    rec: &RecordingRecord,
) -> Result<(), StoreError> {
    let res = sqlx::query(
        "INSERT INTO recordings (id, room_name, status, started_at, file_name, node_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(rec.id)
    .bind(&rec.room)
    .bind(rec.status.as_str())
    .bind(rec.started_at)
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
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<RecordingRecord>, StoreError> {
    let sql = format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(recording_from_row).transpose()
}

pub(super) async fn end_recording(
    pool: &PgPool,
    id: Uuid,
    end: &RecordingEnd,
) -> Result<Option<RecordingRecord>, StoreError> {
    let sql = format!(
        "UPDATE recordings SET status = $1, ended_at = $2, duration_ms = $3, size_bytes = $4, \
         error = $5 WHERE id = $6 RETURNING {RECORDING_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(end.status.as_str())
        .bind(end.ended_at)
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
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(recording_from_row).transpose()
}

/// Recordings matching `filter` in `(started_at, id)` order; at most `limit` (all if `None`).
pub(super) async fn list_recordings(
    pool: &PgPool,
    filter: RecordingFilter<'_>,
    limit: Option<i64>,
) -> Result<Vec<RecordingRecord>, StoreError> {
    let sql = format!(
        "SELECT {RECORDING_COLUMNS} FROM recordings \
         WHERE ($1::text IS NULL OR room_name = $1) AND ($2::text IS NULL OR status = $2) \
         AND ($3::timestamptz IS NULL OR (started_at, id) > ($3, $4::uuid)) \
         ORDER BY started_at, id LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(filter.room)
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.after.map(|c| c.created_at))
        .bind(filter.after.map(|c| c.id))
        // LIMIT NULL is no limit.
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    rows.iter().map(recording_from_row).collect()
}

pub(super) async fn delete_recording(pool: &PgPool, id: Uuid) -> Result<bool, StoreError> {
    let res = sqlx::query("DELETE FROM recordings WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn set_recording_storage(
    pool: &PgPool,
    id: Uuid,
    object_key: Option<&str>,
    upload: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE recordings SET object_key = $2, upload = $3 WHERE id = $1")
        .bind(id)
        .bind(object_key)
        .bind(upload)
        .execute(pool)
        .await
        .map_err(classify)?;
    Ok(())
}

pub(super) async fn claim_recording(
    pool: &PgPool,
    id: Uuid,
    from: Option<&str>,
    to: &str,
) -> Result<bool, StoreError> {
    let res = sqlx::query(
        "UPDATE recordings SET node_id = $3 WHERE id = $1 AND status = 'recording' \
         AND node_id IS NOT DISTINCT FROM $2",
    )
    .bind(id)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn heartbeat(
    pool: &PgPool,
    n: &NodeBeat,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO nodes (id, url, status, rooms, participants, cpu, cpu_budget, started_at, \
         heartbeat_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET url = $2, status = $3, rooms = $4, participants = $5, \
         cpu = $6, cpu_budget = $7, started_at = $8, heartbeat_at = $9",
    )
    .bind(&n.id)
    .bind(&n.url)
    .bind(n.status.as_str())
    .bind(to_i64(n.rooms, "rooms")?)
    .bind(to_i64(n.participants, "participants")?)
    .bind(n.cpu)
    .bind(n.cpu_budget)
    .bind(n.started_at)
    .bind(now)
    .execute(pool)
    .await
    .map_err(classify)?;
    Ok(())
}

pub(super) async fn list_nodes(pool: &PgPool) -> Result<Vec<NodeRow>, StoreError> {
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
            let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(classify);
            Ok(NodeRow {
                id: row.try_get("id").map_err(classify)?,
                url: row.try_get("url").map_err(classify)?,
                status: row.try_get("status").map_err(classify)?,
                rooms: to_u64(get_i("rooms")?, "rooms")?,
                participants: to_u64(get_i("participants")?, "participants")?,
                cpu: row.try_get("cpu").map_err(classify)?,
                cpu_budget: row.try_get("cpu_budget").map_err(classify)?,
                started_at: row.try_get("started_at").map_err(classify)?,
                heartbeat_at: row.try_get("heartbeat_at").map_err(classify)?,
                placed: to_u64(get_i("placed")?, "placed")?,
            })
        })
        .collect()
}

pub(super) async fn place_room(
    pool: &PgPool,
    name: &str,
    node: &str,
    live_since: DateTime<Utc>,
) -> Result<Option<Option<String>>, StoreError> {
    sqlx::query(PLACE_ROOM)
        .bind(name)
        .bind(node)
        .bind(live_since)
        .execute(pool)
        .await
        .map_err(classify)?;
    let row = sqlx::query("SELECT node_id FROM rooms WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.map(|r| r.try_get::<Option<String>, _>("node_id").map_err(classify))
        .transpose()
}
