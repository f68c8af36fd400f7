//! The recording service: start/stop of a room's recording, the writer thread that owns the
//! WebM file, crash recovery at start-up, finalization at shutdown.
//!
//! A recording is a receive-only sink of the room's media thread: it gets the full mix and the
//! composite from the tier encoder with the recording's bitrate (no extra encode when a tier
//! matches) stamped with the room clock, so audio and video share one timeline by construction.
//! The writer runs on its own OS thread (file I/O never touches the media tick); the sink queue
//! between them is bounded ([`SINK_QUEUE`]).
//!
//! Lifecycle: `recording` → `completed` (stopped, room deleted, auto-record room emptied,
//! shutdown) | `failed` (write error: the meeting goes on) | `interrupted` (the process died;
//! found and repaired at the next start).
//!
//! With object storage (`MCU_S3_*`) the file also follows into the bucket as it grows and ends
//! there ([`upload`]); its row's `object_key` then names it and the local file is removed.

pub mod upload;

use crate::config::MediaSettings;
use crate::error::ApiError;
use crate::model::RecordingStatus;
use crate::objstore::ObjectStore;
use crate::room::RoomManager;
use crate::room::media::{SINK_QUEUE, SinkPacket};
use crate::store::{RecordingEnd, RecordingRecord, Store};
use anyhow::Context as _;
use chrono::Utc;
use parking_lot::Mutex;
use recorder::{AudioParams, VideoParams, WebmWriter};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// How long `stop` waits for the writer to finish the file.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Auto-record of a room whose previous recording still runs (on a node stopping or dead) tries
/// again this often, this many times (a minute: the previous node's drain or take-over).
const AUTO_RECORD_RETRY: Duration = Duration::from_secs(2);
const AUTO_RECORD_TRIES: u32 = 30;

struct Active {
    room: String,
    key: u64,
    auto: bool,
    done: watch::Receiver<Option<RecordingRecord>>,
}

struct Inner {
    store: Store,
    rooms: RoomManager,
    dir: PathBuf,
    media: MediaSettings,
    /// This node's id, written on each recording it starts.
    node_id: String,
    /// Object storage the recordings end in, if any.
    s3: Option<ObjectStore>,
    active: Mutex<HashMap<Uuid, Active>>,
}

/// The recording service (one per process). Cheap to clone.
#[derive(Clone)]
pub struct Recordings(Arc<Inner>);

/// What the writer thread reports when it ends.
struct WriterOutcome {
    error: Option<String>,
    duration_ms: u64,
    size_bytes: Option<u64>,
    /// Byte ranges the trailer wrote over (an upload sends them again).
    rewritten: Vec<std::ops::Range<u64>>,
}

