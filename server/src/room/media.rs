//! The media side of one room: owns the room's [`mixer::MediaRoom`], ticks it every 20 ms and
//! hands the encoded output to each participant's sender task.
//!
//! Rooms run on a fixed set of media workers ([`workers`]: one OS thread per core, never a tokio
//! worker, at real-time priority where allowed), not a thread each: the workers share one queue
//! of rooms ordered by when their tick is due; an idle worker runs the most overdue room and sleeps
//! until the next is due. A large room's video decodes and tier encodes also spread over the cores
//! (the mixer's rayon pool, [`init_media_pool`]).
//!
//! Invariants:
//! - A room's tick is scheduled as `next += 20 ms` (no drift from sleep overshoot). When it is
//!   more than one tick late it counts a deadline miss and catches up with audio-only ticks, or
//!   skips ahead past [`MAX_CATCH_UP`], instead of bursting.
//! - A worker never blocks on anything but its clock: inputs arrive through bounded channels
//!   drained with `try_recv`, outputs leave with `try_send` (overflow: drop + count).

use crate::metrics::METRICS;
use crate::room::pacer::LinkState;
use crate::room::peer::{Payloads, vp8_payloads};
use bytes::Bytes;
use mixer::{MediaConfig, MediaRoom, ParticipantKey, TickOutput};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc as stdmpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Length of one media tick.
pub const TICK: Duration = Duration::from_millis(20);
/// Ticks a late media thread catches up (audio only) before it gives up and realigns: half a
/// second, past which a burst would only overflow the receivers' jitter buffers.
pub const MAX_CATCH_UP: u32 = 25;

/// Capacity of the hint channel into a room's media thread (link reports, keyframe requests).
/// When it is full the newest hint is dropped: the next report or request supersedes it. Joins,
/// leaves, mutes and layout changes go through a channel of their own that never drops, so that a
/// flood of hints cannot push out a `Remove` (and leave a ghost tile).
pub const HINT_QUEUE: usize = 1024;

/// Capacity of the media packet channel into a room's media thread: ~1 s of audio+video for 40
/// publishers. Overflow drops the newest packet (the jitter buffer conceals it) and is counted.
pub const PACKET_QUEUE: usize = 8192;

/// Capacity of one participant's output queue (about 2 s of audio and video). A sender task that
/// falls this far behind loses packets rather than stalling the room.
pub const OUTPUT_QUEUE: usize = 160;

/// Capacity of the room event queue (speaker changes) to the control plane.
pub const EVENT_QUEUE: usize = 256;

/// Encoded media for one participant, or a request for its publisher.
#[derive(Debug, Clone)]
pub enum Output {
    /// 20 ms of the participant's mix-minus, Opus.
    Audio {
        /// The packet.
        data: Arc<[u8]>,
        /// Room clock of the frame, ms: its RTP timestamp (ticks the room sent nothing for, in
        /// DTX, leave a gap in time, not in sequence).
        pts_ms: u64,
        /// Audio packets for this participant dropped (queue full) since the last one sent.
        dropped_before: u16,
    },
    /// One composite frame, VP8.
    Video {
        /// The frame's RTP payloads, made once for its tier ([`vp8_payloads`]).
        payloads: Payloads,
        /// Whether it is a keyframe.
        keyframe: bool,
        /// Room clock of the frame, ms: its RTP timestamp (frames the room did not make, an
        /// unchanged composite or a lower tier rate, leave a gap in time, not in sequence).
        pts_ms: u64,
        /// Frames for this participant dropped (queue full) since the last one sent: the sender
        /// waits for a keyframe, which the room was asked for.
        dropped_before: u16,
    },
    /// The participant's own video decoder needs a keyframe: send PLI upstream.
    Pli,
}

/// Capacity of a recording sink's queue (~4 s of audio and video). The writer thread drains it
/// continuously; when the disk stalls longer than that, packets are dropped and counted.
pub const SINK_QUEUE: usize = 320;

/// Encoded media for a recording, stamped with the room clock.
#[derive(Debug, Clone)]
pub enum SinkPacket {
    /// 20 ms of the full mix, Opus.
    Audio {
        /// Room clock, ms.
        pts_ms: u64,
        /// The packet.
        data: Arc<[u8]>,
    },
    /// One composite frame, VP8.
    Video {
        /// Room clock, ms.
        pts_ms: u64,
        /// The frame.
        data: Arc<[u8]>,
        /// Whether it is a keyframe.
        keyframe: bool,
    },
}

