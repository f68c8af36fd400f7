//! The recordings REST API against the real app (`server::start` on 127.0.0.1:0) with real
//! recordings: start, stop, list, download with ranges, delete, and the room side (`recording_id`,
//! `DELETE /rooms/{name}` and the empty-room reaper finalizing a running recording).
//!
//! Runs on a fresh SQLite file and on a fresh PostgreSQL database (`MCU_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; skipped with a notice when unreachable unless `CI`
//! is set). The rooms are empty: their media runs for the recording alone (silence, black).

mod common;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use server::config::Config;
use sqlx::Executor as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The first four bytes of every EBML (WebM) file.
const EBML_MAGIC: [u8; 4] = [0x1A, 0x45, 0xDF, 0xA3];

struct App {
    base: String,
    key: String,
    http: reqwest::Client,
    recordings_dir: PathBuf,
    handle: actix_web::dev::ServerHandle,
    /// Every JSON body seen, to check that none names a filesystem path.
    seen: std::cell::RefCell<Vec<String>>,
}

async fn spawn_app(database_url: &str, dir: &Path) -> App {
    let key = format!("rec-test-key-{}", Uuid::new_v4().simple());
    let recordings_dir = dir.join("recordings");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: Some(key.clone()),
        token_secret: Some("rec-test-token-secret-0123456789abcdef".into()),
        database_url: database_url.into(),
        recordings_dir: recordings_dir.clone(),
        web_dir: dir.join("web"),
        // One media socket per test server, on a port the OS picks (tests run in parallel).
        rtc: server::config::RtcConfig {
            udp_ports: server::config::UdpPorts::Shared(0),
            ..Default::default()
        },
        ..Config::default()
    };
    let running = server::start(config).await.expect("server starts");
    let handle = running.server.handle();
    actix_web::rt::spawn(running.server);
    App {
        base: format!("http://{}", running.addr),
        key,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        recordings_dir,
        handle,
        seen: Default::default(),
    }
}

impl App {
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> reqwest::Response {
        req.send().await.expect("request sent")
    }

    /// A JSON call expecting `status`; returns the body (Null for an empty one).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let mut req = self.req(method.clone(), path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = self.send(req).await;
        let got = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        self.seen.borrow_mut().push(text.clone());
        if text.is_empty() {
            Value::Null
        } else {
            let mut v = serde_json::from_str(&text).expect("JSON body");
            normalize_signed_urls(&mut v);
            v
        }
    }

    async fn error(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
        code: &str,
    ) -> String {
        let v = self.call(method, path, body, status).await;
        assert_eq!(v["error"]["code"], code, "{v}");
        v["error"]["message"].as_str().unwrap().to_string()
    }

    async fn create_room(&self, name: &str) {
        self.call(
            Method::POST,
            "/api/v1/rooms",
            Some(json!({"name": name, "empty_timeout_s": 0})),
            StatusCode::CREATED,
        )
        .await;
    }

    async fn start(&self, room: &str) -> Value {
        self.call(
            Method::POST,
            &format!("/api/v1/rooms/{room}/recordings"),
            Some(json!({})),
            StatusCode::CREATED,
        )
        .await
    }

    async fn stop(&self, id: &str) -> Value {
        self.call(
            Method::POST,
            &format!("/api/v1/recordings/{id}/stop"),
            None,
            StatusCode::OK,
        )
        .await
    }

    async fn get(&self, id: &str) -> Value {
        self.call(
            Method::GET,
            &format!("/api/v1/recordings/{id}"),
            None,
            StatusCode::OK,
        )
        .await
    }

    async fn list(&self, query: &str) -> Value {
        self.call(
            Method::GET,
            &format!("/api/v1/recordings{query}"),
            None,
            StatusCode::OK,
        )
        .await
    }

    fn file_of(&self, id: &str) -> PathBuf {
        self.recordings_dir.join(format!("{id}.webm"))
    }
}

