//! Several nodes on one database (`docs/scaling.md`): the node registry and room placement.
//!
//! The database is the cluster's state, and its only one. Each node writes a heartbeat row every
//! third of `MCU_NODE_TTL_S` (its URL, live rooms, participants, CPU); a node whose heartbeat is
//! older than the TTL is dead. A room lives on one node at a time: `rooms.node_id`, set by one
//! atomic statement ([`crate::store::PLACE_ROOM`]), so two nodes placing the same room at once
//! agree on one. SQLite is one node: the same code places every room on it.

use crate::AppState;
use crate::config::Config;
use crate::store::{NodeBeat, NodeRow, NodeStatus, RoomRecord, Store, StoreError};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::Duration;

/// A node over this share of its CPU budget takes no new rooms (headroom for the rooms it has,
/// which grow as people join).
pub const PLACEMENT_HEADROOM: f64 = 0.8;
/// Longest node id.
const NODE_ID_MAX: usize = 64;

/// Whether `id` can name a node: 1 to 64 of `A-Z a-z 0-9 _ - .`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=NODE_ID_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Where a room is hosted, as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// On this node.
    Here,
    /// On another live node.
    Elsewhere {
        /// Its id.
        node_id: String,
        /// Its public base URL (`http(s)://…`).
        url: String,
    },
}

/// Why a room could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Every live node is draining or past its CPU headroom.
    #[error("no node can take a new room now (all are busy or draining)")]
    NoCapacity,
    /// The room was deleted meanwhile.
    #[error("the room no longer exists")]
    RoomGone,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PlaceError> for crate::error::ApiError {
    fn from(e: PlaceError) -> Self {
        use crate::error::ApiError;
        match e {
            PlaceError::NoCapacity => ApiError::ServerBusy(e.to_string()),
            PlaceError::RoomGone => ApiError::RoomNotFound(e.to_string()),
            PlaceError::Store(e) => e.into(),
        }
    }
}

/// A node as the API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Public base URL.
    pub url: String,
    /// `active`, `draining`, or `dead` (no heartbeat for `MCU_NODE_TTL_S`, or exited).
    pub status: &'static str,
    /// Live rooms.
    pub rooms: u64,
    /// Connected participants.
    pub participants: u64,
    /// CPU in use, cores.
    pub cpu: f64,
    /// Last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
}

/// This node's identity in the cluster.
#[derive(Debug)]
pub struct Cluster {
    /// This node's id.
    pub node_id: String,
    /// This node's public base URL.
    pub url: String,
    ttl: Duration,
    started_at: DateTime<Utc>,
    /// [`NodeStatus`] as a number (0 active, 1 draining, 2 stopped).
    status: AtomicU8,
}

impl Cluster {
    /// This node: its id from `MCU_NODE_ID`, else the one kept in `node_id` beside the
    /// recordings directory (written at the first start); its URL from `MCU_PUBLIC_URL`, else
    /// the listen address (`bound`: the port actually bound).
    pub fn new(config: &Config, bound: std::net::SocketAddr) -> anyhow::Result<Cluster> {
        let node_id = match &config.node_id {
            Some(id) => id.clone(),
            None => kept_node_id(&node_id_file(&config.recordings_dir))?,
        };
        let url = match config.public_url.as_deref().map(str::trim) {
            Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
            _ => format!("http://{bound}"),
        };
        Ok(Cluster {
            node_id,
            url,
            ttl: Duration::from_secs(u64::from(config.node_ttl_s)),
            started_at: Utc::now(),
            status: AtomicU8::new(0),
        })
    }

