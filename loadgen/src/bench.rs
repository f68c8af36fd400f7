//! The benchmark: starts `mcu-server`, ramps synthetic participants into rooms, and reads the
//! server's cost (CPU-seconds from /proc, media tick figures from /metrics).

use crate::janus::{self, Janus, JanusTarget};
use crate::media::{Camera, Schedule, Voice};
use crate::participant::{Report, Shared, Spec, Target, run};
use crate::shaper::LinkShape;
use crate::{Summary, summarize};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running server process on loopback with a throw-away SQLite database.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub url: String,
    /// Its API key.
    pub api_key: String,
    _dir: std::path::PathBuf,
}

impl Server {
    /// Starts the binary and waits for /healthz.
    pub async fn start(bin: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("mcu-bench-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let api_key = "bench-api-key-0123456789abcdef".to_string();
        let mut cmd = Command::new(bin);
        cmd.env("MCU_LISTEN", format!("127.0.0.1:{port}"))
            .env("MCU_RTC_BIND", "127.0.0.1")
            // One media socket as by default, on a port the OS picks: a developer's own server
            // may hold 40000.
            .env("MCU_UDP_PORTS", "0")
            .env("MCU_API_KEY", &api_key)
            .env(
                "MCU_TOKEN_SECRET",
                "bench-token-secret-0123456789abcdef0123456789",
            )
            .env("DATABASE_URL", format!("sqlite://{}/mcu.db", dir.display()))
            .env("MCU_RECORDINGS_DIR", dir.join("recordings"))
            .env("MCU_LOG", "warn")
            // The benchmark measures how far the server goes: no admission control.
            .env("MCU_CPU_BUDGET", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn()?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{url}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Server {
            child,
            url,
            api_key,
            _dir: dir,
        })
    }

    /// CPU-seconds the server process has used (user + system).
    pub fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }

    /// The Prometheus text as name → value (histogram buckets keyed with their `le`).
    pub async fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// Creates a room.
    pub async fn create_room(&self, name: &str) -> anyhow::Result<()> {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/rooms", self.url))
            .bearer_auth(&self.api_key)
            .json(&serde_json::json!({"name": name, "max_participants": 1000}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success() || r.status() == 409,
            "create room: {}",
            r.status()
        );
        Ok(())
    }

    /// The target for participants of `room`.
    pub fn target(&self, room: &str) -> Target {
        Target {
            base_url: self.url.clone(),
            api_key: self.api_key.clone(),
            room: room.into(),
        }
    }
}

/// CPU-seconds process `pid` has used (user + system, all threads), NaN if unreadable.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(f64::NAN, |s| stat_cpu_seconds(&s))
}

/// CPU-seconds this process (the load generator) has used.
fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id())
}