/// A running upload: the end of the file goes in, the upload's outcome comes out.
type UploadHandle = (
    oneshot::Sender<(u64, Vec<std::ops::Range<u64>>)>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

impl Recordings {
    /// The service of node `node_id`, writing into `dir` (created if missing), and uploading
    /// to `s3` if given.
    pub fn new(
        store: Store,
        rooms: RoomManager,
        dir: PathBuf,
        media: MediaSettings,
        node_id: String,
        s3: Option<ObjectStore>,
    ) -> std::io::Result<Recordings> {
        std::fs::create_dir_all(&dir)?;
        Ok(Recordings(Arc::new(Inner {
            store,
            rooms,
            dir,
            media,
            node_id,
            s3,
            active: Mutex::new(HashMap::new()),
        })))
    }

    /// The object storage recordings end in, if any.
    pub fn object_store(&self) -> Option<&ObjectStore> {
        self.0.s3.as_ref()
    }

    /// The file of a recording. Names come from the store, where only `<uuid>.webm` is ever
    /// written; anything else falls back to the id so that a path can never escape the directory.
    pub fn path_of(&self, rec: &RecordingRecord) -> PathBuf {
        let safe = rec.file_name.len() <= 64
            && !rec.file_name.starts_with('.')
            && rec
                .file_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if safe {
            self.0.dir.join(&rec.file_name)
        } else {
            self.0.dir.join(format!("{}.webm", rec.id))
        }
    }

    /// Whether `room` is being recorded, and by which recording.
    pub fn active_in(&self, room: &str) -> Option<Uuid> {
        let active = self.0.active.lock();
        active
            .iter()
            .find(|(_, a)| a.room == room)
            .map(|(id, _)| *id)
    }

    /// Starts recording `room` (404 `room_not_found`, 409 `recording_in_progress`).
    pub async fn start(&self, room: &str) -> Result<RecordingRecord, ApiError> {
        self.start_inner(room, false).await
    }

    /// Starts an auto-record recording when the first participant joins (no-op if one runs).
    /// A room that just moved here (its node stopped or died) may still have that node's
    /// recording running while it is finished or taken over: this one starts once it has ended.
    pub async fn start_auto(&self, room: &str) {
        for attempt in 0..AUTO_RECORD_TRIES {
            if self.active_in(room).is_some() || self.0.rooms.active_count(room) == 0 {
                return;
            }
            match self.start_inner(room, true).await {
                Ok(r) => {
                    tracing::info!(room, recording = %r.id, "auto-record started");
                    return;
                }
                Err(ApiError::RecordingInProgress(_)) => {
                    if attempt == 0 {
                        tracing::info!(
                            room,
                            "auto-record waits for the room's previous recording to end"
                        );
                    }
                    tokio::time::sleep(AUTO_RECORD_RETRY).await;
                }
                Err(e) => {
                    tracing::error!(room, error = %e, "auto-record could not start");
                    return;
                }
            }
        }
        tracing::warn!(
            room,
            "auto-record did not start: the room's previous recording is still running"
        );
    }

    async fn start_inner(&self, room: &str, auto: bool) -> Result<RecordingRecord, ApiError> {
        let inner = &self.0;
        let record = inner
            .store
            .get_room(room)
            .await?
            .ok_or_else(|| ApiError::RoomNotFound(room.to_string()))?;
        if self.active_in(room).is_some() {
            return Err(ApiError::RecordingInProgress(room.to_string()));
        }
        let id = Uuid::new_v4();
        let file_name = format!("{id}.webm");
        let rec = inner
            .store
            .create_recording(id, room, &file_name, Utc::now(), Some(&inner.node_id))
            .await?;
        let path = self.path_of(&rec);
        let m = &inner.media;
        let video = VideoParams {
            width: m.canvas_width,
            height: m.canvas_height,
            fps: m.fps,
        };
        let created = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                WebmWriter::create(&path, video, AudioParams::default())
            })
            .await
        };
        let writer = match created {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                let why = format!("cannot create the recording file: {e}");
                self.end(id, RecordingStatus::Failed, 0, None, Some(why.clone()))
                    .await;
                return Err(ApiError::Unexpected(anyhow::anyhow!(why)));
            }
            Err(e) => return Err(ApiError::Unexpected(anyhow::anyhow!("writer task: {e}"))),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(SINK_QUEUE);
        let key = match inner
            .rooms
            .add_sink(room, record.layout, m.recording_kbps, tx)
        {
            Ok(k) => k,
            Err(e) => {
                drop(writer);
                let _ = std::fs::remove_file(&path);
                let why = format!("room media unavailable: {e}");
                self.end(id, RecordingStatus::Failed, 0, None, Some(why.clone()))
                    .await;
                return Err(ApiError::Unavailable(why));
            }
        };
        let (done_tx, done_rx) = watch::channel(None);
        inner.active.lock().insert(
            id,
            Active {
                room: room.to_string(),
                key,
                auto,
                done: done_rx,
            },
        );
        let upload = inner.s3.clone().map(|s3| {
            let key = s3.key_of(&rec.file_name);
            let up = upload::Uploader::new(s3, inner.store.clone(), id, key, path.clone());
            let (end_tx, end_rx) = oneshot::channel();
            (end_tx, tokio::spawn(follow(up, end_rx)))
        });
        let (res_tx, res_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("rec-{}", &id.simple().to_string()[..8]))
            .spawn(move || {
                let _ = res_tx.send(write_loop(writer, rx, &path));
            });
        if let Err(e) = thread {
            // Without its thread the sink's queue closes at once and the outcome below fails.
            tracing::error!(error = %e, "cannot start the recording writer thread");
        }
        let this = self.clone();
        let room_name = room.to_string();
        tokio::spawn(async move {
            this.supervise(id, room_name, key, res_rx, upload, done_tx)
                .await
        });
        tracing::info!(room, recording = %id, auto, kbps = m.recording_kbps, "recording started");
        inner.rooms.broadcast(
            room,
            &serde_json::json!({"type": "recording", "status": "started", "recording_id": id}),
            None,
        );
        Ok(rec)
    }

    /// Waits for the writer, then records how the recording ended.
    async fn supervise(
        self,
        id: Uuid,
        room: String,
        key: u64,
        res: oneshot::Receiver<WriterOutcome>,
        upload: Option<UploadHandle>,
        done: watch::Sender<Option<RecordingRecord>>,
    ) {
        let mut outcome = res.await.unwrap_or(WriterOutcome {
            error: Some("the writer thread ended unexpectedly".into()),
            duration_ms: 0,
            size_bytes: None,
            rewritten: Vec::new(),
        });
        if let Some(upload) = upload {
            self.finish_upload(id, &mut outcome, upload).await;
        }
        let status = match &outcome.error {
            None => RecordingStatus::Completed,
            Some(e) => {
                tracing::error!(room, recording = %id, error = %e, "recording failed; the meeting goes on");
                RecordingStatus::Failed
            }
        };
        // Whatever ended it, the media thread must stop producing for it.
        self.0.rooms.remove_sink(&room, key);
        let rec = self
            .end(
                id,
                status,
                outcome.duration_ms,
                outcome.size_bytes,
                outcome.error,
            )
            .await;
        self.0.active.lock().remove(&id);
        tracing::info!(room, recording = %id, ?status, duration_ms = outcome.duration_ms,
            size_bytes = outcome.size_bytes, "recording ended");
        self.0.rooms.broadcast(
            &room,
            &serde_json::json!({"type": "recording", "status": "stopped", "recording_id": id}),
            None,
        );
        let _ = done.send(Some(rec.unwrap_or_else(|| placeholder(id, &room, status))));
    }

    /// Completes a recording's upload once its file is finished; the local file is then
    /// removed. If the upload fails the file stays here, served by this node, and the
    /// recording's error says so.
    async fn finish_upload(&self, id: Uuid, outcome: &mut WriterOutcome, upload: UploadHandle) {
        let (end_tx, task) = upload;
        let Some(rec) = self.0.store.get_recording(id).await.ok().flatten() else {
            // Without the row nothing can name the object; the file stays local.
            drop(end_tx);
            let _ = task.await;
            return;
        };
        let path = self.path_of(&rec);
        let len = match outcome.size_bytes {
            Some(n) => n,
            None => std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        };
        let _ = end_tx.send((len, std::mem::take(&mut outcome.rewritten)));
        let uploaded = match task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("upload task: {e}")),
        };
        let key = self.0.s3.as_ref().map(|s3| s3.key_of(&rec.file_name));
        let stored = match uploaded {
            Ok(()) => {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(recording = %id, error = %e, "cannot remove the uploaded local file");
                }
                tracing::info!(recording = %id, key = key.as_deref().unwrap_or(""), size_bytes = len,
                    "recording uploaded to object storage");
                self.0
                    .store
                    .set_recording_storage(id, key.as_deref(), None)
                    .await
            }
            Err(e) => {
                tracing::error!(recording = %id, error = %e, "recording not uploaded; its file stays on this node");
                let why = format!(
                    "not uploaded to object storage ({e}); the file stays on node {}",
                    self.0.node_id
                );
                outcome.error = Some(match outcome.error.take() {
                    Some(first) => format!("{first}; {why}"),
                    None => why,
                });
                self.0.store.set_recording_storage(id, None, None).await
            }
        };
        if let Err(e) = stored {
            tracing::warn!(recording = %id, error = %e, "cannot store where the recording is");
        }
    }

    /// Writes the end of a recording, retrying while the database is briefly unavailable (if it
    /// stays away, the row stays `recording` and the next start marks it `interrupted`).
    async fn end(
        &self,
        id: Uuid,
        status: RecordingStatus,
        duration_ms: u64,
        size_bytes: Option<u64>,
        error: Option<String>,
    ) -> Option<RecordingRecord> {
        let end = RecordingEnd {
            status,
            ended_at: Utc::now(),
            duration_ms: Some(duration_ms),
            size_bytes,
            error,
        };
        for attempt in 0..5 {
            match self.0.store.end_recording(id, &end).await {
                Ok(r) => return r,
                Err(e) => {
                    tracing::warn!(recording = %id, attempt, error = %e, "cannot store the end of a recording");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
        None
    }

    /// Stops a recording and returns it finished (404 `recording_not_found`). Stopping one that
    /// already ended returns it as it is.
    pub async fn stop(&self, id: Uuid) -> Result<RecordingRecord, ApiError> {
        let running = {
            let active = self.0.active.lock();
            active
                .get(&id)
                .map(|a| (a.room.clone(), a.key, a.done.clone()))
        };
        let Some((room, key, mut done)) = running else {
            return self
                .0
                .store
                .get_recording(id)
                .await?
                .ok_or_else(|| ApiError::RecordingNotFound(id.to_string()));
        };
        self.0.rooms.remove_sink(&room, key);
        let finished = tokio::time::timeout(STOP_TIMEOUT, done.wait_for(Option::is_some)).await;
        match finished {
            Ok(Ok(r)) => r
                .clone()
                .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("no recording result"))),
            _ => Err(ApiError::Unavailable(
                "the recording is still being finalized; ask again".into(),
            )),
        }
    }

    /// Finalizes the running recording of `room`, if any (room deleted).
    pub async fn stop_room(&self, room: &str) {
        if let Some(id) = self.active_in(room)
            && let Err(e) = self.stop(id).await
        {
            tracing::error!(room, recording = %id, error = %e, "cannot finalize recording");
        }
    }

    /// Stops the room's recording if auto-record started it (the room emptied).
    pub async fn stop_auto(&self, room: &str) {
        let id = {
            let active = self.0.active.lock();
            active
                .iter()
                .find(|(_, a)| a.room == room && a.auto)
                .map(|(id, _)| *id)
        };
        if let Some(id) = id {
            tracing::info!(room, recording = %id, "room empty: auto-record stops");
            if let Err(e) = self.stop(id).await {
                tracing::error!(room, recording = %id, error = %e, "cannot stop auto-record");
            }
        }
    }

    /// Deletes a recording: stops it if running, removes the file and the row (404).
    pub async fn delete(&self, id: Uuid) -> Result<(), ApiError> {
        let rec = self.stop(id).await?;
        let path = self.path_of(&rec);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::Unexpected(anyhow::anyhow!(
                    "cannot remove recording file: {e}"
                )));
            }
        }
        if let Some(key) = &rec.object_key {
            let Some(s3) = &self.0.s3 else {
                return Err(ApiError::Unavailable(format!(
                    "the recording is in object storage ({key}), which this node is not set up \
                     for (MCU_S3_*)"
                )));
            };
            s3.delete(key).await.map_err(|e| {
                ApiError::Unavailable(format!("cannot delete the recording's object ({e})"))
            })?;
            upload::delete_tails(s3, key).await;
        }
        if !self.0.store.delete_recording(id).await? {
            return Err(ApiError::RecordingNotFound(id.to_string()));
        }
        tracing::info!(recording = %id, "recording deleted");
        Ok(())
    }

    /// Finalizes every running recording as `completed` (SIGTERM). Returns how many.
    pub async fn shutdown(&self) -> usize {
        let ids: Vec<Uuid> = self.0.active.lock().keys().copied().collect();
        let stops = ids.iter().map(|id| self.stop(*id));
        let n = futures_util::future::join_all(stops)
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        if n > 0 {
            tracing::info!(n, "recordings finalized for shutdown");
        }
        n
    }

    /// Recordings a dead process left in `recording` (this node's previous run, at start-up; a
    /// dead node's, when one of its rooms is placed again) are repaired (duration and cues
    /// written) when their file is reachable, marked `interrupted` with their duration, and stay
    /// downloadable. Those another live node is writing (`live_others`) are its own business.
    pub async fn recover_interrupted(&self, live_others: &[String]) -> anyhow::Result<usize> {
        let left: Vec<RecordingRecord> = self
            .0
            .store
            .recordings_with_status(RecordingStatus::Recording)
            .await?
            .into_iter()
            .filter(|r| r.node_id.as_ref().is_none_or(|n| !live_others.contains(n)))
            // Not those this process writes now (a take-over while it records).
            .filter(|r| !self.0.active.lock().contains_key(&r.id))
            .collect();
        let mut n = 0;
        for rec in left {
            // Another node's (dead) or from before nodes: take it over first, so that two nodes
            // never repair one file.
            if rec.node_id.as_deref() != Some(self.0.node_id.as_str()) {
                match self
                    .0
                    .store
                    .claim_recording(rec.id, rec.node_id.as_deref(), &self.0.node_id)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(recording = %rec.id, error = %e, "cannot take over a recording");
                        continue;
                    }
                }
            }
            n += 1;
            let path = self.path_of(&rec);
            let foreign = rec.node_id.as_deref().filter(|id| *id != self.0.node_id);
            if let Some(dead) = foreign {
                // Out of `recording` at once: the room's next recording may start meanwhile.
                let why = format!("node {dead} died while recording; being repaired");
                self.end(rec.id, RecordingStatus::Interrupted, 0, None, Some(why))
                    .await;
            }
            let key = rec
                .object_key
                .as_deref()
                .filter(|_| self.0.s3.is_some())
                .map(str::to_string);
            let mut salvaged = false;
            if let (Some(s3), Some(key)) = (&self.0.s3, &key)
                && !path.exists()
            {
                // The dead writer's file is on its own disk; what reached the bucket comes here.
                match upload::salvage(s3, &rec, key, &path).await {
                    Ok(Some(size)) => {
                        salvaged = true;
                        tracing::info!(recording = %rec.id, size, "what reached object storage was put together for repair");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(recording = %rec.id, error = %e, "cannot put together what reached object storage");
                    }
                }
            }
            let p = path.clone();
            let repaired = tokio::task::spawn_blocking(move || recover_file(&p)).await;
            let (status, duration, mut size, mut error) = match repaired {
                // Written by a dead node to a disk this one does not see, nothing in a bucket.
                Ok(Err(_)) if foreign.is_some() && !path.exists() => (
                    RecordingStatus::Interrupted,
                    0,
                    None,
                    Some(if key.is_some() {
                        format!(
                            "node {} died while recording; nothing of it reached object storage",
                            foreign.unwrap_or_default()
                        )
                    } else {
                        format!(
                            "node {} died while recording; its file is not in this node's recordings \
                             directory (share MCU_RECORDINGS_DIR between nodes, or use object \
                             storage, to keep it)",
                            foreign.unwrap_or_default()
                        )
                    }),
                ),
                Ok(Ok(f)) => (
                    RecordingStatus::Interrupted,
                    f.duration_ms,
                    Some(f.size_bytes),
                    None,
                ),
                Ok(Err((e, size))) if size.is_some() => {
                    (RecordingStatus::Interrupted, 0, size, Some(e))
                }
                Ok(Err((e, _))) => (RecordingStatus::Failed, 0, None, Some(e)),
                Err(e) => (RecordingStatus::Failed, 0, None, Some(e.to_string())),
            };
            if let (Some(key), true) = (&key, size.is_some() && path.exists()) {
                match self.store_repaired(&rec, key, &path, salvaged).await {
                    Ok(n) => size = Some(n),
                    Err(e) => {
                        tracing::error!(recording = %rec.id, error = %e, "repaired recording not uploaded; its file stays on this node");
                        let why = format!(
                            "not uploaded to object storage ({e}); the file stays on node {}",
                            self.0.node_id
                        );
                        error = Some(match error {
                            Some(first) => format!("{first}; {why}"),
                            None => why,
                        });
                    }
                }
            }
            tracing::warn!(recording = %rec.id, room = rec.room, ?status, duration_ms = duration,
                error = error.as_deref().unwrap_or(""), "recording left by a previous run recovered");
            self.end(rec.id, status, duration, size, error).await;
        }
        Ok(n)
    }
}

