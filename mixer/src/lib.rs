//! Media core of the MCU: pure, synchronous, sans-IO.
//!
//! The server pushes depacketized media into a [`MediaRoom`] and calls
//! [`MediaRoom::tick`] every 20 ms of *its* clock; the room never reads a
//! clock, never blocks, never spawns, so tests run it faster than real time.
//!
//! Formats at the boundary:
//! - audio in: Opus RTP payloads (any channel count, 20 ms expected), 48 kHz
//!   RTP timestamps; audio out: one 20 ms mono Opus packet per participant per
//!   tick (the SDP still says `opus/48000/2`, which mono packets satisfy);
//! - video in: complete VP8 frames (RTP VP8 payload descriptors removed);
//!   video out: one VP8 frame per receiver per video tick, shared per bitrate
//!   tier, with a keyframe flag.
//!
//! Building blocks are public for the recorder and for benchmarks:
//! [`JitterBuffer`], [`AudioMixer`], [`soft_limit`], [`layout()`],
//! [`Compositor`], [`Scaler`], [`Vp8Encoder`], [`Vp8Decoder`],
//! [`OpusEncoder`], [`OpusDecoder`], [`VoiceActivity`], [`SpeakerDetector`],
//! [`tier_for_bandwidth`]. All `unsafe` code lives in the `vpx` module.
#![deny(missing_docs)]
// FFI stays in `vpx`, which opts back in.
#![deny(unsafe_code)]

pub mod activity;
pub mod compositor;
pub mod config;
pub mod error;
pub mod image;
pub mod jitter;
pub mod layout;
pub mod mix;
pub mod opus_codec;
pub mod playout;
pub mod room;
pub mod scale;
pub mod send_limit;
pub mod tier;
pub mod vp8_decoder;
pub mod vpx;

pub use activity::{SpeakerDetector, VoiceActivity, level_dbov, tone_amplitude};
pub use compositor::{Compositor, PLACEHOLDER_BG, PLACEHOLDER_FG, Tile, TileContent};
pub use config::{Layout, MediaConfig};
pub use error::MixerError;
pub use image::{I420Frame, I420View, Yuv};
pub use jitter::{JitterBuffer, JitterStats, Playout, PushOutcome};
pub use layout::{MAX_GRID_TILES, MAX_STRIP_TILES, Rect, grid_dims, layout};
pub use mix::{AudioMixer, soft_limit};
pub use opus_codec::{OpusDecoder, OpusEncoder};
pub use playout::AudioInput;
pub use room::{EncoderCounts, MediaRoom, MediaStats, ParticipantKey, TickOutput};
pub use scale::Scaler;
pub use send_limit::SendLimit;
pub use tier::tier_for_bandwidth;
pub use vp8_decoder::{Vp8Decoder, is_vp8_keyframe, vp8_keyframe_size};
pub use vpx::{EncodedFrame, Vp8Encoder, Vp8EncoderConfig};

/// Re-export so that users of [`Vp8Decoder::picture`] name the same types.
pub use ffmpeg_next;

/// Length of one room tick (one audio frame), ms.
pub const TICK_MS: u64 = 20;
/// Audio sample rate, Hz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms mono frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
