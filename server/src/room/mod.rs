//! Live rooms: who is connected, their signaling sessions, and each room's media thread.
//!
//! Threads: the [`RoomManager`] state is behind short `parking_lot` locks taken by the HTTP/WS
//! handlers (never held across an await). Media of a room runs on its own OS thread
//! ([`media`]); the control plane talks to it through bounded channels only.

pub mod estimate;
pub mod manager;
pub mod media;
pub mod pacer;
pub mod peer;
pub mod red;
pub mod udp_mux;
pub mod vp8;

pub use manager::{ParticipantHandle, RoomActivity, RoomManager, SessionEvent};
