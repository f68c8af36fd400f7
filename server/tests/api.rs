//! REST API tests against the real app: `server::start` on 127.0.0.1:0, spoken to over HTTP.
//!
//! The same suite runs twice: on a fresh SQLite file in a temporary directory, and on a fresh
//! PostgreSQL database (`CREATE DATABASE mcu_test_<random>` through `MCU_TEST_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, dropped at the end). When PostgreSQL cannot be
//! reached the PostgreSQL run is skipped with a notice, or fails if `CI` is set. The PostgreSQL
//! run also takes the database away mid-run and checks 503s and recovery.

mod common;

use actix_web::web::Data;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server::AppState;
use server::api::rest::{ParticipantList, Room, RoomList, TokenResponse};
use server::auth::{TokenError, TokenKeys};
use server::config::Config;
use server::model::{CloseReason, Layout, Participant};
use server::room::{ParticipantHandle, SessionEvent};
use sqlx::{Connection as _, Executor as _, PgConnection};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const TOKEN_SECRET: &str = "api-test-token-secret-0123456789abcdef";

struct App {
    base: String,
    key: String,
    http: reqwest::Client,
    state: Data<AppState>,
    handle: actix_web::dev::ServerHandle,
}

async fn spawn_app(database_url: &str, dir: &std::path::Path) -> App {
    spawn_app_with(database_url, dir, |_| {}).await
}

async fn spawn_app_with(
    database_url: &str,
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut Config),
) -> App {
    let key = format!("api-test-key-{}", uuid::Uuid::new_v4().simple());
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: Some(key.clone()),
        token_secret: Some(TOKEN_SECRET.into()),
        database_url: database_url.into(),
        recordings_dir: dir.join("recordings"),
        web_dir: dir.join("web"),
        // One media socket per test server, on a port the OS picks (tests run in parallel).
        rtc: server::config::RtcConfig {
            udp_ports: server::config::UdpPorts::Shared(0),
            ..Default::default()
        },
        ..Config::default()
    };
    tweak(&mut config);
    let running = server::start(config).await.expect("server starts");
    let handle = running.server.handle();
    actix_web::rt::spawn(running.server);
    App {
        base: format!("http://{}", running.addr),
        key,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
        state: running.state,
        handle,
    }
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self.admin(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request sent")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> reqwest::Response {
        self.call(Method::PATCH, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.call(Method::DELETE, path, None).await
    }

    async fn create_room(&self, body: Value) -> Room {
        let resp = self.post("/api/v1/rooms", body.clone()).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "create {body}");
        resp.json().await.unwrap()
    }

    fn join(&self, room: &str, identity: &str) -> (ParticipantHandle, Participant, Rx) {
        let (tx, rx) = mpsc::channel(64);
        let (h, p, _) = self
            .state
            .rooms
            .join(room, 10, Layout::Grid, identity, identity, tx)
            .expect("joins");
        (h, p, rx)
    }
}

type Rx = mpsc::Receiver<SessionEvent>;

/// Asserts the API error body and returns its message.
async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) -> String {
    assert_eq!(resp.status(), status, "status for expected {code}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ct.starts_with("application/json"),
        "error content type {ct}"
    );
    let body: Value = resp.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    let msg = body["error"]["message"]
        .as_str()
        .expect("message")
        .to_string();
    assert!(!msg.is_empty());
    msg
}

async fn expect_invalid(resp: reqwest::Response, field: &str) {
    let msg = expect_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(msg.contains(field), "message '{msg}' should name '{field}'");
}

fn drain(rx: &mut Rx) -> Vec<SessionEvent> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

// ----- the suite --------------------------------------------------------------------------------

async fn suite(app: &App) {
    pagination(app).await;
    auth(app).await;
    create_and_validate(app).await;
    get_patch_delete(app).await;
    participants(app).await;
    tokens(app).await;
    empty_room_timeout(app).await;
    room_stats(app).await;
    health_metrics_openapi(app).await;
    security_headers(app).await;
}

