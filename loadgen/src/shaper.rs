//! A constrained receiver in-process: an interceptor at the wire end of a synthetic participant's
//! chain that gives what it receives a weak link's shape: a rate limit with a bounded queue
//! (drop-tail, like `tbf`) and random loss. Everything above it (NACK, the transport-wide
//! feedback that drives the server's estimate, the media) sees the packets as a real weak link
//! would deliver them, so a benchmark can shape hundreds of receivers without a network namespace
//! each. Sans-IO: time comes in with the packets and `handle_timeout`.

use rtc::interceptor::{Interceptor, Packet as IPacket, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the link does to what a receiver gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkShape {
    /// Rate, kbit/s.
    pub kbps: u32,
    /// Random loss, 0..1.
    pub loss: f64,
    /// Longest queueing delay before the link drops (like `tbf latency`), ms.
    pub queue_ms: u32,
}

/// Per-packet overhead on the wire beyond what the interceptor sees (SRTP tag, UDP, IPv4).
const WIRE_OVERHEAD_BYTES: usize = 38;

/// The interceptor (see the module docs).
pub struct ShapedLink {
    shape: LinkShape,
    /// When the link finishes sending what it holds.
    busy_until: Option<Instant>,
    /// (release instant, packet).
    queue: VecDeque<(Instant, TaggedPacket)>,
    read_out: VecDeque<TaggedPacket>,
    write_out: VecDeque<TaggedPacket>,
    rng: u64,
    /// Packets dropped by the queue and by random loss.
    pub dropped: (u64, u64),
}

impl ShapedLink {
    /// A link of `shape`; `seed` makes its random loss reproducible.
    pub fn new(shape: LinkShape, seed: u64) -> Self {
        Self {
            shape,
            busy_until: None,
            queue: VecDeque::new(),
            read_out: VecDeque::new(),
            write_out: VecDeque::new(),
            rng: seed | 1,
            dropped: (0, 0),
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: plenty for dropping packets.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn size(p: &TaggedPacket) -> usize {
        let n = match &p.message.packet {
            IPacket::Rtp(r) => r.marshal_size(),
            IPacket::Rtcp(pkts) => pkts.iter().map(|p| p.marshal_size()).sum(),
            _ => 0,
        };
        n + WIRE_OVERHEAD_BYTES
    }

    fn release(&mut self, now: Instant) {
        while self.queue.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((t, mut p)) = self.queue.pop_front() {
                p.now = t;
                self.read_out.push_back(p);
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ShapedLink {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let now = msg.now;
        self.release(now);
        if self.random() < self.shape.loss {
            self.dropped.1 += 1;
            return Ok(());
        }
        let start = self.busy_until.map_or(now, |b| b.max(now));
        if start.saturating_duration_since(now) > Duration::from_millis(self.shape.queue_ms.into())
        {
            self.dropped.0 += 1;
            return Ok(());
        }
        let bits = (Self::size(&msg) * 8) as f64;
        let done = start + Duration::from_secs_f64(bits / (f64::from(self.shape.kbps) * 1000.0));
        self.busy_until = Some(done);
        self.queue.push_back((done, msg));
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read_out.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_out.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write_out.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        self.release(now);
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }
}

impl Interceptor for ShapedLink {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::{TransportContext, TransportMessage};

    fn rtp(payload: usize, now: Instant) -> TaggedPacket {
        let p = rtc::rtp::Packet {
            payload: vec![0u8; payload].into(),
            ..Default::default()
        };
        TransportMessage {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(IPacket::Rtp(p)),
        }
    }

    #[test]
    fn rate_queue_and_loss_shape_what_arrives() {
        let shape = LinkShape {
            kbps: 300,
            loss: 0.0,
            queue_ms: 300,
        };
        let mut link = ShapedLink::new(shape, 7);
        let t0 = Instant::now();
        // 1 s of 600 kbit/s offered: 1000-byte packets every 13.3 ms.
        let mut got = Vec::new();
        for i in 0..75u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 13_333);
            link.handle_read(rtp(1000 - 12 - WIRE_OVERHEAD_BYTES, now))
                .unwrap();
            while let Some(p) = link.poll_read() {
                got.push(p.now);
            }
        }
        link.handle_timeout(t0 + Duration::from_secs(3)).unwrap();
        while let Some(p) = link.poll_read() {
            got.push(p.now);
        }
        // Through at 300 kbit/s (37.5 packets a second), the rest dropped once the queue
        // holds 300 ms.
        let last = *got.last().unwrap();
        let secs = (last - got[0]).as_secs_f64();
        let rate = (got.len() - 1) as f64 * 8000.0 / secs;
        assert!((280_000.0..=320_000.0).contains(&rate), "rate {rate}");
        assert!(link.dropped.0 > 20, "queue drops {:?}", link.dropped);
        assert!(got.windows(2).all(|w| w[0] <= w[1]));

        let mut lossy = ShapedLink::new(
            LinkShape {
                kbps: 10_000,
                loss: 0.05,
                queue_ms: 300,
            },
            42,
        );
        for i in 0..4000u32 {
            lossy
                .handle_read(rtp(100, t0 + Duration::from_millis(u64::from(i) * 20)))
                .unwrap();
        }
        let lost = lossy.dropped.1 as f64 / 4000.0;
        assert!((0.035..=0.065).contains(&lost), "random loss {lost}");
    }
}
