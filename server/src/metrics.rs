//! Process-wide counters the media plane updates and `/metrics` renders (Prometheus text).
//! Plain atomics: the media threads never block on them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (µs) of the media tick duration histogram.
pub const TICK_BUCKETS_US: [u64; 8] = [500, 1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 40_000];

/// All counters. One static instance: [`METRICS`].
#[derive(Default)]
pub struct Metrics {
    /// Media ticks run, all rooms.
    pub ticks: AtomicU64,
    /// Sum of tick durations, µs.
    pub tick_us_sum: AtomicU64,
    /// Cumulative tick histogram (count of ticks <= bucket bound).
    pub tick_buckets: [AtomicU64; TICK_BUCKETS_US.len()],
    /// Ticks that started after their deadline (more than one tick late).
    pub deadline_misses: AtomicU64,
    /// Opus encodes performed.
    pub audio_encodes: AtomicU64,
    /// VP8 frames encoded.
    pub video_encodes: AtomicU64,
    /// Live Opus encoders (gauge, summed over rooms).
    pub audio_encoders: AtomicU64,
    /// Live VP8 encoders (gauge, summed over rooms).
    pub video_encoders: AtomicU64,
    /// RTP payload bytes received from participants.
    pub bytes_in: AtomicU64,
    /// Encoded media bytes sent to participants.
    pub bytes_out: AtomicU64,
    /// Media packets dropped because a queue was full.
    pub dropped_packets: AtomicU64,
}

/// The process's counters.
pub static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);

impl Metrics {
    /// Records one tick's duration.
    pub fn observe_tick(&self, us: u64) {
        self.ticks.fetch_add(1, Relaxed);
        self.tick_us_sum.fetch_add(us, Relaxed);
        for (b, bound) in self.tick_buckets.iter().zip(TICK_BUCKETS_US) {
            if us <= bound {
                b.fetch_add(1, Relaxed);
            }
        }
    }

    /// Renders the media counters in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let g = |a: &AtomicU64| a.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP mcu_media_tick_seconds Duration of one 20 ms media tick."
        );
        let _ = writeln!(out, "# TYPE mcu_media_tick_seconds histogram");
        for (b, bound) in self.tick_buckets.iter().zip(TICK_BUCKETS_US) {
            let _ = writeln!(
                out,
                "mcu_media_tick_seconds_bucket{{le=\"{}\"}} {}",
                bound as f64 / 1e6,
                g(b)
            );
        }
        let _ = writeln!(
            out,
            "mcu_media_tick_seconds_bucket{{le=\"+Inf\"}} {}",
            g(&self.ticks)
        );
        let _ = writeln!(
            out,
            "mcu_media_tick_seconds_sum {}",
            g(&self.tick_us_sum) as f64 / 1e6
        );
        let _ = writeln!(out, "mcu_media_tick_seconds_count {}", g(&self.ticks));
        let counters = [
            (
                "mcu_media_deadline_misses_total",
                "Media ticks that ran late.",
                &self.deadline_misses,
            ),
            (
                "mcu_audio_encodes_total",
                "Opus frames encoded.",
                &self.audio_encodes,
            ),
            (
                "mcu_video_encodes_total",
                "VP8 frames encoded.",
                &self.video_encodes,
            ),
            (
                "mcu_media_bytes_in_total",
                "Media payload bytes received.",
                &self.bytes_in,
            ),
            (
                "mcu_media_bytes_out_total",
                "Media payload bytes sent.",
                &self.bytes_out,
            ),
            (
                "mcu_media_dropped_packets_total",
                "Media packets dropped on a full queue.",
                &self.dropped_packets,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                g(v)
            );
        }
        let gauges = [
            (
                "mcu_audio_encoders",
                "Live Opus encoders.",
                &self.audio_encoders,
            ),
            (
                "mcu_video_encoders",
                "Live VP8 encoders.",
                &self.video_encoders,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                g(v)
            );
        }
    }
}
