//! A recording's way to object storage while it runs, and what another node makes of it when
//! the writing node dies.
//!
//! The WebM file is written in the recordings directory as always (the muxer seeks back at the
//! end, which an object cannot do) and follows it into the bucket as it grows:
//! - every [`ObjectStore::part_size`] bytes become the next part of one multipart upload; the
//!   parts' ETags are kept in the recording's row (`upload`), so another node can complete it;
//! - every [`ObjectStore::checkpoint`], the bytes not in a part yet go up as a small object under
//!   `<key>.tail/<offset>` (deleted once a part holds them): at most a checkpoint (plus the
//!   muxer's half-second cluster) is lost with the node;
//! - at the end, the parts the trailer wrote over (the header) are sent again, the rest becomes
//!   the last part, the upload is completed: one object at `<key>`; the local file is removed.
//!
//! A node taking over a dead node's recording ([`salvage`]) completes the upload with the tail
//! objects as its last part, reads the object back into its own directory, repairs it there
//! (duration and cues, `recorder::recover`) and uploads the repaired file in its place.

use crate::objstore::{ObjectStore, read_exact_at};
use crate::store::{RecordingRecord, Store};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// A running multipart upload, as kept in the recording's row (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadState {
    /// The store's id of the upload.
    pub upload_id: String,
    /// Bytes in every part but the last.
    pub part_size: u64,
    /// ETags of the parts sent, in order: part `n` holds bytes `(n-1)·part_size..n·part_size`.
    pub etags: Vec<String>,
}

impl UploadState {
    /// End of the bytes held by parts.
    fn parts_end(&self) -> u64 {
        self.etags.len() as u64 * self.part_size
    }
}

/// Prefix of the tail objects of `key`.
fn tail_prefix(key: &str) -> String {
    format!("{key}.tail/")
}

/// The tail object holding bytes from `offset` (zero-padded: keys sort by offset).
fn tail_key(key: &str, offset: u64) -> String {
    format!("{}{offset:020}", tail_prefix(key))
}

/// The offset a tail object's key names.
fn tail_offset(key: &str, listed: &str) -> Option<u64> {
    listed.strip_prefix(&tail_prefix(key))?.parse().ok()
}

/// Follows one recording's file into object storage.
pub struct Uploader {
    s3: ObjectStore,
    store: Store,
    id: Uuid,
    key: String,
    path: PathBuf,
    upload: Option<UploadState>,
    /// End of the bytes in the bucket (in parts or tail objects).
    sent_to: u64,
    /// Tail objects written and not deleted yet: their byte ranges.
    tails: Vec<Range<u64>>,
}

impl Uploader {
    /// The uploader of recording `id`, whose file is `path`, to object `key`.
    pub fn new(s3: ObjectStore, store: Store, id: Uuid, key: String, path: PathBuf) -> Uploader {
        Uploader {
            s3,
            store,
            id,
            key,
            path,
            upload: None,
            sent_to: 0,
            tails: Vec::new(),
        }
    }

    /// How often [`checkpoint`](Self::checkpoint) should run.
    pub fn every(&self) -> std::time::Duration {
        self.s3.checkpoint()
    }

    /// The upload, started on first use (so that a store down at the start is tried again).
    async fn upload(&mut self) -> anyhow::Result<&mut UploadState> {
        if self.upload.is_none() {
            let upload_id = self.s3.create_upload(&self.key).await?;
            self.upload = Some(UploadState {
                upload_id,
                part_size: self.s3.part_size(),
                etags: Vec::new(),
            });
            self.remember().await?;
        }
        Ok(self.upload.as_mut().expect("just set"))
    }

    /// Writes the upload's state into the recording's row.
    async fn remember(&self) -> anyhow::Result<()> {
        let json = self
            .upload
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        self.store
            .set_recording_storage(self.id, Some(&self.key), json.as_deref())
            .await?;
        Ok(())
    }