/// Commands from the control plane.
pub enum Command {
    /// A receive-only output (a recording) at a fixed video bitrate.
    AddSink {
        /// Mixer key.
        key: ParticipantKey,
        /// Video bitrate, kbit/s.
        kbps: u32,
        /// Where its media goes (a writer thread).
        out: stdmpsc::SyncSender<SinkPacket>,
    },
    /// Removes a sink; its queue closes, which tells the writer to finish.
    RemoveSink(ParticipantKey),
    /// A participant's media joins.
    Add {
        /// Mixer key.
        key: ParticipantKey,
        /// Sends media (has publish permission).
        publishes: bool,
        /// Where its output goes.
        out: mpsc::Sender<Output>,
        /// Its link as the sender sees it; the room writes its tier and pause state there.
        link: Arc<LinkState>,
    },
    /// A participant's media leaves.
    Remove(ParticipantKey),
    /// Mute flags.
    Mute {
        /// Mixer key.
        key: ParticipantKey,
        /// Audio muted.
        audio: bool,
        /// Video muted.
        video: bool,
    },
    /// Room layout.
    Layout(mixer::Layout),
    /// The participant whose screen share gets the large tile (None: the active speaker).
    Presenter(Option<ParticipantKey>),
    /// What a receiver's link carries: the bandwidth estimate (bit/s) and the loss it reports.
    Link {
        /// Mixer key.
        key: ParticipantKey,
        /// Estimate, bit/s.
        estimate_bps: u64,
        /// Reported loss, percent.
        loss_percent: u8,
    },
    /// A receiver asked for a keyframe (PLI/FIR).
    Keyframe(ParticipantKey),
    /// Tests only: the room's tick panics (a bug in the media code).
    #[cfg(test)]
    Panic,
}

/// Media packets from the participants' receive tasks.
pub enum Packet {
    /// One Opus RTP payload.
    Audio {
        /// Mixer key.
        key: ParticipantKey,
        /// RTP sequence number.
        seq: u16,
        /// RTP timestamp.
        ts: u32,
        /// Payload.
        payload: Bytes,
        /// RFC 6464 audio level (−dBov) when the sender marks its packets.
        level: Option<u8>,
    },
    /// One reassembled VP8 frame.
    Video {
        /// Mixer key.
        key: ParticipantKey,
        /// RTP timestamp.
        ts: u32,
        /// Frame.
        frame: Bytes,
        /// No packet of it was lost.
        complete: bool,
    },
}

/// What the media thread reports to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The active speaker changed.
    ActiveSpeaker(Option<ParticipantKey>),
    /// A participant started or stopped speaking.
    Speaking(ParticipantKey, bool),
    /// A receiver's video paused for bandwidth (`true`) or resumed (`false`).
    VideoPaused(ParticipantKey, bool),
    /// How much video a publisher should send (its tile's size, or nothing).
    SendLimit(ParticipantKey, mixer::SendLimit),
}

/// Per-room timing figures, readable without locking the thread.
#[derive(Default)]
pub struct RoomTiming {
    /// Ticks run.
    pub ticks: std::sync::atomic::AtomicU64,
    /// Sum of tick work, µs.
    pub work_us: std::sync::atomic::AtomicU64,
    /// Largest tick work seen, µs.
    pub max_us: std::sync::atomic::AtomicU64,
    /// Deadline misses.
    pub misses: std::sync::atomic::AtomicU64,
    /// Live Opus encoders of this room (one per distinct mix).
    pub audio_encoders: std::sync::atomic::AtomicU64,
    /// Live VP8 encoders of this room (one per layout and bitrate tier in use).
    pub video_encoders: std::sync::atomic::AtomicU64,
    /// Quiet audio packets not decoded (RFC 6464 level), of the inputs present (each second).
    pub audio_quiet_skipped: std::sync::atomic::AtomicU64,
    /// Tier frames held back for a receiver's full send queue (each second).
    pub video_frames_held: std::sync::atomic::AtomicU64,
    /// Packets of two shared-mix frames made (each second).
    pub audio_frames_paired: std::sync::atomic::AtomicU64,
}

/// Handle to a room's media thread. Dropping it stops the thread.
#[must_use = "dropping the handle stops the room's media"]
pub struct MediaHandle {
    control: MediaHandleRef,
    packets: stdmpsc::SyncSender<Packet>,
    stop: Arc<AtomicBool>,
    /// Timing figures of this room.
    pub timing: Arc<RoomTiming>,
}

/// Cloneable sender of control commands into a room's media thread (peers hold one). It does not
/// keep the thread alive: only [`MediaHandle`] does.
#[derive(Clone)]
pub struct MediaHandleRef {
    /// Membership, mutes, layout: never dropped (unbounded; the thread drains it every tick).
    state: stdmpsc::Sender<Command>,
    /// Link reports and keyframe requests: bounded, the newest dropped when full.
    hints: stdmpsc::SyncSender<Command>,
}

