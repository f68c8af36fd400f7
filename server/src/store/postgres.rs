//! PostgreSQL backend: native `uuid`, `timestamptz` (microseconds), `boolean`, `bigint`.

use super::{Cursor, RoomPatch, RoomRecord, StoreError, classify, to_layout, to_u32};
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
     r.empty_timeout_s, r.metadata, r.created_at, r.updated_at, \
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

pub(super) async fn rooms_with_empty_timeout(pool: &PgPool) -> Result<Vec<RoomRecord>, StoreError> {
    let sql = format!("{SELECT_ROOM} WHERE r.empty_timeout_s > 0 ORDER BY r.created_at, r.id");
    let rows = sqlx::query(&sql).fetch_all(pool).await.map_err(classify)?;
    rows.iter().map(room_from_row).collect()
}