impl Recordings {
    /// Uploads a repaired recording's file in place of whatever its dead writer's upload left
    /// (`salvaged`: that upload was completed to read it back; else it is aborted), deletes its
    /// tail objects and the local file. Returns the object's size.
    async fn store_repaired(
        &self,
        rec: &RecordingRecord,
        key: &str,
        path: &Path,
        salvaged: bool,
    ) -> anyhow::Result<u64> {
        let s3 = self.0.s3.as_ref().context("no object storage")?;
        let size = s3.put_file(key, path).await?;
        if !salvaged
            && let Some(state) = rec.upload.as_deref()
            && let Ok(state) = serde_json::from_str::<upload::UploadState>(state)
            && let Err(e) = s3.abort(key, &state.upload_id).await
        {
            tracing::warn!(recording = %rec.id, error = %e, "cannot abort the dead writer's upload");
        }
        upload::delete_tails(s3, key).await;
        self.0
            .store
            .set_recording_storage(rec.id, Some(key), None)
            .await?;
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(recording = %rec.id, error = %e, "cannot remove the uploaded local file");
        }
        Ok(size)
    }
}

/// A stand-in when the store could not be updated (the row is fixed at the next start).
fn placeholder(id: Uuid, room: &str, status: RecordingStatus) -> RecordingRecord {
    RecordingRecord {
        id,
        room: room.to_string(),
        status,
        started_at: Utc::now(),
        ended_at: Some(Utc::now()),
        duration_ms: None,
        size_bytes: None,
        file_name: format!("{id}.webm"),
        error: Some("the database was unavailable when the recording ended".into()),
        node_id: None,
        object_key: None,
        upload: None,
    }
}