/// Every response says what a page may load and that it may not be framed or sniffed; an API
/// error too (a browser may render anything it is sent).
async fn security_headers(app: &App) {
    for r in [
        app.http.get(app.url("/healthz")).send().await.unwrap(),
        app.get("/api/v1/rooms").await,
        app.http.get(app.url("/api/v1/rooms")).send().await.unwrap(),
    ] {
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
}

/// `GET /rooms/{name}/stats`: nothing live before a join; the media thread's figures while
/// someone is connected; 404 and 401 as everywhere.
async fn room_stats(app: &App) {
    use server::api::stats::RoomStats;
    app.create_room(json!({"name": "stats", "layout": "speaker"}))
        .await;
    let idle: RoomStats = app
        .get("/api/v1/rooms/stats/stats")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        idle,
        RoomStats {
            room: "stats".into(),
            live: false,
            participants: 0,
            recording_id: None,
            layout: Layout::Speaker,
            media: None,
            receivers: vec![],
        }
    );
    let (h_a, _alice, _rx_a) = app.join("stats", "alice");
    let (h_b, _bob, _rx_b) = app.join("stats", "bob");
    // Let the 20 ms clock run a few ticks.
    let deadline = Instant::now() + Duration::from_secs(5);
    let live = loop {
        let s: RoomStats = app
            .get("/api/v1/rooms/stats/stats")
            .await
            .json()
            .await
            .unwrap();
        if s.media.as_ref().is_some_and(|m| m.ticks >= 10) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(live.live && live.participants == 2, "{live:?}");
    let m = live.media.expect("media figures");
    assert!(m.ticks >= 10, "{m:?}");
    assert!(
        m.tick_max_us >= m.tick_mean_us && m.tick_mean_us < 20_000,
        "{m:?}"
    );
    drop((h_a, h_b));
    expect_error(
        app.get("/api/v1/rooms/nope/stats").await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;
    let anon = app
        .http
        .get(app.url("/api/v1/rooms/stats/stats"))
        .send()
        .await
        .unwrap();
    expect_error(anon, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert_eq!(
        app.delete("/api/v1/rooms/stats").await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn pagination(app: &App) {
    // Fresh database: exactly these seven rooms, in creation order.
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(app.create_room(json!({"name": format!("page-{i}")})).await);
    }
    let names: Vec<String> = created.iter().map(|r| r.name.clone()).collect();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/rooms?limit=3".to_string(),
            Some(c) => format!("/api/v1/rooms?limit=3&cursor={c}"),
        };
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let page: RoomList = resp.json().await.unwrap();
        sizes.push(page.rooms.len());
        seen.extend(page.rooms);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(sizes, vec![3, 3, 1]);
    assert_eq!(seen, created, "every room exactly once, in creation order");

    // Default page holds them all and says there is no more.
    let all: RoomList = app.get("/api/v1/rooms").await.json().await.unwrap();
    assert_eq!(
        all.rooms.iter().map(|r| &r.name).collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>()
    );
    assert!(all.next_cursor.is_none());

    // A walk stays stable while rooms come and go: deleting a room already seen and adding one
    // neither repeats nor skips anything.
    let first: RoomList = app.get("/api/v1/rooms?limit=3").await.json().await.unwrap();
    assert_eq!(
        app.delete("/api/v1/rooms/page-1").await.status(),
        StatusCode::NO_CONTENT
    );
    let late = app.create_room(json!({"name": "page-late"})).await;
    let mut rest = Vec::new();
    let mut cursor = first.next_cursor.clone();
    while let Some(c) = cursor {
        let page: RoomList = app
            .get(&format!("/api/v1/rooms?limit=3&cursor={c}"))
            .await
            .json()
            .await
            .unwrap();
        rest.extend(page.rooms.into_iter().map(|r| r.name));
        cursor = page.next_cursor;
    }
    assert_eq!(rest, ["page-3", "page-4", "page-5", "page-6", "page-late"]);

    // Bad parameters name themselves.
    for q in ["limit=0", "limit=101", "limit=abc", "limit=-1"] {
        expect_invalid(app.get(&format!("/api/v1/rooms?{q}")).await, "limit").await;
    }
    expect_invalid(app.get("/api/v1/rooms?cursor=garbage").await, "cursor").await;

    for r in names.iter().filter(|n| *n != "page-1").chain([&late.name]) {
        assert_eq!(
            app.delete(&format!("/api/v1/rooms/{r}")).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    let empty: RoomList = app.get("/api/v1/rooms").await.json().await.unwrap();
    assert!(empty.rooms.is_empty() && empty.next_cursor.is_none());
}

async fn auth(app: &App) {
    let url = app.url("/api/v1/rooms");
    let none = app.http.get(&url).send().await.unwrap();
    let msg = expect_error(none, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(msg.contains("Authorization"), "{msg}");
    let wrong = app
        .http
        .get(&url)
        .bearer_auth("not-the-key")
        .send()
        .await
        .unwrap();
    expect_error(wrong, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let prefix = app
        .http
        .get(&url)
        .bearer_auth(&app.key[..app.key.len() - 1])
        .send()
        .await
        .unwrap();
    expect_error(prefix, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let basic = app
        .http
        .get(&url)
        .basic_auth("admin", Some(&app.key))
        .send()
        .await
        .unwrap();
    expect_error(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // Auth is checked before the body: a bad body without a key is still 401.
    let post = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    expect_error(post, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for (m, p) in [
        (Method::GET, "/api/v1/rooms/x"),
        (Method::DELETE, "/api/v1/rooms/x"),
        (Method::GET, "/api/v1/rooms/x/participants"),
        (Method::DELETE, "/api/v1/rooms/x/participants/y"),
    ] {
        let r = app.http.request(m, app.url(p)).send().await.unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // The key works with a lower-case scheme too.
    let ok = app
        .http
        .get(&url)
        .header("authorization", format!("bearer {}", app.key))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

async fn create_and_validate(app: &App) {
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let resp = app.post("/api/v1/rooms", json!({"name": "alpha"})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/api/v1/rooms/alpha")
    );
    let raw: Value = resp.json().await.unwrap();
    for field in [
        "id",
        "name",
        "max_participants",
        "layout",
        "auto_record",
        "empty_timeout_s",
        "metadata",
        "created_at",
        "active_participants",
        "recording_id",
    ] {
        assert!(raw.get(field).is_some(), "Room lacks {field}: {raw}");
    }
    assert_eq!(raw["layout"], "grid");
    assert_eq!(raw["metadata"], Value::Null);
    assert_eq!(raw["recording_id"], Value::Null);
    let alpha: Room = serde_json::from_value(raw).unwrap();
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.max_participants, 50);
    assert!(!alpha.auto_record);
    assert_eq!(alpha.empty_timeout_s, 300);
    assert_eq!(alpha.active_participants, 0);
    assert!(alpha.created_at > before && alpha.created_at <= chrono::Utc::now());

    let full = app
        .create_room(json!({
            "name": "Full_Room-2", "max_participants": 8, "layout": "speaker",
            "auto_record": true, "empty_timeout_s": 0, "metadata": "{\"topic\":\"x\"}"
        }))
        .await;
    assert_eq!(
        (
            full.max_participants,
            full.layout,
            full.auto_record,
            full.empty_timeout_s
        ),
        (8, Layout::Speaker, true, 0)
    );
    assert_eq!(full.metadata.as_deref(), Some("{\"topic\":\"x\"}"));

    let dup = app.post("/api/v1/rooms", json!({"name": "alpha"})).await;
    let msg = expect_error(dup, StatusCode::CONFLICT, "room_exists").await;
    assert!(msg.contains("alpha"), "{msg}");

    let cases = [
        (json!({"name": "bad name"}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(65)}), "name"),
        (json!({}), "name"),
        (
            json!({"name": "v", "max_participants": 0}),
            "max_participants",
        ),
        (
            json!({"name": "v", "max_participants": 1001}),
            "max_participants",
        ),
        (
            json!({"name": "v", "max_participants": "ten"}),
            "max_participants",
        ),
        (json!({"name": "v", "layout": "mosaic"}), "layout"),
        (
            json!({"name": "v", "empty_timeout_s": -1}),
            "empty_timeout_s",
        ),
        (
            json!({"name": "v", "empty_timeout_s": 86401}),
            "empty_timeout_s",
        ),
        (
            json!({"name": "v", "metadata": "m".repeat(4097)}),
            "metadata",
        ),
        (json!({"name": "v", "metadata": 5}), "metadata"),
        (json!({"name": "v", "auto_record": "yes"}), "auto_record"),
        (json!({"name": "v", "colour": "red"}), "colour"),
    ];
    for (body, field) in cases {
        expect_invalid(app.post("/api/v1/rooms", body).await, field).await;
    }
    // 4096 bytes of metadata is fine (multi-byte characters count as bytes).
    let edge = app
        .create_room(json!({"name": "edge", "metadata": "é".repeat(2048)}))
        .await;
    assert_eq!(edge.metadata.map(|m| m.len()), Some(4096));
    expect_invalid(
        app.post(
            "/api/v1/rooms",
            json!({"name": "v", "metadata": "é".repeat(2049)}),
        )
        .await,
        "metadata",
    )
    .await;

    let raw_post = |ct: &'static str, body: String| {
        app.admin(Method::POST, "/api/v1/rooms")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let malformed = raw_post("application/json", "{\"name\":".into())
        .await
        .unwrap();
    expect_invalid(malformed, "JSON").await;
    let trailing = raw_post("application/json", "{\"name\":\"t\"} x".into())
        .await
        .unwrap();
    expect_invalid(trailing, "JSON").await;
    let text = raw_post("text/plain", "{\"name\":\"t\"}".into())
        .await
        .unwrap();
    expect_invalid(text, "Content-Type").await;
    let no_ct = app
        .admin(Method::POST, "/api/v1/rooms")
        .body("{\"name\":\"t\"}")
        .send()
        .await
        .unwrap();
    expect_invalid(no_ct, "Content-Type").await;
    let with_charset = raw_post(
        "application/json; charset=utf-8",
        "{\"name\":\"cs\"}".into(),
    )
    .await
    .unwrap();
    assert_eq!(with_charset.status(), StatusCode::CREATED);
    let huge = format!(
        "{{\"name\":\"big\",\"metadata\":\"{}\"}}",
        "m".repeat(70 * 1024)
    );
    let big = raw_post("application/json", huge).await.unwrap();
    let msg = expect_error(big, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(msg.contains("65536"), "{msg}");
    // Nothing of the refused requests was stored.
    for n in ["v", "t", "big"] {
        let r = app.get(&format!("/api/v1/rooms/{n}")).await;
        expect_error(r, StatusCode::NOT_FOUND, "room_not_found").await;
    }
    for n in ["Full_Room-2", "edge", "cs"] {
        assert_eq!(
            app.delete(&format!("/api/v1/rooms/{n}")).await.status(),
            StatusCode::NO_CONTENT
        );
    }
    expect_invalid(
        app.post("/api/v1/rooms", json!({"name": "v", "metadata": "a\u{0}b"}))
            .await,
        "metadata",
    )
    .await;
    // Names no room can have are simply not found (PostgreSQL would choke on the NUL).
    for p in [
        "/api/v1/rooms/a%00b",
        "/api/v1/rooms/%FF",
        "/api/v1/rooms/a%20b/participants",
    ] {
        expect_error(app.get(p).await, StatusCode::NOT_FOUND, "room_not_found").await;
    }
    expect_error(
        app.patch("/api/v1/rooms/a%00b", json!({"layout": "grid"}))
            .await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;
    // Unknown routes and methods under the API answer with the error body too.
    let nope = app.get("/api/v1/no-such-thing").await;
    expect_error(nope, StatusCode::NOT_FOUND, "not_found").await;
    let put = app
        .call(Method::PUT, "/api/v1/rooms/alpha", Some(json!({})))
        .await;
    assert_eq!(
        put.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, PATCH, DELETE")
    );
    expect_error(put, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let post_health = app.http.post(app.url("/healthz")).send().await.unwrap();
    expect_error(
        post_health,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

async fn get_patch_delete(app: &App) {
    let alpha: Room = app.get("/api/v1/rooms/alpha").await.json().await.unwrap();
    let missing = app.get("/api/v1/rooms/nope").await;
    let msg = expect_error(missing, StatusCode::NOT_FOUND, "room_not_found").await;
    assert!(msg.contains("nope"), "{msg}");

    let resp = app
        .patch(
            "/api/v1/rooms/alpha",
            json!({"layout": "speaker", "max_participants": 5, "metadata": "hello",
                   "auto_record": true, "empty_timeout_s": 0}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let patched: Room = resp.json().await.unwrap();
    assert_eq!(patched.id, alpha.id);
    assert_eq!(patched.created_at, alpha.created_at);
    assert!(patched.updated_at >= alpha.updated_at);
    assert_eq!(
        (
            patched.layout,
            patched.max_participants,
            patched.auto_record,
            patched.empty_timeout_s
        ),
        (Layout::Speaker, 5, true, 0)
    );
    assert_eq!(patched.metadata.as_deref(), Some("hello"));
    let reread: Room = app.get("/api/v1/rooms/alpha").await.json().await.unwrap();
    assert_eq!(reread, patched);

    // Partial: only the named field changes; null metadata clears it.
    let p2: Room = app
        .patch("/api/v1/rooms/alpha", json!({"metadata": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(p2.metadata, None);
    assert_eq!((p2.layout, p2.max_participants), (Layout::Speaker, 5));
    let p3: Room = app
        .patch("/api/v1/rooms/alpha", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (p3.layout, p3.max_participants, p3.metadata),
        (Layout::Speaker, 5, None)
    );

    expect_invalid(
        app.patch("/api/v1/rooms/alpha", json!({"name": "beta"}))
            .await,
        "name",
    )
    .await;
    expect_invalid(
        app.patch("/api/v1/rooms/alpha", json!({"max_participants": 0}))
            .await,
        "max_participants",
    )
    .await;
    expect_invalid(
        app.patch("/api/v1/rooms/alpha", json!({"layout": "tiles"}))
            .await,
        "layout",
    )
    .await;
    let gone = app
        .patch("/api/v1/rooms/nope", json!({"layout": "grid"}))
        .await;
    expect_error(gone, StatusCode::NOT_FOUND, "room_not_found").await;

    // DELETE disconnects whoever is in the room.
    app.create_room(json!({"name": "doomed"})).await;
    let (_h, _p, mut rx) = app.join("doomed", "carol");
    assert_eq!(
        app.delete("/api/v1/rooms/doomed").await.status(),
        StatusCode::NO_CONTENT
    );
    let events = drain(&mut rx);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SessionEvent::Close(CloseReason::RoomDeleted, None))),
        "{events:?}"
    );
    expect_error(
        app.get("/api/v1/rooms/doomed").await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;
    expect_error(
        app.delete("/api/v1/rooms/doomed").await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;
}

async fn participants(app: &App) {
    app.create_room(json!({"name": "meet"})).await;
    let empty: ParticipantList = app
        .get("/api/v1/rooms/meet/participants")
        .await
        .json()
        .await
        .unwrap();
    assert!(empty.participants.is_empty());
    expect_error(
        app.get("/api/v1/rooms/nope/participants").await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;

    let (h_a, alice, mut rx_a) = app.join("meet", "alice");
    let (h_b, bob, mut rx_b) = app.join("meet", "bob");
    let list: ParticipantList = app
        .get("/api/v1/rooms/meet/participants")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .participants
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(ids, ["alice", "bob"]);
    let room: Room = app.get("/api/v1/rooms/meet").await.json().await.unwrap();
    assert_eq!(room.active_participants, 2);
    drain(&mut rx_a);

    let path = format!("/api/v1/rooms/meet/participants/{}/mute", alice.id);
    let resp = app.post(&path, json!({"audio": true})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let p: Participant = resp.json().await.unwrap();
    assert_eq!(
        (p.id.as_str(), p.audio_muted, p.video_muted),
        (alice.id.as_str(), true, false)
    );
    let told = drain(&mut rx_b);
    assert!(
        told.iter().any(|e| matches!(e, SessionEvent::Send(t)
            if serde_json::from_str::<serde_json::Value>(t).is_ok_and(|m|
                m["type"] == "participant_updated" && m["participant"]["audio_muted"] == true))),
        "{told:?}"
    );
    let p: Participant = app
        .post(&path, json!({"video": true}))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        p.audio_muted && p.video_muted,
        "audio stays muted, video now muted"
    );
    let p: Participant = app
        .post(&path, json!({"audio": false, "video": false}))
        .await
        .json()
        .await
        .unwrap();
    assert!(!p.audio_muted && !p.video_muted);
    expect_invalid(app.post(&path, json!({"loud": true})).await, "loud").await;
    expect_invalid(app.post(&path, json!({"audio": "yes"})).await, "audio").await;
    let unknown = app
        .post(
            "/api/v1/rooms/meet/participants/PA_nobody/mute",
            json!({"audio": true}),
        )
        .await;
    let msg = expect_error(unknown, StatusCode::NOT_FOUND, "participant_not_found").await;
    assert!(msg.contains("PA_nobody"), "{msg}");
    let no_room = app
        .post(
            &format!("/api/v1/rooms/nope/participants/{}/mute", alice.id),
            json!({}),
        )
        .await;
    expect_error(no_room, StatusCode::NOT_FOUND, "room_not_found").await;

    // Kick: bob's session is told to close; others are untouched.
    drain(&mut rx_a);
    drain(&mut rx_b);
    let kick = app
        .delete(&format!("/api/v1/rooms/meet/participants/{}", bob.id))
        .await;
    assert_eq!(kick.status(), StatusCode::NO_CONTENT);
    let ev = drain(&mut rx_b);
    assert!(
        ev.iter()
            .any(|e| matches!(e, SessionEvent::Close(CloseReason::Kicked, None))),
        "{ev:?}"
    );
    assert!(
        !drain(&mut rx_a)
            .iter()
            .any(|e| matches!(e, SessionEvent::Close(..)))
    );
    drop(h_b); // the session ends, as the signaling side does on `closed`
    let list: ParticipantList = app
        .get("/api/v1/rooms/meet/participants")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.participants.len(), 1);
    let ghost = app
        .delete(&format!("/api/v1/rooms/meet/participants/{}", bob.id))
        .await;
    expect_error(ghost, StatusCode::NOT_FOUND, "participant_not_found").await;
    let ghost_room = app
        .delete(&format!("/api/v1/rooms/nope/participants/{}", alice.id))
        .await;
    expect_error(ghost_room, StatusCode::NOT_FOUND, "room_not_found").await;

    // A locked mute through REST, then lifted; a kick's ban is checked before anything happens.
    let p: Participant = app
        .post(&path, json!({"audio": true, "lock": true}))
        .await
        .json()
        .await
        .unwrap();
    assert!(p.audio_muted && p.audio_locked && !p.video_locked, "{p:?}");
    let p: Participant = app
        .post(&path, json!({"lock": false}))
        .await
        .json()
        .await
        .unwrap();
    assert!(p.audio_muted && !p.audio_locked, "{p:?}");
    let kick_alice = format!("/api/v1/rooms/meet/participants/{}", alice.id);
    for bad in ["abc", "-1", "2592001"] {
        let resp = app.delete(&format!("{kick_alice}?ban_s={bad}")).await;
        let msg = expect_error(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(msg.contains("ban_s"), "{msg}");
    }
    assert!(app.state.rooms.participant("meet", &alice.id).is_some());

    // Metrics count the live participant.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "mcu_participants 1"),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "mcu_rooms 1"), "{metrics}");
    assert_eq!(app.state.rooms.entries(), (1, 0));
    drop(h_a);
    // The room emptied: its live entry goes (the media thread with it), and only when it
    // emptied is remembered, for the reaper.
    assert_eq!(app.state.rooms.entries(), (0, 1));
    assert!(matches!(
        app.state.rooms.activity("meet"),
        server::room::RoomActivity::EmptySince(_)
    ));
    let (h_again, _, _) = app.join("meet", "alice");
    assert_eq!(app.state.rooms.entries(), (1, 0));
    drop(h_again);
}

async fn tokens(app: &App) {
    let keys = TokenKeys::new(TOKEN_SECRET.as_bytes());
    let before = chrono::Utc::now().timestamp();
    let resp = app
        .post(
            "/api/v1/rooms/alpha/tokens",
            json!({"identity": "alice", "display_name": "Alice A.", "ttl_s": 600}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let t: TokenResponse = resp.json().await.unwrap();
    let claims = keys
        .verify(&t.token)
        .expect("token verifies with the server secret");
    assert_eq!(claims.room, "alpha");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.name.as_deref(), Some("Alice A."));
    assert_eq!(claims.exp - claims.iat, 600);
    assert!(claims.iat >= before && claims.iat <= chrono::Utc::now().timestamp());
    assert_eq!(t.expires_at.timestamp(), claims.exp);
    assert!(claims.can_publish && claims.can_subscribe && !claims.is_admin);
    let alpha = app.state.store.get_room("alpha").await.unwrap().unwrap();
    assert_eq!(
        claims.room_id,
        Some(alpha.id),
        "the token names the room it was minted for"
    );
    assert_eq!(
        t.ws_url,
        format!("ws{}/api/v1/ws?token={}", &app.base[4..], t.token)
    );
    // A different secret does not accept it.
    assert!(matches!(
        TokenKeys::new(b"another-secret-another-secret-0123").verify(&t.token),
        Err(TokenError::Invalid(_))
    ));

    // Room scoping and permissions come from the request.
    app.create_room(json!({"name": "beta"})).await;
    let t2: TokenResponse = app
        .post(
            "/api/v1/rooms/beta/tokens",
            json!({"identity": "mod", "can_publish": false, "can_subscribe": true, "is_admin": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let c2 = keys.verify(&t2.token).unwrap();
    assert_eq!((c2.room.as_str(), c2.sub.as_str()), ("beta", "mod"));
    assert!(!c2.can_publish && c2.can_subscribe && c2.is_admin);
    assert_eq!(c2.name, None);
    assert_eq!(
        c2.exp - c2.iat,
        6 * 3600,
        "default ttl from the configuration"
    );

    expect_error(
        app.post("/api/v1/rooms/nope/tokens", json!({"identity": "x"}))
            .await,
        StatusCode::NOT_FOUND,
        "room_not_found",
    )
    .await;
    let bad = [
        (json!({"identity": ""}), "identity"),
        (json!({"identity": "i".repeat(129)}), "identity"),
        (json!({}), "identity"),
        (
            json!({"identity": "a", "display_name": "d".repeat(129)}),
            "display_name",
        ),
        (json!({"identity": "a", "ttl_s": 0}), "ttl_s"),
        (json!({"identity": "a", "ttl_s": 86401}), "ttl_s"),
        (json!({"identity": "a", "room": "other"}), "room"),
    ];
    for (body, field) in bad {
        expect_invalid(app.post("/api/v1/rooms/alpha/tokens", body).await, field).await;
    }
    // 128 characters (not bytes) is the limit.
    let ok = app
        .post(
            "/api/v1/rooms/alpha/tokens",
            json!({"identity": "é".repeat(128)}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);

    // Expiry: valid now, expired after its one-second life.
    let short: TokenResponse = app
        .post(
            "/api/v1/rooms/alpha/tokens",
            json!({"identity": "brief", "ttl_s": 1}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys.verify(&short.token).unwrap().sub, "brief");
    actix_web::rt::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(keys.verify(&short.token), Err(TokenError::Expired));
    assert_eq!(
        app.delete("/api/v1/rooms/beta").await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn empty_room_timeout(app: &App) {
    app.create_room(json!({"name": "ephemeral", "empty_timeout_s": 1}))
        .await;
    app.create_room(json!({"name": "busy", "empty_timeout_s": 1}))
        .await;
    app.create_room(json!({"name": "forever", "empty_timeout_s": 0}))
        .await;
    let (busy_handle, _, _rx) = app.join("busy", "dave");
    let t0 = Instant::now();
    loop {
        let r = app.get("/api/v1/rooms/ephemeral").await;
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "ephemeral room never reaped"
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    // Two more reaper passes: the occupied room and the never-closing one stay.
    actix_web::rt::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(app.get("/api/v1/rooms/busy").await.status(), StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/rooms/forever").await.status(),
        StatusCode::OK
    );
    // Once the last one leaves, the timeout runs from then.
    drop(busy_handle);
    let left = Instant::now();
    loop {
        let r = app.get("/api/v1/rooms/busy").await;
        if r.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "emptied room never reaped"
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        left.elapsed() >= Duration::from_millis(900),
        "reaped before its timeout"
    );
    assert_eq!(
        app.delete("/api/v1/rooms/forever").await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn health_metrics_openapi(app: &App) {
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::OK);
    assert_eq!(
        h.json::<Value>().await.unwrap(),
        json!({"status": "ok", "database": "ok"})
    );

    let m = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), StatusCode::OK);
    let ct = m.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = m.text().await.unwrap();
    for line in [
        "mcu_rooms 0",
        "mcu_participants 0",
        "# TYPE mcu_uptime_seconds gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing '{line}' in {text}"
        );
    }
    let uptime: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("mcu_uptime_seconds "))
        .and_then(|v| v.parse().ok())
        .expect("uptime value");
    assert!(uptime > 1.0, "uptime {uptime}");
    assert!(
        text.contains("mcu_media_tick_seconds_count"),
        "media counters rendered"
    );

    let doc = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), StatusCode::OK);
    let doc: Value = doc.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes: [(&str, &[&str]); 17] = [
        ("/api/v1/rooms", &["get", "post"]),
        ("/api/v1/rooms/{name}/stats", &["get"]),
        ("/api/v1/rooms/{name}", &["get", "patch", "delete"]),
        ("/api/v1/rooms/{name}/tokens", &["post"]),
        ("/api/v1/rooms/{name}/participants", &["get"]),
        ("/api/v1/rooms/{name}/participants/{id}", &["delete"]),
        ("/api/v1/rooms/{name}/participants/{id}/mute", &["post"]),
        ("/api/v1/rooms/{name}/recordings", &["post"]),
        ("/api/v1/recordings", &["get"]),
        ("/api/v1/recordings/{id}", &["get", "delete"]),
        ("/api/v1/recordings/{id}/stop", &["post"]),
        ("/api/v1/recordings/{id}/media", &["get"]),
        ("/healthz", &["get"]),
        ("/metrics", &["get"]),
        ("/api/v1/openapi.json", &["get"]),
        ("/api/v1/dev/token", &["get"]),
        ("/api/v1/nodes", &["get"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths.len(),
        routes.len(),
        "no undocumented extras: {:?}",
        paths.keys()
    );
    for (path, methods) in routes {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} not documented"));
        for m in methods {
            let op = &item[*m];
            assert!(op.is_object(), "{m} {path} not documented");
            if path.starts_with("/api/v1/rooms") || path.starts_with("/api/v1/recordings") {
                // The media download also takes a signed URL (`exp`, `sig`) instead of the key.
                let security = if path.ends_with("/media") {
                    json!([{"bearer": []}, {}])
                } else {
                    json!([{"bearer": []}])
                };
                assert_eq!(op["security"], security, "{m} {path}");
                for code in ["401", "503"] {
                    assert!(op["responses"][code].is_object(), "{m} {path} lacks {code}");
                }
            }
        }
    }
    assert_eq!(
        doc.pointer("/components/schemas/CreateRoomRequest/properties/max_participants/maximum"),
        Some(&json!(1000))
    );
    assert_eq!(
        doc.pointer("/components/securitySchemes/bearer/scheme"),
        Some(&json!("bearer"))
    );
}

/// The store is closed under the server: calls answer 503 quickly, `/healthz` degrades.
async fn store_closed(app: &App) {
    app.state.store.close().await;
    let t0 = Instant::now();
    let r = app.get("/api/v1/rooms").await;
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = h.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert!(
        body["database"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
}

// ----- SQLite -----------------------------------------------------------------------------------

#[actix_web::test]
async fn failed_api_keys_are_rate_limited_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mcu.db", dir.path().display());
    let app = spawn_app_with(&url, dir.path(), |c| c.auth_failures_burst = 3).await;
    let rooms = app.url("/api/v1/rooms");
    let attempt = |key: &str| app.http.get(&rooms).bearer_auth(key).send();
    // Right keys never use the allowance.
    for _ in 0..10 {
        assert_eq!(attempt(&app.key).await.unwrap().status(), StatusCode::OK);
    }
    for _ in 0..3 {
        let r = attempt("guess").await.unwrap();
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // The allowance is used up: guesses and the right key alike wait (3 a minute: ~20 s).
    for key in ["guess", app.key.as_str()] {
        let r = attempt(key).await.unwrap();
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=20).contains(&wait), "Retry-After {wait}");
        let msg = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        assert!(msg.contains("failed authentication"), "{msg}");
    }
    // The document says so on every authenticated operation.
    let doc: serde_json::Value = app
        .http
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops: Vec<&serde_json::Value> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .filter(|op| op["responses"].get("401").is_some())
        .collect();
    assert!(ops.len() > 10);
    assert!(ops.iter().all(|op| op["responses"].get("429").is_some()));
}

#[actix_web::test]
async fn api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested").join("mcu.db");
    let url = format!("sqlite://{}", db.display());
    let app = spawn_app(&url, dir.path()).await;
    assert!(db.exists(), "database file created with its directory");
    assert_eq!(app.state.store.backend(), "sqlite");
    suite(&app).await;
    store_closed(&app).await;
    app.handle.stop(true).await;
}

// ----- PostgreSQL -------------------------------------------------------------------------------

/// The database is taken away under the running server and given back.
async fn database_goes_away(app: &App, admin: &mut PgConnection, db: &str) {
    app.create_room(json!({"name": "survivor"})).await;
    admin
        .execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    let r = app.get("/api/v1/rooms").await;
    let msg = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "503 took {:?}",
        t0.elapsed()
    );
    assert!(msg.contains("unavailable"), "{msg}");
    let r = app
        .post("/api/v1/rooms", json!({"name": "during-outage"}))
        .await;
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let r = app
        .post("/api/v1/rooms/survivor/tokens", json!({"identity": "x"}))
        .await;
    expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = h.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert!(
        body["database"]
            .as_str()
            .unwrap()
            .contains("not currently accepting connections"),
        "{body}"
    );
    // Unauthenticated metrics keep working without the database.
    let m = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), StatusCode::OK);

    admin
        .execute(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    let t1 = Instant::now();
    loop {
        let r = app.get("/api/v1/rooms/survivor").await;
        if r.status() == StatusCode::OK {
            let room: Room = r.json().await.unwrap();
            assert_eq!(room.name, "survivor");
            break;
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "API did not recover"
        );
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    let h = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), StatusCode::OK);
    let rooms: RoomList = app.get("/api/v1/rooms").await.json().await.unwrap();
    assert!(rooms.rooms.iter().any(|r| r.name == "survivor"));
    assert!(!rooms.rooms.iter().any(|r| r.name == "during-outage"));
}

#[actix_web::test]
async fn api_on_postgres() {
    let admin_url = std::env::var("MCU_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Some(mut admin) = common::admin_connection(&admin_url).await else {
        return;
    };
    let db = format!("mcu_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("create the test database");
    let url = common::with_database(&admin_url, &db);
    let dir = tempfile::tempdir().unwrap();

    // Run in a task so that a failed assertion still lets us drop the database.
    let db_name = db.clone();
    let run = actix_web::rt::spawn(async move {
        let app = spawn_app(&url, dir.path()).await;
        assert_eq!(app.state.store.backend(), "postgres");
        suite(&app).await;
        let admin_url = std::env::var("MCU_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        database_goes_away(&app, &mut admin, &db_name).await;
        store_closed(&app).await;
        app.handle.stop(true).await;
        let _ = admin.close().await;
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

#[test]
fn database_url_rewrite() {
    assert_eq!(
        common::with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        common::with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        common::with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}