/// utime + stime of a `/proc/<pid>/stat` line, in seconds (USER_HZ = 100 on Linux).
fn stat_cpu_seconds(stat: &str) -> f64 {
    // The command name (field 2) may contain spaces: count fields after its closing ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|x| x.1) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split(' ').collect();
    let tick = |i: usize| {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (tick(11) + tick(12)) / 100.0
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Tick quantiles (ms) from the cumulative histogram delta, interpolated within buckets.
pub fn tick_quantiles(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> (f64, f64, f64, f64) {
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix("mcu_media_tick_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let count = d("mcu_media_tick_seconds_count");
    let misses = d("mcu_media_deadline_misses_total");
    let q = |p: f64| -> f64 {
        let want = p * count;
        let mut prev = (0.0, 0.0);
        for &(bound, c) in &buckets {
            if c >= want {
                if !bound.is_finite() {
                    return prev.0 * 1000.0;
                }
                let frac = if c > prev.1 {
                    (want - prev.1) / (c - prev.1)
                } else {
                    1.0
                };
                return (prev.0 + frac * (bound - prev.0)) * 1000.0;
            }
            prev = (bound, c);
        }
        f64::NAN
    };
    (q(0.5), q(0.99), misses, count)
}

/// One scenario's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// What ran.
    pub scenario: String,
    /// Participants in all rooms.
    pub participants: usize,
    /// Server CPU-seconds per participant-minute.
    pub cpu_s_per_participant_min: f64,
    /// Server CPU as a share of one core.
    pub cpu_cores: f64,
    /// The load generator's own CPU (all its participants) as a share of one core: with the
    /// server's, how busy the two cores were.
    pub client_cores: f64,
    /// Media tick p50 / p99, ms.
    pub tick_p50_ms: f64,
    /// Media tick p99, ms.
    pub tick_p99_ms: f64,
    /// Deadline misses over ticks, percent.
    pub miss_pct: f64,
    /// VP8 / Opus encoders alive at the end (gauges).
    pub encoders: (f64, f64),
    /// What the participants measured.
    pub summary: Summary,
}

/// Participant layout of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Rooms.
    pub rooms: usize,
    /// Participants per room.
    pub per_room: usize,
    /// Of which send video (the others send audio only and receive both).
    pub video: usize,
    /// Of which talk (bursts); the rest send silence.
    pub talkers: usize,
    /// Of which decode and measure latency.
    pub probes: usize,
    /// Seconds of measurement after the ramp.
    pub hold_s: u64,
    /// Delay between joins, ms.
    pub ramp_ms: u64,
    /// Tiles the server's grid shows (`MCU_MAX_TILES` it runs with); the probes need it to
    /// find the tiles in the composite.
    pub max_tiles: usize,
    /// Of which receive through a constrained link (the first ones, in-process shaping).
    pub shaped: usize,
    /// Senders follow the server's `video_constraints` (else they always send the full size,
    /// as a client that ignores them does).
    pub honour_limits: bool,
    /// That link.
    pub shape: Option<LinkShape>,
}

/// The pre-encoded media of one room's participants (shared by every room of a scenario).
pub struct Cast {
    voices: Vec<Arc<Voice>>,
    cameras: Vec<Option<Arc<Camera>>>,
    talkers: Arc<Vec<(u32, u32)>>,
}

impl Cast {
    /// Encodes the media of a scenario's room.
    pub fn new(sc: &Scenario) -> anyhow::Result<Cast> {
        let mut voices = Vec::new();
        let mut cameras = Vec::new();
        for i in 0..sc.per_room {
            voices.push(Arc::new(Voice::new(300 + 200 * (i as u32 % 8))?));
            cameras.push(if i < sc.video {
                Some(Arc::new(Camera::new(i as u32)?))
            } else {
                None
            });
        }
        let talkers = Arc::new(
            voices
                .iter()
                .take(sc.talkers)
                .enumerate()
                .map(|(i, v)| (i as u32, v.freq))
                .collect(),
        );
        Ok(Cast {
            voices,
            cameras,
            talkers,
        })
    }
}

/// What each participant of a room does: the first `talkers` talk in turn (600 ms every 3 s,
/// staggered by 700 ms), the first `video` send video, and (`probes`) the last `probes` measure.
pub fn specs(sc: &Scenario, cast: &Cast, probes: bool) -> Vec<Spec> {
    let mut out = Vec::new();
    for (i, voice) in cast.voices.iter().enumerate() {
        out.push(Spec {
            id: i as u32,
            freq: voice.freq,
            schedule: if i < sc.talkers {
                Schedule {
                    period_ms: 3000,
                    talk_ms: 600,
                    offset_ms: 1000 + 700 * i as u64,
                }
            } else {
                Schedule {
                    period_ms: 1000,
                    talk_ms: 0,
                    offset_ms: 0,
                }
            },
            video: i < sc.video,
            probe: probes && i >= sc.per_room.saturating_sub(sc.probes),
            shape: sc.shape.filter(|_| i < sc.shaped),
        });
    }
    out
}

/// Joins one room's participants (`probes`: whether the last ones measure latency), one every
/// `ramp_ms`.
pub async fn join_room(
    target: Target,
    sc: &Scenario,
    cast: &Cast,
    shared: Arc<Shared>,
    stop: &tokio::sync::watch::Receiver<bool>,
    probes: bool,
) -> Vec<tokio::task::JoinHandle<Report>> {
    let mut tasks = Vec::new();
    for (i, spec) in specs(sc, cast, probes).into_iter().enumerate() {
        tasks.push(tokio::spawn(run(
            spec,
            target.clone(),
            cast.voices[i].clone(),
            cast.cameras[i].clone(),
            shared.clone(),
            cast.talkers.clone(),
            stop.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(sc.ramp_ms)).await;
    }
    tasks
}

/// Stops the participants and collects their reports.
pub async fn finish(
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Report>>,
) -> Vec<Report> {
    let _ = stop.send(true);
    let mut reports = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            reports.push(r);
        }
    }
    reports
}

/// Runs a scenario against a started server.
pub async fn run_scenario(server: &Server, name: &str, sc: Scenario) -> anyhow::Result<Row> {
    let total = sc.rooms * sc.per_room;
    let cast = Cast::new(&sc)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for r in 0..sc.rooms {
        let room = format!("{name}-{r}");
        server.create_room(&room).await?;
        // One id table per room (ids repeat across rooms); only the first room has probes.
        let shared = Shared::new(sc.per_room.max(1))
            .with_max_tiles(sc.max_tiles)
            .honouring_limits(sc.honour_limits);
        tasks.extend(join_room(server.target(&room), &sc, &cast, shared, &stop_rx, r == 0).await);
    }
    // Settle, then measure over the hold.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m0 = server.metrics().await?;
    let (c0, l0, t0) = (server.cpu_seconds(), own_cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(sc.hold_s)).await;
    let m1 = server.metrics().await?;
    let (cpu, wall) = (server.cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    let client = own_cpu_seconds() - l0;
    let reports = finish(stop_tx, tasks).await;
    let (p50, p99, misses, ticks) = tick_quantiles(&m0, &m1);
    let g = |k: &str| m1.get(k).copied().unwrap_or(f64::NAN);
    Ok(Row {
        scenario: name.into(),
        participants: total,
        cpu_s_per_participant_min: cpu / (total.max(1) as f64 * wall / 60.0),
        cpu_cores: cpu / wall,
        client_cores: client / wall,
        tick_p50_ms: p50,
        tick_p99_ms: p99,
        miss_pct: if ticks > 0.0 {
            100.0 * misses / ticks
        } else {
            0.0
        },
        encoders: (g("mcu_video_encoders"), g("mcu_audio_encoders")),
        summary: summarize(&reports),
    })
}

/// Server CPU with `n` idle rooms (created, nobody in them), as a share of one core.
pub async fn idle_rooms(server: &Server, n: usize, hold_s: u64) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let http = reqwest::Client::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let (http, url, key) = (http.clone(), server.url.clone(), server.api_key.clone());
        pending.push(tokio::spawn(async move {
            http.post(format!("{url}/api/v1/rooms"))
                .bearer_auth(key)
                .json(&serde_json::json!({"name": format!("idle-{i}")}))
                .send()
                .await
                .map(|r| r.status().is_success())
        }));
        if pending.len() >= 16 {
            for p in pending.drain(..) {
                anyhow::ensure!(
                    matches!(p.await, Ok(Ok(true))),
                    "creating idle rooms failed"
                );
            }
        }
    }
    for p in pending {
        anyhow::ensure!(
            matches!(p.await, Ok(Ok(true))),
            "creating idle rooms failed"
        );
    }
    let create_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c0, t0) = (server.cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(hold_s)).await;
    Ok((
        (server.cpu_seconds() - c0) / t0.elapsed().as_secs_f64(),
        create_s,
    ))
}

