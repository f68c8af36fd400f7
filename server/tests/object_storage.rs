//! Recordings on S3-compatible object storage, against a real S3 implementation: `s3s-fs`
//! (crates.io, installed by scripts/setup.sh) serving a directory on loopback. It enforces S3's
//! rules that matter here: parts of at least 5 MiB but the last, ETags, upload ids per key.
//!
//! - The uploader itself, on a file growing to 17 MiB of random bytes in 5 MiB parts: the tail
//!   objects follow the file between parts and go once a part holds them; a writer that dies
//!   leaves enough for [`salvage`] to put the file together up to its last checkpoint; a finished
//!   file whose header was written over ends in the bucket byte for byte.
//! - The real binary: a recording uploads while it runs (tail objects appear), ends as one object
//!   (the local file removed), is downloaded through the API with ranges, and deleted with its
//!   object. Then `kill -9` while recording and the node's disk lost: at the restart the node
//!   puts the recording together from the bucket, repairs it (`interrupted`, playable, at most a
//!   few seconds short) and serves it.

mod common;

use common::{Server, command, free_port, services_required};
use serde_json::{Value, json};
use server::config::S3Config;
use server::objstore::ObjectStore;
use server::recording::upload::{Uploader, salvage};
use server::store::Store;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const ACCESS: &str = "mcu-test-access";
const SECRET: &str = "mcu-test-secret-0123456789";
const BUCKET: &str = "recordings";
const MIB: u64 = 1 << 20;

/// A running `s3s-fs` on loopback, killed when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `s3s-fs` with one bucket; `None` (with a notice) when it is not installed and the
/// services are not required (under scripts/test.sh and CI they are: the test fails).
async fn s3_server(dir: &Path) -> Option<S3Server> {
    let root = dir.join("s3");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let port = free_port();
    let spawned = std::process::Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS, "--secret-key", SECRET])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) if services_required() => {
            panic!("s3s-fs cannot start ({e}): run scripts/setup.sh, which installs it")
        }
        Err(e) => {
            eprintln!("NOTICE: skipping object storage tests: s3s-fs cannot start ({e})");
            return None;
        }
    };
    let server = S3Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "s3s-fs does not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(server)
}

fn config(endpoint: &str, part_mb: u32) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_string()),
        bucket: Some(BUCKET.into()),
        access_key_id: Some(ACCESS.into()),
        secret_access_key: Some(SECRET.into()),
        part_size_mb: part_mb,
        checkpoint_s: 1,
        ..S3Config::default()
    }
}

/// Keys under `prefix` in the bucket.
async fn keys(s3: &ObjectStore, prefix: &str) -> Vec<String> {
    s3.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect()
}

fn noise(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn append(path: &Path, data: &[u8]) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(data)
        .unwrap();
}

