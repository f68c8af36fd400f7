//! API shapes shared by REST and the signaling socket (serde + OpenAPI schemas).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// How the composite tiles the participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Equal tiles.
    #[default]
    Grid,
    /// The active speaker large, the others in a strip.
    Speaker,
}

impl Layout {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Grid => "grid",
            Layout::Speaker => "speaker",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "grid" => Some(Layout::Grid),
            "speaker" => Some(Layout::Speaker),
            _ => None,
        }
    }
}

impl From<Layout> for mixer::Layout {
    fn from(l: Layout) -> mixer::Layout {
        match l {
            Layout::Grid => mixer::Layout::Grid,
            Layout::Speaker => mixer::Layout::Speaker,
        }
    }
}

/// A participant of a live room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Participant {
    /// Server-assigned id, unique per session (a rejoin gets a new one).
    pub id: String,
    /// The identity from the join token.
    pub identity: String,
    /// Display name.
    pub display_name: String,
    /// When the participant joined.
    pub joined_at: DateTime<Utc>,
    /// Microphone muted (by the client or the server).
    pub audio_muted: bool,
    /// Camera muted (by the client or the server).
    pub video_muted: bool,
    /// Currently speaking.
    pub speaking: bool,
    /// Sending a screen instead of a camera (the client says so with `screen_share`); in the
    /// `speaker` layout the latest sharer has the large tile.
    #[serde(default)]
    #[schema(required = true)]
    pub screen_sharing: bool,
    /// A moderator muted the microphone and locked it: the participant cannot unmute it until a
    /// moderator unmutes it or lifts the lock.
    #[serde(default)]
    #[schema(required = true)]
    pub audio_locked: bool,
    /// The same for the camera.
    #[serde(default)]
    #[schema(required = true)]
    pub video_locked: bool,
}

/// Why the server closed a signaling session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Removed by an admin.
    Kicked,
    /// The room was deleted.
    RoomDeleted,
    /// The join token expired during the session.
    TokenExpired,
    /// The server is shutting down.
    ServerShutdown,
}

/// Lifecycle of a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Being written.
    Recording,
    /// Stopped normally: duration and cues written, seekable.
    Completed,
    /// The server died while recording; recovered at the next start (duration read from the file).
    Interrupted,
    /// A write error (e.g. disk full) ended it; the reason is in the log.
    Failed,
}

impl RecordingStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::Recording => "recording",
            RecordingStatus::Completed => "completed",
            RecordingStatus::Interrupted => "interrupted",
            RecordingStatus::Failed => "failed",
        }
    }
    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<RecordingStatus> {
        match s {
            "recording" => Some(RecordingStatus::Recording),
            "completed" => Some(RecordingStatus::Completed),
            "interrupted" => Some(RecordingStatus::Interrupted),
            "failed" => Some(RecordingStatus::Failed),
            _ => None,
        }
    }
}
