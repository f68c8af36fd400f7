//! [`MediaRoom`]: the per-room media engine the server drives.
//!
//! Invariants:
//! - Time is an input: each [`MediaRoom::tick`] is exactly 20 ms of room
//!   clock ([`TICK_MS`]); the first tick is at 0 ms. Nothing here reads a
//!   clock, blocks or spawns; all state is owned by the caller's thread.
//! - Every tick emits one Opus packet per participant. Inputs are gated by
//!   voice activity: only contributing (speaking or starting to) unmuted inputs
//!   are summed. A contributing receiver gets the mix minus itself from its own
//!   encoder; all others share one encode of the full mix (same `Arc`).
//! - A video tick happens on the first audio tick whose time reaches the next
//!   frame time (`frames * 1000 / fps`, exact rational, no drift). It composites
//!   once and encodes once per bitrate tier that has receivers; encoders of
//!   empty tiers are dropped, a tier's first receiver or a receiver switching
//!   into it or asking for one (PLI/FIR) forces a keyframe on that tier only.
//! - The large tile of [`Layout::Speaker`] goes to the presenter (a screen
//!   sharer, [`MediaRoom::set_presenter`]) when there is one, else to the
//!   active speaker, else to the first joiner. In the grid, the presenter (or
//!   else the active speaker) is always on screen.
//! - Only on-screen inputs are decoded. Off-screen ones keep no decoder; when
//!   one comes on screen it waits for a keyframe and a PLI is requested. PLIs
//!   are rate-limited to one per input per [`PLI_INTERVAL_MS`] of room clock.
//! - Untrusted payloads are bounded and never panic: bad audio is concealed
//!   (PLC) and counted, bad video makes the input wait for a keyframe.

use std::collections::HashMap;
use std::sync::Arc;

use crate::activity::{SpeakerDetector, VoiceActivity};
use crate::compositor::{Compositor, Tile, TileContent};
use crate::image::I420Frame;
use crate::image::I420View;
use crate::jitter::{JitterStats, PushOutcome};
use crate::layout::{MAX_GRID_TILES, MAX_STRIP_TILES, Rect, layout};
use crate::mix::AudioMixer;
use crate::opus_codec::{OpusEncoder, pair_frames};
use crate::playout::{AudioInput, Tick};
use crate::scale::Scaler;
use crate::send_limit::{LimitState, SendLimit};
use crate::tier::{ProbeState, TierShape, next_tier, tier_shape};
use crate::vp8_decoder::{Vp8Decoder, input_size_ok, is_vp8_keyframe, vp8_keyframe_size};
use crate::vpx::{EncodedFrame, Vp8Encoder, Vp8EncoderConfig};
use crate::{FRAME_SAMPLES, Layout, MediaConfig, MixerError, TICK_MS};

/// Server-assigned participant id, unique within a room.
pub type ParticipantKey = u64;

/// Shortest room-clock interval between two PLIs for the same input.
pub const PLI_INTERVAL_MS: u64 = 500;
/// Shortest room-clock interval between two keyframes forced on one tier encoder. Requests
/// (PLI/FIR, tier switches, joins) within it are coalesced into one keyframe at its end, so a
/// lossy receiver cannot hold its tier in a keyframe storm.
pub const KEYFRAME_MIN_INTERVAL_MS: u64 = 1_000;
/// While no tile changes, the composite is still encoded this often, so that receivers and
/// recordings see the stream alive (a room where nobody sends video costs about one frame a
/// second instead of the full frame rate).
pub const STILL_REFRESH_MS: u64 = 1_000;
/// A receiver whose own send queue holds more video than this (ms at its pacing rate) holds its
/// tier's encoder back: a frame is not made, so the next one predicts from one the receiver
/// got, and nothing is lost (libwebrtc's encoder pushback). Past [`PUSHBACK_HARD_MS`] the
/// server's video gate is near (500 ms), which would freeze the picture until a keyframe.
/// Between the two, every other frame is held (half the frame rate: gaps of 133 ms at 15 fps,
/// short of what a browser counts as a freeze).
pub const PUSHBACK_QUEUE_MS: u64 = 250;
/// Past this backlog, up to [`MAX_HELD_FRAMES`] frames in a row are held.
pub const PUSHBACK_HARD_MS: u64 = 400;
/// At most this many frames in a row are held back for a tier, so that one receiver stuck on a
/// dead link cannot stop the picture of the others on its tier (about half a second).
pub const MAX_HELD_FRAMES: u32 = 7;
/// A receiver's own Opus encoder is dropped after this many ticks unused (5 s).
pub const OWN_ENCODER_IDLE_TICKS: u32 = 250;

/// Ticks of the room's silent frame a receiver gets before its stream goes quiet (DTX): about
/// the hangover libopus keeps before its own DTX.
pub const DTX_HANGOVER_TICKS: u32 = 10;
/// In DTX, one frame every this many ticks (400 ms, as libopus and libwebrtc send), so the
/// receiver's stream stays alive.
pub const DTX_INTERVAL_TICKS: u32 = 20;

/// Frames one input may have waiting for the tick (two a tick at 60 fps, and a burst after a
/// short stall); past it they are dropped and a keyframe is asked for.
pub const MAX_PENDING_FRAMES: usize = 8;
/// Inputs with frames in one tick from which they decode in parallel, and tiers in use from
/// which they encode in parallel. Below, the room's own thread does it: a small room gains little
/// and, with many rooms, the cores are busy with other rooms anyway (handing work to the pool
/// then only makes the room's worker wait, and the rooms behind it).
pub const PARALLEL_MIN_INPUTS: usize = 4;
/// Tiers in use from which a video tick encodes them in parallel (see [`PARALLEL_MIN_INPUTS`]).
pub const PARALLEL_MIN_TIERS: usize = 3;

/// Everything one tick produced.
#[derive(Debug, Clone, Default)]
pub struct TickOutput {
    /// Room clock time of this tick in ms (0, 20, 40, ...).
    pub time_ms: u64,
    /// Whether this tick composed and encoded video.
    pub video_tick: bool,
    /// This tick's 20 ms Opus packet (48 kHz, mono: TOC stereo bit 0) for each participant,
    /// in join order. Receivers that contributed nothing share one `Arc` of the full mix. A
    /// receiver gets none in a DTX gap, or while the shared frame is held to be paired (it
    /// then comes in the next tick's `audio_late`).
    pub audio: Vec<(ParticipantKey, Arc<[u8]>)>,
    /// Packets of the previous tick's time, to be sent before `audio`: in a large room
    /// ([`MediaConfig::pair_audio_from`]) the shared mix's frame held back one tick, paired with
    /// this tick's (one packet of 40 ms), or alone when it cannot be paired (the receiver now
    /// speaks, the room went quiet, the encoder changed mode).
    pub audio_late: Vec<(ParticipantKey, Arc<[u8]>)>,
    /// On video ticks: the VP8 frame for each receiver (shared per tier) and
    /// whether it is a keyframe.
    pub video: Vec<(ParticipantKey, Arc<[u8]>, bool)>,
    /// On video ticks: the frame each tier made (the same `Arc`s `video` hands out), so that
    /// the server packetizes each once for all of its receivers.
    pub video_tiers: Vec<Arc<[u8]>>,
    /// Inputs the server should send a PLI for (upstream, to the publisher).
    pub pli: Vec<ParticipantKey>,
    /// `Some(new)` when the active speaker changed (`Some(None)` = nobody).
    pub active_speaker: Option<Option<ParticipantKey>>,
    /// Participants whose speaking flag flipped: `(key, speaking)`.
    pub speaking_changed: Vec<(ParticipantKey, bool)>,
    /// Receivers whose video paused (`true`: the estimate cannot carry the lowest tier next to
    /// audio) or resumed (`false`) since the last tick.
    pub video_paused_changed: Vec<(ParticipantKey, bool)>,
    /// Publishers told how much video to send ([`crate::send_limit`]): on video ticks, when the
    /// limit changes (at once when it grows, after it held a while when it shrinks).
    pub send_limits: Vec<(ParticipantKey, SendLimit)>,
}

/// Counters and gauges of a room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaStats {
    /// Room clock of the next tick, ms.
    pub time_ms: u64,
    /// Participants present.
    pub participants: usize,
    /// Participants that publish media.
    pub publishers: usize,
    /// Opus decoders (one per publisher).
    pub audio_decoders: usize,
    /// Opus encoders alive: the shared full-mix one plus receivers' own ones.
    pub audio_encoders: usize,
    /// Opus encodes done by the last tick.
    pub audio_encodes_last_tick: usize,
    /// VP8 decoders alive (on-screen publishers that sent video).
    pub video_decoders: usize,
    /// VP8 encoders alive (one per bitrate tier with receivers).
    pub video_encoders: usize,
    /// VP8 encodes done by the last video tick.
    pub video_encodes_last_video_tick: usize,
    /// Tiles in the current layout.
    pub visible_tiles: usize,
    /// Current active speaker.
    pub active_speaker: Option<ParticipantKey>,
    /// Jitter buffer counters summed over present inputs.
    pub jitter: JitterStats,
    /// Audio frames that failed to decode (concealed instead).
    pub audio_decode_errors: u64,
    /// Quiet audio packets (RFC 6464 level) of inputs not speaking, played as silence without
    /// decoding, summed over present inputs.
    pub audio_quiet_skipped: u64,
    /// Packets of two shared-mix frames made ([`MediaConfig::pair_audio_from`]), each counted
    /// once however many receivers it went to.
    pub audio_frames_paired: u64,
    /// Video frames decoded.
    pub video_frames_decoded: u64,
    /// Video frames dropped (loss, waiting for a keyframe, decode error).
    pub video_frames_dropped: u64,
    /// Video frames that failed to decode.
    pub video_decode_errors: u64,
    /// Video frames refused because their input is over 1080p
    /// ([`crate::vp8_decoder::MAX_INPUT_PIXELS`]).
    pub video_frames_oversized: u64,
    /// PLIs requested.
    pub pli_requested: u64,
    /// Keyframes sent (counted once per tier encode).
    pub keyframes_sent: u64,
    /// Composite frames skipped by catch-up ticks ([`MediaRoom::tick_audio_only`]).
    pub video_frames_skipped: u64,
    /// Composite frames neither composed nor encoded because no tile changed (a room showing
    /// only placeholders, still pictures); one goes out every [`STILL_REFRESH_MS`] anyway.
    pub video_frames_unchanged: u64,
    /// Tier frames not encoded because a receiver of the tier had a send queue past
    /// [`PUSHBACK_QUEUE_MS`] (encoder pushback).
    pub video_frames_held: u64,
}

#[derive(Debug)]
struct Participant {
    key: ParticipantKey,
    publishes: bool,
    audio_muted: bool,
    video_muted: bool,
    /// Publishers only.
    audio_in: Option<AudioInput>,
    /// This tick's decoded frame (zero when nothing played).
    pcm: Box<[i16; FRAME_SAMPLES]>,
    /// This tick's frame is in the mix.
    contributes: bool,
    activity: VoiceActivity,
    own_encoder: Option<OpusEncoder>,
    own_idle_ticks: u32,
    /// Consecutive ticks its mix was silence (0: it hears someone): see [`quiet_step`].
    silent_ticks: u32,
    /// The shared mix's held frame ([`MediaRoom::mix_audio`]) is this receiver's next audio.
    holds: bool,
    /// Its last frame was the room's silence, not its own encoder's: that encoder (if kept)
    /// starts again from a clean state.
    own_idle: bool,
    /// Only while on screen and video unmuted.
    video_decoder: Option<Vp8Decoder>,
    /// Frames received since the last tick, with whether they arrived whole; decoded at the
    /// tick, every input's in parallel ([`MediaRoom::decode_video_inputs`]).
    pending_video: Vec<(Vec<u8>, bool)>,
    need_keyframe: bool,
    /// The size of its last keyframe, when that was over the input cap: its frames are
    /// dropped (without PLI) until a keyframe of an accepted size.
    oversized: Option<(u32, u32)>,
    pli_pending: bool,
    last_pli_ms: Option<u64>,
    on_screen: bool,
    /// Video tier; `None` while its video is paused for bandwidth.
    tier: Option<usize>,
    /// Probing memory of the tier choice.
    probe: ProbeState,
    /// Loss this receiver reports on what we send it, percent.
    reported_loss: u8,
    /// This receiver needs a keyframe from its tier.
    wants_keyframe: bool,
    /// Video waiting in this receiver's send queue, ms at its pacing rate.
    video_backlog_ms: u64,
    /// What it was told to send (publishers).
    send_limit: LimitState,
}

