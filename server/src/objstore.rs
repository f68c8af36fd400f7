//! S3-compatible object storage (`MCU_S3_*`), the requests recordings need: a multipart upload
//! (create, parts, complete, abort), small objects (put, get, list, delete) and ranged reads.
//! Requests are signed by `rusty-s3` (sans-IO, presigned URLs) and sent by `reqwest`; a request
//! that fails for a transient reason (no answer, 5xx, 429) is tried again, [`ATTEMPTS`] times in all.

use crate::config::S3Config;
use anyhow::{Context, anyhow, bail};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// How long a signed request stays valid (it is sent at once; this covers clock skew).
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// Tries per request.
const ATTEMPTS: u32 = 4;
/// Time allowed for one request (a part of up to a few tens of MiB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

struct Inner {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
    prefix: String,
    part_size: u64,
    checkpoint: Duration,
}

/// A bucket of S3-compatible object storage. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStore(Arc<Inner>);

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("bucket", &self.0.bucket.name())
            .field("endpoint", &self.0.bucket.base_url().as_str())
            .finish_non_exhaustive()
    }
}

/// An object listed under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

impl ObjectStore {
    /// The bucket of a validated configuration (`Config::validate`); `None` when it has none.
    pub fn new(cfg: &S3Config) -> anyhow::Result<Option<ObjectStore>> {
        let (Some(bucket), Some(endpoint)) = (&cfg.bucket, &cfg.endpoint) else {
            return Ok(None);
        };
        let url = endpoint
            .parse()
            .with_context(|| format!("MCU_S3_ENDPOINT '{endpoint}'"))?;
        let style = if cfg.virtual_host {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(url, style, bucket.clone(), cfg.region.clone())
            .map_err(|e| anyhow!("MCU_S3_ENDPOINT/MCU_S3_BUCKET: {e}"))?;
        let credentials = Credentials::new(
            cfg.access_key_id.clone().unwrap_or_default(),
            cfg.secret_access_key.clone().unwrap_or_default(),
        );
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("HTTP client")?;
        Ok(Some(ObjectStore(Arc::new(Inner {
            bucket,
            credentials,
            http,
            prefix: cfg.prefix.clone(),
            part_size: u64::from(cfg.part_size_mb) << 20,
            checkpoint: Duration::from_secs(u64::from(cfg.checkpoint_s)),
        }))))
    }

    /// Size of the multipart upload's parts, bytes.
    pub fn part_size(&self) -> u64 {
        self.0.part_size
    }

    /// How often a running recording's newest bytes are sent.
    pub fn checkpoint(&self) -> Duration {
        self.0.checkpoint
    }

    /// The key of a recording file named `file_name`.
    pub fn key_of(&self, file_name: &str) -> String {
        format!("{}{file_name}", self.0.prefix)
    }

    /// The bucket and endpoint, for messages.
    pub fn describe(&self) -> String {
        format!(
            "bucket '{}' at {}",
            self.0.bucket.name(),
            self.0.bucket.base_url()
        )
    }

    fn creds(&self) -> Option<&Credentials> {
        Some(&self.0.credentials)
    }

    /// Sends a request built by `build` (again on a transient failure) and returns the answer
    /// if its status is a success; `what` names the request in errors.
    async fn send(
        &self,
        what: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            match build().send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    last = format!("{status}: {}", s3_message(&body));
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        break;
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        bail!("object storage {what}: {last}")
    }

    /// Checks that the bucket answers (start-up: a wrong endpoint or key is reported at once).
    pub async fn check(&self) -> anyhow::Result<()> {
        let url = self.0.bucket.head_bucket(self.creds()).sign(SIGNED_FOR);
        self.send("HeadBucket", || self.0.http.head(url.clone()))
            .await
            .with_context(|| self.describe())?;
        Ok(())
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub async fn create_upload(&self, key: &str) -> anyhow::Result<String> {
        let url = self
            .0
            .bucket
            .create_multipart_upload(self.creds(), key)
            .sign(SIGNED_FOR);
        let body = self
            .send("CreateMultipartUpload", || {
                self.0
                    .http
                    .post(url.clone())
                    .header("content-type", crate::api::recordings::WEBM)
            })
            .await?
            .text()
            .await?;
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&body)
            .map_err(|e| anyhow!("object storage CreateMultipartUpload answer: {e}"))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Uploads part `number` (from 1) of an upload; returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        data: bytes::Bytes,
    ) -> anyhow::Result<String> {
        let url = self
            .0
            .bucket
            .upload_part(self.creds(), key, number, upload_id)
            .sign(SIGNED_FOR);
        let r = self
            .send("UploadPart", || {
                self.0.http.put(url.clone()).body(data.clone())
            })
            .await?;
        r.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("object storage UploadPart: no ETag in the answer"))
    }