    /// Sends what the file gained: whole parts, then the rest as a tail object.
    pub async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let len = tokio::fs::metadata(&self.path).await?.len();
        self.send_parts(len).await?;
        let from = self.sent_to.max(self.upload().await?.parts_end());
        if len > from {
            let mut file = tokio::fs::File::open(&self.path).await?;
            let data = read_exact_at(&mut file, from, len - from).await?;
            self.s3.put(&tail_key(&self.key, from), data).await?;
            self.tails.push(from..len);
            self.sent_to = len;
        }
        Ok(())
    }

    /// Sends every whole part of the first `len` bytes not sent yet; then the tail objects the
    /// parts now hold are deleted.
    async fn send_parts(&mut self, len: u64) -> anyhow::Result<()> {
        let (key, s3, path) = (self.key.clone(), self.s3.clone(), self.path.clone());
        let upload = self.upload().await?;
        let mut file = None;
        let before = upload.etags.len();
        while len.saturating_sub(upload.parts_end()) >= upload.part_size {
            if file.is_none() {
                file = Some(tokio::fs::File::open(&path).await?);
            }
            let f = file.as_mut().expect("just opened");
            let data = read_exact_at(f, upload.parts_end(), upload.part_size).await?;
            let number = part_number(upload.etags.len())?;
            let etag = s3
                .upload_part(&key, &upload.upload_id, number, data)
                .await?;
            upload.etags.push(etag);
        }
        if upload.etags.len() == before {
            return Ok(());
        }
        let parts_end = upload.parts_end();
        // The row first: until it names the new parts, the tail objects are what holds them.
        self.remember().await?;
        let (held, kept): (Vec<_>, Vec<_>) = self.tails.drain(..).partition(|t| t.end <= parts_end);
        self.tails = kept;
        for t in held {
            if let Err(e) = self.s3.delete(&tail_key(&self.key, t.start)).await {
                tracing::warn!(recording = %self.id, error = %e, "cannot delete a tail object");
            }
        }
        Ok(())
    }

    /// The file is finished (`len` bytes, `rewritten` written over after they were first
    /// written): the parts it changed are sent again, the rest as the last part, the upload is
    /// completed and the tail objects deleted.
    pub async fn finish(mut self, len: u64, rewritten: &[Range<u64>]) -> anyhow::Result<()> {
        let (key, s3, path) = (self.key.clone(), self.s3.clone(), self.path.clone());
        let mut file = tokio::fs::File::open(&path).await?;
        let upload = self.upload().await?;
        let size = upload.part_size;
        for n in 0..upload.etags.len() {
            let part = n as u64 * size..(n as u64 + 1) * size;
            if rewritten
                .iter()
                .any(|r| r.start < part.end && part.start < r.end)
            {
                let data = read_exact_at(&mut file, part.start, size).await?;
                upload.etags[n] = s3
                    .upload_part(&key, &upload.upload_id, part_number(n)?, data)
                    .await?;
            }
        }
        self.send_parts(len).await?;
        let upload = self.upload().await?;
        let from = upload.parts_end();
        if len > from || upload.etags.is_empty() {
            let data = read_exact_at(&mut file, from, len - from).await?;
            let number = part_number(upload.etags.len())?;
            let etag = s3
                .upload_part(&key, &upload.upload_id, number, data)
                .await?;
            upload.etags.push(etag);
        }
        s3.complete(&key, &upload.upload_id, &upload.etags).await?;
        delete_tails(&s3, &key).await;
        Ok(())
    }

    /// Gives the upload up (the file stays local): its parts and tail objects are deleted.
    pub async fn abandon(self) {
        if let Some(u) = &self.upload
            && let Err(e) = self.s3.abort(&self.key, &u.upload_id).await
        {
            tracing::warn!(recording = %self.id, error = %e, "cannot abort an upload");
        }
        delete_tails(&self.s3, &self.key).await;
    }
}

/// S3 numbers parts from 1 to 10000; `n` parts are already there.
fn part_number(n: usize) -> anyhow::Result<u16> {
    u16::try_from(n + 1)
        .ok()
        .filter(|p| *p <= 10_000)
        .context("the recording needs more than 10000 parts (raise MCU_S3_PART_MB)")
}

/// Deletes every tail object of `key` (best effort: a leftover is logged).
pub async fn delete_tails(s3: &ObjectStore, key: &str) {
    let listed = match s3.list(&tail_prefix(key)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(key, error = %e, "cannot list tail objects to delete them");
            return;
        }
    };
    for t in listed {
        if let Err(e) = s3.delete(&t.key).await {
            tracing::warn!(key = t.key, error = %e, "cannot delete a tail object");
        }
    }
}

/// What a dead writer left in the bucket, put together: the upload is completed with the tail
/// objects that follow its parts as the last part, and the object is copied to `local` (a new
/// file). Returns its size; `None` when nothing of the recording reached the bucket.
pub async fn salvage(
    s3: &ObjectStore,
    rec: &RecordingRecord,
    key: &str,
    local: &Path,
) -> anyhow::Result<Option<u64>> {
    let Some(upload) = rec.upload.as_deref() else {
        return Ok(None);
    };
    let mut upload: UploadState =
        serde_json::from_str(upload).context("the recording's upload state")?;
    let mut tail = Vec::new();
    let mut at = upload.parts_end();
    for t in s3.list(&tail_prefix(key)).await? {
        let Some(offset) = tail_offset(key, &t.key) else {
            continue;
        };
        if offset > at {
            tracing::warn!(recording = %rec.id, missing = ?(at..offset), "a gap in the tail objects: the file ends before it");
            break;
        }
        if offset + t.size <= at {
            continue;
        }
        let data = s3.get(&t.key).await?;
        let skip = usize::try_from(at - offset)?.min(data.len());
        tail.extend_from_slice(&data[skip..]);
        at = offset + data.len() as u64;
    }
    if !tail.is_empty() {
        let number = part_number(upload.etags.len())?;
        let etag = s3
            .upload_part(key, &upload.upload_id, number, tail.into())
            .await?;
        upload.etags.push(etag);
    }
    if upload.etags.is_empty() {
        let _ = s3.abort(key, &upload.upload_id).await;
        return Ok(None);
    }
    s3.complete(key, &upload.upload_id, &upload.etags).await?;
    let size = s3.download(key, local).await?;
    Ok(Some(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keys_sort_by_offset_and_read_back() {
        let k = "recordings/x.webm";
        let a = tail_key(k, 999);
        let b = tail_key(k, 1_000_000);
        assert!(a < b);
        assert_eq!(tail_offset(k, &a), Some(999));
        assert_eq!(tail_offset(k, &b), Some(1_000_000));
        assert_eq!(tail_offset(k, "recordings/x.webm"), None);
        assert_eq!(tail_offset("other", &a), None);
    }

    #[test]
    fn part_numbers_stop_at_ten_thousand() {
        assert_eq!(part_number(0).unwrap(), 1);
        assert_eq!(part_number(9_999).unwrap(), 10_000);
        assert!(part_number(10_000).is_err());
    }
}