/// Checks the form of every `signed_media_url` (its media URL, then `?exp=<unix>&sig=<64 hex>`,
/// expiring in 60 to 65 minutes) and replaces it by `"signed"`, so that bodies compare equal
/// whenever they were fetched.
fn normalize_signed_urls(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let (Some(Value::String(media)), Some(Value::String(signed))) =
                (o.get("media_url"), o.get("signed_media_url"))
            {
                let rest = signed
                    .strip_prefix(&format!("{media}?exp="))
                    .unwrap_or_else(|| panic!("{signed} is not {media}?exp=…"));
                let (exp, sig) = rest.split_once("&sig=").expect("&sig=");
                let left = exp.parse::<i64>().unwrap() - chrono::Utc::now().timestamp();
                assert!((3590..=3900).contains(&left), "expires in {left} s");
                assert!(
                    sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{sig}"
                );
                o.insert("signed_media_url".into(), "signed".into());
            }
            o.values_mut().for_each(normalize_signed_urls);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_signed_urls),
        _ => {}
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn ids(list: &Value) -> Vec<String> {
    list["recordings"]
        .as_array()
        .expect("recordings")
        .iter()
        .map(id_of)
        .collect()
}

fn assert_shape(v: &Value, room: &str, status: &str) {
    let id = id_of(v);
    Uuid::parse_str(&id).expect("uuid id");
    assert_eq!(v["room"], room, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(
        v["media_url"],
        format!("/api/v1/recordings/{id}/media"),
        "{v}"
    );
    chrono::DateTime::parse_from_rfc3339(v["started_at"].as_str().unwrap()).unwrap();
    for field in ["ended_at", "duration_ms", "size_bytes"] {
        let present = v.as_object().unwrap().contains_key(field);
        assert!(present, "{field} missing in {v}");
        assert_eq!(
            v[field].is_null(),
            status == "recording",
            "{field} in {status}: {v}"
        );
    }
}

// ----- the suite --------------------------------------------------------------------------------

async fn suite(app: &App) {
    let t0 = Instant::now();
    // Unknown room, unknown field, unauthenticated.
    app.error(
        Method::POST,
        "/api/v1/rooms/nope/recordings",
        Some(json!({})),
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;
    app.create_room("rec-a").await;
    let msg = app
        .error(
            Method::POST,
            "/api/v1/rooms/rec-a/recordings",
            Some(json!({"format": "mp4"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    assert!(msg.contains("format"), "{msg}");
    let anon = app
        .http
        .post(format!("{}/api/v1/rooms/rec-a/recordings", app.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let anon = app
        .http
        .get(format!("{}/api/v1/recordings", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);

    // Start on an empty room.
    let started_at = Instant::now();
    let resp = app
        .send(
            app.req(Method::POST, "/api/v1/rooms/rec-a/recordings")
                .json(&json!({})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let mut a1: Value = resp.json().await.unwrap();
    normalize_signed_urls(&mut a1);
    let a1_id = id_of(&a1);
    assert_shape(&a1, "rec-a", "recording");
    assert_eq!(location, format!("/api/v1/recordings/{a1_id}"));
    assert!(a1["error"].is_null());
    app.error(
        Method::POST,
        "/api/v1/rooms/rec-a/recordings",
        Some(json!({})),
        StatusCode::CONFLICT,
        "recording_in_progress",
    )
    .await;
    let room = app
        .call(Method::GET, "/api/v1/rooms/rec-a", None, StatusCode::OK)
        .await;
    assert_eq!(room["recording_id"], a1_id.as_str());
    assert_eq!(app.get(&a1_id).await, a1);
    // The file is final only once stopped.
    app.error(
        Method::GET,
        &format!("/api/v1/recordings/{a1_id}/media"),
        None,
        StatusCode::CONFLICT,
        "recording_in_progress",
    )
    .await;

    // A body-less POST works too.
    app.create_room("rec-b").await;
    let resp = app
        .send(app.req(Method::POST, "/api/v1/rooms/rec-b/recordings"))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let mut b1: Value = resp.json().await.unwrap();
    normalize_signed_urls(&mut b1);
    assert_shape(&b1, "rec-b", "recording");

    // Stop after about 2 s of wall time.
    let wait = Duration::from_secs(2).saturating_sub(started_at.elapsed());
    tokio::time::sleep(wait).await;
    let a1 = app.stop(&a1_id).await;
    assert_shape(&a1, "rec-a", "completed");
    let duration = a1["duration_ms"].as_u64().unwrap();
    assert!((1500..=3500).contains(&duration), "duration {duration} ms");
    let size = a1["size_bytes"].as_u64().unwrap();
    assert!(size > 0);
    assert_eq!(
        app.stop(&a1_id).await,
        a1,
        "stopping again returns it as is"
    );
    assert_eq!(app.get(&a1_id).await, a1);
    let room = app
        .call(Method::GET, "/api/v1/rooms/rec-a", None, StatusCode::OK)
        .await;
    assert!(room["recording_id"].is_null(), "{room}");
    assert!(app.file_of(&a1_id).exists());

    media(app, &a1_id, size).await;

    // More recordings for the list: c1 (completed), then c2 (running).
    app.create_room("rec-c").await;
    let c1 = app.start("rec-c").await;
    let c1 = app.stop(&id_of(&c1)).await;
    assert_shape(&c1, "rec-c", "completed");
    let c2 = app.start("rec-c").await;
    let (b1_id, c1_id, c2_id) = (id_of(&b1), id_of(&c1), id_of(&c2));
    let all = vec![a1_id.clone(), b1_id.clone(), c1_id.clone(), c2_id.clone()];
    listing(app, &all).await;
    assert_eq!(
        ids(&app.list("?room=rec-c").await),
        vec![c1_id.clone(), c2_id.clone()]
    );
    assert_eq!(
        ids(&app.list("?status=recording").await),
        vec![b1_id.clone(), c2_id.clone()]
    );
    assert_eq!(
        ids(&app.list("?room=rec-c&status=completed").await),
        vec![c1_id.clone()]
    );
    assert_eq!(
        ids(&app.list("?room=rec-c&status=recording&limit=1").await),
        vec![c2_id.clone()]
    );
    assert!(ids(&app.list("?room=never-existed").await).is_empty());
    assert!(ids(&app.list("?status=failed").await).is_empty());
    for (query, field) in [
        ("?status=bogus", "status"),
        ("?status=Completed", "status"),
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?cursor=not-a-cursor", "cursor"),
        ("?room=bad%20name", "room"),
    ] {
        let msg = app
            .error(
                Method::GET,
                &format!("/api/v1/recordings{query}"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            )
            .await;
        assert!(msg.contains(field), "{query}: '{msg}' should name {field}");
    }

    // Unknown and malformed ids are not found, whatever the operation.
    for id in [Uuid::new_v4().to_string(), "not-a-uuid".into()] {
        for (method, path) in [
            (Method::GET, format!("/api/v1/recordings/{id}")),
            (Method::POST, format!("/api/v1/recordings/{id}/stop")),
            (Method::GET, format!("/api/v1/recordings/{id}/media")),
            (Method::DELETE, format!("/api/v1/recordings/{id}")),
        ] {
            app.error(
                method,
                &path,
                None,
                StatusCode::NOT_FOUND,
                "recording_not_found",
            )
            .await;
        }
    }

    // Deleting a room finalizes its running recording, which stays listed.
    app.call(
        Method::DELETE,
        "/api/v1/rooms/rec-b",
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let b1 = app.get(&b1_id).await;
    assert_shape(&b1, "rec-b", "completed");
    assert!(b1["size_bytes"].as_u64().unwrap() > 0);

    // A file that vanished from disk: 404 with our error body.
    std::fs::remove_file(app.file_of(&b1_id)).unwrap();
    app.error(
        Method::GET,
        &format!("/api/v1/recordings/{b1_id}/media"),
        None,
        StatusCode::NOT_FOUND,
        "recording_not_found",
    )
    .await;

    // Delete: finished and running ones; the file goes with the row.
    for id in [&a1_id, &c2_id] {
        assert!(app.file_of(id).exists(), "{id} has a file before deletion");
        app.call(
            Method::DELETE,
            &format!("/api/v1/recordings/{id}"),
            None,
            StatusCode::NO_CONTENT,
        )
        .await;
        app.error(
            Method::GET,
            &format!("/api/v1/recordings/{id}"),
            None,
            StatusCode::NOT_FOUND,
            "recording_not_found",
        )
        .await;
        app.error(
            Method::GET,
            &format!("/api/v1/recordings/{id}/media"),
            None,
            StatusCode::NOT_FOUND,
            "recording_not_found",
        )
        .await;
        assert!(!app.file_of(id).exists(), "{id} file removed");
    }
    let room = app
        .call(Method::GET, "/api/v1/rooms/rec-c", None, StatusCode::OK)
        .await;
    assert!(
        room["recording_id"].is_null(),
        "deleting the running one ends it: {room}"
    );
    assert_eq!(ids(&app.list("").await), vec![b1_id.clone(), c1_id.clone()]);

    reaper_finalizes(app).await;

    // Nothing the API said names the recordings directory.
    let dir = app.recordings_dir.display().to_string();
    for body in app.seen.borrow().iter() {
        assert!(!body.contains(&dir), "a response exposes a path: {body}");
    }
    eprintln!("recordings suite took {:?}", t0.elapsed());
}

async fn media(app: &App, id: &str, size: u64) {
    let path = format!("/api/v1/recordings/{id}/media");
    let resp = app.send(app.req(Method::GET, &path)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "video/webm");
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert_eq!(h[header::CONTENT_LENGTH], size.to_string().as_str());
    let full = resp.bytes().await.unwrap();
    assert_eq!(full.len() as u64, size, "body length equals size_bytes");
    assert_eq!(full[..4], EBML_MAGIC, "starts with the EBML magic");
    assert_eq!(
        std::fs::read(app.file_of(id)).unwrap(),
        full,
        "the bytes of the file"
    );

    let n = size as usize;
    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, n - 1),
        ("bytes=-50", n - 50, n - 1),
        ("bytes=10-10", 10, 10),
        (&*format!("bytes={}-{}", n - 10, n + 1000), n - 10, n - 1),
    ] {
        let resp = app
            .send(app.req(Method::GET, &path).header(header::RANGE, range))
            .await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let h = resp.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], "video/webm");
        assert_eq!(h[header::ACCEPT_RANGES], "bytes");
        assert_eq!(
            h[header::CONTENT_RANGE],
            format!("bytes {start}-{end}/{size}").as_str(),
            "{range}"
        );
        assert_eq!(
            h[header::CONTENT_LENGTH],
            (end - start + 1).to_string().as_str()
        );
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body[..], &full[start..=end], "{range}");
    }

    // Outside the file: 416 with the size and our error body.
    for range in [format!("bytes={size}-"), "bytes=-0".to_string()] {
        let resp = app
            .send(app.req(Method::GET, &path).header(header::RANGE, &range))
            .await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            resp.headers()[header::CONTENT_RANGE],
            format!("bytes */{size}").as_str()
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "range_not_satisfiable", "{body}");
    }
    // Ranges we do not serve as such get the whole file.
    for range in ["bytes=0-1,5-9", "bytes=oops", "pages=1-2"] {
        let resp = app
            .send(app.req(Method::GET, &path).header(header::RANGE, range))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{range}");
        assert_eq!(resp.bytes().await.unwrap(), full, "{range}");
    }

    // HEAD: the headers of GET, no body.
    let resp = app.send(app.req(Method::HEAD, &path)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "video/webm");
    assert_eq!(
        resp.headers()[header::CONTENT_LENGTH],
        size.to_string().as_str()
    );
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = app
        .send(
            app.req(Method::HEAD, &path)
                .header(header::RANGE, "bytes=0-99"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()[header::CONTENT_LENGTH], "100");

    // The signed URL instead of the API key: whole file and ranges, no header needed.
    let rec: Value = app
        .send(app.req(Method::GET, &format!("/api/v1/recordings/{id}")))
        .await
        .json()
        .await
        .unwrap();
    let signed = format!("{}{}", app.base, rec["signed_media_url"].as_str().unwrap());
    let resp = app.http.get(&signed).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), full);
    let resp = app
        .http
        .get(&signed)
        .header(header::RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&resp.bytes().await.unwrap()[..], &full[..100]);
    // A wrong API key next to a valid signature does not matter; a valid key next to a bad
    // signature neither.
    let resp = app
        .http
        .get(&signed)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (base_url, query) = signed.split_once('?').unwrap();
    let sig = query.split_once("&sig=").unwrap().1;
    let exp: i64 = query
        .trim_start_matches("exp=")
        .split_once('&')
        .unwrap()
        .0
        .parse()
        .unwrap();
    let resp = app
        .send(app.req(Method::GET, &format!("{path}?exp=1&sig=00")))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Without the key: a signature for another expiry, another recording, a cut one, or none.
    let other = Uuid::new_v4();
    for url in [
        format!("{base_url}?exp={}&sig={sig}", exp + 300),
        format!(
            "{}/api/v1/recordings/{other}/media?exp={exp}&sig={sig}",
            app.base
        ),
        format!("{base_url}?exp={exp}&sig={}", &sig[..40]),
        format!("{base_url}?exp={exp}"),
        format!("{base_url}?sig={sig}"),
        format!("{base_url}?exp=soon&sig=%zz"),
        base_url.to_string(),
    ] {
        let resp = app.http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{url}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{url}");
    }

    // Other methods: 405 with our body.
    let resp = app.send(app.req(Method::PUT, &path)).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// Pages of every size see every recording exactly once, in start order.
async fn listing(app: &App, all: &[String]) {
    for limit in 1..=all.len() + 1 {
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                None => format!("?limit={limit}"),
                Some(c) => format!("?limit={limit}&cursor={c}"),
            };
            let page = app.list(&query).await;
            let got = ids(&page);
            sizes.push(got.len());
            for r in page["recordings"].as_array().unwrap() {
                assert_shape(
                    r,
                    r["room"].as_str().unwrap(),
                    r["status"].as_str().unwrap(),
                );
            }
            seen.extend(got);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => {
                    assert!(page["next_cursor"].is_null());
                    break;
                }
            }
        }
        assert_eq!(seen, all, "limit {limit}");
        assert!(sizes.iter().all(|s| *s <= limit), "{sizes:?}");
    }
    let page = app.list("").await;
    assert_eq!(ids(&page), all);
    assert!(page["next_cursor"].is_null());
}

/// The empty-room reaper deletes a recorded room past its timeout and finalizes the recording.
async fn reaper_finalizes(app: &App) {
    app.call(
        Method::POST,
        "/api/v1/rooms",
        Some(json!({"name": "rec-reaped", "empty_timeout_s": 1})),
        StatusCode::CREATED,
    )
    .await;
    let r = app.start("rec-reaped").await;
    let id = id_of(&r);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = app
            .send(app.req(Method::GET, "/api/v1/rooms/rec-reaped"))
            .await;
        if resp.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reaper never deleted the room"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = app.get(&id).await;
    assert_shape(&r, "rec-reaped", "completed");
    assert!(r["size_bytes"].as_u64().unwrap() > 0);
}

// ----- backends ---------------------------------------------------------------------------------

#[actix_web::test]
async fn recordings_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("mcu.db").display());
    let app = spawn_app(&url, dir.path()).await;
    suite(&app).await;
    app.handle.stop(true).await;
}

#[actix_web::test]
async fn recordings_on_postgres() {
    let admin_url = std::env::var("MCU_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Some(mut admin) = common::admin_connection(&admin_url).await else {
        return;
    };
    let db = format!("mcu_rec_test_{}", Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("create the test database");
    let url = common::with_database(&admin_url, &db);
    // Run in a task so that a failed assertion still lets us drop the database.
    let run = actix_web::rt::spawn(async move {
        let dir = tempfile::tempdir().unwrap();
        let app = spawn_app(&url, dir.path()).await;
        suite(&app).await;
        app.handle.stop(true).await;
    })
    .await;
    let dropped = admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await;
    if let Err(e) = dropped {
        eprintln!("could not drop test database {db}: {e}");
    }
    if let Err(e) = run {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("suite task failed: {e}");
    }
}