fn recover_file(path: &Path) -> Result<recorder::Finished, (String, Option<u64>)> {
    let size = std::fs::metadata(path).ok().map(|m| m.len());
    recorder::recover(path).map_err(|e| (e.to_string(), size))
}

/// The writer thread: drains the sink queue into the file until the queue closes (stop) or a
/// write fails (then the queue is dropped, which detaches the sink from the room).
fn write_loop(
    mut writer: WebmWriter,
    rx: std::sync::mpsc::Receiver<SinkPacket>,
    path: &Path,
) -> WriterOutcome {
    let mut error = None;
    while let Ok(p) = rx.recv() {
        let r = match p {
            SinkPacket::Audio { pts_ms, data } => writer.write_audio(pts_ms, &data),
            SinkPacket::Video {
                pts_ms,
                data,
                keyframe,
            } => writer.write_video(pts_ms, &data, keyframe),
        };
        if let Err(e) = r {
            error = Some(format!("write failed: {e}"));
            break;
        }
    }
    drop(rx);
    let duration_ms = writer.duration_ms();
    match error {
        None => match writer.finish() {
            Ok(f) => WriterOutcome {
                error: None,
                duration_ms: f.duration_ms,
                size_bytes: Some(f.size_bytes),
                rewritten: f.rewritten,
            },
            Err(e) => WriterOutcome {
                error: Some(format!("finishing the file failed: {e}")),
                duration_ms,
                size_bytes: std::fs::metadata(path).ok().map(|m| m.len()),
                rewritten: Vec::new(),
            },
        },
        Some(e) => {
            drop(writer);
            WriterOutcome {
                error: Some(e),
                duration_ms,
                size_bytes: std::fs::metadata(path).ok().map(|m| m.len()),
                rewritten: Vec::new(),
            }
        }
    }
}

/// The upload task of a running recording: a checkpoint every `ObjectStore::checkpoint` until
/// the file's end comes in, then the upload is completed. A checkpoint that fails is tried again
/// at the next one (the recording goes on either way).
async fn follow(
    mut up: upload::Uploader,
    mut end: oneshot::Receiver<(u64, Vec<std::ops::Range<u64>>)>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(up.every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            finished = &mut end => {
                return match finished {
                    Ok((len, rewritten)) => up.finish(len, &rewritten).await,
                    Err(_) => {
                        up.abandon().await;
                        Err(anyhow::anyhow!("the recording ended without its file"))
                    }
                };
            }
            _ = tick.tick() => match up.checkpoint().await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("object storage answers again; the recording's upload caught up");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "a recording's checkpoint did not reach object storage; trying again");
                    }
                    failing = true;
                }
            },
        }
    }
}