impl Command {
    /// A hint that a later one supersedes (may be dropped under a flood).
    fn is_hint(&self) -> bool {
        matches!(self, Command::Link { .. } | Command::Keyframe(_))
    }
}

impl MediaHandleRef {
    /// Sends a control command (never blocks). Hints are dropped when their queue is full;
    /// everything else is always delivered while the thread runs.
    pub fn command(&self, c: Command) {
        if c.is_hint() {
            if let Err(e) = self.hints.try_send(c) {
                tracing::trace!(error = %e, "media hint queue full or thread gone; hint dropped");
            }
        } else if self.state.send(c).is_err() {
            tracing::debug!("media thread gone; command dropped");
        }
    }
}

/// Cloneable sender of media packets into a room (one per receive task).
#[derive(Clone)]
pub struct PacketSender(stdmpsc::SyncSender<Packet>);

impl PacketSender {
    /// Queues a packet; drops it (and counts the drop) when the room is behind.
    pub fn send(&self, p: Packet) {
        if self.0.try_send(p).is_err() {
            METRICS.dropped_packets.fetch_add(1, Relaxed);
        }
    }
}

impl MediaHandle {
    /// Starts the media thread of `room`.
    pub fn start(
        room: &str,
        cfg: MediaConfig,
        events: mpsc::Sender<Event>,
    ) -> Result<MediaHandle, mixer::MixerError> {
        init_media_pool();
        let media = MediaRoom::new(cfg)?;
        let (state, state_rx) = stdmpsc::channel();
        let (hints, hints_rx) = stdmpsc::sync_channel(HINT_QUEUE);
        let (packets, packets_rx) = stdmpsc::sync_channel(PACKET_QUEUE);
        let timing = Arc::new(RoomTiming::default());
        let stop = Arc::new(AtomicBool::new(false));
        tracing::info!(room, "room media started");
        let task = RoomTask {
            room: room.to_string(),
            media,
            control: state_rx,
            hints: hints_rx,
            packets: packets_rx,
            events,
            timing: timing.clone(),
            stop: stop.clone(),
            receivers: HashMap::new(),
            sinks: HashMap::new(),
            next: Instant::now() + TICK,
            last_counts: (0, 0),
        };
        workers().assign(task).map_err(|e| {
            mixer::MixerError::InvalidConfig(format!("cannot start a media worker: {e}"))
        })?;
        Ok(MediaHandle {
            control: MediaHandleRef { state, hints },
            packets,
            stop,
            timing,
        })
    }

    /// Sends a control command (never blocks).
    pub fn command(&self, c: Command) {
        self.control.command(c)
    }

    /// A cloneable control sender.
    pub fn control(&self) -> MediaHandleRef {
        self.control.clone()
    }

    /// A sender for media packets.
    pub fn packets(&self) -> PacketSender {
        PacketSender(self.packets.clone())
    }
}

impl Drop for MediaHandle {
    fn drop(&mut self) {
        // The thread sees the flag within one tick and exits; it is not joined so that the
        // caller (often an async task) never blocks.
        self.stop.store(true, Relaxed);
    }
}

/// Nice value of media threads where real-time scheduling is refused: above the HTTP workers,
/// the webrtc tasks and anything else the host runs (browsers in our tests), because a late tick
/// is a gap every listener hears.
const MEDIA_THREAD_NICE: i32 = -10;
/// Real-time priority of media threads (SCHED_RR, the lowest level): a tick that wakes up runs
/// at once instead of waiting for the scheduler to get round to it. The kernel's real-time
/// throttling (`sched_rt_runtime_us`, 95 % by default) keeps a runaway room from locking a core.
const MEDIA_THREAD_RT_PRIORITY: i32 = 1;

/// The pool a large room's video decodes and tier encodes run on (the mixer uses rayon's global
/// pool): one thread per core, at the media threads' priority, since a room's tick waits for
/// them. Built once, when the first room starts.
fn init_media_pool() {
    static POOL: std::sync::Once = std::sync::Once::new();
    POOL.call_once(|| {
        let built = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("media-pool-{i}"))
            .start_handler(|_| raise_priority("media pool"))
            .build_global();
        if let Err(e) = built {
            // Only when something built it first (a test): it works, at the default priority.
            tracing::debug!(error = %e, "the media pool was already built");
        }
    });
}