/// A running recording's row, object key, file path (in `dir`) and uploader.
async fn recording(
    store: &Store,
    s3: &ObjectStore,
    dir: &Path,
    room: &str,
) -> (uuid::Uuid, String, std::path::PathBuf, Uploader) {
    let id = uuid::Uuid::new_v4();
    let file = format!("{id}.webm");
    store
        .create_recording(id, room, &file, chrono::Utc::now(), Some("n1"))
        .await
        .unwrap();
    let key = s3.key_of(&file);
    let path = dir.join(format!("{room}.webm"));
    let up = Uploader::new(s3.clone(), store.clone(), id, key.clone(), path.clone());
    (id, key, path, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploader_follows_a_growing_file_and_a_dead_writer_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = s3_server(dir.path()).await else {
        return;
    };
    let s3 = ObjectStore::new(&config(&server.endpoint, 5))
        .unwrap()
        .unwrap();
    s3.check().await.expect("the bucket answers");
    let store = Store::connect(&format!("sqlite://{}/m.db", dir.path().display()))
        .await
        .unwrap();

    // A writer that dies at 12 MiB: two parts, and the rest in tail objects.
    let (id, key, path, mut up) = recording(&store, &s3, dir.path(), "dying").await;
    let data = noise(12 * MIB + 12_345, 7);
    let mut at = 0usize;
    for step in [MIB as usize, 3 * MIB as usize, 7 * MIB as usize, data.len()] {
        append(&path, &data[at..step]);
        at = step;
        up.checkpoint().await.expect("checkpoint");
        let tails = keys(&s3, &format!("{key}.tail/")).await;
        let parts = (step as u64 / (5 * MIB)) as usize;
        let rec = store.get_recording(id).await.unwrap().unwrap();
        let state: Value = serde_json::from_str(rec.upload.as_deref().unwrap()).unwrap();
        assert_eq!(rec.object_key.as_deref(), Some(key.as_str()));
        assert_eq!(state["etags"].as_array().unwrap().len(), parts, "at {step}");
        // Tail objects hold what no part holds, and nothing a part holds.
        assert!(!tails.is_empty(), "no tail object at {step}");
        println!("at {step} bytes: {parts} parts, tail objects {tails:?}");
        if step == 7 * MIB as usize {
            assert_eq!(tails.len(), 1, "the tails under the first part are deleted");
        }
    }
    drop(up); // the node dies here
    let rec = store.get_recording(id).await.unwrap().unwrap();
    let local = dir.path().join("salvaged.webm");
    let size = salvage(&s3, &rec, &key, &local)
        .await
        .expect("salvage")
        .expect("something reached the bucket");
    assert_eq!(size, data.len() as u64);
    assert!(
        std::fs::read(&local).unwrap() == data,
        "the salvaged file differs from what was written"
    );

    // A writer that finishes: 17 MiB, and its first part written over at the end.
    let (_, key, path, mut up) = recording(&store, &s3, dir.path(), "finishing").await;
    let mut data = noise(17 * MIB, 11);
    append(&path, &data[..11 * MIB as usize]);
    up.checkpoint().await.unwrap();
    append(&path, &data[11 * MIB as usize..]);
    up.checkpoint().await.unwrap();
    // The trailer: the header written over, and cues appended.
    data[100..164].fill(0xAB);
    let cues = noise(3000, 3);
    data.extend_from_slice(&cues);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        f.write_all(&[0xAB; 64]).unwrap();
    }
    append(&path, &cues);
    let header_rewritten: Vec<_> = std::iter::once(100..164).collect();
    up.finish(data.len() as u64, &header_rewritten)
        .await
        .expect("finish");
    let object = s3.get(&key).await.unwrap();
    assert_eq!(object.len(), data.len());
    assert!(object == data, "the object differs from the finished file");
    assert!(
        keys(&s3, &format!("{key}.tail/")).await.is_empty(),
        "tail objects left after the upload completed"
    );
    // Ranged reads of the object.
    let r = s3.get_range(&key, Some((5, 9))).await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[5..10]);
    drop(server);
}

const KEY: &str = "object-storage-test-api-key-0123";

fn start(dir: &Path, port: u16, s3: &str) -> Server {
    let mut cmd = command(dir);
    cmd.env("MCU_LISTEN", format!("127.0.0.1:{port}"))
        .env("MCU_API_KEY", KEY)
        .env(
            "MCU_TOKEN_SECRET",
            "object-storage-test-secret-0123456789abcd",
        )
        .env("DATABASE_URL", format!("sqlite://{}/mcu.db", dir.display()))
        .env("MCU_RECORDINGS_DIR", dir.join("recordings"))
        .env("MCU_NODE_ID", "node-s3")
        .env("MCU_RTC_BIND", "127.0.0.1")
        .env("MCU_UDP_PORTS", "0")
        .env("MCU_S3_ENDPOINT", s3)
        .env("MCU_S3_BUCKET", BUCKET)
        .env("MCU_S3_ACCESS_KEY_ID", ACCESS)
        .env("MCU_S3_SECRET_ACCESS_KEY", SECRET)
        .env("MCU_S3_CHECKPOINT_S", "1")
        .env("MCU_LOG", "info")
        .env("NO_COLOR", "1");
    Server::spawn(cmd, dir)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).bearer_auth(KEY);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The duration ffprobe reads from a WebM file's header, ms.