/// A receive-only output, e.g. a recording: it gets the full mix (everyone)
/// and the composite from a fixed bitrate tier, and has no tile and no voice.
#[derive(Debug)]
struct Sink {
    key: ParticipantKey,
    tier: usize,
    wants_keyframe: bool,
}

/// What a receiver whose mix is silence gets this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// The room's silent frame (the hangover).
    Silence,
    /// The DTX frame.
    Dtx,
    /// Nothing: a gap between DTX frames.
    Gap,
}

/// What a receiver whose mix has been silent for `ticks` ticks (1 = the first) gets: the silent
/// frame through the hangover, then the DTX frame once every interval, gaps in between.
fn quiet_step(ticks: u32) -> Quiet {
    if ticks <= DTX_HANGOVER_TICKS {
        Quiet::Silence
    } else if (ticks - DTX_HANGOVER_TICKS - 1).is_multiple_of(DTX_INTERVAL_TICKS) {
        Quiet::Dtx
    } else {
        Quiet::Gap
    }
}

/// An Opus DTX frame (RFC 6716 3.2.1, RFC 7587): the TOC byte alone, code 0, so one frame of
/// length 0 in the configuration of `frame`. Decoders conceal it as comfort noise, and
/// libwebrtc's receiver takes a packet of 1 or 2 bytes as the start of DTX, not as speech.
fn dtx_frame(frame: &[u8]) -> Arc<[u8]> {
    Arc::from([frame.first().copied().unwrap_or(0) & !0x03])
}

/// One 20 ms Opus frame of digital silence from an encoder set as the room's are, once it has
/// settled (its first frames carry start-up state).
fn silent_frame(cfg: &MediaConfig) -> Result<Arc<[u8]>, MixerError> {
    let mut enc = OpusEncoder::new(cfg.opus_bitrate, cfg.opus_complexity)?;
    let zeros = [0i16; FRAME_SAMPLES];
    let mut frame = enc.encode(&zeros)?;
    for _ in 0..9 {
        frame = enc.encode(&zeros)?;
    }
    Ok(frame)
}

/// One tier's encoder, at the tier's own size and frame rate.
struct TierEncoder {
    encoder: Vp8Encoder,
    shape: TierShape,
    /// Canvas -> tier size, when smaller.
    scaler: Option<(Scaler, I420Frame)>,
    /// Room clock of the last keyframe it made.
    last_keyframe_ms: Option<u64>,
    /// Frames held back in a row ([`PUSHBACK_QUEUE_MS`]).
    held: u32,
}

impl TierEncoder {
    /// `full`: at the canvas size and rate whatever the bitrate (recordings).
    fn new(kbps: u32, cfg: &MediaConfig, full: bool) -> Result<Self, MixerError> {
        let shape = if full {
            full_shape(cfg)
        } else {
            tier_shape(kbps, cfg.canvas_width, cfg.canvas_height, cfg.fps)
        };
        let fps = (cfg.fps / shape.fps_divisor).max(1);
        let encoder = Vp8Encoder::new(Vp8EncoderConfig::realtime(
            shape.width,
            shape.height,
            fps,
            kbps,
        ))?;
        let scaler = if (shape.width, shape.height) == (cfg.canvas_width, cfg.canvas_height) {
            None
        } else {
            Some((
                Scaler::new(
                    cfg.canvas_width,
                    cfg.canvas_height,
                    shape.width,
                    shape.height,
                )?,
                I420Frame::new(shape.width, shape.height, crate::Yuv::BLACK)?,
            ))
        };
        Ok(Self {
            encoder,
            shape,
            scaler,
            last_keyframe_ms: None,
            held: 0,
        })
    }

    /// Whether a keyframe asked for now would be forced (at most one per
    /// [`KEYFRAME_MIN_INTERVAL_MS`]).
    fn keyframe_due(&self, now: u64) -> bool {
        self.last_keyframe_ms
            .is_none_or(|t| now >= t + KEYFRAME_MIN_INTERVAL_MS)
    }

    /// Encodes the composite on this tier's frames; forces a keyframe when asked, at most one per
    /// [`KEYFRAME_MIN_INTERVAL_MS`]. `backlog_ms`: the fullest send queue of the tier's
    /// receivers; past [`PUSHBACK_QUEUE_MS`] frames are held back (returns `Held`), one in two,
    /// or up to [`MAX_HELD_FRAMES`] in a row past [`PUSHBACK_HARD_MS`].
    fn encode(
        &mut self,
        canvas: &I420Frame,
        frame_no: u64,
        now: u64,
        want_keyframe: bool,
        backlog_ms: u64,
    ) -> Result<Encoded, MixerError> {
        if !frame_no.is_multiple_of(u64::from(self.shape.fps_divisor)) {
            return Ok(Encoded::OffRate);
        }
        let may_hold = match backlog_ms {
            b if b > PUSHBACK_HARD_MS => MAX_HELD_FRAMES,
            b if b > PUSHBACK_QUEUE_MS => 1,
            _ => 0,
        };
        if self.held < may_hold {
            self.held += 1;
            return Ok(Encoded::Held);
        }
        self.held = 0;
        if want_keyframe && self.keyframe_due(now) {
            self.encoder.force_keyframe();
        }
        let picture = match &mut self.scaler {
            Some((scaler, small)) => {
                scaler.scale(&canvas.view(), small)?;
                &*small
            }
            None => canvas,
        };
        let f = self.encoder.encode(picture, now as i64)?;
        if f.as_ref().is_some_and(|f| f.keyframe) {
            self.last_keyframe_ms = Some(now);
        }
        Ok(match f {
            Some(f) => Encoded::Frame(f),
            None => Encoded::Dropped,
        })
    }
}

/// What a tier's encoder did with one composite frame.
enum Encoded {
    Frame(EncodedFrame),
    /// Not one of the tier's frames (a lower frame rate).
    OffRate,
    /// Held back for a receiver's send queue.
    Held,
    /// libvpx dropped it to hold its bitrate.
    Dropped,
}

fn full_shape(cfg: &MediaConfig) -> TierShape {
    TierShape {
        width: cfg.canvas_width,
        height: cfg.canvas_height,
        fps_divisor: 1,
    }
}

/// What [`MediaRoom::encoder_counts`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderCounts {
    /// Opus encoders alive (the shared one plus speakers' own).
    pub audio_encoders: usize,
    /// VP8 encoders alive (one per tier with receivers).
    pub video_encoders: usize,
    /// Opus encodes in the last tick.
    pub audio_encodes_last_tick: usize,
    /// VP8 encodes in the last video tick.
    pub video_encodes_last_video_tick: usize,
}

/// The media engine of one room (see the module docs for its invariants).
pub struct MediaRoom {
    /// Receive-only outputs (recordings).
    sinks: Vec<Sink>,
    /// Bitrate of each tier encoder: the configured tiers, then tiers added
    /// for sinks whose bitrate matches none of them.
    tier_kbps: Vec<u32>,
    cfg: MediaConfig,
    layout: Layout,
    participants: Vec<Participant>,
    index: HashMap<ParticipantKey, usize>,
    now_ms: u64,
    video_frames: u64,
    mixer: AudioMixer,
    mix_buf: Box<[i16; FRAME_SAMPLES]>,
    shared_encoder: OpusEncoder,
    speaker: SpeakerDetector,
    /// Overrides the active speaker for the large tile (a screen sharer). May
    /// name a key not (yet) present: it takes effect once that key is added.
    presenter: Option<ParticipantKey>,
    visible: Vec<ParticipantKey>,
    speaker_tile: usize,
    compositor: Compositor,
    tier_encoders: Vec<Option<TierEncoder>>,
    /// Room clock of the last composite that was encoded.
    last_composite_ms: Option<u64>,
    /// Pause/resume changes not yet reported by a tick.
    paused_changed: Vec<(ParticipantKey, bool)>,
    /// One Opus frame of digital silence, sent to every receiver whose mix is empty (nobody
    /// else is heard) instead of encoding silence ([`MediaRoom::mix_audio`]).
    silence: Arc<[u8]>,
    /// The DTX frame that follows the silent frame once a receiver's mix stayed silent.
    dtx: Arc<[u8]>,
    /// The shared encoder's last frame was not encoded (silence went out instead): it starts
    /// again from a clean state.
    shared_idle: bool,
    /// The shared mix's frame of the last tick, held to go out paired with this tick's.
    held: Option<Arc<[u8]>>,
    stats: MediaStats,
}

