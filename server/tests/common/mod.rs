//! Helpers for tests that run the real `mcu-server` binary: a free loopback port, a child process
//! that is killed and reaped when dropped (PID 1 here does not reap orphans), its output captured
//! to files, and waiting for `/healthz`.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mcu-server");

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A command for the binary with an empty environment (nothing from the developer's shell leaks
/// in), working in `dir`.
pub fn command(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

/// Runs the binary to completion (at most 20 s) and returns (exit status, stdout, stderr).
pub fn run(mut cmd: Command) -> (ExitStatus, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut server = Server {
        child: cmd.spawn().expect("the binary starts"),
        stdout: out,
        stderr: err,
    };
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the binary exits by itself");
    (status, server.stdout(), server.stderr())
}

/// A running server process.
pub struct Server {
    /// The process.
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// Starts `cmd` with stdout/stderr going to files in `dir`.
    pub fn spawn(mut cmd: Command, dir: &Path) -> Server {
        let (out, err) = (dir.join("server.out"), dir.join("server.err"));
        cmd.stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap());
        Server {
            child: cmd.spawn().expect("the binary starts"),
            stdout: out,
            stderr: err,
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until `GET base/healthz` answers 200 (at most 30 s); panics with the output if the
    /// process exits or never gets healthy.
    pub async fn wait_healthy(&mut self, base: &str) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/healthz")).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "server exited during start-up ({st}):\n{}\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server not healthy:\n{}\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit; None after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- PostgreSQL fixtures ----------------------------------------------------------------------

/// `admin_url` (a PostgreSQL URL) pointing at database `db` instead.
pub fn with_database(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A connection to the PostgreSQL admin database, or `None` (with a notice) when it is
/// unreachable outside CI; under `CI` an unreachable PostgreSQL fails the test.
pub async fn admin_connection(url: &str) -> Option<sqlx::PgConnection> {
    use sqlx::Connection as _;
    let attempt =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(url)).await;
    let err = match attempt {
        Ok(Ok(c)) => return Some(c),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    if services_required() {
        panic!(
            "PostgreSQL at {url} is unreachable ({err}), and scripts/test.sh (or CI) requires \
             it: start it, or set MCU_TEST_PG_URL"
        );
    }
    eprintln!("NOTICE: skipping PostgreSQL tests: {url} unreachable ({err}); set MCU_TEST_PG_URL");
    None
}

/// Whether a test must fail, not skip, when a service it needs is missing: under
/// `scripts/test.sh` (which sets `MCU_TEST_REQUIRE_SERVICES`) and in CI. A bare `cargo test`
/// skips such tests with a notice.
#[allow(dead_code)] // not every test binary uses every helper
pub fn services_required() -> bool {
    ["CI", "MCU_TEST_REQUIRE_SERVICES"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// A client of the signaling WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON text frame (pings and pongs skipped); panics after 10 s or on anything else.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}