/// Gives the calling thread real-time round-robin scheduling, or [`MEDIA_THREAD_NICE`] where
/// that is refused. Both need CAP_SYS_NICE (root, or a container given it); without it the
/// thread keeps the default priority and this says so once in the log.
fn raise_priority(room: &str) {
    let param = libc::sched_param {
        sched_priority: MEDIA_THREAD_RT_PRIORITY,
    };
    // SAFETY: sched_setscheduler reads `param` (a live local) for the calling thread (pid 0);
    // gettid and setpriority only read their integer arguments. Failures come back through the
    // return value and errno.
    let rt = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if rt == 0 {
        return;
    }
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, MEDIA_THREAD_NICE)
    };
    if r != 0 {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let e = std::io::Error::last_os_error();
        WARNED.call_once(|| {
            tracing::warn!(room, error = %e, nice = MEDIA_THREAD_NICE,
                "cannot raise the media threads' priority (CAP_SYS_NICE); they run at the default");
        });
    }
}

struct Receiver {
    out: mpsc::Sender<Output>,
    link: Arc<LinkState>,
    /// Audio packets dropped since the last one queued.
    dropped_audio: u16,
    /// Video frames dropped since the last one queued.
    dropped_video: u16,
}

impl Receiver {
    fn send_audio(&mut self, data: Arc<[u8]>, pts_ms: u64) {
        let o = Output::Audio {
            data,
            pts_ms,
            dropped_before: self.dropped_audio,
        };
        if self.out.try_send(o).is_ok() {
            self.dropped_audio = 0;
        } else {
            self.dropped_audio = self.dropped_audio.saturating_add(1);
            METRICS.dropped_packets.fetch_add(1, Relaxed);
        }
    }

    /// Returns false when the frame was dropped (the receiver then needs a keyframe).
    fn send_video(&mut self, payloads: Payloads, keyframe: bool, pts_ms: u64) -> bool {
        let o = Output::Video {
            payloads,
            keyframe,
            pts_ms,
            dropped_before: self.dropped_video,
        };
        if self.out.try_send(o).is_ok() {
            self.dropped_video = 0;
            true
        } else {
            self.dropped_video = self.dropped_video.saturating_add(1);
            METRICS.dropped_packets.fetch_add(1, Relaxed);
            false
        }
    }
}

/// One room as a media worker runs it.
struct RoomTask {
    room: String,
    media: MediaRoom,
    /// Membership, mutes, layout: never dropped.
    control: stdmpsc::Receiver<Command>,
    /// Link reports, keyframe requests: may be dropped when full.
    hints: stdmpsc::Receiver<Command>,
    packets: stdmpsc::Receiver<Packet>,
    events: mpsc::Sender<Event>,
    timing: Arc<RoomTiming>,
    stop: Arc<AtomicBool>,
    receivers: HashMap<ParticipantKey, Receiver>,
    sinks: HashMap<ParticipantKey, stdmpsc::SyncSender<SinkPacket>>,
    /// When the next tick is due.
    next: Instant,
    /// Encoders counted into the process gauges (audio, video).
    last_counts: (u64, u64),
}

