//! `mcu-server`: REST + WebSocket signaling, WebRTC peers, live rooms and their media threads,
//! the sqlx metadata store and configuration.
//!
//! Planes are kept apart (as LiveKit does): `api/` speaks HTTP and WebSocket, `room/` owns live
//! rooms and media, `store/` owns the database, `config` the settings.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod load;
pub mod metrics;
pub mod model;
pub mod moderation;
pub mod objstore;
pub mod reaper;
pub mod recording;
pub mod room;
pub mod store;
pub mod turn;

use crate::config::Config;
use crate::room::RoomManager;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything a request handler needs; one per process, shared by `web::Data`.
pub struct AppState {
    /// Effective configuration.
    pub config: Arc<Config>,
    /// The admin API key in force (configured, or generated in `--dev`).
    pub api_key: String,
    /// Join-token signer/verifier.
    pub tokens: auth::TokenKeys,
    /// Failed API-key attempts per client address.
    pub auth_limiter: auth::FailedAuthLimiter,
    /// This process's recent CPU use (admission control).
    pub load: Arc<load::Load>,
    /// Metadata store.
    pub store: store::Store,
    /// Live rooms.
    pub rooms: RoomManager,
    /// Recordings.
    pub recordings: Arc<recording::Recordings>,
    /// Process start.
    pub started: Instant,
    /// Set on SIGTERM: new joins are refused while rooms and recordings wind down.
    pub shutting_down: std::sync::atomic::AtomicBool,
    /// The one media socket (`MCU_UDP_PORTS=PORT`); None with a port pool.
    pub udp_mux: Option<Arc<room::udp_mux::UdpMux>>,
    /// This node in the cluster (room placement).
    pub cluster: cluster::Cluster,
    /// The credential of calls forwarded between nodes (derived from the token secret).
    pub internal_key: String,
}

impl AppState {
    /// The node hosting `room`, placing it first if needed ([`cluster::Cluster::host`]). When the
    /// room moves off a dead node, that node's running recordings are taken over and marked
    /// `interrupted` (repaired when their file is reachable here: a shared directory), in the
    /// background.
    pub async fn host_of(
        &self,
        room: &store::RoomRecord,
    ) -> Result<cluster::Host, cluster::PlaceError> {
        let host = self.cluster.host(&self.store, room).await?;
        let now_on = match &host {
            cluster::Host::Here => self.cluster.node_id.as_str(),
            cluster::Host::Elsewhere { node_id, .. } => node_id.as_str(),
        };
        if let Some(before) = room.node_id.as_deref().filter(|b| *b != now_on) {
            tracing::info!(room = %room.name, from = before, to = now_on, "room taken over from a dead node");
            let live_others = self.cluster.live_others(&self.store).await?;
            let recordings = self.recordings.clone();
            tokio::spawn(async move {
                match recordings.recover_interrupted(&live_others).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(n, "recordings of a dead node taken over"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take over a dead node's recordings")
                    }
                }
            });
        }
        Ok(host)
    }
}

/// A started server.
pub struct RunningServer {
    /// The bound HTTP address (port 0 resolved).
    pub addr: SocketAddr,
    /// The admin API key in force.
    pub api_key: String,
    /// Shared state (tests read it).
    pub state: actix_web::web::Data<AppState>,
    /// The actix server future; await it to run until stopped.
    pub server: actix_web::dev::Server,
}

/// Connects the store (running migrations), builds the state and binds the listener.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    use anyhow::Context;
    config.validate()?;
    let api_key = match &config.api_key {
        Some(k) if !k.is_empty() => k.clone(),
        _ => auth::random_secret(24),
    };
    let token_secret = match &config.token_secret {
        Some(s) if !s.is_empty() => s.clone(),
        _ => auth::random_secret(32),
    };
    let store = store::Store::connect(&config.database_url)
        .await
        .with_context(|| "cannot open the database")?;
    let listener = std::net::TcpListener::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let udp_mux = match config.rtc.udp_ports {
        config::UdpPorts::Shared(port) => {
            let ip = config
                .rtc
                .bind
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let addr = SocketAddr::new(ip, port);
            Some(
                room::udp_mux::UdpMux::bind(addr, rtc_runtime().handle())
                    .with_context(|| format!("cannot bind the media UDP port {addr}"))?,
            )
        }
        config::UdpPorts::Pool(_) => None,
    };
    let cluster = cluster::Cluster::new(&config, addr)?;
    if store.backend() == "postgres" && config.public_url.is_none() {
        tracing::warn!(url = %cluster.url, "MCU_PUBLIC_URL is not set: other nodes sharing this \
            database would send clients to {} (set it to this node's public URL)", cluster.url);
    }
    let rooms = RoomManager::new(config.media.clone(), rtc_runtime().handle().clone());
    let s3 = objstore::ObjectStore::new(&config.s3)?;
    if let Some(s3) = &s3 {
        s3.check()
            .await
            .context("object storage for recordings (MCU_S3_*) does not answer")?;
        tracing::info!(store = %s3.describe(), "recordings go to object storage");
    }
    let recordings = recording::Recordings::new(
        store.clone(),
        rooms.clone(),
        config.recordings_dir.clone(),
        config.media.clone(),
        cluster.node_id.clone(),
        s3,
    )
    .with_context(|| format!("cannot create {}", config.recordings_dir.display()))?;
    // Before serving: recordings a crash left behind become `interrupted`, repaired (not those
    // another live node is writing).
    let live_others = cluster.live_others(&store).await?;
    let recovered = recordings.recover_interrupted(&live_others).await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "recordings interrupted by the previous run were recovered"
        );
    }
    let auth_limiter = auth::FailedAuthLimiter::new(config.auth_failures_burst);
    let load = Arc::new(load::Load::default());
    rtc_runtime().spawn(load.clone().run());
    let state = actix_web::web::Data::new(AppState {
        config: Arc::new(config),
        api_key: api_key.clone(),
        tokens: auth::TokenKeys::new(token_secret.as_bytes()),
        internal_key: api::forward::internal_credential(token_secret.as_bytes()),
        auth_limiter,
        load: load.clone(),
        store,
        rooms,
        recordings: Arc::new(recordings),
        started: Instant::now(),
        shutting_down: std::sync::atomic::AtomicBool::new(false),
        udp_mux,
        cluster,
    });
    // Registered before serving: placement needs this node's row.
    state
        .cluster
        .beat(&state)
        .await
        .with_context(|| "cannot register this node in the database")?;
    tracing::info!(node = %state.cluster.node_id, url = %state.cluster.url, "node registered");
    cluster::spawn_heartbeat(state.clone());
    let server = api::http_server(state.clone(), listener)?;
    reaper::spawn(state.clone());
    Ok(RunningServer {
        addr,
        api_key,
        state,
        server,
    })
}

