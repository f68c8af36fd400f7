//! The `mcu-server` binary as an operator meets it: refusals of unsafe settings (exit code 2 and
//! a message naming what to set), `--print-config` with secrets masked, `--healthcheck`, JSON logs
//! whose lines carry the request id, and every Prometheus metric documented in docs/metrics.md.

mod common;

use common::{Server, command, free_port, run};
use serde_json::Value;
use std::time::Duration;

const KEY: &str = "cli-test-api-key-0123456789";
const TOKEN_SECRET: &str = "cli-test-token-secret-0123456789abcdef";
const TURN_SECRET: &str = "cli-test-turn-secret-0123456789";

/// Exit 2 and a message containing every `needles` on stderr.
fn refused(envs: &[(&str, &str)], args: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    // Were a refusal to fail, the server would start: keep it on loopback.
    cmd.env("MCU_LISTEN", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/mcu.db", dir.path().display()),
        )
        .envs(envs.iter().copied())
        .args(args);
    let (status, _, err) = run(cmd);
    assert_eq!(status.code(), Some(2), "{envs:?} {args:?}: {err}");
    assert!(err.starts_with("mcu-server: "), "{err}");
    for n in needles {
        assert!(
            err.contains(n),
            "stderr for {envs:?} should contain '{n}': {err}"
        );
    }
}

#[test]
fn refuses_unsafe_settings_with_exit_code_2() {
    let safe = [("MCU_API_KEY", KEY), ("MCU_TOKEN_SECRET", TOKEN_SECRET)];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut v = safe.to_vec();
        v.extend_from_slice(extra);
        v
    };
    refused(&[], &[], &["no API key configured", "MCU_API_KEY", "--dev"]);
    refused(
        &[("MCU_API_KEY", "short")],
        &[],
        &["API key must be at least 16 characters"],
    );
    refused(&[("MCU_API_KEY", KEY)], &[], &["MCU_TOKEN_SECRET"]);
    refused(
        &with(&[("MCU_TURN_URLS", "turn:127.0.0.1:3478")]),
        &[],
        &["no shared secret", "MCU_TURN_SECRET"],
    );
    refused(
        &with(&[("MCU_TURN_SECRET", TURN_SECRET)]),
        &[],
        &["MCU_TURN_URLS"],
    );
    refused(
        &with(&[
            ("MCU_TURN_URLS", "turn:127.0.0.1:3478"),
            ("MCU_TURN_SECRET", "tooshort"),
        ]),
        &[],
        &["MCU_TURN_SECRET", "at least 16"],
    );
    refused(
        &with(&[("MCU_UDP_PORTS", "50000-40000")]),
        &[],
        &["MCU_UDP_PORTS"],
    );
    refused(
        &with(&[("MCU_PUBLIC_IP", "not-an-ip")]),
        &[],
        &["MCU_PUBLIC_IP"],
    );
    refused(
        &with(&[("MCU_CANVAS", "4000x3000@60")]),
        &[],
        &["canvas 4000x3000"],
    );
    refused(
        &with(&[("DATABASE_URL", "mysql://x")]),
        &[],
        &["DATABASE_URL"],
    );
    // A config file with a typo names the file and the key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcu.toml");
    std::fs::write(&file, "[turn]\nsecrte = \"x\"\n").unwrap();
    refused(
        &safe,
        &["--config", file.to_str().unwrap()],
        &["invalid config file", "secrte"],
    );
    refused(
        &safe,
        &["--config", "/nonexistent/mcu.toml"],
        &["cannot read config file"],
    );
}

#[test]
fn dev_mode_accepts_what_production_refuses() {
    // `--print-config` exits before serving; with `--dev` the missing key is not an error.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--dev", "--print-config"]);
    let (status, out, err) = run(cmd);
    assert!(status.success(), "{err}");
    assert!(out.contains("dev = true"), "{out}");
}

#[test]
fn print_config_shows_the_effective_config_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcu.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7000\"\n[rtc]\nudp_ports = \"40000-40099\"\n[turn]\nttl_s = 600\n",
    )
    .unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--print-config", "--config", file.to_str().unwrap()])
        .env("MCU_API_KEY", KEY)
        .env("MCU_TOKEN_SECRET", TOKEN_SECRET)
        .env("DATABASE_URL", "postgres://mcu:dbpassword@db:5432/mcu")
        .env("MCU_TURN_URLS", "turn:turn.example.com:3478")
        .env("MCU_TURN_SECRET", TURN_SECRET)
        .env("MCU_PUBLIC_IP", "203.0.113.7")
        .env("MCU_LISTEN", "127.0.0.1:7001");
    let (status, out, err) = run(cmd);
    assert!(status.success(), "{err}");
    for secret in [KEY, TOKEN_SECRET, TURN_SECRET, "dbpassword"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    let v: toml::Value = toml::from_str(&out).expect("the output is TOML");
    assert_eq!(v["api_key"].as_str(), Some("********"));
    assert_eq!(v["token_secret"].as_str(), Some("********"));
    assert_eq!(v["turn"]["secret"].as_str(), Some("********"));
    assert_eq!(
        v["database_url"].as_str(),
        Some("postgres://********@db:5432/mcu")
    );
    // File and environment merged, the environment winning.
    assert_eq!(v["listen"].as_str(), Some("127.0.0.1:7001"));
    assert_eq!(v["turn"]["ttl_s"].as_integer(), Some(600));
    assert_eq!(v["rtc"]["udp_ports"].as_str(), Some("40000-40099"));
    assert_eq!(v["rtc"]["public_ip"].as_str(), Some("203.0.113.7"));
    assert_eq!(
        v["turn"]["urls"].as_array().map(|a| a.len()),
        Some(1),
        "{out}"
    );
}