impl RoomTask {
    /// Runs the tick due at `self.next` (the worker calls it once that time has come), with
    /// audio-only ticks first for those missed. Returns false when the room has ended.
    fn step(&mut self) -> bool {
        // Late by whole ticks (a long tick of this or another room, the CPU taken by others):
        // those ticks are caught up with audio-only ticks, so that every mix still gets every
        // 20 ms (a burst its jitter buffer absorbs, not a gap it must conceal); only the
        // composite frames due meanwhile are skipped. Beyond MAX_CATCH_UP the clock realigns.
        let now = Instant::now();
        let mut catch_up = 0u32;
        if now > self.next && now - self.next >= TICK {
            let behind = ((now - self.next).as_micros() / TICK.as_micros()) as u32;
            self.timing.misses.fetch_add(u64::from(behind), Relaxed);
            METRICS
                .deadline_misses
                .fetch_add(u64::from(behind), Relaxed);
            if behind > MAX_CATCH_UP {
                self.next = now;
            } else {
                catch_up = behind;
                self.next += TICK * behind;
            }
        }
        self.next += TICK;
        if self.stop.load(Relaxed) {
            return false;
        }
        let started = Instant::now();
        let Self {
            media,
            receivers,
            sinks,
            events,
            timing,
            ..
        } = self;

        // Membership first (a hint may name a participant that joins in the same tick).
        loop {
            match self.control.try_recv() {
                Ok(c) => apply(media, receivers, sinks, c),
                Err(stdmpsc::TryRecvError::Empty) => break,
                Err(stdmpsc::TryRecvError::Disconnected) => return false,
            }
        }
        while let Ok(c) = self.hints.try_recv() {
            apply(media, receivers, sinks, c);
        }
        // Only what is already queued: packets arriving during the tick wait for the next one.
        for _ in 0..PACKET_QUEUE {
            match self.packets.try_recv() {
                Ok(Packet::Audio {
                    key,
                    seq,
                    ts,
                    payload,
                    level,
                }) => media.push_audio_level(key, seq, ts, &payload, level),
                Ok(Packet::Video {
                    key,
                    ts,
                    frame,
                    complete,
                }) => media.push_video(key, ts, &frame, complete),
                Err(_) => break,
            }
        }

        for _ in 0..catch_up {
            let out = media.tick_audio_only();
            deliver(out, media, receivers, sinks, events);
        }
        // Encoder pushback: a tier does not make frames for a receiver's full send queue
        // (read on the ticks that make a frame only).
        if media.video_frame_due() {
            for (&key, r) in receivers.iter() {
                media.set_video_backlog(key, r.link.video_queue_ms());
            }
        }
        let out = media.tick();
        let video_tick = out.video_tick;
        deliver(out, media, receivers, sinks, events);

        let stats = media.encoder_counts();
        let counts = (stats.audio_encoders as u64, stats.video_encoders as u64);
        if counts != self.last_counts {
            timing.audio_encoders.store(counts.0, Relaxed);
            timing.video_encoders.store(counts.1, Relaxed);
            // Gauges are summed over rooms: apply this room's delta.
            METRICS
                .audio_encoders
                .fetch_add(counts.0.wrapping_sub(self.last_counts.0), Relaxed);
            METRICS
                .video_encoders
                .fetch_add(counts.1.wrapping_sub(self.last_counts.1), Relaxed);
            self.last_counts = counts;
        }
        METRICS
            .audio_encodes
            .fetch_add(stats.audio_encodes_last_tick as u64, Relaxed);
        if video_tick {
            METRICS
                .video_encodes
                .fetch_add(stats.video_encodes_last_video_tick as u64, Relaxed);
        }

        let us = started.elapsed().as_micros() as u64;
        METRICS.observe_tick(us);
        if timing.ticks.fetch_add(1, Relaxed).is_multiple_of(50) {
            let s = media.stats();
            timing
                .audio_quiet_skipped
                .store(s.audio_quiet_skipped, Relaxed);
            timing.video_frames_held.store(s.video_frames_held, Relaxed);
            timing
                .audio_frames_paired
                .store(s.audio_frames_paired, Relaxed);
        }
        timing.work_us.fetch_add(us, Relaxed);
        timing.max_us.fetch_max(us, Relaxed);
        true
    }
}

impl Drop for RoomTask {
    fn drop(&mut self) {
        METRICS
            .audio_encoders
            .fetch_sub(self.last_counts.0, Relaxed);
        METRICS
            .video_encoders
            .fetch_sub(self.last_counts.1, Relaxed);
        tracing::info!(room = self.room, "room media stopped");
    }
}

/// The media workers: one thread per core, taking rooms from one shared queue ordered by when
/// their tick is due. Any idle worker runs the most overdue room (not one bound to a worker: three
/// rooms due at once on one worker while the other idles would each wait for the others).
pub struct Workers {
    queue: std::sync::Mutex<Queue>,
    /// Signalled when a room is queued (a worker waiting for a later one re-checks).
    ready: std::sync::Condvar,
    threads: usize,
}

/// Rooms waiting for their next tick (those being ticked are out of it), earliest first.
#[derive(Default)]
struct Queue {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<Queued>>,
    /// Rooms live on the workers: queued plus being ticked.
    rooms: usize,
    seq: u64,
}

/// A room in the queue; ordered by due time, then by arrival.
struct Queued {
    next: Instant,
    seq: u64,
    task: Box<RoomTask>,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.next, self.seq) == (o.next, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.next, self.seq).cmp(&(o.next, o.seq))
    }
}

impl Queue {
    fn push(&mut self, task: Box<RoomTask>) {
        self.seq += 1;
        self.heap.push(std::cmp::Reverse(Queued {
            next: task.next,
            seq: self.seq,
            task,
        }));
    }
}