impl std::fmt::Debug for MediaRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRoom")
            .field("time_ms", &self.now_ms)
            .field("participants", &self.participants.len())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl MediaRoom {
    /// Validates `cfg` and creates an empty room at time 0.
    pub fn new(cfg: MediaConfig) -> Result<Self, MixerError> {
        cfg.validate()?;
        let silence = silent_frame(&cfg)?;
        let dtx = dtx_frame(&silence);
        Ok(Self {
            layout: cfg.layout,
            participants: Vec::new(),
            index: HashMap::new(),
            now_ms: 0,
            video_frames: 0,
            mixer: AudioMixer::new(),
            mix_buf: Box::new([0; FRAME_SAMPLES]),
            shared_encoder: OpusEncoder::new(cfg.opus_bitrate, cfg.opus_complexity)?,
            speaker: SpeakerDetector::new(),
            presenter: None,
            visible: Vec::new(),
            speaker_tile: 0,
            compositor: Compositor::new(cfg.canvas_width, cfg.canvas_height)?,
            tier_encoders: (0..cfg.video_tiers_kbps.len()).map(|_| None).collect(),
            sinks: Vec::new(),
            last_composite_ms: None,
            paused_changed: Vec::new(),
            silence,
            dtx,
            shared_idle: false,
            held: None,
            tier_kbps: cfg.video_tiers_kbps.clone(),
            stats: MediaStats::default(),
            cfg,
        })
    }

    /// The configuration in effect.
    pub fn config(&self) -> &MediaConfig {
        &self.cfg
    }

    /// Current layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Keys of the tiles currently shown, in tile order, and the index of the
    /// speaker's tile (meaningful in [`Layout::Speaker`]). Feed
    /// `(visible.len(), layout, w, h, speaker_tile)` to [`crate::layout()`] to
    /// get the rectangles of the next composite.
    pub fn visible(&self) -> (&[ParticipantKey], usize) {
        (&self.visible, self.speaker_tile)
    }

    fn get_mut(&mut self, key: ParticipantKey) -> Option<&mut Participant> {
        let i = *self.index.get(&key)?;
        self.participants.get_mut(i)
    }

    fn new_audio_in(&self) -> Option<AudioInput> {
        match AudioInput::new(self.cfg.jitter_target_frames) {
            Ok(input) => Some(input),
            Err(e) => {
                tracing::error!(error = %e, "opus decoder");
                None
            }
        }
    }

    /// Adds a participant at the end of the join order. Every participant
    /// receives audio and video; `publishes` ones also send. Adding a key
    /// that is present only updates its `publishes` flag.
    pub fn add_participant(&mut self, key: ParticipantKey, publishes: bool) {
        let audio_in = if publishes { self.new_audio_in() } else { None };
        if let Some(p) = self.get_mut(key) {
            if p.publishes != publishes {
                p.publishes = publishes;
                p.audio_in = audio_in;
                p.video_decoder = None;
                p.pending_video.clear();
                p.need_keyframe = true;
                p.pli_pending = publishes && p.on_screen;
            }
            return;
        }
        self.index.insert(key, self.participants.len());
        self.participants.push(Participant {
            key,
            publishes,
            audio_muted: false,
            video_muted: false,
            audio_in,
            pcm: Box::new([0; FRAME_SAMPLES]),
            contributes: false,
            activity: VoiceActivity::new(),
            own_encoder: None,
            own_idle_ticks: 0,
            silent_ticks: 0,
            holds: false,
            own_idle: false,
            video_decoder: None,
            pending_video: Vec::new(),
            need_keyframe: true,
            oversized: None,
            pli_pending: false,
            last_pli_ms: None,
            on_screen: false,
            tier: Some(self.cfg.default_tier()),
            probe: ProbeState::default(),
            reported_loss: 0,
            video_backlog_ms: 0,
            wants_keyframe: true,
            send_limit: LimitState::default(),
        });
        self.update_visibility();
    }

    /// Removes a participant and everything about it. Unknown keys are ignored.
    pub fn remove_participant(&mut self, key: ParticipantKey) {
        let Some(i) = self.index.remove(&key) else {
            return;
        };
        self.participants.remove(i);
        for (j, p) in self.participants.iter().enumerate().skip(i) {
            self.index.insert(p.key, j);
        }
        self.update_visibility();
    }

    /// One received Opus RTP payload (untrusted), of 10 to 120 ms. `seq` orders playout; `ts`
    /// is not needed (each packet's duration is read from it) and ignored.
    pub fn push_audio(&mut self, key: ParticipantKey, seq: u16, ts: u32, payload: &[u8]) {
        self.push_audio_level(key, seq, ts, payload, None);
    }

    /// [`MediaRoom::push_audio`] with the packet's RFC 6464 audio level (−dBov, from the
    /// `ssrc-audio-level` header extension): quiet packets of someone not speaking are not
    /// decoded.
    pub fn push_audio_level(
        &mut self,
        key: ParticipantKey,
        seq: u16,
        _ts: u32,
        payload: &[u8],
        level: Option<u8>,
    ) {
        let Some(p) = self.get_mut(key) else {
            return;
        };
        if let Some(a) = &mut p.audio_in {
            // Duplicates, late and malformed packets are counted in the buffer's stats.
            let _: PushOutcome = a.push_with_level(seq, payload, level);
        }
    }

    /// One complete depacketized VP8 frame (untrusted). `complete = false`
    /// means the server saw loss inside it. Kept for the next tick if the
    /// input is on screen, where every input's frames are decoded in parallel;
    /// `ts` is not needed (the latest picture is shown) and ignored.
    pub fn push_video(&mut self, key: ParticipantKey, _ts: u32, frame: &[u8], complete: bool) {
        let Some(i) = self.index.get(&key).copied() else {
            return;
        };
        let Some(p) = self.participants.get_mut(i) else {
            return;
        };
        if !p.publishes || p.video_muted || !p.on_screen {
            return;
        }
        if p.pending_video.len() >= MAX_PENDING_FRAMES {
            // More than a tick can take from one input (a burst after a stall): start again
            // from a keyframe rather than grow.
            self.stats.video_frames_dropped += p.pending_video.len() as u64;
            p.pending_video.clear();
            p.need_keyframe = true;
            p.pli_pending = true;
        }
        p.pending_video.push((frame.to_vec(), complete));
    }

    /// Decodes the frames every on-screen input received since the last tick: inputs in
    /// parallel on the rayon pool when more than one has frames (each input's in order).
    fn decode_video_inputs(&mut self) {
        let busy = self
            .participants
            .iter()
            .filter(|p| !p.pending_video.is_empty())
            .count();
        let counts = match busy {
            0 => return,
            n if n < PARALLEL_MIN_INPUTS => self
                .participants
                .iter_mut()
                .filter(|p| !p.pending_video.is_empty())
                .map(decode_pending)
                .fold(DecodeCounts::default(), DecodeCounts::add),
            _ => {
                use rayon::prelude::*;
                self.participants
                    .par_iter_mut()
                    .filter(|p| !p.pending_video.is_empty())
                    .map(decode_pending)
                    .reduce(DecodeCounts::default, DecodeCounts::add)
            }
        };
        let s = &mut self.stats;
        s.video_frames_decoded += counts.decoded;
        s.video_frames_dropped += counts.dropped;
        s.video_decode_errors += counts.errors;
        s.video_frames_oversized += counts.oversized;
    }

    /// Server-side mute flags. Muted audio leaves the mix and stops counting
    /// as speaking; muted video shows the placeholder (and needs a keyframe
    /// when unmuted, which is requested).
    pub fn set_muted(&mut self, key: ParticipantKey, audio: bool, video: bool) {
        let Some(p) = self.get_mut(key) else {
            return;
        };
        p.audio_muted = audio;
        if video != p.video_muted {
            p.video_muted = video;
            p.video_decoder = None;
            p.pending_video.clear();
            p.need_keyframe = true;
            p.pli_pending = !video && p.publishes && p.on_screen;
        }
    }

    /// Sets (or clears) the presenter: in [`Layout::Speaker`] they get the
    /// large tile whoever speaks; in the grid they are always on screen. A key
    /// that is not present is remembered and applies once it is added.
    pub fn set_presenter(&mut self, key: Option<ParticipantKey>) {
        if self.presenter != key {
            self.presenter = key;
            self.update_visibility();
        }
    }

    /// The presenter set by [`MediaRoom::set_presenter`].
    pub fn presenter(&self) -> Option<ParticipantKey> {
        self.presenter
    }

    /// Changes the layout; the next video tick shows it.
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
        self.update_visibility();
    }

    /// A receiver's bandwidth estimate in bit/s (`None` = unknown: default
    /// tier). The tier follows [`next_tier`]'s policy (down at once, up one
    /// probing step at a time, paused when not even the lowest tier fits); a
    /// tier change gets the receiver a keyframe from its new tier, and a pause
    /// or resume is reported in the next tick's `video_paused_changed`.
    pub fn set_bandwidth(&mut self, key: ParticipantKey, bps: Option<u64>) {
        let now = self.now_ms;
        let Some(i) = self.index.get(&key).copied() else {
            return;
        };
        let Some(p) = self.participants.get_mut(i) else {
            return;
        };
        let tier = match bps {
            Some(b) => next_tier(p.tier, b, &self.cfg.video_tiers_kbps, &mut p.probe, now),
            None => Some(self.cfg.default_tier()),
        };
        if p.tier != tier {
            if p.tier.is_none() != tier.is_none() {
                self.paused_changed.push((key, tier.is_none()));
            }
            tracing::debug!(key, from = ?p.tier, to = ?tier, bps, "video tier");
            p.tier = tier;
            p.wants_keyframe = tier.is_some();
        }
    }

    /// The loss (percent) a receiver reports on what we send it: its own Opus
    /// encoder, and the shared one (sized for the worst receiver), put that
    /// much in-band FEC in.
    pub fn set_reported_loss(&mut self, key: ParticipantKey, percent: u8) {
        if let Some(p) = self.get_mut(key) {
            p.reported_loss = percent;
        }
    }

    /// How much video waits in a receiver's own send queue (ms at its pacing rate): past
    /// [`PUSHBACK_QUEUE_MS`] its tier's encoder holds frames back.
    pub fn set_video_backlog(&mut self, key: ParticipantKey, ms: u64) {
        if let Some(p) = self.get_mut(key) {
            p.video_backlog_ms = ms;
        }
    }

    /// Bitrate (kbit/s) of tier `t`, 0 if there is none.
    pub fn tier_kbps(&self, t: usize) -> u32 {
        self.tier_kbps.get(t).copied().unwrap_or(0)
    }

    /// Whether a receiver's video is paused for bandwidth.
    pub fn video_paused(&self, key: ParticipantKey) -> bool {
        let i = self.index.get(&key);
        i.and_then(|&i| self.participants.get(i))
            .is_some_and(|p| p.tier.is_none())
    }

    /// The receiver asked for a keyframe (PLI/FIR): the next video tick forces
    /// one on its tier's encoder only.
    pub fn request_keyframe(&mut self, key: ParticipantKey) {
        if let Some(p) = self.get_mut(key) {
            p.wants_keyframe = true;
        }
        if let Some(s) = self.sinks.iter_mut().find(|s| s.key == key) {
            s.wants_keyframe = true;
        }
    }

    /// Bitrate tier index of a receiver (or sink).
    pub fn tier_of(&self, key: ParticipantKey) -> Option<usize> {
        if let Some(s) = self.sinks.iter().find(|s| s.key == key) {
            return Some(s.tier);
        }
        let i = *self.index.get(&key)?;
        self.participants.get(i).and_then(|p| p.tier)
    }

    /// Adds a receive-only output (a recording) that gets the full mix and
    /// the composite at `kbps`, at the canvas size and frame rate. It shares
    /// the encoder of the tier with exactly that bitrate when that tier runs at
    /// the canvas size and rate; otherwise it gets one dedicated encoder. Its
    /// first video frame is a keyframe. Adding an existing key replaces it.
    pub fn add_sink(&mut self, key: ParticipantKey, kbps: u32) {
        self.remove_sink(key);
        let full = full_shape(&self.cfg);
        let cfg = &self.cfg;
        let shareable = |t: usize, k: u32| {
            t >= cfg.video_tiers_kbps.len()
                || tier_shape(k, cfg.canvas_width, cfg.canvas_height, cfg.fps) == full
        };
        let existing = self
            .tier_kbps
            .iter()
            .enumerate()
            .position(|(t, &k)| k == kbps && shareable(t, k));
        let tier = match existing {
            Some(t) => t,
            None => {
                self.tier_kbps.push(kbps);
                self.tier_encoders.push(None);
                self.tier_kbps.len() - 1
            }
        };
        self.sinks.push(Sink {
            key,
            tier,
            wants_keyframe: true,
        });
    }

    /// Removes a sink; a dedicated tier nobody uses any more is dropped.
    pub fn remove_sink(&mut self, key: ParticipantKey) {
        self.sinks.retain(|s| s.key != key);
        let configured = self.cfg.video_tiers_kbps.len();
        while self.tier_kbps.len() > configured
            && !self
                .sinks
                .iter()
                .any(|s| s.tier == self.tier_kbps.len() - 1)
        {
            self.tier_kbps.pop();
            self.tier_encoders.pop();
        }
    }

    /// Encoder gauges and the last tick's encode counts: one pass, no clone, cheap enough for
    /// every tick (the media thread reports these to `/metrics`).
    pub fn encoder_counts(&self) -> EncoderCounts {
        EncoderCounts {
            audio_encoders: 1 + self
                .participants
                .iter()
                .filter(|p| p.own_encoder.is_some())
                .count(),
            video_encoders: self.tier_encoders.iter().flatten().count(),
            audio_encodes_last_tick: self.stats.audio_encodes_last_tick,
            video_encodes_last_video_tick: self.stats.video_encodes_last_video_tick,
        }
    }

    /// Counters and gauges (walks every participant: for monitoring, not every tick).
    pub fn stats(&self) -> MediaStats {
        let mut s = self.stats.clone();
        s.time_ms = self.now_ms;
        s.participants = self.participants.len();
        s.publishers = self.participants.iter().filter(|p| p.publishes).count();
        s.audio_decoders = self
            .participants
            .iter()
            .filter(|p| p.audio_in.is_some())
            .count();
        s.audio_encoders = 1 + self
            .participants
            .iter()
            .filter(|p| p.own_encoder.is_some())
            .count();
        s.video_decoders = self
            .participants
            .iter()
            .filter(|p| p.video_decoder.is_some())
            .count();
        s.video_encoders = self.tier_encoders.iter().flatten().count();
        s.visible_tiles = self.visible.len();
        s.active_speaker = self.speaker.active();
        let mut j = JitterStats::default();
        s.audio_quiet_skipped = 0;
        for a in self.participants.iter().filter_map(|p| p.audio_in.as_ref()) {
            s.audio_quiet_skipped += a.quiet_skipped();
            j += a.stats();
        }
        s.jitter = j;
        s
    }

    /// Whether the next tick makes a composite frame (exact rational schedule: frame f is due at
    /// f * 1000 / fps ms of the room clock).
    pub fn video_frame_due(&self) -> bool {
        self.now_ms * u64::from(self.cfg.fps) >= self.video_frames * 1000
    }

    /// Advances the room clock by 20 ms and produces this tick's output.
    pub fn tick(&mut self) -> TickOutput {
        self.tick_inner(true)
    }

    /// A tick that catches up with the clock: audio as usual, but a composite frame due now is
    /// skipped (its slot passes; the frame rate drops, the audio does not). For a media thread
    /// that fell behind: every 20 ms of every mix still goes out, the expensive part does not
    /// run twice.
    pub fn tick_audio_only(&mut self) -> TickOutput {
        self.tick_inner(false)
    }

    fn tick_inner(&mut self, with_video: bool) -> TickOutput {
        let now = self.now_ms;
        let mut out = TickOutput {
            time_ms: now,
            audio: Vec::with_capacity(self.participants.len()),
            video_paused_changed: std::mem::take(&mut self.paused_changed),
            ..TickOutput::default()
        };
        for p in &mut self.participants {
            if pull_audio(p, &mut self.stats.audio_decode_errors) {
                out.speaking_changed.push((p.key, p.activity.is_speaking()));
            }
        }
        let inputs = self
            .participants
            .iter()
            .filter(|p| p.audio_in.is_some())
            .map(|p| (p.key, p.activity.is_speaking(), p.activity.level_dbov()));
        out.active_speaker = self.speaker.update(inputs);
        self.mix_audio(&mut out);
        // Membership and layout changes update visibility when they happen;
        // the only other input is the active speaker.
        if out.active_speaker.is_some() {
            self.update_visibility();
        }
        // Every tick, not only those that make a frame: the decoding spreads as frames arrive.
        self.decode_video_inputs();
        if self.video_frame_due() {
            self.video_frames += 1;
            if with_video {
                out.video_tick = true;
                self.video_tick(now, &mut out);
            } else {
                self.stats.video_frames_skipped += 1;
            }
        }
        for p in &mut self.participants {
            if p.pli_pending && p.last_pli_ms.is_none_or(|t| now >= t + PLI_INTERVAL_MS) {
                p.pli_pending = false;
                p.last_pli_ms = Some(now);
                out.pli.push(p.key);
                self.stats.pli_requested += 1;
            }
        }
        self.now_ms += TICK_MS;
        out
    }

    fn mix_audio(&mut self, out: &mut TickOutput) {
        let now_ms = self.now_ms;
        let Self {
            participants,
            sinks,
            mixer,
            mix_buf,
            shared_encoder,
            cfg,
            stats,
            silence,
            dtx,
            shared_idle,
            held,
            ..
        } = self;
        mixer.clear();
        let mut contributors = 0;
        for p in participants.iter().filter(|p| p.contributes) {
            mixer.add(&p.pcm[..]);
            contributors += 1;
        }
        // Reports come every 500 ms per receiver: once a second is enough, and keeps a pass over
        // every participant off the other 49 ticks.
        if now_ms.is_multiple_of(1000) {
            let worst_loss = participants.iter().map(|p| p.reported_loss).max();
            if let Err(e) = shared_encoder.set_expected_loss(worst_loss.unwrap_or(0)) {
                tracing::warn!(error = %e, "opus loss setting");
            }
        }
        let mut encodes = 0;
        // What everyone who does not speak hears: the full mix, encoded once, when someone speaks
        // and someone (or a sink) listens; the room's silent frame when nobody speaks.
        let listeners = participants.len() - contributors + sinks.len();
        let shared: Option<Arc<[u8]>> = if contributors == 0 {
            Some(silence.clone())
        } else if listeners > 0 {
            if std::mem::take(shared_idle)
                && let Err(e) = shared_encoder.reset()
            {
                tracing::warn!(error = %e, "opus reset");
            }
            mixer.render(None, &mut mix_buf[..]);
            encodes += 1;
            shared_encoder
                .encode(&mix_buf[..])
                .inspect_err(|e| tracing::error!(error = %e, "opus encode"))
                .ok()
        } else {
            None
        };
        // An encoder that sat out a tick (silence went out instead) restarts from a clean state
        // rather than from the end of the last sentence.
        if contributors == 0 || listeners == 0 {
            *shared_idle = true;
        }
        // A large room's shared mix goes out two frames to a packet: a fresh frame is held one
        // tick, then goes out paired with the next to whoever had it ("late": stamped at its
        // own tick), or alone when the two cannot share a packet or the receiver no longer
        // gets the shared mix. A receiver who comes to the shared mix between the two gets the
        // second frame alone.
        let last_held = held.take();
        let fresh = shared.as_ref().filter(|s| !Arc::ptr_eq(s, silence));
        let paired = last_held
            .as_ref()
            .zip(fresh)
            .and_then(|(h, f)| pair_frames(h, f));
        let pairing =
            cfg.pair_audio_from > 0 && participants.len() - contributors >= cfg.pair_audio_from;
        let hold_now = pairing && paired.is_none() && fresh.is_some();
        if paired.is_some() {
            stats.audio_frames_paired += 1;
        }
        for p in participants.iter_mut() {
            // A speaker hears everyone but itself from its own encoder; a lone speaker hears
            // nobody: the room's silent frame.
            let own = p.contributes && contributors > 1;
            let on_shared = !p.contributes;
            if own {
                p.own_idle_ticks = 0;
            } else {
                p.own_idle = true;
                p.own_idle_ticks = p.own_idle_ticks.saturating_add(1);
                if p.own_idle_ticks > OWN_ENCODER_IDLE_TICKS {
                    p.own_encoder = None;
                }
            }
            if std::mem::take(&mut p.holds)
                && let Some(h) = &last_held
            {
                match &paired {
                    Some(pair) if on_shared => {
                        out.audio_late.push((p.key, pair.clone()));
                        p.silent_ticks = 0;
                        continue;
                    }
                    _ => out.audio_late.push((p.key, h.clone())),
                }
            }
            let packet = if own {
                if p.own_encoder.is_none() {
                    match OpusEncoder::new(cfg.opus_bitrate, cfg.opus_complexity) {
                        Ok(e) => p.own_encoder = Some(e),
                        Err(e) => tracing::error!(error = %e, "opus encoder"),
                    }
                }
                let Some(enc) = p.own_encoder.as_mut() else {
                    continue;
                };
                if let Err(e) = enc.set_expected_loss(p.reported_loss) {
                    tracing::warn!(error = %e, "opus loss setting");
                }
                if std::mem::take(&mut p.own_idle)
                    && let Err(e) = enc.reset()
                {
                    tracing::warn!(error = %e, "opus reset");
                }
                mixer.render(Some(&p.pcm[..]), &mut mix_buf[..]);
                encodes += 1;
                match enc.encode(&mix_buf[..]) {
                    Ok(pkt) => pkt,
                    Err(e) => {
                        tracing::error!(key = p.key, error = %e, "opus encode");
                        continue;
                    }
                }
            } else if p.contributes {
                silence.clone()
            } else if hold_now {
                p.holds = true;
                p.silent_ticks = 0;
                continue;
            } else {
                let Some(s) = &shared else { continue };
                s.clone()
            };
            // Silence on the way out is DTX: after a hangover, one DTX frame every 400 ms
            // instead of 50 packets a second (the receiver plays comfort noise meanwhile).
            let packet = if Arc::ptr_eq(&packet, silence) {
                p.silent_ticks = p.silent_ticks.saturating_add(1);
                match quiet_step(p.silent_ticks) {
                    Quiet::Silence => packet,
                    Quiet::Dtx => dtx.clone(),
                    Quiet::Gap => continue,
                }
            } else {
                p.silent_ticks = 0;
                packet
            };
            out.audio.push((p.key, packet));
        }
        if let Some(s) = &shared {
            out.audio.extend(sinks.iter().map(|k| (k.key, s.clone())));
        }
        stats.audio_encodes_last_tick = encodes;
        if hold_now {
            *held = fresh.cloned();
        }
    }

    /// Recomputes which inputs are on screen; inputs that just came on
    /// screen wait for a keyframe (PLI), those that left lose their decoder.
    fn update_visibility(&mut self) {
        let present = |k: &ParticipantKey| self.index.contains_key(k);
        // The presenter (a screen sharer) outranks the active speaker.
        let active = self
            .presenter
            .filter(present)
            .or_else(|| self.speaker.active().filter(present));
        let mut visible: Vec<ParticipantKey> = Vec::new();
        let mut speaker_tile = 0;
        // Receive-only participants (tokens without can_publish) take no tile: a webinar's
        // audience does not crowd out its speakers.
        let publishers = self.participants.iter().filter(|p| p.publishes);
        match self.layout {
            Layout::Grid => {
                let max = self.cfg.max_tiles.clamp(1, MAX_GRID_TILES);
                visible.extend(publishers.take(max).map(|p| p.key));
                if let Some(s) = active
                    && !visible.contains(&s)
                    && let Some(last) = visible.last_mut()
                {
                    *last = s;
                }
            }
            Layout::Speaker => {
                let publishers: Vec<&Participant> = publishers.collect();
                let speaker = active.or_else(|| publishers.first().map(|p| p.key));
                let mut others = 0;
                for p in publishers {
                    if Some(p.key) == speaker {
                        speaker_tile = visible.len();
                        visible.push(p.key);
                    } else if others < MAX_STRIP_TILES {
                        others += 1;
                        visible.push(p.key);
                    }
                }
            }
        }
        for p in &mut self.participants {
            let on = visible.contains(&p.key);
            if on && !p.on_screen && p.publishes && !p.video_muted {
                p.need_keyframe = true;
                p.pli_pending = true;
            }
            if !on {
                p.video_decoder = None;
                p.pending_video.clear();
            }
            p.on_screen = on;
        }
        self.visible = visible;
        self.speaker_tile = speaker_tile;
    }

    /// What each publisher should send: its tile in the widest picture encoded (a tier or a
    /// recording), or nothing when it has no tile. Runs on video ticks, after the tiers in use
    /// are known.
    fn update_send_limits(&mut self, rects: &[Rect], now: u64, out: &mut TickOutput) {
        let canvas = (self.cfg.canvas_width, self.cfg.canvas_height);
        let out_width = self
            .tier_encoders
            .iter()
            .flatten()
            .map(|e| e.shape.width)
            .max()
            .unwrap_or(canvas.0);
        let top_kbps = self.tier_kbps.iter().copied().max().unwrap_or(0);
        let visible = &self.visible;
        for p in self.participants.iter_mut().filter(|p| p.publishes) {
            // Only those on screen are looked up among the tiles (a large room has many more
            // publishers than tiles, and this runs on every video tick).
            let tile = if p.on_screen {
                visible.iter().position(|k| *k == p.key)
            } else {
                None
            };
            let want = tile.and_then(|i| rects.get(i)).map_or(SendLimit::OFF, |r| {
                SendLimit::for_tile(*r, canvas, out_width, top_kbps)
            });
            if let Some(l) = p.send_limit.update(want, now) {
                out.send_limits.push((p.key, l));
            }
        }
    }

    fn video_tick(&mut self, now: u64, out: &mut TickOutput) {
        let n_tiers = self.tier_encoders.len();
        let mut receivers = vec![0usize; n_tiers];
        let mut want_kf = vec![false; n_tiers];
        let mut backlog_ms = vec![0u64; n_tiers];
        for p in &self.participants {
            let Some(t) = p.tier else { continue };
            let t = t.min(n_tiers - 1);
            receivers[t] += 1;
            want_kf[t] |= p.wants_keyframe;
            backlog_ms[t] = backlog_ms[t].max(p.video_backlog_ms);
        }
        for s in &self.sinks {
            let t = s.tier.min(n_tiers - 1);
            receivers[t] += 1;
            want_kf[t] |= s.wants_keyframe;
        }
        for (t, enc) in self.tier_encoders.iter_mut().enumerate() {
            if receivers[t] == 0 {
                *enc = None;
            } else if enc.is_none() {
                let full = t >= self.cfg.video_tiers_kbps.len();
                match TierEncoder::new(self.tier_kbps[t], &self.cfg, full) {
                    Ok(e) => *enc = Some(e),
                    Err(e) => tracing::error!(tier = t, error = %e, "vp8 encoder"),
                }
            }
        }
        self.stats.video_encodes_last_video_tick = 0;
        if self.participants.is_empty() && self.sinks.is_empty() {
            return;
        }
        let rects = layout(
            self.visible.len(),
            self.layout,
            self.cfg.canvas_width,
            self.cfg.canvas_height,
            self.speaker_tile,
        );
        self.update_send_limits(&rects, now, out);
        let tiles: Vec<Tile<'_>> = self
            .visible
            .iter()
            .zip(rects)
            .map(|(key, rect)| {
                let content = self
                    .index
                    .get(key)
                    .and_then(|&i| self.participants.get(i))
                    .filter(|p| p.publishes && !p.video_muted)
                    .and_then(|p| p.video_decoder.as_ref())
                    .and_then(|d| {
                        let view = I420View::from_video(d.picture()?).ok()?;
                        Some(TileContent::Picture {
                            source: *key,
                            generation: d.generation(),
                            view,
                        })
                    })
                    .unwrap_or(TileContent::Placeholder);
                Tile { rect, content }
            })
            .collect();
        let frame_no = self.video_frames - 1;
        // Nothing new to show and no keyframe owed: no composite, no encode (the RTP timestamps
        // and recordings follow the room clock, so the gap is a gap in time only). Refreshes
        // fall on even frames, which every tier's frame rate includes.
        // (Only a keyframe the tier may force now: requests within its keyframe interval wait,
        // and would otherwise make every frame of a busy room.)
        let keyframe_owed = want_kf
            .iter()
            .zip(&self.tier_encoders)
            .any(|(&kf, enc)| kf && enc.as_ref().is_some_and(|e| e.keyframe_due(now)));
        let refresh_due = self
            .last_composite_ms
            .is_none_or(|t| now >= t + STILL_REFRESH_MS)
            && frame_no.is_multiple_of(2);
        if !keyframe_owed && !refresh_due && self.compositor.unchanged(&tiles) {
            self.stats.video_frames_unchanged += 1;
            return;
        }
        self.last_composite_ms = Some(now);
        let canvas = self.compositor.compose(&tiles);
        let mut encoded: Vec<Option<EncodedFrame>> = vec![None; n_tiers];
        // Tiers encode the same canvas independently: in parallel when several are in use.
        let encode = |(t, enc): (usize, &mut Option<TierEncoder>)| {
            let enc = enc.as_mut()?;
            Some((
                t,
                enc.encode(canvas, frame_no, now, want_kf[t], backlog_ms[t]),
            ))
        };
        let active = self.tier_encoders.iter().filter(|e| e.is_some()).count();
        let results: Vec<_> = if active >= PARALLEL_MIN_TIERS {
            use rayon::prelude::*;
            self.tier_encoders
                .par_iter_mut()
                .enumerate()
                .filter_map(encode)
                .collect()
        } else {
            self.tier_encoders
                .iter_mut()
                .enumerate()
                .filter_map(encode)
                .collect()
        };
        for (t, result) in results {
            match result {
                Ok(Encoded::Frame(f)) => {
                    self.stats.video_encodes_last_video_tick += 1;
                    if f.keyframe {
                        self.stats.keyframes_sent += 1;
                    }
                    out.video_tiers.push(f.data.clone());
                    encoded[t] = Some(f);
                }
                Ok(Encoded::Held) => {
                    self.stats.video_frames_held += 1;
                    if self.tier_encoders[t].as_ref().is_some_and(|e| e.held == 1) {
                        tracing::debug!(tier = t, "tier held back for a full send queue");
                    }
                }
                Ok(Encoded::OffRate | Encoded::Dropped) => {}
                Err(e) => tracing::error!(tier = t, error = %e, "vp8 encode"),
            }
        }
        out.video.reserve(self.participants.len());
        for p in &mut self.participants {
            let Some(t) = p.tier else { continue };
            if let Some(f) = &encoded[t.min(n_tiers - 1)] {
                out.video.push((p.key, f.data.clone(), f.keyframe));
                if f.keyframe {
                    p.wants_keyframe = false;
                }
            }
        }
        for s in &mut self.sinks {
            if let Some(f) = &encoded[s.tier.min(n_tiers - 1)] {
                out.video.push((s.key, f.data.clone(), f.keyframe));
                if f.keyframe {
                    s.wants_keyframe = false;
                }
            }
        }
    }
}