#[test]
fn print_config_prints_then_refuses_an_unsafe_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("--print-config")
        .env("MCU_TURN_URLS", "turn:turn.example.com:3478");
    let (status, out, err) = run(cmd);
    assert_eq!(status.code(), Some(2), "{err}");
    let v: toml::Value = toml::from_str(&out).expect("the config is printed as TOML");
    assert_eq!(v["listen"].as_str(), Some("0.0.0.0:8080"), "defaults shown");
    assert!(err.contains("MCU_API_KEY"), "{err}");
}

/// docs/configuration.md names every environment variable the server reads, and its example
/// file is one the server accepts.
#[test]
fn configuration_doc_matches_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let code = std::fs::read_to_string(root.join("server/src/config.rs")).unwrap();
    let vars: Vec<&str> = code
        .split("get(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .collect();
    assert!(vars.len() >= 20, "{vars:?}");
    for v in vars {
        assert!(doc.contains(&format!("`{v}`")), "{v} is not documented");
    }
    let example = doc
        .split("## Example file\n```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("an example file")
        .replace("\"…\"", "\"example-secret-value-0123456789abcdef\"");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mcu.toml");
    std::fs::write(&file, example).unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--print-config", "--config", file.to_str().unwrap()]);
    let (status, out, err) = run(cmd);
    assert!(status.success(), "the documented example is refused: {err}");
    assert!(out.contains("canvas_width = 1280"), "{out}");
}

/// One running server: `--healthcheck` against it and against nothing, request ids in the
/// response header and in the JSON log lines, and `/metrics` names all in docs/metrics.md.
#[tokio::test]
async fn healthcheck_request_ids_json_logs_and_documented_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let env = |cmd: &mut std::process::Command| {
        cmd.env("MCU_LISTEN", &listen)
            .env("MCU_API_KEY", KEY)
            .env("MCU_TOKEN_SECRET", TOKEN_SECRET)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/mcu.db", dir.path().display()),
            )
            .env("MCU_RECORDINGS_DIR", dir.path().join("rec"))
            .env("MCU_LOG", "info");
    };
    // Nothing listens yet: the health check fails.
    let mut probe = command(dir.path());
    env(&mut probe);
    probe.arg("--healthcheck");
    let (st, _, err) = run(probe);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    let mut cmd = command(dir.path());
    env(&mut cmd);
    cmd.arg("--log-json");
    let mut server = Server::spawn(cmd, dir.path());
    server.wait_healthy(&base).await;

    let mut probe = command(dir.path());
    env(&mut probe);
    probe.arg("--healthcheck");
    let (st, _, err) = run(probe);
    assert!(st.success(), "{err}");

    let http = reqwest::Client::new();
    let r = http
        .get(format!("{base}/api/v1/rooms"))
        .bearer_auth(KEY)
        .header("x-request-id", "cli-test-req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "cli-test-req-42");
    // An error response (401) gets a generated id.
    let r = http
        .get(format!("{base}/api/v1/rooms/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32, "{generated}");

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"),
    )
    .expect("docs/metrics.md");
    let names: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 10, "{metrics}");
    for n in names {
        assert!(
            doc.contains(&format!("`{n}`")),
            "metric {n} is not documented in docs/metrics.md"
        );
    }

    server.signal("TERM");
    let st = server
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st}");

    // Every stdout line is a JSON object; the request's lines carry its id in their span.
    let out = server.stdout();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let tagged = |id: &str| {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id)
            .collect::<Vec<_>>()
    };
    let mine = tagged("cli-test-req-42");
    assert!(
        mine.iter().any(|l| l["fields"]["message"] == "request done"
            && l["fields"]["status"] == 200
            && l["span"]["path"] == "/api/v1/rooms"),
        "no access line for the request in:\n{out}"
    );
    assert!(!tagged(&generated).is_empty(), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "listening" && l["level"] == "INFO"),
        "{out}"
    );
}