/// The runtime that hosts WebRTC peers and signaling session cores (2 workers), apart from the
/// actix HTTP workers and from the rooms' media threads.
pub fn rtc_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rtc")
            .enable_all()
            .build()
            .expect("cannot start the WebRTC runtime") // startup only: nothing works without it
    })
}

/// SIGTERM's first half: this node takes no new rooms (it says `draining` in its heartbeat, so
/// placement skips it; a join for a room it does not host is sent elsewhere), and its calls go on
/// until every participant has left or `drain_timeout_s` passes. [`shutdown`] follows.
pub async fn drain(state: &AppState) {
    use std::time::Duration;
    state.cluster.set_status(store::NodeStatus::Draining);
    if let Err(e) = state.cluster.beat(state).await {
        tracing::warn!(error = %e, "cannot write the draining status; other nodes may still place rooms here");
    }
    let timeout = Duration::from_secs(u64::from(state.config.drain_timeout_s));
    let started = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        let (rooms, people) = state.rooms.counts();
        if people == 0 {
            tracing::info!(
                waited_s = started.elapsed().as_secs(),
                "drained: no participant left"
            );
            return;
        }
        if started.elapsed() >= timeout {
            tracing::info!(
                rooms,
                participants = people,
                timeout_s = timeout.as_secs(),
                "drain timeout passed; ending the remaining calls"
            );
            return;
        }
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            last_log = Some(Instant::now());
            tracing::info!(
                rooms,
                participants = people,
                left_s = timeout.saturating_sub(started.elapsed()).as_secs(),
                "draining: no new rooms here; waiting for the calls to end"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Several nodes: places a room of this (stopping) node on another live node and returns that
/// node's signaling URL, which the room's participants are sent to; `None` on one node, or
/// when no other node can take it (they rejoin through their page's server then).
async fn move_room(state: &AppState, name: &str) -> Option<String> {
    if state.store.backend() == "sqlite" {
        return None;
    }
    let mut record = state.store.get_room(name).await.ok()??;
    // This node counts itself as the host whatever its status: asked as if the room were
    // nowhere, placement picks a live, active node (this one is `stopped` now).
    record.node_id = None;
    match state.cluster.host(&state.store, &record).await {
        Ok(cluster::Host::Elsewhere { node_id, url }) => {
            tracing::info!(
                room = name,
                to = node_id,
                "room moved to another node for the shutdown"
            );
            Some(format!("{}/api/v1/ws", api::rest::ws_of(&url)))
        }
        Ok(cluster::Host::Here) => None,
        Err(e) => {
            tracing::warn!(room = name, error = %e, "no other node takes the room; its participants rejoin through their page's server");
            None
        }
    }
}

/// Graceful shutdown: refuse new joins, tell every participant `closed: server_shutdown`,
/// finalize running recordings as `completed`, then stop the HTTP server.
pub async fn shutdown(state: &AppState, http: &actix_web::dev::ServerHandle) {
    use std::sync::atomic::Ordering;
    if state.shutting_down.swap(true, Ordering::SeqCst) {
        return;
    }
    let (rooms, people) = state.rooms.counts();
    tracing::info!(rooms, participants = people, "shutting down");
    // Gone first: other nodes may place this node's rooms at once, not after the TTL, and the
    // participants told to leave can rejoin at once.
    state.cluster.set_status(store::NodeStatus::Stopped);
    if let Err(e) = state.cluster.beat(state).await {
        tracing::warn!(error = %e, "cannot mark this node stopped; other nodes will see it dead after the TTL");
    }
    for room in state.rooms.live_rooms() {
        let to = move_room(state, &room).await;
        state
            .rooms
            .close_room_to(&room, model::CloseReason::ServerShutdown, to.as_deref());
    }
    let finalized = state.recordings.shutdown().await;
    // Let the `closed` messages reach the sockets before the workers stop.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    http.stop(true).await;
    tracing::info!(finalized, "stopped");
}
