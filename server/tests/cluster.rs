//! Two nodes on one PostgreSQL database, in one process: registration, placement (spread,
//! exactly once under a burst of token requests), the `wrong_node` redirect of a WebSocket opened
//! on the other node, `GET /api/v1/nodes`, and a silent node's rooms placed again.
//! (The three-process test with network namespaces, `kill -9` and a rolling restart is the
//! cluster issue's e2e part.)

mod common;

use common::next_json;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::config::Config;
use server::store::NodeStatus;
use sqlx::Executor as _;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const KEY: &str = "cluster-test-api-key-0123456789";
const SECRET: &str = "cluster-test-token-secret-0123456789abcdef";

struct Node {
    id: String,
    base: String,
    state: actix_web::web::Data<server::AppState>,
    handle: actix_web::dev::ServerHandle,
}

async fn spawn_node(id: &str, database_url: &str, dir: &std::path::Path) -> Node {
    // The public URL must name the port the node binds: pick one first.
    let port = common::free_port();
    let config = Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        api_key: Some(KEY.into()),
        token_secret: Some(SECRET.into()),
        database_url: database_url.into(),
        recordings_dir: dir.join(id).join("recordings"),
        web_dir: dir.join("web"),
        public_url: Some(format!("http://127.0.0.1:{port}")),
        node_id: Some(id.into()),
        node_ttl_s: 2,
        rtc: server::config::RtcConfig {
            udp_ports: server::config::UdpPorts::Shared(0),
            ..Default::default()
        },
        ..Config::default()
    };
    let running = server::start(config).await.expect("node starts");
    let handle = running.server.handle();
    actix_web::rt::spawn(running.server);
    Node {
        id: id.into(),
        base: format!("http://{}", running.addr),
        state: running.state,
        handle,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

impl Node {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        http()
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r = http()
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// A join token for `room`, minted on this node: its `ws_url`.
    async fn token(&self, room: &str, identity: &str) -> String {
        let r = self
            .post(
                &format!("/api/v1/rooms/{room}/tokens"),
                json!({"identity": identity}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        v["ws_url"].as_str().unwrap().to_string()
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The same path and query on another node's address.
fn on(node: &Node, ws_url: &str) -> String {
    let (_, path) = ws_url.split_once("/api/v1/ws").expect("a signaling URL");
    format!("{}/api/v1/ws{path}", node.base.replace("http://", "ws://"))
}

async fn two_nodes(url: String) {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_node("node-a", &url, dir.path()).await;
    let b = spawn_node("node-b", &url, dir.path()).await;
    let nodes = |n: &Node| (n.id.clone(), n.base.clone());
    let by_url = [nodes(&a), nodes(&b)];

    // Both registered, both active, seen the same from either.
    for n in [&a, &b] {
        let list = n.get("/api/v1/nodes").await;
        let seen: Vec<(&str, &str)> = list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x["id"].as_str().unwrap(), x["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            seen,
            vec![("node-a", "active"), ("node-b", "active")],
            "{list}"
        );
    }

    // Rooms spread: tokens for ten new rooms, all asked of node A.
    let mut hosts = Vec::new();
    let (mut placing, mut placed) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let room = format!("spread-{i}");
        assert_eq!(
            a.post("/api/v1/rooms", json!({"name": room}))
                .await
                .status(),
            StatusCode::CREATED
        );
        let t = std::time::Instant::now();
        let ws_url = a.token(&room, "u").await;
        placing.push(t.elapsed());
        let t = std::time::Instant::now();
        a.token(&room, "u2").await;
        placed.push(t.elapsed());
        let host = by_url
            .iter()
            .find(|(_, base)| ws_url.starts_with(&base.replace("http://", "ws://")))
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("ws_url {ws_url} names neither node"));
        let r = a.get(&format!("/api/v1/rooms/{room}")).await;
        assert_eq!(
            r["node_id"],
            host.as_str(),
            "the Room resource names its node"
        );
        hosts.push(host);
    }
    // Figures for the notes (printed, not asserted: timing is a benchmark's business).
    eprintln!(
        "token that places a room: median {:?}; for a placed room: median {:?}",
        median(&mut placing),
        median(&mut placed)
    );
    let on_b = hosts.iter().filter(|h| *h == "node-b").count();
    assert!(
        (4..=6).contains(&on_b),
        "ten rooms, {on_b} on node B: {hosts:?}"
    );

    // A burst of token requests for one new room, half on each node: one placement.
    assert_eq!(
        b.post("/api/v1/rooms", json!({"name": "burst"}))
            .await
            .status(),
        StatusCode::CREATED
    );
    let asks = (0..20).map(|i| {
        let n = if i % 2 == 0 { &a } else { &b };
        n.token("burst", "u")
    });
    let urls = futures_util::future::join_all(asks).await;
    let bases: std::collections::HashSet<&str> = urls
        .iter()
        .map(|u| u.split_once("/api/v1/ws").unwrap().0)
        .collect();
    assert_eq!(bases.len(), 1, "twenty tokens, one hosting node: {bases:?}");

    // A WebSocket on the wrong node is sent to the right one, and the same token joins there.
    let ws_url = a.token("burst", "wanderer").await;
    let (host, other) = if ws_url.starts_with(&a.base.replace("http://", "ws://")) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // What the redirect costs a join: socket to welcome, direct and through the other node.
    let (mut direct, mut redirected) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let url = host.token("burst", &format!("timing-{i}")).await;
        let t = std::time::Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "welcome");
        direct.push(t.elapsed());
        drop(ws);
        let url = host.token("burst", &format!("timing-r{i}")).await;
        let t = std::time::Instant::now();
        let (mut ws, _) = tokio_tungstenite::connect_async(on(other, &url))
            .await
            .unwrap();
        let err = next_json(&mut ws).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(err["ws_url"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["type"], "welcome");
        redirected.push(t.elapsed());
        drop(ws);
    }
    eprintln!(
        "join to welcome: direct median {:?}, through the wrong node median {:?}",
        median(&mut direct),
        median(&mut redirected)
    );
    // The timing sessions end (their sockets dropped) before the counts below.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while host.state.rooms.active_count("burst") > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(on(other, &ws_url))
        .await
        .unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "wrong_node", "{err}");
    assert_eq!(err["ws_url"], ws_url.as_str(), "{err}");
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::from(4307)),
        other => panic!("expected close 4307, got {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(host.state.rooms.active_count("burst"), 1);
    let me = welcome["participant"]["id"].as_str().unwrap().to_string();

    // Calls about the live room asked of the other node are answered by the hosting one.
    let room = other.get("/api/v1/rooms/burst").await;
    assert_eq!(room["active_participants"], 1, "{room}");
    // The list too, asked of either node.
    for n in [&other, &host] {
        let list = n.get("/api/v1/rooms?limit=100").await;
        let listed = list["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "burst")
            .cloned()
            .unwrap_or_default();
        assert_eq!(listed["active_participants"], 1, "{list}");
    }
    let people = other.get("/api/v1/rooms/burst/participants").await;
    assert_eq!(
        people["participants"][0]["identity"], "wanderer",
        "{people}"
    );
    let stats = other.get("/api/v1/rooms/burst/stats").await;
    assert_eq!(stats["live"], true, "{stats}");
    // A wrong key is refused by the node asked, before anything is forwarded.
    let r = http()
        .get(format!("{}/api/v1/rooms/burst/participants", other.base))
        .bearer_auth("not-the-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A mute on the other node reaches the participant within a second.
    let asked = std::time::Instant::now();
    let r = other
        .post(
            &format!("/api/v1/rooms/burst/participants/{me}/mute"),
            json!({"audio": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-mcu-node"], host.id.as_str());
    let update = loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "participant_updated" {
            break m;
        }
    };
    assert_eq!(update["participant"]["audio_muted"], true, "{update}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    // A kick too: the session ends with `closed: kicked`.
    let r = http()
        .delete(format!(
            "{}/api/v1/rooms/burst/participants/{me}",
            other.base
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let closed = loop {
        let m = next_json(&mut ws).await;
        if m["type"] == "closed" {
            break m;
        }
    };
    assert_eq!(closed["reason"], "kicked", "{closed}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    drop(ws);
    // A recording started and stopped through the other node runs on the hosting one.
    let r = other
        .post("/api/v1/rooms/burst/recordings", json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let rec: Value = r.json().await.unwrap();
    let rec_id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(
        host.state
            .recordings
            .active_in("burst")
            .map(|u| u.to_string()),
        Some(rec_id.clone())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = other
        .post(&format!("/api/v1/recordings/{rec_id}/stop"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let rec: Value = r.json().await.unwrap();
    assert_eq!(rec["status"], "completed", "{rec}");
    assert_eq!(host.state.recordings.active_in("burst"), None);

    // The other node falls silent (no heartbeat for the TTL): shown dead, its rooms placed
    // again on the next token.
    let silent_room = hosts
        .iter()
        .position(|h| *h == other.id)
        .map(|i| format!("spread-{i}"))
        .expect("a room on each node");
    // It records that room when it goes silent.
    let r = other
        .post(
            &format!("/api/v1/rooms/{silent_room}/recordings"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let orphan: Value = r.json().await.unwrap();
    let orphan = orphan["id"].as_str().unwrap().to_string();
    other.state.cluster.set_status(NodeStatus::Stopped); // stops its heartbeat, writes nothing
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let list = host.get("/api/v1/nodes").await;
    let status = |id: &str| {
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .map(|x| x["status"].clone())
    };
    assert_eq!(status(&other.id), Some(json!("dead")), "{list}");
    assert_eq!(status(&host.id), Some(json!("active")), "{list}");
    let ws_url = host.token(&silent_room, "u").await;
    assert!(
        ws_url.starts_with(&host.base.replace("http://", "ws://")),
        "{silent_room} placed again on the live node: {ws_url}"
    );
    let r = host.get(&format!("/api/v1/rooms/{silent_room}")).await;
    assert_eq!(r["node_id"], host.id.as_str());
    // Its running recording was taken over: `interrupted`, saying where the file is.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let rec = loop {
        let rec = host.get(&format!("/api/v1/recordings/{orphan}")).await;
        if rec["status"] != "recording" || std::time::Instant::now() > deadline {
            break rec;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rec["status"], "interrupted", "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap_or("")
            .contains("died while recording"),
        "{rec}"
    );

    a.handle.stop(true).await;
    b.handle.stop(true).await;
}

#[actix_web::test]
async fn two_nodes_on_postgres() {
    let admin_url = std::env::var("MCU_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let Some(mut admin) = common::admin_connection(&admin_url).await else {
        return;
    };
    let db = format!("mcu_cluster_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .expect("create the test database");
    let url = common::with_database(&admin_url, &db);
    let run = actix_web::rt::spawn(two_nodes(url)).await;
    let _ = admin
        .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await;
    if let Err(e) = run {
        std::panic::resume_unwind(e.into_panic());
    }
}