    /// Completes an upload from its parts' ETags (part `n` is `etags[n - 1]`).
    pub async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> anyhow::Result<()> {
        let action = self.0.bucket.complete_multipart_upload(
            self.creds(),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let r = self
            .send("CompleteMultipartUpload", || {
                self.0.http.post(url.clone()).body(body.clone())
            })
            .await?;
        // S3 may answer 200 with an error in the body when the completion fails late.
        let text = r.text().await.unwrap_or_default();
        if text.contains("<Error>") {
            bail!(
                "object storage CompleteMultipartUpload: {}",
                s3_message(&text)
            );
        }
        Ok(())
    }

    /// Abandons an upload and its parts.
    pub async fn abort(&self, key: &str, upload_id: &str) -> anyhow::Result<()> {
        let url = self
            .0
            .bucket
            .abort_multipart_upload(self.creds(), key, upload_id)
            .sign(SIGNED_FOR);
        self.send("AbortMultipartUpload", || self.0.http.delete(url.clone()))
            .await?;
        Ok(())
    }

    /// Writes a small object whole.
    pub async fn put(&self, key: &str, data: bytes::Bytes) -> anyhow::Result<()> {
        let url = self.0.bucket.put_object(self.creds(), key).sign(SIGNED_FOR);
        self.send("PutObject", || {
            self.0.http.put(url.clone()).body(data.clone())
        })
        .await?;
        Ok(())
    }

    /// Reads a small object whole.
    pub async fn get(&self, key: &str) -> anyhow::Result<bytes::Bytes> {
        Ok(self.get_range(key, None).await?.bytes().await?)
    }

    /// Starts reading an object, or bytes `first..=last` of it; the body streams.
    pub async fn get_range(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = self.0.bucket.get_object(self.creds(), key).sign(SIGNED_FOR);
        self.send("GetObject", || {
            let r = self.0.http.get(url.clone());
            match range {
                Some((first, last)) => r.header("range", format!("bytes={first}-{last}")),
                None => r,
            }
        })
        .await
    }

    /// The size of an object; `None` if there is none.
    pub async fn size(&self, key: &str) -> anyhow::Result<Option<u64>> {
        let url = self
            .0
            .bucket
            .head_object(self.creds(), key)
            .sign(SIGNED_FOR);
        let r = self.0.http.head(url).send().await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            bail!("object storage HeadObject: {}", r.status());
        }
        r.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| anyhow!("object storage HeadObject: no Content-Length"))
    }

    /// Deletes an object (no error if there is none).
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let url = self
            .0
            .bucket
            .delete_object(self.creds(), key)
            .sign(SIGNED_FOR);
        self.send("DeleteObject", || self.0.http.delete(url.clone()))
            .await?;
        Ok(())
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Listed>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.0.bucket.list_objects_v2(self.creds());
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let body = self
                .send("ListObjectsV2", || self.0.http.get(url.clone()))
                .await?
                .text()
                .await?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&body)
                .map_err(|e| anyhow!("object storage ListObjectsV2 answer: {e}"))?;
            out.extend(page.contents.into_iter().map(|c| Listed {
                key: c.key,
                size: c.size.unwrap_or(0),
            }));
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Uploads a local file as `key` in parts of [`part_size`](Self::part_size) (the last may
    /// be smaller), replacing any object there. Returns its size.
    pub async fn put_file(&self, key: &str, path: &Path) -> anyhow::Result<u64> {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("open {}", path.display()))?;
        let size = file.metadata().await?.len();
        let upload_id = self.create_upload(key).await?;
        let sent = async {
            let mut etags = Vec::new();
            let mut at = 0;
            while at < size || etags.is_empty() {
                let len = (size - at).min(self.0.part_size);
                let part = read_exact_at(&mut file, at, len).await?;
                let number = u16::try_from(etags.len() + 1).context("more than 10000 parts")?;
                etags.push(self.upload_part(key, &upload_id, number, part).await?);
                at += len;
            }
            self.complete(key, &upload_id, &etags).await
        };
        if let Err(e) = sent.await {
            let _ = self.abort(key, &upload_id).await;
            return Err(e);
        }
        Ok(size)
    }

    /// Copies object `key` into a new local file at `path`; returns its size.
    pub async fn download(&self, key: &str, path: &Path) -> anyhow::Result<u64> {
        use futures_util::StreamExt as _;
        let mut body = self.get_range(key, None).await?.bytes_stream();
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await
            .with_context(|| format!("create {}", path.display()))?;
        let mut size = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).await?;
            size += chunk.len() as u64;
        }
        out.sync_all().await?;
        Ok(size)
    }
}

/// Bytes `at..at + len` of an open file.
pub async fn read_exact_at(
    file: &mut tokio::fs::File,
    at: u64,
    len: u64,
) -> std::io::Result<bytes::Bytes> {
    let mut buf = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
    file.seek(std::io::SeekFrom::Start(at)).await?;
    file.read_exact(&mut buf).await?;
    Ok(buf.into())
}

/// The `<Code>` and `<Message>` of an S3 error answer, or its start.
fn s3_message(body: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{t}>"))?;
        Some(body[start..start + end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => body.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_read_for_their_code_and_message() {
        let xml = "<?xml version=\"1.0\"?><Error><Code>EntityTooSmall</Code>\
                   <Message>Your proposed upload is smaller than the minimum</Message></Error>";
        assert_eq!(
            s3_message(xml),
            "EntityTooSmall: Your proposed upload is smaller than the minimum"
        );
        assert_eq!(s3_message("plain text"), "plain text");
    }
}