/// What decoding one input's frames of a tick came to.
#[derive(Debug, Default, Clone, Copy)]
struct DecodeCounts {
    decoded: u64,
    dropped: u64,
    errors: u64,
    oversized: u64,
}

impl DecodeCounts {
    fn add(self, o: DecodeCounts) -> DecodeCounts {
        DecodeCounts {
            decoded: self.decoded + o.decoded,
            dropped: self.dropped + o.dropped,
            errors: self.errors + o.errors,
            oversized: self.oversized + o.oversized,
        }
    }
}

/// Decodes `p`'s frames of this tick in order: loss and decode errors wait for a keyframe (and
/// ask for one), keyframes over the input cap are refused with what follows them.
fn decode_pending(p: &mut Participant) -> DecodeCounts {
    let mut c = DecodeCounts::default();
    let mut frames = std::mem::take(&mut p.pending_video);
    for (frame, complete) in frames.drain(..) {
        if !complete {
            p.need_keyframe = true;
            p.pli_pending = true;
            c.dropped += 1;
            continue;
        }
        if let Some((w, h)) = vp8_keyframe_size(&frame) {
            let oversized = !input_size_ok(w, h);
            if oversized && p.oversized.is_none() {
                tracing::warn!(
                    key = p.key,
                    width = w,
                    height = h,
                    "video input over 1080p refused: \
                    the tile shows the placeholder until the sender lowers its resolution"
                );
            }
            p.oversized = oversized.then_some((w, h));
        }
        if p.oversized.is_some() {
            // No PLI: another keyframe of the same size would be refused too; an encoder that
            // changes its resolution sends a keyframe by itself.
            c.oversized += 1;
            c.dropped += 1;
            p.need_keyframe = true;
            p.pli_pending = false;
            continue;
        }
        if p.need_keyframe && !is_vp8_keyframe(&frame) {
            p.pli_pending = true;
            c.dropped += 1;
            continue;
        }
        if p.video_decoder.is_none() {
            match Vp8Decoder::new() {
                Ok(d) => p.video_decoder = Some(d),
                Err(e) => {
                    tracing::error!(error = %e, "vp8 decoder");
                    continue;
                }
            }
        }
        let Some(dec) = p.video_decoder.as_mut() else {
            continue;
        };
        match dec.decode(&frame) {
            Ok(Some(_)) => {
                // Whatever asked for a keyframe is satisfied now.
                p.need_keyframe = false;
                p.pli_pending = false;
                c.decoded += 1;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(key = p.key, error = %e, "vp8 decode");
                p.need_keyframe = true;
                p.pli_pending = true;
                c.errors += 1;
                c.dropped += 1;
            }
        }
    }
    // The buffer's capacity stays for the next tick.
    p.pending_video = frames;
    c
}