fn probe_ms(path: &Path) -> f64 {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (scripts/setup.sh installs ffmpeg)");
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("ffprobe: {s} {}", String::from_utf8_lossy(&out.stderr)))
        * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_end_in_the_bucket_and_survive_the_node_and_its_disk() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let Some(s3_server) = s3_server(dir.path()).await else {
        return;
    };
    let s3 = ObjectStore::new(&config(&s3_server.endpoint, 8))
        .unwrap()
        .unwrap();
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/api/v1");
    let mut node = start(&node_dir, port, &s3_server.endpoint);
    node.wait_healthy(&format!("http://127.0.0.1:{port}")).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let (s, _) = call(
        &http,
        Method::POST,
        &format!("{base}/rooms"),
        Some(json!({"name": "s3room"})),
    )
    .await;
    assert_eq!(s, 201);

    // A recording uploads while it runs, and ends as one object.
    let (s, rec) = call(
        &http,
        Method::POST,
        &format!("{base}/rooms/s3room/recordings"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let key = s3.key_of(&format!("{id}.webm"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tails = keys(&s3, &format!("{key}.tail/")).await;
    assert!(tails.len() >= 2, "tail objects while recording: {tails:?}");
    let (s, done) = call(
        &http,
        Method::POST,
        &format!("{base}/recordings/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["error"].is_null(), "{done}");
    let size = done["size_bytes"].as_u64().unwrap();
    assert_eq!(
        s3.size(&key).await.unwrap(),
        Some(size),
        "the object is the whole file"
    );
    assert!(keys(&s3, &format!("{key}.tail/")).await.is_empty());
    assert!(
        !node_dir
            .join("recordings")
            .join(format!("{id}.webm"))
            .exists(),
        "the local file is removed once uploaded"
    );
    // Served from the bucket, whole and by range.
    let media = format!("{base}/recordings/{id}/media");
    let whole = http.get(&media).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "video/webm");
    let whole = whole.bytes().await.unwrap();
    assert_eq!(whole.len() as u64, size);
    let part = http
        .get(&media)
        .bearer_auth(KEY)
        .header("range", "bytes=10-29")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-29/{size}")
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &whole[10..30]);
    let file = dir.path().join("downloaded.webm");
    std::fs::write(&file, &whole).unwrap();
    let ms = probe_ms(&file);
    assert!(
        (3500.0..6000.0).contains(&ms),
        "{ms} ms recorded in about 4 s"
    );
    // Deleted with its object.
    let (s, _) = call(
        &http,
        Method::DELETE,
        &format!("{base}/recordings/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(s3.size(&key).await.unwrap(), None, "the object is deleted");

    // kill -9 while recording, and the node's recordings directory lost with it.
    let (s, rec) = call(
        &http,
        Method::POST,
        &format!("{base}/rooms/s3room/recordings"),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 201, "{rec}");
    let id = rec["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    node.signal("KILL");
    let recorded_ms = started.elapsed().as_millis() as f64;
    node.wait_exit(Duration::from_secs(5)).expect("killed");
    std::fs::remove_dir_all(node_dir.join("recordings")).unwrap();
    let mut node = start(&node_dir, port, &s3_server.endpoint);
    node.wait_healthy(&format!("http://127.0.0.1:{port}")).await;
    let (s, rec) = call(&http, Method::GET, &format!("{base}/recordings/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(rec["status"], "interrupted", "{rec}\n{}", node.stderr());
    let media = http
        .get(format!("{base}/recordings/{id}/media"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(media.status(), 200, "{}", node.stderr());
    let file = dir.path().join("salvaged.webm");
    std::fs::write(&file, media.bytes().await.unwrap()).unwrap();
    let ms = probe_ms(&file);
    println!("killed after {recorded_ms:.0} ms of recording; {ms:.0} ms salvaged from the bucket");
    assert!(
        ms >= recorded_ms - 3000.0 && ms <= recorded_ms + 500.0,
        "{ms} ms salvaged of {recorded_ms} ms recorded"
    );
    let stored_ms = rec["duration_ms"].as_f64().unwrap();
    assert!(
        (stored_ms - ms).abs() < 100.0,
        "duration_ms {stored_ms}, file {ms}"
    );
    let key = s3.key_of(&format!("{id}.webm"));
    assert!(keys(&s3, &format!("{key}.tail/")).await.is_empty());
    drop(node);
}