/// Runs an audio-only scenario (one room) against Janus AudioBridge: the same participants,
/// Janus's CPU read the same way. Tick figures and encoder counts are ours only (NaN here).
pub async fn run_janus_scenario(janus: &Janus, name: &str, sc: Scenario) -> anyhow::Result<Row> {
    anyhow::ensure!(
        sc.rooms == 1 && sc.video == 0,
        "the Janus comparison is one audio-only room"
    );
    let room = 1000 + u64::from(rand::random::<u16>());
    janus.create_room(room).await?;
    let target = JanusTarget {
        url: janus.url.clone(),
        room,
        bind_ip: janus.net.host_ip,
        janus_ip: janus.net.ns_ip,
    };
    let cast = Cast::new(&sc)?;
    let shared = Shared::new(sc.per_room.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (i, spec) in specs(&sc, &cast, true).into_iter().enumerate() {
        tasks.push(tokio::spawn(janus::run(
            spec,
            target.clone(),
            cast.voices[i].clone(),
            shared.clone(),
            cast.talkers.clone(),
            stop_rx.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(sc.ramp_ms)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (c0, l0, t0) = (janus.cpu_seconds(), own_cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(sc.hold_s)).await;
    let (cpu, wall) = (janus.cpu_seconds() - c0, t0.elapsed().as_secs_f64());
    let client = own_cpu_seconds() - l0;
    let reports = finish(stop_tx, tasks).await;
    Ok(Row {
        scenario: name.into(),
        participants: sc.per_room,
        cpu_s_per_participant_min: cpu / (sc.per_room.max(1) as f64 * wall / 60.0),
        cpu_cores: cpu / wall,
        client_cores: client / wall,
        tick_p50_ms: f64::NAN,
        tick_p99_ms: f64::NAN,
        miss_pct: f64::NAN,
        encoders: (f64::NAN, f64::NAN),
        summary: summarize(&reports),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_from_proc_stat() {
        // utime 250 + stime 50 ticks; the command name contains ") " and spaces.
        let stat =
            "4242 (janus) x (y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(stat_cpu_seconds(stat), 3.0);
        assert!(stat_cpu_seconds("garbage").is_nan());
        // This test process has used some CPU; a process that does not exist reads NaN.
        assert!(process_cpu_seconds(std::process::id()) >= 0.0);
        assert!(process_cpu_seconds(u32::MAX).is_nan());
    }
}
