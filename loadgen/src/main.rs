//! `mcu-loadgen`: synthetic participants and the benchmark.
//!
//! - `mcu-loadgen run --url http://127.0.0.1:8080 --api-key KEY --room r --participants 10`
//!   joins N synthetic participants to a running server and prints what they measured.
//! - `mcu-loadgen bench --server target/release/mcu-server` starts the server itself, runs the
//!   scenarios and writes `docs/benchmarks.md` (`--smoke`: a few participants for seconds).
//!   Each audio-only size also runs against Janus AudioBridge (`--janus`, the Debian package's
//!   binary) with the same participants, Janus in a network namespace of its own on a veth pair
//!   (which needs root); without Janus or root that comparison is skipped, or fails when `CI`
//!   is set.

use clap::{Parser, Subcommand};
use loadgen::bench::{self, Scenario, Server};
use loadgen::janus::{self, Janus};
use std::fmt::Write as _;

#[derive(Parser)]
#[command(name = "mcu-loadgen")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join synthetic participants to a running server.
    Run {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "MCU_API_KEY")]
        api_key: String,
        #[arg(long, default_value = "load")]
        room: String,
        #[arg(long, default_value_t = 5)]
        participants: usize,
        /// How many of them send video.
        #[arg(long, default_value_t = 5)]
        video: usize,
        #[arg(long, default_value_t = 3)]
        talkers: usize,
        #[arg(long, default_value_t = 2)]
        probes: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// How many of them receive through a constrained link (constrained-receiver mode:
        /// in-process rate limit with a 300 ms drop-tail queue and random loss; the first ones).
        #[arg(long, default_value_t = 0)]
        shaped: usize,
        /// The constrained link's rate, kbit/s.
        #[arg(long, default_value_t = 300)]
        shape_kbps: u32,
        /// The constrained link's random loss, 0..1.
        #[arg(long, default_value_t = 0.02)]
        shape_loss: f64,
        /// Video senders ignore the server's `video_constraints` and always send 640x360 (what
        /// a client that does not honour them costs the server).
        #[arg(long)]
        ignore_video_constraints: bool,
    },
    /// Start the server and run the benchmark scenarios.
    Bench {
        /// The server binary (build it with `cargo build --release -p server`).
        #[arg(long, default_value = "target/release/mcu-server")]
        server: String,
        /// A few participants for a few seconds (CI smoke: checks that it runs, not figures).
        #[arg(long)]
        smoke: bool,
        /// Where to write the report (markdown).
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: String,
        /// Audio-only room sizes to try.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,200,1000")]
        audio_sizes: Vec<usize>,
        /// Video room sizes to try (16 visible tiles at 16+).
        #[arg(long, value_delimiter = ',', default_value = "4,9,16,25,60")]
        video_sizes: Vec<usize>,
        /// Seconds measured per scenario.
        #[arg(long, default_value_t = 20)]
        hold: u64,
        /// The Janus binary for the AudioBridge comparison (path or name on PATH).
        #[arg(long, default_value = "janus")]
        janus: String,
        /// Video senders ignore the server's `video_constraints` and always send 640x360 (what
        /// a client that does not honour them costs the server).
        #[arg(long)]
        ignore_video_constraints: bool,
    },
}

/// Largest audio room Janus AudioBridge is compared in: it drops audio from 200 here already,
/// and a larger room would only add run time.
const JANUS_MAX: usize = 400;

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.0}"))
}

/// `x` with `prec` decimals, "-" for a figure the scenario does not have (NaN).
fn fmt_f(x: f64, prec: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.prec$}")
    }
}

