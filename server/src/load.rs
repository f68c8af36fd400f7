//! How busy this process is, for admission control: a join that would push the node past its
//! CPU budget is refused with `server_busy` (and the cluster places rooms by the same figure).
//!
//! The figure is the process's own CPU time (user + system, from `/proc/self/stat`) over the
//! last few seconds, in cores (1.0 = one core fully used), sampled every second and smoothed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often the CPU time is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Weight of the newest sample in the smoothed figure (about a 3 s memory).
const SMOOTHING: f64 = 0.3;

/// The process's recent CPU use, readable without locking.
#[derive(Debug, Default)]
pub struct Load {
    /// Cores in use, smoothed, as `f64` bits.
    cores: AtomicU64,
}

impl Load {
    /// Cores the process used lately (1.0 = one core).
    pub fn cores(&self) -> f64 {
        f64::from_bits(self.cores.load(Relaxed))
    }

    /// Folds in one measured figure (cores over the last interval).
    pub fn record(&self, cores: f64) {
        let before = self.cores();
        let after = if before == 0.0 {
            cores
        } else {
            before + SMOOTHING * (cores - before)
        };
        self.cores.store(after.to_bits(), Relaxed);
    }

    /// Samples `/proc/self/stat` every second, forever (call from a runtime).
    pub async fn run(self: std::sync::Arc<Self>) {
        let Some(mut last) = cpu_time() else {
            tracing::warn!("no /proc/self/stat: admission control sees no CPU load");
            return;
        };
        let mut at = Instant::now();
        loop {
            tokio::time::sleep(SAMPLE_EVERY).await;
            // A failed read (out of descriptors under load, say) skips one sample, never stops
            // the sampling: a stale high figure would refuse every join until a restart.
            let Some(now) = cpu_time() else { continue };
            let elapsed = at.elapsed().as_secs_f64();
            at = Instant::now();
            self.record((now.saturating_sub(last)).as_secs_f64() / elapsed.max(1e-3));
            last = now;
        }
    }
}

/// User + system CPU time of this process.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = stat.rsplit_once(") ")?.1;
    let mut f = rest.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // Clock ticks are 100 a second on Linux (USER_HZ).
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The default CPU budget: 85 % of the machine's cores.
pub fn default_budget() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    0.85 * cores as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_is_smoothed_and_the_process_cpu_time_reads() {
        let l = Load::default();
        l.record(1.0);
        assert_eq!(l.cores(), 1.0);
        l.record(0.0);
        assert!((l.cores() - 0.7).abs() < 1e-9);
        let t0 = cpu_time().expect("/proc/self/stat");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_time().unwrap() > t0, "CPU time moves while we spin");
    }
}
