//! TURN credentials handed out in `welcome` are what coturn accepts.
//!
//! A participant joins over the signaling WebSocket of a server configured with a TURN URL and a
//! shared secret; its `welcome.ice_servers` holds `<expiry>:<participant id>` and a credential.
//! The test recomputes the credential itself (HMAC-SHA1, base64), then runs Debian's coturn
//! (`turnserver`, `--use-auth-secret`) on 127.0.0.1 and has coturn's own client
//! (`turnutils_uclient`) allocate relays with those credentials: it must succeed with them and
//! fail with a credential from the wrong secret or with an expired username. Without coturn
//! installed the coturn part is skipped with a notice, or fails when `CI` is set.

use futures_util::StreamExt;
use serde_json::Value;
use server::config::{Config, RtcConfig, TurnConfig};
use std::io::Read as _;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

/// Independent credential computation (not `server::turn`).
fn hmac_b64(secret: &str, username: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Joins a room on an in-process server configured with `turn` and returns the TURN entry of
/// the welcome plus the participant id.
async fn welcome_turn_entry(turn: TurnConfig) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: Some("turn-test-api-key-0123456789".into()),
        token_secret: Some("turn-test-token-secret-0123456789abcdef".into()),
        database_url: format!("sqlite://{}/mcu.db", dir.path().display()),
        recordings_dir: dir.path().join("rec"),
        rtc: RtcConfig {
            bind: Some("127.0.0.1".parse().unwrap()),
            udp_ports: server::config::UdpPorts::Shared(0),
            ice_servers: vec![server::config::IceServer {
                urls: vec!["stun:127.0.0.1:3478".into()],
                username: None,
                credential: None,
            }],
            ..Default::default()
        },
        turn,
        ..Config::default()
    };
    let running = server::start(config).await.unwrap();
    let (addr, state, handle) = (running.addr, running.state.clone(), running.server.handle());
    actix_web::rt::spawn(running.server);
    let iat = chrono::Utc::now().timestamp();
    let token = state.tokens.mint(&server::auth::JoinClaims {
        room: "relay".into(),
        sub: "alice:with:colons".into(),
        name: None,
        iat,
        exp: iat + 600,
        can_publish: true,
        can_subscribe: true,
        is_admin: false,
        room_id: None,
    });
    let url = format!("ws://{addr}/api/v1/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome: Value = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => break serde_json::from_str(&t).unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no welcome: {other:?}"),
        }
    };
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let servers = welcome["ice_servers"].as_array().unwrap().clone();
    drop(ws);
    handle.stop(false).await;
    assert_eq!(
        servers[0],
        serde_json::json!({"urls": ["stun:127.0.0.1:3478"]})
    );
    let turn = servers
        .iter()
        .find(|s| s.get("username").is_some())
        .cloned()
        .unwrap_or(Value::Null);
    (
        turn,
        welcome["participant_id"].as_str().unwrap().to_string(),
    )
}

#[actix_web::test]
async fn welcome_without_turn_has_only_the_configured_servers() {
    let (turn, _) = welcome_turn_entry(TurnConfig::default()).await;
    assert_eq!(turn, Value::Null);
}

/// coturn on loopback: killed and reaped when dropped.
/// A loopback port that is free for both UDP and TCP right now.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

struct Coturn {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Coturn {
    /// Starts coturn on a port free for UDP and TCP (it listens on both); when another process
    /// takes the port first (coturn then never answers), again on another one.
    fn start(secret: &str, dir: &Path) -> Coturn {
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut c = Self::spawn(secret, dir, free_udp_and_tcp_port());
            if c.wait_ready() {
                return c;
            }
            last_log = c.log();
        }
        panic!("turnserver did not answer STUN on three ports:\n{last_log}");
    }