/// Plays out one frame of `p`'s audio into `p.pcm` and updates its voice
/// activity; returns whether the speaking flag flipped.
fn pull_audio(p: &mut Participant, decode_errors: &mut u64) -> bool {
    p.contributes = false;
    let Some(a) = &mut p.audio_in else {
        return false;
    };
    if p.audio_muted {
        // Keep draining so that unmuting resumes at the live edge.
        a.skip();
        p.pcm.fill(0);
        return p.activity.reset();
    }
    // Someone not speaking whose packets say they are quiet is not decoded (RFC 6464).
    let skip_quiet = !p.activity.is_speaking();
    let flipped = match a.play(&mut p.pcm, decode_errors, skip_quiet) {
        Tick::Silence => p.activity.update_silent(),
        Tick::Sound => p.activity.update(&p.pcm[..]),
    };
    p.contributes = p.activity.contributes();
    flipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{I420Frame, Yuv};
    use crate::opus_codec::OpusDecoder;

    fn tone_packets(freq: f32, amp: f32, count: usize) -> Vec<Arc<[u8]>> {
        let mut enc = OpusEncoder::new(32_000, 5).expect("encoder");
        (0..count)
            .map(|f| {
                let pcm: Vec<i16> = (0..FRAME_SAMPLES)
                    .map(|i| {
                        let t = (f * FRAME_SAMPLES + i) as f32 / 48_000.0;
                        (amp * (2.0 * std::f32::consts::PI * freq * t).sin()) as i16
                    })
                    .collect();
                enc.encode(&pcm).expect("encode")
            })
            .collect()
    }

    fn keyframe(w: u32, h: u32) -> Arc<[u8]> {
        let mut enc = Vp8Encoder::new(Vp8EncoderConfig::realtime(w, h, 15, 200)).expect("enc");
        let f = I420Frame::new(w, h, Yuv::from_rgb(200, 30, 30)).expect("frame");
        let out = enc.encode(&f, 0).expect("encode").expect("frame");
        assert!(out.keyframe);
        out.data
    }

    #[test]
    fn a_participant_who_may_not_publish_is_neither_heard_nor_shown() {
        let mut room = MediaRoom::new(MediaConfig::default()).unwrap();
        room.add_participant(1, true);
        room.add_participant(2, false); // a viewer's token: can_publish = false
        room.add_participant(3, true);
        let loud = tone_packets(700.0, 8000.0, 60);
        let kf = keyframe(320, 180);
        let mut heard_by_3 = Vec::new();
        for t in 0..60u16 {
            // Whatever the viewer sends (a hostile client ignoring its answer) goes nowhere.
            room.push_audio(2, t, u32::from(t) * 960, &loud[t as usize]);
            room.push_video(2, u32::from(t) * 3000, &kf, true);
            let out = room.tick();
            if let Some(a) = out.audio.iter().find(|a| a.0 == 3) {
                heard_by_3.push(a.1.clone());
            }
        }
        let s = room.stats();
        assert_eq!((s.audio_decoders, s.video_decoders), (2, 0), "{s:?}");
        assert_eq!(room.visible().0, &[1, 3], "a viewer takes no tile");
        assert_eq!(s.jitter.accepted, 0, "nothing of the viewer was buffered");
        // Participant 3 hears silence: the 700 Hz tone never reached the mix.
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0i16; FRAME_SAMPLES];
        let mut peak = 0i32;
        for p in &heard_by_3[5..] {
            dec.decode(p, &mut pcm).unwrap();
            peak = peak.max(pcm.iter().map(|x| i32::from(*x).abs()).max().unwrap_or(0));
        }
        assert!(
            peak < 200,
            "the viewer's tone leaked into the mix: peak {peak}"
        );
    }

    #[test]
    fn an_input_over_1080p_is_refused_without_a_keyframe_storm() {
        let mut room = MediaRoom::new(MediaConfig::default()).unwrap();
        room.add_participant(1, true);
        room.add_participant(2, true);
        // A 3840x2160 keyframe header (the cap is checked before any decoding), then inter frames.
        let uhd = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x0f, 0x70, 0x08, 0, 0, 0, 0,
        ];
        assert_eq!(vp8_keyframe_size(&uhd), Some((3840, 2160)));
        let inter = [0x11u8; 64];
        let _ = room.tick(); // the join's own PLI goes out first
        room.push_video(1, 0, &uhd, true);
        let mut plis = 0;
        for t in 0..100u32 {
            room.push_video(1, t * 3000, &inter, true);
            plis += room.tick().pli.iter().filter(|k| **k == 1).count();
        }
        let s = room.stats();
        assert_eq!(plis, 0, "no PLI while the input is oversized");
        assert_eq!(s.video_frames_decoded, 0);
        assert_eq!(s.video_frames_oversized, 101, "{s:?}");
        // The sender lowers its resolution: its next keyframe is decoded at once.
        room.push_video(1, 400_000, &keyframe(320, 180), true);
        room.tick();
        assert_eq!(room.stats().video_frames_decoded, 1);
    }

    #[test]
    fn room_can_move_to_its_media_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<MediaRoom>();
        assert_send::<TickOutput>();
    }

    #[test]
    fn catch_up_ticks_keep_the_audio_and_skip_the_due_frame() {
        let mut room = MediaRoom::new(MediaConfig::default()).unwrap();
        room.add_participant(1, true);
        room.add_participant(2, true);
        // Tick 0 is a video tick; caught up, it still mixes audio but makes no composite.
        let out = room.tick_audio_only();
        assert!(!out.video_tick && out.video.is_empty());
        assert_eq!(out.audio.len(), 2, "every receiver still gets its 20 ms");
        assert_eq!(room.stats().video_frames_skipped, 1);
        // The skipped slot is not owed: the next frame is due on its own schedule (66.7 ms).
        let ticks: Vec<bool> = (0..4).map(|_| room.tick().video_tick).collect();
        assert_eq!(ticks, vec![false, false, false, true]);
    }

    #[test]
    fn video_ticks_follow_fps_on_the_room_clock() {
        for (fps, expected_first) in [
            (15, vec![0, 80, 140, 200, 280, 340, 400]),
            (30, vec![0, 40, 80, 100, 140, 180, 200]),
        ] {
            let mut room = MediaRoom::new(MediaConfig {
                fps,
                ..MediaConfig::default()
            })
            .expect("room");
            let times: Vec<u64> = (0..500)
                .map(|_| room.tick())
                .filter(|o| o.video_tick)
                .map(|o| o.time_ms)
                .collect();
            assert_eq!(&times[..7], &expected_first[..], "fps {fps}");
            // 10 s of room clock: exactly 10 * fps frames.
            assert_eq!(times.len() as u32, 10 * fps, "fps {fps}");
        }
    }

    #[test]
    fn an_unchanged_composite_is_neither_composed_nor_encoded_but_refreshed_each_second() {
        // Nobody sends video: placeholders only.
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        room.add_participant(1, true);
        room.add_participant(2, true);
        let frames_in = |room: &mut MediaRoom, ticks: usize| {
            let mut at = Vec::new();
            for _ in 0..ticks {
                let o = room.tick();
                if o.video.iter().any(|(k, _, _)| *k == 2) {
                    at.push(o.time_ms);
                }
            }
            at
        };
        // 3 s: the first frame, then one a second, not 45.
        let at = frames_in(&mut room, 150);
        assert_eq!(at.len(), 3, "{at:?}");
        assert!(
            at.windows(2)
                .all(|w| (1_000..1_200).contains(&(w[1] - w[0]))),
            "{at:?}"
        );
        assert_eq!(room.stats().video_frames_unchanged, 45 - 3);
        // A keyframe asked for goes out at the next video tick, unchanged or not.
        room.request_keyframe(2);
        let at = frames_in(&mut room, 4);
        assert_eq!(at.len(), 1, "{at:?}");
        // Asked again within the tier's keyframe interval: it waits for the interval (a busy
        // room's stream of PLIs does not make every frame).
        room.request_keyframe(2);
        let at = frames_in(&mut room, 20);
        assert!(at.is_empty(), "{at:?}");
        let at = frames_in(&mut room, 50);
        assert_eq!(at.len(), 1, "{at:?}");
        // Video arrives (a new picture every 80 ms): each is composed and encoded, ~37 in 3 s.
        let kf = keyframe(320, 180);
        let mut sent = 0;
        for tick in 0..150u32 {
            if tick % 4 == 0 {
                room.push_video(1, tick, &kf, true);
            }
            let o = room.tick();
            sent += o.video.iter().filter(|(k, _, _)| *k == 2).count();
        }
        assert!(sent >= 30, "{sent} frames in 3 s of a changing picture");
    }

    #[test]
    fn a_receiver_with_a_full_send_queue_holds_its_tier_back_for_at_most_half_a_second() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        room.add_participant(1, true);
        room.add_participant(2, false);
        room.add_participant(3, false);
        // 2 on the 150 kbit/s tier, 3 on a higher one.
        room.set_bandwidth(2, Some(300_000));
        room.set_bandwidth(3, Some(10_000_000));
        let (t2, t3) = (room.tier_of(2), room.tier_of(3));
        assert!(t2.is_some() && t3.is_some() && t2 != t3, "{t2:?} {t3:?}");
        let kf = keyframe(320, 180);
        // A changing picture every tick; counts the frames each receiver got per video tick.
        let run = |room: &mut MediaRoom, video_ticks: usize| {
            let (mut got2, mut got3, mut n, mut tick) = (Vec::new(), 0, 0, 0u32);
            while n < video_ticks {
                room.push_video(1, tick, &kf, true);
                tick += 1;
                let o = room.tick();
                if o.video_tick {
                    n += 1;
                    got2.push(o.video.iter().any(|(k, _, _)| *k == 2));
                    got3 += o.video.iter().filter(|(k, _, _)| *k == 3).count();
                }
            }
            (got2, got3)
        };
        let (got2, got3) = run(&mut room, 10);
        assert!(got2.iter().all(|&g| g) && got3 == 10, "{got2:?} {got3}");
        // 2's queue is past the pushback point: its tier makes every other frame, 3's all.
        room.set_video_backlog(2, PUSHBACK_QUEUE_MS + 50);
        let (got2, got3) = run(&mut room, 8);
        assert_eq!(got3, 8, "the other tier is not held");
        assert_eq!(got2, [false, true].repeat(4), "half the frame rate");
        assert_eq!(room.stats().video_frames_held, 4);
        // Near the gate: up to MAX_HELD_FRAMES in a row, then one goes out anyway.
        room.set_video_backlog(2, PUSHBACK_HARD_MS + 50);
        let (got2, got3) = run(&mut room, 16);
        assert_eq!(got3, 16, "the other tier is not held");
        let held = MAX_HELD_FRAMES as usize;
        let run_of = [vec![false; held], vec![true]].concat();
        assert_eq!(&got2[..=held], &run_of[..], "{got2:?}");
        assert_eq!(room.stats().video_frames_held as usize, 4 + 14);
        // Drained: every frame again, and none was lost, so no keyframe is needed.
        room.set_video_backlog(2, 10);
        let kf_before = room.stats().keyframes_sent;
        let (got2, _) = run(&mut room, 5);
        assert!(got2.iter().all(|&g| g), "{got2:?}");
        assert_eq!(room.stats().keyframes_sent, kf_before);
    }

    #[test]
    fn dtx_after_the_hangover_one_frame_every_interval() {
        let steps: Vec<Quiet> = (1..=52).map(quiet_step).collect();
        assert!(steps[..10].iter().all(|s| *s == Quiet::Silence), "hangover");
        assert_eq!(steps[10], Quiet::Dtx, "then the DTX frame");
        assert!(
            steps[11..30].iter().all(|s| *s == Quiet::Gap),
            "then nothing"
        );
        assert_eq!(
            (steps[30], steps[50]),
            (Quiet::Dtx, Quiet::Dtx),
            "every 400 ms"
        );
        // The DTX frame is the silent frame's TOC alone, which a decoder takes (as concealment).
        let room = MediaRoom::new(MediaConfig::default()).expect("room");
        assert_eq!(*room.dtx, [room.silence[0] & !0x03]);
        let mut pcm = [0i16; FRAME_SAMPLES];
        OpusDecoder::new()
            .unwrap()
            .decode(&room.dtx, &mut pcm)
            .unwrap();
        assert!(pcm.iter().all(|&x| x.abs() < 100));
    }

    #[test]
    fn a_silent_room_goes_to_dtx_and_the_first_word_goes_out_at_once() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        for k in 0..3 {
            room.add_participant(k, true);
        }
        let quiet = tone_packets(0.0, 0.0, 1)[0].clone();
        let voice = tone_packets(500.0, 6000.0, 200);
        let mut sent = [[0usize; 3]; 2]; // [silent frames, DTX frames] per receiver
        for t in 0..200u16 {
            let talking = t >= 100;
            room.push_audio(
                0,
                t,
                u32::from(t) * 960,
                if talking { &voice[t as usize] } else { &quiet },
            );
            room.push_audio(1, t, u32::from(t) * 960, &quiet);
            room.push_audio(2, t, u32::from(t) * 960, &quiet);
            let out = room.tick();
            if t < 100 {
                for (k, p) in &out.audio {
                    let i = usize::from(p.len() == 1);
                    assert!(Arc::ptr_eq(
                        p,
                        if i == 1 { &room.dtx } else { &room.silence }
                    ));
                    sent[i][*k as usize] += 1;
                }
                continue;
            }
            // Once the talker is heard, the two others get every tick again; the talker itself
            // hears nobody and stays in DTX.
            let keys: Vec<u64> = out.audio.iter().map(|(k, _)| *k).collect();
            if out.audio.iter().any(|(k, p)| *k == 1 && p.len() > 10) {
                assert!(keys.contains(&1) && keys.contains(&2), "tick {t}: {keys:?}");
                assert!(
                    out.audio
                        .iter()
                        .all(|(k, p)| *k == 0 || !Arc::ptr_eq(p, &room.silence))
                );
            }
        }
        // 100 silent ticks: 10 silent frames, then DTX at ticks 10, 30, 50, 70, 90.
        assert_eq!(sent, [[10; 3], [5; 3]], "{sent:?}");
    }

    #[test]
    fn a_lone_talker_hears_the_rooms_silent_frame_and_costs_one_encode() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        for k in 0..3 {
            room.add_participant(k, true);
        }
        let quiet = tone_packets(0.0, 0.0, 1)[0].clone();
        let voice = tone_packets(500.0, 6000.0, 100);
        let mut decoders: Vec<OpusDecoder> = (0..3).map(|_| OpusDecoder::new().unwrap()).collect();
        let mut energy = [0f64; 3];
        for t in 0..100u16 {
            room.push_audio(0, t, u32::from(t) * 960, &voice[usize::from(t)]);
            room.push_audio(1, t, u32::from(t) * 960, &quiet);
            room.push_audio(2, t, u32::from(t) * 960, &quiet);
            let out = room.tick();
            if t < 30 {
                continue; // the jitter buffer and the speaking gate settle
            }
            assert_eq!(room.stats().audio_encodes_last_tick, 1, "tick {t}");
            // The talker hears nobody: the silent frame, then DTX (a frame every 400 ms).
            let others: Vec<&Arc<[u8]>> = out
                .audio
                .iter()
                .filter(|(k, _)| *k != 0)
                .map(|(_, p)| p)
                .collect();
            assert_eq!(others.len(), 2, "tick {t}");
            assert!(Arc::ptr_eq(others[0], others[1]));
            if let Some((_, talker)) = out.audio.iter().find(|(k, _)| *k == 0) {
                assert!(
                    Arc::ptr_eq(talker, &room.silence) || Arc::ptr_eq(talker, &room.dtx),
                    "the talker gets the silent frame or DTX"
                );
            }
            for (k, pkt) in &out.audio {
                let mut pcm = [0i16; FRAME_SAMPLES];
                decoders[*k as usize].decode(pkt, &mut pcm).unwrap();
                energy[*k as usize] += pcm.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
            }
        }
        assert!(
            energy[0] < energy[1] * 1e-6,
            "the talker hears silence: {energy:?}"
        );
        assert!(
            energy[1] > 1e6 && energy[2] > 1e6,
            "the others hear it: {energy:?}"
        );
    }

    #[test]
    fn silent_receivers_share_one_audio_encode_speakers_get_their_own() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        for k in 0..10 {
            room.add_participant(k, k < 3);
        }
        let silence = tone_packets(0.0, 0.0, 1)[0].clone();
        let loud1 = tone_packets(400.0, 6000.0, 100);
        let loud2 = tone_packets(900.0, 6000.0, 100);
        for t in 0..100u16 {
            let speaking = t >= 50;
            room.push_audio(0, t, u32::from(t) * 960, &silence);
            room.push_audio(
                1,
                t,
                u32::from(t) * 960,
                if speaking {
                    &loud1[t as usize]
                } else {
                    &silence
                },
            );
            room.push_audio(
                2,
                t,
                u32::from(t) * 960,
                if speaking {
                    &loud2[t as usize]
                } else {
                    &silence
                },
            );
            let out = room.tick();
            // Everyone gets audio, except in the DTX gaps of a silent room (then nobody).
            let keys: Vec<u64> = out.audio.iter().map(|(k, _)| *k).collect();
            if !(t < 50 && keys.is_empty()) {
                assert_eq!(keys, (0..10).collect::<Vec<u64>>(), "tick {t}");
            }
            let s = room.stats();
            let c = room.encoder_counts();
            assert_eq!(
                (
                    c.audio_encoders,
                    c.audio_encodes_last_tick,
                    c.video_encoders
                ),
                (
                    s.audio_encoders,
                    s.audio_encodes_last_tick,
                    s.video_encoders
                ),
                "encoder_counts agrees with stats"
            );
            if t < 50 {
                // Nobody speaks: everyone gets the room's silent frame (or DTX), nothing is encoded.
                assert_eq!(s.audio_encodes_last_tick, 0, "tick {t}");
                if let Some((_, first)) = out.audio.first() {
                    assert!(out.audio.iter().all(|(_, p)| Arc::ptr_eq(p, first)));
                }
            } else if t >= 56 {
                // Two speakers: their own mixes plus one shared full mix.
                assert_eq!(s.audio_encodes_last_tick, 3, "tick {t}");
                let shared = &out.audio[0].1;
                for (k, p) in &out.audio {
                    assert_eq!(
                        Arc::ptr_eq(p, shared),
                        *k != 1 && *k != 2,
                        "tick {t} key {k}"
                    );
                }
                assert!(!Arc::ptr_eq(&out.audio[1].1, &out.audio[2].1));
            }
        }
        let s = room.stats();
        assert_eq!(s.audio_encoders, 3);
        assert_eq!(s.audio_decoders, 3);
    }

    #[test]
    fn a_large_rooms_listeners_get_two_frames_a_packet_and_every_frame_once() {
        // Pairing from 3 listeners: keys 0 and 1 talk (1 only for a while), 2..=5 listen.
        let mut room = MediaRoom::new(MediaConfig {
            pair_audio_from: 3,
            ..MediaConfig::default()
        })
        .expect("room");
        for k in 0..6 {
            room.add_participant(k, k < 2);
        }
        let silence = tone_packets(0.0, 0.0, 1)[0].clone();
        let low = tone_packets(400.0, 6000.0, 160);
        let high = tone_packets(900.0, 6000.0, 160);
        // Per receiver: (room time ms, samples, decoded audio) of each packet, in sending order.
        let mut got: Vec<Vec<(u64, usize, Vec<i16>)>> = vec![Vec::new(); 6];
        let mut decoders: Vec<OpusDecoder> =
            (0..6).map(|_| OpusDecoder::new().expect("dec")).collect();
        for t in 0..160u16 {
            let ts = u32::from(t) * 960;
            let first = (10..150).contains(&t);
            let second = (60..100).contains(&t);
            room.push_audio(0, t, ts, if first { &low[t as usize] } else { &silence });
            room.push_audio(1, t, ts, if second { &high[t as usize] } else { &silence });
            let out = room.tick();
            let late = out
                .audio_late
                .iter()
                .map(|(k, p)| (k, p, out.time_ms - TICK_MS));
            let now = out.audio.iter().map(|(k, p)| (k, p, out.time_ms));
            for (k, p, at) in late.chain(now) {
                let mut pcm = vec![0i16; crate::opus_codec::MAX_PACKET_SAMPLES];
                let n = decoders[*k as usize].decode(p, &mut pcm).expect("decode");
                pcm.truncate(n);
                got[*k as usize].push((at, n, pcm));
            }
        }
        for (k, packets) in got.iter().enumerate() {
            // Never a frame twice or out of order: each packet starts where the last one ended,
            // or later (a DTX gap).
            for w in packets.windows(2) {
                let end = w[0].0 + (w[0].1 / 48) as u64;
                assert!(
                    w[1].0 >= end,
                    "key {k}: {} ms after one ending at {end} ms",
                    w[1].0
                );
            }
        }
        for (k, packets) in got.iter().enumerate().skip(1) {
            // Key 1 and the listeners hear key 0 all along: no frame missing while it talks
            // (played from the jitter buffer two ticks later), whether key 1 talks too or not.
            let span: Vec<_> = packets
                .iter()
                .filter(|p| (300..2900).contains(&p.0))
                .collect();
            for w in span.windows(2) {
                assert_eq!(
                    w[1].0,
                    w[0].0 + (w[0].1 / 48) as u64,
                    "key {k}: a hole at {} ms",
                    w[0].0
                );
            }
            let heard = |from: u64, to: u64, freq: f64| {
                let pcm: Vec<i16> = packets
                    .iter()
                    .filter(|p| (from..to).contains(&p.0))
                    .flat_map(|p| p.2.iter().copied())
                    .collect();
                crate::tone_amplitude(&pcm, freq)
            };
            assert!(heard(600, 1100, 400.0) > 2000.0, "key {k} hears key 0");
            if k > 1 {
                assert!(
                    heard(600, 1100, 900.0) < 500.0,
                    "key {k}: key 1 is not talking yet"
                );
                assert!(heard(1400, 1900, 900.0) > 2000.0, "key {k} hears key 1 too");
            } else {
                assert!(
                    heard(1400, 1900, 900.0) < 500.0,
                    "key 1 does not hear itself"
                );
            }
        }
        // The listeners' audio went out two frames a packet (a packet alone where the encoder
        // changed mode between two frames).
        for (k, packets) in got.iter().enumerate().skip(2) {
            let span: Vec<_> = packets
                .iter()
                .filter(|p| (300..2900).contains(&p.0))
                .collect();
            let paired = span.iter().filter(|p| p.1 == 2 * FRAME_SAMPLES).count();
            assert!(
                paired * 10 >= span.len() * 8,
                "key {k}: {paired} pairs of {} packets",
                span.len()
            );
        }
        let pairs = room.stats().audio_frames_paired;
        assert!((50..=80).contains(&pairs), "{pairs} pairs made");
    }

    #[test]
    fn a_sink_hears_everyone_shares_a_matching_tier_and_has_no_tile() {
        let mut room = MediaRoom::new(MediaConfig {
            default_tier_kbps: 400,
            ..MediaConfig::default()
        })
        .expect("room");
        room.add_participant(1, true);
        room.add_participant(2, false);
        let tone = tone_packets(500.0, 8000.0, 50);
        // The sink matches the default tier (400, at the canvas size): it shares that encoder.
        room.add_sink(100, 400);
        let mut heard = Vec::new();
        let mut sink_video = Vec::new();
        let mut receiver_video = Vec::new();
        for (i, pkt) in tone.iter().enumerate() {
            room.push_audio(1, i as u16, 0, pkt);
            let o = room.tick();
            let a: HashMap<u64, Arc<[u8]>> = o.audio.iter().cloned().collect();
            assert!(a.contains_key(&100), "the sink gets audio every tick");
            heard.push(a[&100].clone());
            if o.video_tick {
                let v: HashMap<u64, (Arc<[u8]>, bool)> = o
                    .video
                    .iter()
                    .map(|(k, d, kf)| (*k, (d.clone(), *kf)))
                    .collect();
                // (A still composite is encoded only once a second: frames come when there are.)
                if let (Some(sink), Some(receiver)) = (v.get(&100), v.get(&2)) {
                    sink_video.push(sink.clone());
                    receiver_video.push(receiver.0.clone());
                }
            }
        }
        assert_eq!(
            room.visible().0,
            &[1],
            "no tile for the sink nor the viewer"
        );
        assert_eq!(room.stats().video_encoders, 1, "sink shares the 400 tier");
        assert!(sink_video[0].1, "the sink starts with a keyframe");
        assert!(Arc::ptr_eq(&sink_video[0].0, &receiver_video[0]));
        // The sink hears the publisher (whose own mix-minus would not contain it).
        let mut dec = OpusDecoder::new().expect("dec");
        let pcm: Vec<i16> = heard[10..]
            .iter()
            .flat_map(|p| {
                let mut f = [0i16; FRAME_SAMPLES];
                dec.decode(p, &mut f).expect("decode");
                f.to_vec()
            })
            .collect();
        let rms = (pcm.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
        assert!(rms > 2000.0, "the sink hears the 500 Hz tone: rms {rms}");

        // A bitrate that matches no tier gets one dedicated encoder, dropped with the sink.
        room.add_sink(101, 1200);
        assert_eq!(room.tier_of(101), Some(6));
        let o = loop {
            let o = room.tick();
            if o.video_tick {
                break o;
            }
        };
        assert_eq!(room.stats().video_encoders, 2);
        let kf: HashMap<u64, bool> = o.video.iter().map(|(k, _, kf)| (*k, *kf)).collect();
        assert!(
            kf[&101] && !kf[&100],
            "only the new tier starts with a keyframe"
        );
        room.remove_sink(101);
        room.remove_sink(100);
        assert_eq!(room.tier_of(101), None);
        let o = loop {
            let o = room.tick();
            if o.video_tick {
                break o;
            }
        };
        assert_eq!(room.stats().video_encoders, 1);
        assert!(o.video.iter().all(|(k, _, _)| *k == 1 || *k == 2));
    }

    #[test]
    fn receivers_share_video_encoders_per_tier_and_keyframes_stay_in_their_tier() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        for k in 0..4 {
            room.add_participant(k, false);
        }
        let video_tick = |room: &mut MediaRoom| loop {
            let o = room.tick();
            if o.video_tick {
                return o;
            }
        };
        let o = video_tick(&mut room);
        assert_eq!(room.stats().video_encoders, 1);
        assert_eq!(o.video.len(), 4);
        assert!(
            o.video
                .iter()
                .all(|(_, d, kf)| *kf && Arc::ptr_eq(d, &o.video[0].1))
        );
        let o = video_tick(&mut room);
        assert!(o.video.iter().all(|(_, _, kf)| !kf));

        // Receiver 1 has room for far more: it probes one tier up (250 kbit/s),
        // a second encoder, and a keyframe for that tier only.
        room.set_bandwidth(1, Some(10_000_000));
        assert_eq!(room.tier_of(1), Some(3));
        let o = video_tick(&mut room);
        assert_eq!(room.stats().video_encoders, 2);
        let by_key: HashMap<u64, (Arc<[u8]>, bool)> = o
            .video
            .iter()
            .map(|(k, d, kf)| (*k, (d.clone(), *kf)))
            .collect();
        assert!(by_key[&1].1);
        assert!(!by_key[&0].1 && !by_key[&2].1 && !by_key[&3].1);
        assert!(!Arc::ptr_eq(&by_key[&1].0, &by_key[&0].0));
        assert!(Arc::ptr_eq(&by_key[&2].0, &by_key[&0].0));

        // A PLI from receiver 2 forces a keyframe on the default tier only, within
        // the tier's keyframe interval (its last one was less than a second ago).
        room.request_keyframe(2);
        let asked = room.stats().time_ms;
        let o = loop {
            let o = video_tick(&mut room);
            if o.video.iter().any(|(k, _, kf)| *k == 2 && *kf) {
                break o;
            }
            assert!(
                o.time_ms < asked + KEYFRAME_MIN_INTERVAL_MS + 100,
                "no keyframe"
            );
        };
        let kf: HashMap<u64, bool> = o.video.iter().map(|(k, _, kf)| (*k, *kf)).collect();
        assert!(kf[&0] && kf[&2] && kf[&3] && !kf[&1]);

        // Receiver 1 back to unknown bandwidth: the 250 tier's encoder goes.
        room.set_bandwidth(1, None);
        let o = video_tick(&mut room);
        assert_eq!(room.stats().video_encoders, 1);
        assert!(
            o.video
                .iter()
                .all(|(_, d, _)| Arc::ptr_eq(d, &o.video[0].1))
        );
        // Receiver 3 on a thin link: lowest tier.
        room.set_bandwidth(3, Some(120_000));
        video_tick(&mut room);
        assert_eq!(room.stats().video_encoders, 2);
        assert_eq!(room.tier_of(3), Some(0));
    }

    #[test]
    fn publishers_are_told_the_size_they_are_shown_at_or_to_send_nothing() {
        let cfg = MediaConfig {
            max_tiles: 2,
            video_tiers_kbps: vec![800],
            ..MediaConfig::default()
        };
        let mut room = MediaRoom::new(cfg).expect("room");
        for k in 0..3 {
            room.add_participant(k, true);
        }
        let limits = |room: &mut MediaRoom, ticks: usize| {
            let mut got: HashMap<u64, SendLimit> = HashMap::new();
            for _ in 0..ticks {
                got.extend(room.tick().send_limits);
            }
            got
        };
        // Two tiles of a 640x360 grid (cells of 320x360), encoded at full size: the two shown
        // are told their cell and 2 × 800 kbit/s × half the canvas; the third is not shown.
        let got = limits(&mut room, 4);
        let shown = SendLimit {
            active: true,
            max_width: 320,
            max_height: 360,
            max_kbps: 800,
        };
        assert_eq!(got.get(&0), Some(&shown));
        assert_eq!(got.get(&1), Some(&shown));
        assert_eq!(got.get(&2), Some(&SendLimit::OFF));
        assert!(limits(&mut room, 50).is_empty(), "said once");
        // 2 presents: it takes the last tile at once; 1 is told to stop only once that held.
        room.set_presenter(Some(2));
        let got = limits(&mut room, 4);
        assert_eq!(got.get(&2), Some(&shown));
        assert!(!got.contains_key(&1));
        let ticks = (crate::send_limit::LOWER_AFTER_MS / TICK_MS) as usize;
        let got = limits(&mut room, ticks + 4);
        assert_eq!(got.get(&1), Some(&SendLimit::OFF));
        assert!(!got.contains_key(&0) && !got.contains_key(&2));
        // Alone: the whole canvas.
        room.remove_participant(1);
        room.remove_participant(2);
        let got = limits(&mut room, 4);
        assert_eq!(
            got.get(&0).map(|l| (l.max_width, l.max_height, l.max_kbps)),
            Some((640, 360, 1600))
        );
    }

    #[test]
    fn a_receiver_whose_link_cannot_carry_video_is_paused_and_resumes_with_room() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        room.add_participant(0, false);
        room.add_participant(1, false);
        let video_tick = |room: &mut MediaRoom| loop {
            let o = room.tick();
            if o.video_tick {
                return o;
            }
        };
        video_tick(&mut room);
        // 90 kbit/s leaves 34 kbit/s for video: not 80% of the 50 kbit/s tier.
        room.set_bandwidth(1, Some(90_000));
        assert!(room.video_paused(1));
        let o = room.tick();
        assert_eq!(o.video_paused_changed, vec![(1, true)]);
        let o = video_tick(&mut room);
        assert!(o.video.iter().all(|(k, _, _)| *k == 0), "no video for 1");
        assert!(o.audio.iter().any(|(k, _)| *k == 1), "audio goes on");
        // Room again, but only after the probe back-off (8 s of room clock).
        room.set_bandwidth(1, Some(400_000));
        assert!(room.video_paused(1));
        for _ in 0..400 {
            room.tick();
        }
        room.set_bandwidth(1, Some(400_000));
        assert_eq!(room.tier_of(1), Some(0), "back on the lowest tier first");
        assert_eq!(room.tick().video_paused_changed, vec![(1, false)]);
        let o = video_tick(&mut room);
        let kf: HashMap<u64, bool> = o.video.iter().map(|(k, _, kf)| (*k, *kf)).collect();
        assert!(kf[&1], "it resumes on a keyframe");
    }

    #[test]
    fn keyframe_requests_are_coalesced_per_tier() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        room.add_participant(0, false);
        let mut keyframes = Vec::new();
        // A receiver asking for a keyframe at every video tick for 3 s.
        for _ in 0..150 {
            room.request_keyframe(0);
            let o = room.tick();
            if let Some((_, _, true)) = o.video.first() {
                keyframes.push(o.time_ms);
            }
        }
        // The first frame, then one per second at most.
        assert!(keyframes.len() <= 4, "{keyframes:?}");
        assert!(
            keyframes
                .windows(2)
                .all(|w| w[1] - w[0] >= KEYFRAME_MIN_INTERVAL_MS)
        );
        assert_eq!(keyframes[0], 0);
    }

    #[test]
    fn pli_on_join_and_loss_is_rate_limited() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        room.add_participant(7, true);
        room.add_participant(8, false);
        // Join: the publisher is on screen and has no picture yet.
        assert_eq!(room.tick().pli, vec![7]);
        let kf = keyframe(64, 64);
        room.push_video(7, 0, &kf, true);
        // Decoded at the next tick (20 ms).
        room.tick();
        assert_eq!(room.stats().video_frames_decoded, 1);
        // Loss at 40 ms: the next PLI is due 500 ms after the first (at 0 ms).
        room.push_video(7, 3000, &kf[..kf.len() / 2], false);
        let mut pli_times = Vec::new();
        for _ in 0..60 {
            // Keep sending inter-frame-looking junk: dropped, waiting for a key.
            room.push_video(7, 0, &[0x01, 0x02, 0x03], true);
            let o = room.tick();
            if o.pli.contains(&7) {
                pli_times.push(o.time_ms);
            }
            assert!(!o.pli.contains(&8));
        }
        assert_eq!(pli_times, vec![500, 1000]);
        // A keyframe ends it.
        room.push_video(7, 0, &kf, true);
        let pli_after: usize = (0..60).map(|_| room.tick().pli.len()).sum();
        assert_eq!(pli_after, 0);
        assert!(room.stats().video_frames_dropped >= 60);
    }

    #[test]
    fn only_on_screen_inputs_are_decoded_and_coming_on_screen_asks_for_a_keyframe() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        let n = MAX_GRID_TILES as u64 + 3;
        for k in 0..n {
            room.add_participant(k, true);
        }
        let kf = keyframe(64, 64);
        room.tick();
        for k in 0..n {
            room.push_video(k, 0, &kf, true);
        }
        room.tick();
        assert_eq!(room.stats().video_decoders, MAX_GRID_TILES);
        assert_eq!(room.stats().visible_tiles, MAX_GRID_TILES);
        // Speaker layout: speaker (first joiner, nobody spoke) + strip.
        room.set_layout(Layout::Speaker);
        assert_eq!(room.stats().video_decoders, 1 + MAX_STRIP_TILES);
        assert_eq!(
            room.visible().0,
            &(0..=MAX_STRIP_TILES as u64).collect::<Vec<_>>()[..]
        );
        // Back to the grid: those coming back on screen need a keyframe.
        room.set_layout(Layout::Grid);
        let mut plis = Vec::new();
        for _ in 0..30 {
            plis.extend(room.tick().pli);
        }
        plis.sort_unstable();
        assert_eq!(
            plis,
            ((1 + MAX_STRIP_TILES as u64)..MAX_GRID_TILES as u64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn max_tiles_caps_the_grid_and_decoding() {
        let cfg = MediaConfig {
            max_tiles: 9,
            ..MediaConfig::default()
        };
        let mut room = MediaRoom::new(cfg).expect("room");
        for k in 0..25 {
            room.add_participant(k, true);
        }
        let kf = keyframe(320, 180);
        for k in 0..25 {
            room.push_video(k, 0, &kf, true);
        }
        room.tick();
        let (visible, _) = room.visible();
        assert_eq!(visible, &(0..9).collect::<Vec<u64>>()[..]);
        assert_eq!(
            room.stats().video_decoders,
            9,
            "only the 9 shown are decoded"
        );
        assert!(
            MediaRoom::new(MediaConfig {
                max_tiles: 0,
                ..MediaConfig::default()
            })
            .is_err()
        );
        assert!(
            MediaRoom::new(MediaConfig {
                max_tiles: 26,
                ..MediaConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn grid_beyond_25_tiles_shows_the_active_speaker_in_the_last_tile() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        let n = MAX_GRID_TILES as u64 + 2;
        for k in 0..n {
            room.add_participant(k, true);
        }
        assert_eq!(
            room.visible().0,
            &(0..MAX_GRID_TILES as u64).collect::<Vec<_>>()[..]
        );
        let late = n - 1;
        let packets = tone_packets(300.0, 5000.0, 20);
        let mut change = None;
        for (t, p) in packets.iter().enumerate() {
            room.push_audio(late, t as u16, 0, p);
            change = change.or(room.tick().active_speaker);
        }
        assert_eq!(change, Some(Some(late)));
        let (visible, _) = room.visible();
        assert_eq!(visible.len(), MAX_GRID_TILES);
        assert_eq!(visible[MAX_GRID_TILES - 1], late);
        assert_eq!(
            &visible[..MAX_GRID_TILES - 1],
            &(0..MAX_GRID_TILES as u64 - 1).collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn the_presenter_gets_the_large_tile_over_the_active_speaker() {
        let mut room = MediaRoom::new(MediaConfig {
            layout: Layout::Speaker,
            ..MediaConfig::default()
        })
        .expect("room");
        for k in 0..3 {
            room.add_participant(k, true);
        }
        let speaker_key = |room: &MediaRoom| {
            let (visible, tile) = room.visible();
            visible[tile]
        };
        // Nobody spoke: the first joiner has the large tile.
        assert_eq!(speaker_key(&room), 0);
        // Participant 2 speaks and takes it.
        let packets = tone_packets(300.0, 5000.0, 40);
        let mut t = 0u16;
        let mut talk = |room: &mut MediaRoom, n: usize| {
            for _ in 0..n {
                room.push_audio(2, t, 0, &packets[t as usize % packets.len()]);
                room.tick();
                t += 1;
            }
        };
        talk(&mut room, 20);
        assert_eq!(room.stats().active_speaker, Some(2));
        assert_eq!(speaker_key(&room), 2);
        // 1 shares its screen: it gets the large tile although 2 keeps speaking.
        room.set_presenter(Some(1));
        assert_eq!(speaker_key(&room), 1);
        talk(&mut room, 20);
        assert_eq!(room.stats().active_speaker, Some(2));
        assert_eq!(speaker_key(&room), 1);
        assert_eq!(room.visible().0.len(), 3, "everyone stays on screen");
        // Sharing stops: back to the active speaker.
        room.set_presenter(None);
        assert_eq!(speaker_key(&room), 2);
        // A presenter that is not in the room yet applies once it joins, and one that
        // leaves no longer counts.
        room.set_presenter(Some(7));
        assert_eq!(speaker_key(&room), 2);
        room.add_participant(7, true);
        assert_eq!(speaker_key(&room), 7);
        room.remove_participant(7);
        assert_eq!(speaker_key(&room), 2);
        assert_eq!(room.presenter(), Some(7));
    }

    #[test]
    fn in_the_grid_a_presenter_beyond_the_last_tile_is_shown() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        let n = MAX_GRID_TILES as u64 + 2;
        for k in 0..n {
            room.add_participant(k, true);
        }
        room.set_presenter(Some(n - 1));
        let (visible, _) = room.visible();
        assert_eq!(visible.len(), MAX_GRID_TILES);
        assert_eq!(visible[MAX_GRID_TILES - 1], n - 1);
    }

    #[test]
    fn removal_mid_stream_forgets_everything() {
        let mut room = MediaRoom::new(MediaConfig::default()).expect("room");
        let packets = tone_packets(500.0, 5000.0, 40);
        for k in 0..3 {
            room.add_participant(k, true);
        }
        for t in 0..20u16 {
            for k in 0..3 {
                room.push_audio(k, t, 0, &packets[t as usize]);
            }
            room.tick();
        }
        room.remove_participant(1);
        room.remove_participant(1);
        room.push_audio(1, 20, 0, &packets[20]);
        room.push_video(1, 0, &[1, 2, 3], true);
        room.set_muted(1, true, true);
        room.request_keyframe(1);
        for t in 20..40u16 {
            for k in [0, 2] {
                room.push_audio(k, t, 0, &packets[t as usize]);
            }
            let o = room.tick();
            let keys: Vec<u64> = o.audio.iter().map(|(k, _)| *k).collect();
            assert_eq!(keys, vec![0, 2]);
            assert!(o.video.iter().all(|(k, _, _)| *k != 1));
        }
        let s = room.stats();
        assert_eq!(
            (s.participants, s.audio_decoders, s.visible_tiles),
            (2, 2, 2)
        );
        assert_eq!(room.visible().0, &[0, 2]);
    }
}