    /// Oldest heartbeat of a live node, at `now`.
    pub fn live_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::seconds(10))
    }

    /// What this node says of itself.
    pub fn status(&self) -> NodeStatus {
        match self.status.load(Relaxed) {
            0 => NodeStatus::Active,
            1 => NodeStatus::Draining,
            _ => NodeStatus::Stopped,
        }
    }

    /// From now on this node takes no new rooms (`stopped`: it is gone, its rooms may move).
    pub fn set_status(&self, s: NodeStatus) {
        let v = match s {
            NodeStatus::Active => 0,
            NodeStatus::Draining => 1,
            NodeStatus::Stopped => 2,
        };
        self.status.store(v, Relaxed);
    }

    /// How often the heartbeat is written.
    pub fn beat_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(500))
    }

    /// Writes this node's heartbeat.
    pub async fn beat(&self, state: &AppState) -> Result<(), StoreError> {
        let (rooms, participants) = state.rooms.counts();
        let beat = NodeBeat {
            id: self.node_id.clone(),
            url: self.url.clone(),
            status: self.status(),
            rooms: rooms as u64,
            participants: participants as u64,
            cpu: state.load.cores(),
            cpu_budget: state
                .config
                .cpu_budget
                .unwrap_or_else(crate::load::default_budget),
            started_at: self.started_at,
        };
        state.store.heartbeat(&beat, Utc::now()).await
    }

    /// Every node, with its status as of now (`dead` when silent past the TTL or stopped).
    pub async fn nodes(&self, store: &Store) -> Result<Vec<NodeInfo>, StoreError> {
        let live_since = self.live_since(Utc::now());
        Ok(store
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| NodeInfo {
                status: if !is_live(&n, live_since) {
                    "dead"
                } else if n.status == NodeStatus::Draining.as_str() {
                    "draining"
                } else {
                    "active"
                },
                id: n.id,
                url: n.url,
                rooms: n.rooms,
                participants: n.participants,
                cpu: n.cpu,
                heartbeat_at: n.heartbeat_at,
            })
            .collect())
    }

    /// The ids of the other live nodes.
    pub async fn live_others(&self, store: &Store) -> Result<Vec<String>, StoreError> {
        Ok(self
            .nodes(store)
            .await?
            .into_iter()
            .filter(|n| n.status != "dead" && n.id != self.node_id)
            .map(|n| n.id)
            .collect())
    }

    /// The node hosting `room`, placing it first if it is not on a live node: least loaded
    /// first among the live, active nodes with headroom; the atomic statement settles races.
    pub async fn host(&self, store: &Store, room: &RoomRecord) -> Result<Host, PlaceError> {
        let live_since = self.live_since(Utc::now());
        let nodes = store.list_nodes().await?;
        let live: Vec<&NodeRow> = nodes.iter().filter(|n| is_live(n, live_since)).collect();
        let current = room
            .node_id
            .as_deref()
            .filter(|id| *id == self.node_id || live.iter().any(|n| n.id == *id));
        let hosting = match current {
            Some(id) => id.to_string(),
            None => {
                let target = self.choose(&live).ok_or(PlaceError::NoCapacity)?;
                let host = store
                    .place_room(&room.name, &target, live_since)
                    .await?
                    .ok_or(PlaceError::RoomGone)?;
                if host == target {
                    tracing::info!(room = %room.name, node = %host, "room placed");
                }
                host
            }
        };
        if hosting == self.node_id {
            return Ok(Host::Here);
        }
        let url = match nodes.iter().find(|n| n.id == hosting) {
            Some(n) => n.url.clone(),
            // Placed by a node that registered after our read: read again.
            None => store
                .list_nodes()
                .await?
                .into_iter()
                .find(|n| n.id == hosting)
                .map(|n| n.url)
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("room on node '{hosting}', which is not listed"))
                })?,
        };
        Ok(Host::Elsewhere {
            node_id: hosting,
            url,
        })
    }

    /// The node a new room goes to: active, under [`PLACEMENT_HEADROOM`] of its budget, fewest
    /// rooms placed, then fewest participants, then least CPU; ties broken at random so that
    /// nodes placing many rooms at once spread them. This node's own row may lag (its
    /// heartbeat), so its figures are taken as written.
    fn choose(&self, live: &[&NodeRow]) -> Option<String> {
        let mut candidates: Vec<(&NodeRow, u128)> = live
            .iter()
            .filter(|n| n.status == NodeStatus::Active.as_str())
            .filter(|n| n.cpu_budget <= 0.0 || n.cpu < n.cpu_budget * PLACEMENT_HEADROOM)
            .map(|n| (*n, uuid::Uuid::new_v4().as_u128()))
            .collect();
        candidates.sort_by(|(a, ra), (b, rb)| {
            (a.placed, a.participants)
                .cmp(&(b.placed, b.participants))
                .then(a.cpu.total_cmp(&b.cpu))
                .then(ra.cmp(rb))
        });
        candidates.first().map(|(n, _)| n.id.clone())
    }
}

fn is_live(n: &NodeRow, live_since: DateTime<Utc>) -> bool {
    n.heartbeat_at >= live_since && n.status != NodeStatus::Stopped.as_str()
}

/// Where a generated node id is kept: `node_id` in the directory that holds the recordings
/// directory (not inside it: a recordings directory shared by nodes must not share an id).
fn node_id_file(recordings_dir: &Path) -> PathBuf {
    let parent = recordings_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join("node_id")
}

/// The id kept in `file`, or a new one written there.
fn kept_node_id(file: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    match std::fs::read_to_string(file) {
        Ok(s) if valid_node_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(s) => anyhow::bail!(
            "{} holds '{}', not a node id; fix or delete it, or set MCU_NODE_ID",
            file.display(),
            s.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
    let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(file, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", file.display()))?;
    tracing::info!(node = %id, file = %file.display(), "node id generated");
    Ok(id)
}

/// Writes the heartbeat every [`Cluster::beat_interval`], forever (one warning per outage).
pub fn spawn_heartbeat(state: actix_web::web::Data<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.cluster.beat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            if state.cluster.status() == NodeStatus::Stopped {
                return;
            }
            match state.cluster.beat(&state).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("node heartbeat written again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot write the node heartbeat; other nodes will take this one for dead");
                }
                Err(_) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(valid_node_id("node-1.eu_west"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a b"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }

    #[test]
    fn a_generated_id_is_kept_beside_the_recordings_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let rec = dir.path().join("data").join("recordings");
        let file = node_id_file(&rec);
        assert_eq!(file, dir.path().join("data").join("node_id"));
        let first = kept_node_id(&file).expect("new id");
        assert!(valid_node_id(&first), "{first}");
        assert_eq!(kept_node_id(&file).expect("kept"), first);
        std::fs::write(&file, "not an id\n").expect("write");
        assert!(kept_node_id(&file).is_err());
        assert_eq!(
            node_id_file(Path::new("recordings")),
            Path::new("./node_id")
        );
    }
}