/// How many media workers run: `MCU_MEDIA_WORKERS`, else one per core.
fn worker_count() -> usize {
    std::env::var("MCU_MEDIA_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// The process's media workers, started with the first room.
pub fn workers() -> &'static Workers {
    static WORKERS: std::sync::OnceLock<Workers> = std::sync::OnceLock::new();
    static STARTED: std::sync::Once = std::sync::Once::new();
    let w = WORKERS.get_or_init(|| Workers {
        queue: std::sync::Mutex::new(Queue::default()),
        ready: std::sync::Condvar::new(),
        threads: worker_count(),
    });
    STARTED.call_once(|| {
        tracing::info!(workers = w.threads, "media workers started");
        for i in 0..w.threads {
            let spawned = std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    raise_priority("media worker");
                    w.work()
                });
            if let Err(e) = spawned {
                // The others run every room; none at all shows in the rooms' missed ticks.
                tracing::error!(worker = i, error = %e, "cannot start a media worker thread");
            }
        }
    });
    w
}

impl Workers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue holds plain data; a panic in a room's tick happens outside the lock.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a new room.
    fn assign(&self, task: RoomTask) -> Result<(), String> {
        let mut q = self.lock();
        q.rooms += 1;
        q.push(Box::new(task));
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Rooms running on the workers.
    pub fn rooms(&self) -> usize {
        self.lock().rooms
    }

    /// A worker's loop: takes the room due first, waiting until it is due (or an earlier one is
    /// queued), ticks it outside the lock, and queues it again unless it ended.
    fn work(&self) {
        let mut q = self.lock();
        loop {
            let due = q.heap.peek().map(|r| r.0.next);
            match due {
                None => {
                    q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                Some(due) => {
                    let now = Instant::now();
                    if due > now {
                        q = self
                            .ready
                            .wait_timeout(q, due - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        continue;
                    }
                }
            }
            let Some(std::cmp::Reverse(Queued { mut task, .. })) = q.heap.pop() else {
                continue;
            };
            drop(q);
            // A bug that panics in one room's tick ends that room's media, not the worker and
            // the other rooms on it.
            let alive = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.step()))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        room = task.room,
                        "room media panicked; its media stops, the other rooms go on"
                    );
                    false
                });
            q = self.lock();
            if alive {
                q.push(task);
                // Another worker may be waiting for a later room than this one.
                self.ready.notify_one();
            } else {
                q.rooms -= 1;
                drop(q);
                drop(task);
                q = self.lock();
            }
        }
    }
}

/// Hands one tick's output to its receivers, sinks and the session events.
fn deliver(
    out: TickOutput,
    media: &mut MediaRoom,
    receivers: &mut HashMap<ParticipantKey, Receiver>,
    sinks: &mut HashMap<ParticipantKey, stdmpsc::SyncSender<SinkPacket>>,
    events: &mpsc::Sender<Event>,
) {
    let now_ms = out.time_ms;
    let mut dead_sinks = Vec::new();
    let mut lagging_sinks = Vec::new();
    let mut lagging_receivers = Vec::new();
    let mut bytes_out = 0u64;
    // A shared mix frame held back to be paired is stamped at its own tick, and goes first.
    let late = out
        .audio_late
        .into_iter()
        .map(|(k, p)| (k, p, now_ms.saturating_sub(mixer::TICK_MS)));
    let current = out.audio.into_iter().map(|(k, p)| (k, p, now_ms));
    for (key, pkt, pts_ms) in late.chain(current) {
        if let Some(s) = sinks.get(&key) {
            let p = SinkPacket::Audio { pts_ms, data: pkt };
            feed_sink(key, s, p, &mut dead_sinks, &mut lagging_sinks);
        } else if let Some(r) = receivers.get_mut(&key) {
            bytes_out += pkt.len() as u64;
            r.send_audio(pkt, pts_ms);
        }
    }
    // Each tier's frame is packetized once for all its receivers.
    let split: Vec<(Arc<[u8]>, Payloads)> = out
        .video_tiers
        .iter()
        .map(|frame| (frame.clone(), vp8_payloads(frame)))
        .collect();
    for (key, data, keyframe) in out.video {
        if let Some(s) = sinks.get(&key) {
            let p = SinkPacket::Video {
                pts_ms: now_ms,
                data,
                keyframe,
            };
            feed_sink(key, s, p, &mut dead_sinks, &mut lagging_sinks);
        } else if let Some(r) = receivers.get_mut(&key) {
            let Some((_, p)) = split.iter().find(|(f, _)| Arc::ptr_eq(f, &data)) else {
                continue;
            };
            bytes_out += data.len() as u64;
            if !r.send_video(p.clone(), keyframe, now_ms) {
                // What follows cannot be decoded without a keyframe: the stream recovers.
                lagging_receivers.push(key);
            }
        }
    }
    for key in out.pli {
        if let Some(r) = receivers.get(&key) {
            let _ = r.out.try_send(Output::Pli);
        }
    }
    for key in lagging_sinks.into_iter().chain(lagging_receivers) {
        media.request_keyframe(key);
    }
    for &(key, paused) in &out.video_paused_changed {
        let _ = events.try_send(Event::VideoPaused(key, paused));
    }
    for &(key, limit) in &out.send_limits {
        let _ = events.try_send(Event::SendLimit(key, limit));
    }
    for key in dead_sinks {
        // The writer is gone (it failed or finished): stop producing for it.
        sinks.remove(&key);
        media.remove_sink(key);
    }
    if let Some(s) = out.active_speaker {
        let _ = events.try_send(Event::ActiveSpeaker(s));
    }
    for (key, speaking) in out.speaking_changed {
        let _ = events.try_send(Event::Speaking(key, speaking));
    }
    METRICS.bytes_out.fetch_add(bytes_out, Relaxed);
}

