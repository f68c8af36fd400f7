//! Drain and graceful shutdown of the real binary: with a participant connected over the
//! signaling WebSocket and a recording of its room running, SIGTERM drains: the node says
//! `draining`, places no new room (`server_busy`: it is the only node), and its call goes on (a
//! late participant still joins it) until the drain timeout (`MCU_DRAIN_TIMEOUT_S`, 3 s here).
//! Then the participants receive `{"type":"closed","reason":"server_shutdown"}`, the recording
//! ends `completed` with a playable file, and the process exits 0 within 10 s; a join after
//! that is not welcomed.

mod common;

use common::{Server, command, free_port};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "shutdown-test-api-key-0123456789";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame, or None when the socket closes.
async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => panic!("no message within {within:?}"),
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_and_completes_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let db = format!("sqlite://{}/mcu.db", dir.path().display());
    let rec_dir = dir.path().join("recordings");
    let mut cmd = command(dir.path());
    cmd.env("MCU_LISTEN", format!("127.0.0.1:{port}"))
        .env("MCU_API_KEY", KEY)
        .env(
            "MCU_TOKEN_SECRET",
            "shutdown-test-token-secret-0123456789abcdef",
        )
        .env("DATABASE_URL", &db)
        .env("MCU_RECORDINGS_DIR", &rec_dir)
        .env("MCU_RTC_BIND", "127.0.0.1")
        .env("MCU_UDP_PORTS", "0")
        .env("MCU_DRAIN_TIMEOUT_S", "3")
        .env("MCU_LOG", "info")
        .env("NO_COLOR", "1");
    let mut server = Server::spawn(cmd, dir.path());
    server.wait_healthy(&base).await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}/api/v1{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let r = post("/rooms", json!({"name": "townhall"})).await.unwrap();
    assert_eq!(r.status(), 201);
    let token: Value = post("/rooms/townhall/tokens", json!({"identity": "alice"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws_url = token["ws_url"].as_str().unwrap().to_string();
    let late: Value = post("/rooms/townhall/tokens", json!({"identity": "late"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let late_url = late["ws_url"].as_str().unwrap().to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let welcome = next_json(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");

    let r = post("/rooms/townhall/recordings", json!({})).await.unwrap();
    assert_eq!(r.status(), 201);
    let rec: Value = r.json().await.unwrap();
    assert_eq!(rec["status"], "recording");
    let rec_id: uuid::Uuid = rec["id"].as_str().unwrap().parse().unwrap();
    // Let it record a couple of seconds of the (black, silent) composite.
    tokio::time::sleep(Duration::from_secs(2)).await;

    server.signal("TERM");
    let drain_start = Instant::now();
    // Draining: the call goes on, the node says so, no new room is placed here.
    let nodes = loop {
        let v: Value = http
            .get(format!("{base}/api/v1/nodes"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["nodes"][0]["status"] == "draining" || drain_start.elapsed() > Duration::from_secs(2) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(nodes["nodes"][0]["status"], "draining", "{nodes}");
    let r = post("/rooms", json!({"name": "newroom"})).await.unwrap();
    assert_eq!(r.status(), 201);
    let r = post("/rooms/newroom/tokens", json!({"identity": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_busy", "{body}");
    let (mut ws_late, _) = tokio_tungstenite::connect_async(&late_url).await.unwrap();
    let welcome = next_json(&mut ws_late, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        welcome["type"], "welcome",
        "a late join during the drain: {welcome}"
    );
    let t0 = Instant::now();
    let mut closed = None;
    while let Some(m) = next_json(&mut ws, Duration::from_secs(10)).await {
        if m["type"] == "closed" {
            closed = Some(m);
            break;
        }
    }
    assert_eq!(
        closed,
        Some(json!({"type": "closed", "reason": "server_shutdown"})),
        "server log:\n{}",
        server.stdout()
    );
    let drained = drain_start.elapsed();
    assert!(
        drained >= Duration::from_millis(2_900),
        "the call ended {drained:?} after SIGTERM, before the 3 s drain"
    );
    // A join once the shutdown runs is refused (or finds the listener closed): never welcomed.
    if let Ok((mut ws2, _)) = tokio_tungstenite::connect_async(&late_url).await {
        let first = next_json(&mut ws2, Duration::from_secs(10)).await;
        if let Some(m) = first {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["code"], "unavailable", "{m}");
        }
    }
    let status = server.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM"));
    assert!(
        status.success(),
        "exit status {status}: {}",
        server.stderr()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let log = server.stdout();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    // The signaling session logs inside its upgrade request's span.
    assert!(
        log.lines().any(|l| l.contains("participant joined")
            && l.contains("request_id=")
            && l.contains("path=/api/v1/ws")),
        "{log}"
    );

    // The database says completed, with the file's duration and size.
    let store = server::store::Store::connect(&db).await.unwrap();
    let rec = store
        .get_recording(rec_id)
        .await
        .unwrap()
        .expect("recording row");
    assert_eq!(rec.status, server::model::RecordingStatus::Completed);
    assert!(rec.ended_at.is_some());
    let path = rec_dir.join(&rec.file_name);
    let size = std::fs::metadata(&path).unwrap().len();
    assert_eq!(rec.size_bytes, Some(size));
    let stored = rec.duration_ms.expect("duration stored");
    // About 2 s before SIGTERM and the 3 s of the drain.
    assert!((4500..=7000).contains(&stored), "duration {stored} ms");
    // The file itself is complete: the demuxer reads as long a duration as was stored, and
    // ffprobe (when installed) finds the header's Duration, written only on a clean finish.
    let probed = recorder::probe_duration_ms(&path).unwrap();
    assert!(
        probed.abs_diff(stored) <= 100,
        "probed {probed} vs {stored}"
    );
    if let Ok(out) = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
    {
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ffprobe: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(
            (secs * 1000.0 - stored as f64).abs() < 200.0,
            "ffprobe {secs} s vs {stored} ms"
        );
    }
}
