//! Synthetic participants for the MCU: join through the real REST + WebSocket API as a browser
//! does, send pre-encoded media (encode once, replay), and measure what comes back: join time,
//! received rate, audio gaps, mouth-to-ear latency (tone bursts found in the mix) and video
//! latency (frame counters read back from the composite).

pub mod bench;
pub mod janus;
pub mod media;
pub mod participant;
pub mod shaper;

use participant::Report;

/// Percentile of `xs` (nearest rank), None if empty.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

/// The summary of one run over all participants.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    /// Participants that ran.
    pub participants: usize,
    /// Participants that ended with an error.
    pub errors: usize,
    /// First error, if any.
    pub first_error: Option<String>,
    /// Participants that received mixed audio.
    pub with_audio: usize,
    /// WebSocket open → first mixed audio, p50/p99 ms.
    pub first_audio_ms: (Option<f64>, Option<f64>),
    /// WebSocket open → first composite frame, p50/p99 ms.
    pub first_video_ms: (Option<f64>, Option<f64>),
    /// Mean received composite frame rate.
    pub video_fps: f64,
    /// Mean received bitrate, kbit/s.
    pub rx_kbps: f64,
    /// Audio gaps over 100 ms, all participants.
    pub audio_gaps: u64,
    /// Mouth-to-ear latency through the server, p50/p99 ms (probes).
    pub mouth_to_ear_ms: (Option<f64>, Option<f64>),
    /// Samples behind it.
    pub mouth_to_ear_n: usize,
    /// Video latency through the server, p50/p99 ms (probes).
    pub video_latency_ms: (Option<f64>, Option<f64>),
    /// Samples behind it.
    pub video_latency_n: usize,
}

/// Summarises participant reports.
pub fn summarize(reports: &[Report]) -> Summary {
    let col =
        |f: &dyn Fn(&Report) -> Option<f64>| -> Vec<f64> { reports.iter().filter_map(f).collect() };
    let fa = col(&|r| r.first_audio_ms);
    let fv = col(&|r| r.first_video_ms);
    let m2e: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.mouth_to_ear_ms.clone())
        .collect();
    let vl: Vec<f64> = reports
        .iter()
        .flat_map(|r| r.video_latency_ms.clone())
        .collect();
    let active: Vec<&Report> = reports.iter().filter(|r| r.receive_s > 1.0).collect();
    let n = active.len().max(1) as f64;
    Summary {
        participants: reports.len(),
        errors: reports.iter().filter(|r| r.error.is_some()).count(),
        first_error: reports.iter().find_map(|r| r.error.clone()),
        with_audio: reports.iter().filter(|r| r.audio_packets > 0).count(),
        first_audio_ms: (percentile(&fa, 0.5), percentile(&fa, 0.99)),
        first_video_ms: (percentile(&fv, 0.5), percentile(&fv, 0.99)),
        video_fps: active
            .iter()
            .map(|r| r.video_frames as f64 / r.receive_s)
            .sum::<f64>()
            / n,
        rx_kbps: active
            .iter()
            .map(|r| r.bytes as f64 * 8.0 / 1000.0 / r.receive_s)
            .sum::<f64>()
            / n,
        audio_gaps: reports.iter().map(|r| r.audio_gaps).sum(),
        mouth_to_ear_ms: (percentile(&m2e, 0.5), percentile(&m2e, 0.99)),
        mouth_to_ear_n: m2e.len(),
        video_latency_ms: (percentile(&vl, 0.5), percentile(&vl, 0.99)),
        video_latency_n: vl.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.5), Some(50.0));
        assert_eq!(percentile(&xs, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