/// Writes a receiver's tier, pause state and next probe point to its link (stats, and the
/// estimator's growth cap). A tier changes only on join and on a link report, so this runs there,
/// not on the tick.
fn publish_tier(media: &MediaRoom, key: ParticipantKey, link: &LinkState) {
    let tier = media.tier_of(key);
    // Paused: the lowest tier is the next one up.
    let next = tier.map_or(0, |t| t + 1);
    let probe = if next < media.config().video_tiers_kbps.len() {
        mixer::tier::probe_estimate(media.tier_kbps(next))
    } else {
        0
    };
    link.tier_kbps
        .store(tier.map_or(0, |t| media.tier_kbps(t)), Relaxed);
    // In the estimator's units: the estimate the room sees has the audio redundancy taken off.
    let probe = match probe {
        0 => 0,
        p => p + link.audio_redundancy_bps.load(Relaxed),
    };
    link.probe_bps.store(probe, Relaxed);
    link.video_paused.store(media.video_paused(key), Relaxed);
}

fn feed_sink(
    key: ParticipantKey,
    sink: &stdmpsc::SyncSender<SinkPacket>,
    p: SinkPacket,
    dead: &mut Vec<ParticipantKey>,
    lagging: &mut Vec<ParticipantKey>,
) {
    match sink.try_send(p) {
        Ok(()) => {}
        Err(stdmpsc::TrySendError::Full(_)) => {
            // The disk stalled for seconds. A lost video frame breaks decoding of the file until
            // the next keyframe: ask for one right away (see `lagging`).
            METRICS.dropped_packets.fetch_add(1, Relaxed);
            lagging.push(key);
        }
        Err(stdmpsc::TrySendError::Disconnected(_)) => dead.push(key),
    }
}