/// Whether `CI` or `MCU_TEST_REQUIRE_SERVICES` (set by scripts/test.sh) is set (to anything but
/// empty, 0 or false): then what the run needs must be there.
fn under_ci() -> bool {
    ["CI", "MCU_TEST_REQUIRE_SERVICES"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

fn table_row(r: &bench::Row) -> String {
    let s = &r.summary;
    format!(
        "| {} | {} | {:.2} | {:.0}% | {:.0}% | {} / {} | {} | {} / {} | {} / {} | {} / {} | {:.1} | {:.0} | {} | {} |",
        r.scenario,
        r.participants,
        r.cpu_s_per_participant_min,
        r.cpu_cores * 100.0,
        r.client_cores * 100.0,
        fmt_f(r.tick_p50_ms, 2),
        fmt_f(r.tick_p99_ms, 2),
        if r.miss_pct.is_nan() {
            "-".into()
        } else {
            format!("{:.2}%", r.miss_pct)
        },
        fmt_f(r.encoders.0, 0),
        fmt_f(r.encoders.1, 0),
        fmt_opt(s.mouth_to_ear_ms.0),
        fmt_opt(s.mouth_to_ear_ms.1),
        fmt_opt(s.video_latency_ms.0),
        fmt_opt(s.video_latency_ms.1),
        s.video_fps,
        s.rx_kbps,
        s.audio_gaps,
        s.errors,
    )
}

const HEADER: &str = "| scenario | participants | server CPU-s per participant-min | server CPU (1 core = 100%) | load generator CPU | tick p50 / p99 ms | deadline misses | VP8 / Opus encoders | mouth-to-ear p50 / p99 ms | video latency p50 / p99 ms | rx fps | rx kbit/s | audio gaps | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MCU_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .init();
    mixer::ffmpeg_next::util::log::set_level(mixer::ffmpeg_next::util::log::Level::Fatal);
    match Cli::parse().cmd {
        Cmd::Run {
            url,
            api_key,
            room,
            participants,
            video,
            talkers,
            probes,
            seconds,
            shaped,
            shape_kbps,
            shape_loss,
            ignore_video_constraints,
        } => {
            let shape = loadgen::shaper::LinkShape {
                kbps: shape_kbps,
                loss: shape_loss,
                queue_ms: 300,
            };
            let server_like = bench::Scenario {
                rooms: 1,
                per_room: participants,
                video,
                talkers,
                probes,
                hold_s: seconds,
                ramp_ms: 100,
                max_tiles: 25,
                shaped,
                shape: (shaped > 0).then_some(shape),
                honour_limits: !ignore_video_constraints,
            };
            let reports = run_external(&url, &api_key, &room, server_like).await?;
            let (weak, rest): (Vec<_>, Vec<_>) = reports.into_iter().partition(|r| r.shaped);
            let mut out = serde_json::json!({ "all_others": loadgen::summarize(&rest) });
            if !weak.is_empty() {
                out["constrained"] = serde_json::json!({
                    "link": { "kbps": shape_kbps, "loss": shape_loss, "queue_ms": 300 },
                    "summary": loadgen::summarize(&weak),
                });
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Bench {
            server,
            smoke,
            out,
            audio_sizes,
            video_sizes,
            hold,
            janus,
            ignore_video_constraints,
        } => {
            let (audio_sizes, video_sizes, hold) = if smoke {
                (vec![3], vec![3], 4)
            } else {
                (audio_sizes, video_sizes, hold)
            };
            // The Janus comparison runs where Janus can; elsewhere it is skipped, except in CI.
            let janus_version = match janus::preflight(&janus) {
                Ok(()) => Some(janus::version(&janus).unwrap_or_else(|| "?".into())),
                Err(why) if under_ci() => anyhow::bail!(
                    "Janus AudioBridge comparison cannot run and CI is set (CI runs as root on \
                     the same kind of machine, with the `janus` package): {why}"
                ),
                Err(why) => {
                    eprintln!("skipping the Janus AudioBridge comparison: {why}");
                    None
                }
            };
            let mut rows = Vec::new();
            let mut md = String::new();
            for n in &audio_sizes {
                let sc = Scenario {
                    rooms: 1,
                    per_room: *n,
                    video: 0,
                    talkers: 3.min(*n),
                    probes: 2.min(*n),
                    hold_s: hold,
                    ramp_ms: 30,
                    max_tiles: 25,
                    shaped: 0,
                    shape: None,
                    honour_limits: !ignore_video_constraints,
                };
                let s = Server::start(&server, &[]).await?;
                let row = bench::run_scenario(&s, &format!("audio-{n}"), sc).await?;
                drop(s); // nothing else runs while Janus is measured
                eprintln!("{}", table_row(&row));
                rows.push(row);
                if janus_version.is_some() && *n <= JANUS_MAX {
                    let j = Janus::start(&janus).await?;
                    let row = bench::run_janus_scenario(&j, &format!("janus-audio-{n}"), sc)
                        .await
                        .map_err(|e| e.context(format!("Janus log: {}", j.log_tail())))?;
                    eprintln!("{}", table_row(&row));
                    rows.push(row);
                }
            }
            for n in &video_sizes {
                // The video target (issue 13): 16 visible tiles whatever the room size.
                let s = Server::start(&server, &[("MCU_MAX_TILES", "16")]).await?;
                let sc = Scenario {
                    rooms: 1,
                    per_room: *n,
                    video: *n,
                    talkers: 3.min(*n),
                    probes: 2.min(*n),
                    hold_s: hold,
                    ramp_ms: 100,
                    max_tiles: 16,
                    shaped: 0,
                    shape: None,
                    honour_limits: !ignore_video_constraints,
                };
                let row = bench::run_scenario(&s, &format!("video-{n}"), sc).await?;
                eprintln!("{}", table_row(&row));
                rows.push(row);
            }
            let (rooms, per) = if smoke { (2, 2) } else { (20, 3) };
            let s = Server::start(&server, &[]).await?;
            let sc = Scenario {
                rooms,
                per_room: per,
                video: per,
                talkers: 1,
                probes: 1,
                hold_s: hold,
                ramp_ms: 50,
                max_tiles: 25,
                shaped: 0,
                shape: None,
                honour_limits: !ignore_video_constraints,
            };
            let row = bench::run_scenario(&s, &format!("{rooms}-rooms-of-{per}"), sc).await?;
            // Stopped before the next one starts: the idle-rooms figure is one server's CPU.
            drop(s);
            eprintln!("{}", table_row(&row));
            rows.push(row);
            let idle_n = if smoke { 100 } else { 10_000 };
            let s = Server::start(&server, &[]).await?;
            let (idle_cpu, create_s) =
                bench::idle_rooms(&s, idle_n, if smoke { 3 } else { 30 }).await?;
            eprintln!(
                "{idle_n} idle rooms: {:.2}% of a core (created in {create_s:.1} s)",
                idle_cpu * 100.0
            );

            let audio_ok = rows
                .iter()
                .filter(|r| {
                    r.scenario.starts_with("audio-") && r.miss_pct < 1.0 && r.summary.errors == 0
                })
                .map(|r| r.participants)
                .max();
            let _ = writeln!(md, "# Benchmarks\n");
            let _ = writeln!(
                md,
                "Written by `cargo run --release -p loadgen -- bench{}{}` on {}.\n",
                if smoke { " --smoke" } else { "" },
                if ignore_video_constraints {
                    " --ignore-video-constraints"
                } else {
                    ""
                },
                machine()
            );
            let _ = writeln!(
                md,
                "Synthetic participants (`loadgen/`) join through the real REST + WebSocket API, send pre-encoded Opus with RFC 6464 audio levels (3 talkers: 600 ms bursts every 3 s; the rest silence) and camera-like VP8 (640x360@15 at 600 kbit/s: the participant's colour under a moving texture with fresh sensor noise every frame, and bit blocks carrying its id and a frame counter; also pre-encoded at 320x180 / 200 kbit/s and 160x90 / 80 kbit/s, and they send the smallest that fills the tile the server's `video_constraints` names, or nothing while not shown, unless `--ignore-video-constraints`), and measure what comes back. They run in the same process on the same 2 cores as the server; the server's CPU is read from /proc for its process alone. Composite 640x360@15 with the server's default tiers; the video rows run the server with `MCU_MAX_TILES=16` (16 visible tiles, only those decoded). Latencies include loopback, the server's jitter buffer and tick, encode, and the probe's decode.\n"
            );
            if let Some(v) = &janus_version {
                let _ = writeln!(
                    md,
                    "`janus-audio-N` rows: Janus {v} (Debian package `janus`) AudioBridge in the same run, one 48 kHz room with the plugin's defaults otherwise (prebuffering 6 packets, libopus's default complexity, one encoder per participant), the same participants (same Opus, schedule and measurements) joining over Janus's HTTP API; Janus's CPU is read from /proc for the janus process alone, and it has the machine to itself while measured (our server is stopped). Janus runs in a network namespace of its own, joined to the host by a veth pair with private test addresses (10.231.x.0/30; no default route in the namespace), since it never gathers ICE candidates on a loopback interface: its HTTP API and media are on the namespace end, its participants on the host end; our server and its participants run on loopback (127.0.0.1). Tick, deadline-miss and encoder columns are our server's metrics (\"-\" for Janus).\n"
                );
            }
            let _ = writeln!(md, "{HEADER}");
            for r in &rows {
                let _ = writeln!(md, "{}", table_row(r));
            }
            let _ = writeln!(
                md,
                "\n- Largest audio-only room held with < 1 % deadline misses: **{}** participants.",
                audio_ok.map_or("none of the sizes tried".into(), |n| n.to_string())
            );
            if let Some(cmp) = janus_comparison(&rows) {
                let _ = writeln!(md, "{cmp}");
            }
            let _ = writeln!(
                md,
                "- {idle_n} idle rooms (created, empty): **{:.2} % of a core** (creating them took {create_s:.1} s).",
                idle_cpu * 100.0
            );
            std::fs::write(&out, &md)?;
            if smoke {
                // The smoke proves the benchmark still runs end to end: every participant joined,
                // media flowed both ways, and the probes measured latencies.
                // Janus rows: every participant heard the mix and the probes found the talkers.
                // Audio-only rows: the composite shows placeholders only, so it is made when
                // something changes (joins, speaker changes, keyframes asked for) and refreshed
                // once a second, well under the full 15 fps, and never stops.
                let bad: Vec<String> = rows
                    .iter()
                    .filter(|r| {
                        let s = &r.summary;
                        let janus = r.scenario.starts_with("janus-");
                        let still = r.scenario.starts_with("audio-");
                        s.errors > 0
                            || (!janus && !still && s.video_fps < 10.0)
                            || (still && !(0.5..=7.5).contains(&s.video_fps))
                            || (janus && s.with_audio < s.participants)
                            || s.mouth_to_ear_n == 0
                            || s.first_audio_ms.0.is_none()
                    })
                    .map(|r| format!("{} ({:?})", r.scenario, r.summary.first_error))
                    .collect();
                let video_measured = rows.iter().any(|r| r.summary.video_latency_n > 0);
                println!(
                    "loadgen smoke: {} passed, {} failed",
                    rows.len() - bad.len(),
                    bad.len()
                );
                anyhow::ensure!(bad.is_empty(), "benchmark smoke failed: {}", bad.join(", "));
                anyhow::ensure!(video_measured, "no video latency was measured");
            }
            println!("{md}");
            println!(
                "<details><summary>raw</summary>\n\n```json\n{}\n```\n</details>",
                serde_json::to_string_pretty(&rows)?
            );
        }
    }
    Ok(())
}

/// The markdown line comparing CPU per participant, ours vs Janus AudioBridge, for every
/// audio-only size that ran on both.
fn janus_comparison(rows: &[bench::Row]) -> Option<String> {
    let pairs: Vec<String> = rows
        .iter()
        .filter_map(|j| {
            let n = j.scenario.strip_prefix("janus-audio-")?;
            let ours = rows.iter().find(|r| r.scenario == format!("audio-{n}"))?;
            let (o, t) = (ours.cpu_s_per_participant_min, j.cpu_s_per_participant_min);
            Some(format!(
                "{n} participants: {o:.3} vs {t:.3} (ours = **{:.2}×** Janus's)",
                o / t
            ))
        })
        .collect();
    (!pairs.is_empty()).then(|| {
        format!(
            "- CPU-s per participant-minute, ours vs Janus AudioBridge in the same run: {}.",
            pairs.join("; ")
        )
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores of {cpu}")
}

async fn run_external(
    url: &str,
    key: &str,
    room: &str,
    sc: Scenario,
) -> anyhow::Result<Vec<loadgen::participant::Report>> {
    use loadgen::participant::{Shared, Target};
    let target = Target {
        base_url: url.into(),
        api_key: key.into(),
        room: room.into(),
    };
    let cast = bench::Cast::new(&sc)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shared = Shared::new(sc.per_room).honouring_limits(sc.honour_limits);
    let tasks = bench::join_room(target, &sc, &cast, shared, &stop_rx, true).await;
    tokio::time::sleep(std::time::Duration::from_secs(sc.hold_s)).await;
    Ok(bench::finish(stop_tx, tasks).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &str, cpu: f64) -> bench::Row {
        bench::Row {
            scenario: scenario.into(),
            participants: 10,
            cpu_s_per_participant_min: cpu,
            cpu_cores: 0.0,
            client_cores: 0.0,
            tick_p50_ms: f64::NAN,
            tick_p99_ms: f64::NAN,
            miss_pct: f64::NAN,
            encoders: (f64::NAN, f64::NAN),
            summary: Default::default(),
        }
    }

    #[test]
    fn comparison_pairs_sizes_that_ran_on_both() {
        let rows = [
            row("audio-10", 0.1),
            row("janus-audio-10", 0.4),
            row("audio-50", 0.05),
            row("video-4", 1.0),
        ];
        assert_eq!(
            janus_comparison(&rows).as_deref(),
            Some(
                "- CPU-s per participant-minute, ours vs Janus AudioBridge in the same run: \
                 10 participants: 0.100 vs 0.400 (ours = **0.25×** Janus's)."
            )
        );
        assert_eq!(janus_comparison(&rows[2..]), None);
    }

    #[test]
    fn janus_rows_show_dashes_for_our_metrics() {
        let r = table_row(&row("janus-audio-10", 0.4));
        assert!(
            r.starts_with("| janus-audio-10 | 10 | 0.40 | 0% | 0% | - / - | - | - / - | - / - |"),
            "{r}"
        );
        assert_eq!(fmt_f(1.234, 2), "1.23");
    }
}