    fn spawn(secret: &str, dir: &Path, port: u16) -> Coturn {
        // A relay range of its own per process, away from the ephemeral range's busy start.
        let relay_min = 20_000 + (std::process::id() % 100) as u16 * 100;
        let log = dir.join("turnserver.log");
        let child = Command::new("turnserver")
            .args([
                "-n", // no configuration file
                "-v",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                &format!("--min-port={relay_min}"),
                &format!("--max-port={}", relay_min + 99),
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=mcu.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                // uclient's two clients talk to each other through relays on loopback.
                "--allow-loopback-peers",
                "--log-file=stdout",
                "--simple-log",
                &format!("--userdb={}", dir.join("turndb").display()),
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        Coturn { child, port, log }
    }

    /// Polls with STUN Binding requests (answered without authentication) until coturn answers
    /// (true) or 15 s pass (false).
    fn wait_ready(&mut self) -> bool {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(b"mcu-turn-tst"); // 12-byte transaction id
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("turnserver exited ({st}):\n{}", self.log());
            }
            let _ = sock.send_to(&req, ("127.0.0.1", self.port));
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && n >= 20
                && buf[0..2] == [0x01, 0x01]
            {
                return true; // Binding success response
            }
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `turnutils_uclient` in client-to-client mode: two allocations that send each other
    /// 3 messages through their relays. Returns (success, output).
    fn allocate(&self, username: &str, credential: &str) -> (bool, String) {
        let mut child = Command::new("turnutils_uclient")
            .args(["-y", "-c", "-X", "-n", "3", "-m", "1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-u",
                username,
                "-w",
                credential,
            ])
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("turnutils_uclient starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        (status.is_some_and(|s| s.success()), out)
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[actix_web::test]
async fn welcome_credentials_are_accepted_by_coturn() {
    let secret = format!("turn-test-secret-{}", uuid::Uuid::new_v4().simple());
    let turn = TurnConfig {
        urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        secret: Some(secret.clone()),
        ttl_s: 600,
    };
    let before = now_s();
    let (entry, participant_id) = welcome_turn_entry(turn).await;
    let after = now_s();

    // The shape and the convention, checked independently of the server's code.
    assert_eq!(
        entry["urls"],
        serde_json::json!(["turn:127.0.0.1:3478?transport=udp"])
    );
    let username = entry["username"].as_str().unwrap().to_string();
    let credential = entry["credential"].as_str().unwrap().to_string();
    let (expiry, identity) = username.split_once(':').unwrap();
    assert_eq!(identity, participant_id, "identity = participant id");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 600..=after + 600).contains(&expiry),
        "expiry {expiry} not now + ttl"
    );
    assert_eq!(credential, hmac_b64(&secret, &username));
    assert_ne!(credential, hmac_b64("another-secret", &username));

    if !(have("turnserver") && have("turnutils_uclient")) {
        assert!(
            ["CI", "MCU_TEST_REQUIRE_SERVICES"]
                .iter()
                .all(|v| std::env::var_os(v).is_none_or(|x| x.is_empty())),
            "coturn is not installed (scripts/setup.sh installs it)"
        );
        eprintln!("coturn not installed: skipping the allocation against turnserver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let coturn = Coturn::start(&secret, dir.path());

    let (ok, out) = coturn.allocate(&username, &credential);
    assert!(
        ok,
        "allocation with the welcome's credentials failed:\n{out}"
    );
    assert!(
        out.contains("tot_recv_msgs=6"),
        "messages did not cross the relays:\n{out}"
    );
    let log = coturn.log();
    assert!(
        log.contains(&format!(
            "user <{username}>: incoming packet ALLOCATE processed, success"
        )),
        "coturn did not log the allocation for {username}:\n{log}"
    );

    // The same username signed with another secret: refused.
    let (ok, out) = coturn.allocate(&username, &hmac_b64("not-the-secret-0123456789", &username));
    assert!(
        !ok,
        "a credential from the wrong secret was accepted:\n{out}"
    );
    assert!(out.contains("Cannot complete Allocation"), "{out}");

    // A correctly signed but expired username: refused.
    let expired = format!("{}:{participant_id}", now_s() - 60);
    let (ok, out) = coturn.allocate(&expired, &hmac_b64(&secret, &expired));
    assert!(!ok, "an expired username was accepted:\n{out}");
}