fn apply(
    media: &mut MediaRoom,
    receivers: &mut HashMap<ParticipantKey, Receiver>,
    sinks: &mut HashMap<ParticipantKey, stdmpsc::SyncSender<SinkPacket>>,
    c: Command,
) {
    match c {
        Command::AddSink { key, kbps, out } => {
            media.add_sink(key, kbps);
            sinks.insert(key, out);
        }
        Command::RemoveSink(key) => {
            media.remove_sink(key);
            sinks.remove(&key);
        }
        Command::Add {
            key,
            publishes,
            out,
            link,
        } => {
            media.add_participant(key, publishes);
            publish_tier(media, key, &link);
            receivers.insert(
                key,
                Receiver {
                    out,
                    link,
                    dropped_audio: 0,
                    dropped_video: 0,
                },
            );
        }
        Command::Remove(key) => {
            media.remove_participant(key);
            receivers.remove(&key);
        }
        Command::Mute { key, audio, video } => media.set_muted(key, audio, video),
        Command::Layout(l) => media.set_layout(l),
        Command::Presenter(key) => media.set_presenter(key),
        Command::Link {
            key,
            estimate_bps,
            loss_percent,
        } => {
            media.set_bandwidth(key, Some(estimate_bps));
            media.set_reported_loss(key, loss_percent);
            if let Some(r) = receivers.get(&key) {
                publish_tier(media, key, &r.link);
            }
        }
        Command::Keyframe(key) => media.request_keyframe(key),
        #[cfg(test)]
        Command::Panic => panic!("a room's media panicked (test)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_hints_never_pushes_out_a_join_or_a_leave() {
        let (events, _events_rx) = mpsc::channel(EVENT_QUEUE);
        let h = MediaHandle::start("flood", MediaConfig::default(), events).unwrap();
        // Keyframe requests many times what their queue holds, faster than a tick drains it.
        for _ in 0..HINT_QUEUE * 5 {
            h.command(Command::Keyframe(7));
        }
        let (out, mut rx) = mpsc::channel(OUTPUT_QUEUE);
        h.command(Command::Add {
            key: 1,
            publishes: true,
            out,
            link: LinkState::new(),
        });
        for _ in 0..HINT_QUEUE * 5 {
            h.command(Command::Keyframe(1));
        }
        // Joined: the mix reaches it.
        let first = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("output after the join");
        assert!(matches!(
            first,
            Some(Output::Audio { .. } | Output::Video { .. })
        ));
        for _ in 0..HINT_QUEUE * 5 {
            h.command(Command::Link {
                key: 1,
                estimate_bps: 1,
                loss_percent: 0,
            });
        }
        h.command(Command::Remove(1));
        // Left: the room drops its end of the output queue.
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            while rx.recv().await.is_some() {}
        })
        .await;
        assert!(closed.is_ok(), "the Remove was applied under the flood");
    }

    #[tokio::test]
    async fn rooms_all_tick_on_the_workers_and_leave_them_when_dropped() {
        let n = workers().threads;
        let mut rooms = Vec::new();
        let mut outs = Vec::new();
        for i in 0..(3 * n) as u64 {
            let (events, _rx) = mpsc::channel(EVENT_QUEUE);
            let h =
                MediaHandle::start(&format!("pool-{i}"), MediaConfig::default(), events).unwrap();
            let (out, rx) = mpsc::channel(OUTPUT_QUEUE);
            h.command(Command::Add {
                key: 1,
                publishes: false,
                out,
                link: LinkState::new(),
            });
            rooms.push(h);
            outs.push(rx);
        }
        assert!(workers().rooms() >= 3 * n, "{}", workers().rooms());
        // Every room ticks: each receiver gets its mix.
        for rx in &mut outs {
            let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
            assert!(matches!(got, Ok(Some(Output::Audio { .. }))), "{got:?}");
        }
        drop(rooms);
        let deadline = Instant::now() + Duration::from_secs(2);
        while workers().rooms() >= 3 * n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Ours left the workers (what remains is other tests' rooms).
        assert!(workers().rooms() < 3 * n, "{}", workers().rooms());
    }

    #[tokio::test]
    async fn receivers_of_one_tier_share_the_frames_rtp_payloads() {
        let (events, _ev) = mpsc::channel(EVENT_QUEUE);
        let h = MediaHandle::start("shared-payloads", MediaConfig::default(), events).unwrap();
        let mut rxs = Vec::new();
        for key in 1..=2 {
            let (out, rx) = mpsc::channel(OUTPUT_QUEUE);
            h.command(Command::Add {
                key,
                publishes: false,
                out,
                link: LinkState::new(),
            });
            rxs.push(rx);
        }
        // The room's first composite (placeholders) goes to both, on the default tier.
        let mut got = Vec::new();
        for rx in &mut rxs {
            let deadline = Instant::now() + Duration::from_secs(3);
            let payloads = loop {
                match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                    Ok(Some(Output::Video { payloads, .. })) => break payloads,
                    Ok(Some(_)) => continue,
                    other => panic!("no video: {other:?}"),
                }
            };
            got.push(payloads);
        }
        assert!(!got[0].is_empty());
        assert!(
            Arc::ptr_eq(&got[0], &got[1]),
            "one packetization for the tier"
        );
    }

    #[tokio::test]
    async fn a_room_that_panics_stops_alone() {
        let n = workers().threads;
        // More rooms panicking than there are workers: each worker survives its panic.
        let mut doomed = Vec::new();
        for i in 0..=n {
            let (events, _rx) = mpsc::channel(EVENT_QUEUE);
            let h =
                MediaHandle::start(&format!("doomed-{i}"), MediaConfig::default(), events).unwrap();
            h.command(Command::Panic);
            doomed.push(h);
        }
        let (events, _rx) = mpsc::channel(EVENT_QUEUE);
        let h = MediaHandle::start("survivor", MediaConfig::default(), events).unwrap();
        let (out, mut rx) = mpsc::channel(OUTPUT_QUEUE);
        h.command(Command::Add {
            key: 1,
            publishes: false,
            out,
            link: LinkState::new(),
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        // A second of ticks after the panics: about 50 ticks (at least half of them on a busy
        // machine; a room that stopped makes none), and the lone listener (who hears nobody:
        // DTX, a frame every 400 ms) still gets its frames.
        let ticks = h.timing.ticks.load(Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ticks = h.timing.ticks.load(Relaxed) - ticks;
        let mut mixes = 0;
        while let Ok(o) = rx.try_recv() {
            mixes += usize::from(matches!(o, Output::Audio { .. }));
        }
        assert!(
            ticks >= 25 && mixes >= 2,
            "{ticks} ticks and {mixes} mixes in a second after {} rooms panicked",
            n + 1
        );
    }
}
