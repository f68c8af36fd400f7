//! Unauthenticated operational endpoints: `GET /healthz` and `GET /metrics` (Prometheus text).

use crate::AppState;
use crate::api::rest;
use crate::metrics::METRICS;
use crate::room::manager::ReceiverStats;
use actix_web::{HttpResponse, http::header, web};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use utoipa::ToSchema;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Routes of this module (at the root, outside `/api/v1`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(healthz))
            .default_service(rest::method_not_allowed("GET")),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(metrics))
            .default_service(rest::method_not_allowed("GET")),
    );
}

/// Health of the process and its database.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    #[schema(example = "ok")]
    pub status: String,
    /// `ok`, or why the database cannot be used.
    #[schema(example = "ok")]
    pub database: String,
}

/// Liveness and database reachability.
#[utoipa::path(
    get, path = "/healthz", tag = "health",
    responses(
        (status = 200, description = "Healthy", body = Health,
         example = json!({"status": "ok", "database": "ok"})),
        (status = 503, description = "The database cannot be used", body = Health,
         example = json!({"status": "degraded", "database": "database unavailable: pool timed out"})),
    )
)]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(Health {
                status: "ok".into(),
                database: "ok".into(),
            }),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            HttpResponse::ServiceUnavailable()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(Health {
                    status: "degraded".into(),
                    database: e.to_string(),
                })
        }
    }
}

/// Renders the process gauges (rooms, participants, uptime) followed by the media counters.
pub fn render_metrics(state: &AppState, out: &mut String) {
    let (rooms, participants) = state.rooms.counts();
    let (live_entries, emptied_entries) = state.rooms.entries();
    let uptime = state.started.elapsed().as_secs_f64();
    let gauges = [
        (
            "mcu_rooms",
            "Rooms with at least one connected participant.",
            rooms as f64,
        ),
        (
            "mcu_participants",
            "Connected participants, all rooms.",
            participants as f64,
        ),
        (
            "mcu_live_room_entries",
            "Rooms the process holds live state for (someone or a recording in them).",
            live_entries as f64,
        ),
        (
            "mcu_emptied_room_entries",
            "Emptied rooms remembered for the empty-timeout reaper (at most a day each).",
            emptied_entries as f64,
        ),
        (
            "mcu_process_cpu_cores",
            "CPU this process used lately, in cores (smoothed over a few seconds).",
            state.load.cores(),
        ),
        (
            "mcu_cpu_budget_cores",
            "Cores the process may use before it refuses joins (server_busy); 0 = no limit.",
            state
                .config
                .cpu_budget
                .unwrap_or_else(crate::load::default_budget),
        ),
        (
            "mcu_uptime_seconds",
            "Seconds since the process started.",
            uptime,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP mcu_build_info Build of the running server.\n# TYPE mcu_build_info gauge\n\
         mcu_build_info{{version=\"{}\",database=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        state.store.backend()
    );
    METRICS.render(out);
    if let Some(mux) = &state.udp_mux {
        render_mux(&mux.counters, out);
    }
    render_receivers(&state.rooms.all_receivers(), out);
}

/// What the one media socket did with the datagrams it received.
fn render_mux(c: &crate::room::udp_mux::MuxCounters, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let name = "mcu_media_udp_datagrams_total";
    let _ = writeln!(
        out,
        "# HELP {name} Datagrams received on the media UDP port, by what became of them.\n\
         # TYPE {name} counter"
    );
    for (outcome, v) in [
        ("routed", &c.routed),
        ("unknown_source", &c.dropped_unknown),
        ("rate_limited", &c.dropped_rate),
        ("queue_full", &c.dropped_queue),
    ] {
        let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", v.load(Relaxed));
    }
}

/// One gauge per connected participant's link: what the send policy works from and what it
/// decided (labels `room`, `participant`).
fn render_receivers(receivers: &[(String, ReceiverStats)], out: &mut String) {
    type Metric = (&'static str, &'static str, fn(&ReceiverStats) -> f64);
    const METRICS_OF_A_RECEIVER: [Metric; 8] = [
        (
            "mcu_receiver_estimate_bits_per_second",
            "Bandwidth estimate of the link to a participant.",
            |r| r.estimate_kbps as f64 * 1000.0,
        ),
        (
            "mcu_receiver_video_tier_bits_per_second",
            "Video tier sent to a participant (0: paused).",
            |r| f64::from(r.tier_kbps) * 1000.0,
        ),
        (
            "mcu_receiver_video_paused",
            "1 while a participant's video is paused for bandwidth.",
            |r| f64::from(u8::from(r.video_paused)),
        ),
        (
            "mcu_receiver_sent_bits_per_second",
            "RTP sent to a participant (last half second).",
            |r| f64::from(r.sent_kbps) * 1000.0,
        ),
        (
            "mcu_receiver_loss_ratio",
            "Loss a participant reports on what it receives from us.",
            |r| r.loss_percent / 100.0,
        ),
        (
            "mcu_receiver_rtt_seconds",
            "Round trip to a participant (RTCP receiver reports).",
            |r| f64::from(r.rtt_ms) / 1000.0,
        ),
        (
            "mcu_receiver_audio_redundancy_bits_per_second",
            "What audio redundancy (RED) adds to a participant's audio while it reports loss.",
            |r| f64::from(r.audio_redundancy_kbps) * 1000.0,
        ),
        (
            "mcu_receiver_probe_bits_per_second",
            "Rate of the bandwidth probe running for a participant (0: none).",
            |r| f64::from(r.probe_kbps) * 1000.0,
        ),
    ];
    for (name, help, value) in METRICS_OF_A_RECEIVER {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (room, r) in receivers {
            let _ = writeln!(
                out,
                "{name}{{room=\"{}\",participant=\"{}\"}} {}",
                label(room),
                label(&r.participant_id),
                value(r)
            );
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String,
         content_type = "text/plain"),
    )
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut out = String::with_capacity(4096);
    render_metrics(&state, &mut out);
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(out)
}
