//! Configuration: one serde tree with a `Default` per subsystem, read from an optional TOML file
//! and then overridden by `MCU_*` environment variables (the environment wins, see API.md).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP/WebSocket listen address (`MCU_LISTEN`).
    pub listen: SocketAddr,
    /// Admin API key (`MCU_API_KEY`); required unless `dev`.
    pub api_key: Option<String>,
    /// HS256 secret for join tokens (`MCU_TOKEN_SECRET`); generated per start in `dev`.
    pub token_secret: Option<String>,
    /// `sqlite://…` or `postgres://…` (`DATABASE_URL`).
    pub database_url: String,
    /// Where WebM files go (`MCU_RECORDINGS_DIR`).
    pub recordings_dir: PathBuf,
    /// Directory of the web client (`MCU_WEB_DIR`).
    pub web_dir: PathBuf,
    /// Public base URL used to build `ws_url` in token responses (`MCU_PUBLIC_URL`), e.g.
    /// `https://mcu.example.com`. Defaults to the request's host.
    pub public_url: Option<String>,
    /// Origins, besides the server's own, whose pages may open the signaling WebSocket
    /// (`MCU_ALLOWED_ORIGINS`, comma separated, e.g. `https://app.example.com`; `*` for any).
    /// A browser always sends `Origin`; a client that sends none (not a browser) is not refused.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Failed API-key attempts allowed per client address: this many at once, then this many a
    /// minute; past it admin calls from that address get 429 (`MCU_AUTH_FAILURES_BURST`; 0 = no
    /// limit).
    #[serde(default = "default_auth_failures_burst")]
    pub auth_failures_burst: u32,
    /// CPU this node may use, in cores, before it refuses joins with `server_busy`
    /// (`MCU_CPU_BUDGET`; default 85 % of the machine's cores; 0 = never refuse).
    #[serde(default)]
    pub cpu_budget: Option<f64>,
    /// This node's stable id in a cluster (`MCU_NODE_ID`); generated at first start and kept in
    /// `node_id` beside the recordings directory when unset.
    #[serde(default)]
    pub node_id: Option<String>,
    /// A node whose heartbeat is older than this is dead, seconds (`MCU_NODE_TTL_S`).
    #[serde(default = "default_node_ttl_s")]
    pub node_ttl_s: u32,
    /// SIGTERM drains: no new rooms here, the node's calls go on until they end or this many
    /// seconds pass, then the shutdown (`MCU_DRAIN_TIMEOUT_S`; 0 = shut down at once).
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: u32,
    /// Development mode: generated API key and token secret, tokens minted by `/r/{room}`.
    pub dev: bool,
    /// WebRTC transport.
    pub rtc: RtcConfig,
    /// Media plane.
    pub media: MediaSettings,
    /// Room defaults and limits.
    pub rooms: RoomDefaults,
    /// TURN relay whose time-limited credentials are handed to participants.
    pub turn: TurnConfig,
    /// Recordings on S3-compatible object storage (`MCU_S3_*`); empty bucket = files in
    /// `recordings_dir` only.
    pub s3: S3Config,
}

/// S3-compatible object storage for recordings (docs/recording.md, "Object storage"). The file is
/// written in `recordings_dir` as before and uploaded as it grows: a multipart upload of
/// `part_size_mb` parts, and what is not in a part yet as small objects every `checkpoint_s`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (`MCU_S3_ENDPOINT`), e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://minio:9000`.
    pub endpoint: Option<String>,
    /// Bucket (`MCU_S3_BUCKET`); object storage is off while it is empty.
    pub bucket: Option<String>,
    /// Region signed into requests (`MCU_S3_REGION`).
    pub region: String,
    /// Access key id (`MCU_S3_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Secret access key (`MCU_S3_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
    /// Prefix of the recordings' keys (`MCU_S3_PREFIX`).
    pub prefix: String,
    /// Size of the upload's parts, MiB (`MCU_S3_PART_MB`, 5 to 5120: S3's limits).
    pub part_size_mb: u32,
    /// How often what is not in a part yet is sent, seconds (`MCU_S3_CHECKPOINT_S`, 1 to 60): at
    /// most this much of a recording (plus half a second) is lost with its node.
    pub checkpoint_s: u32,
    /// Virtual-hosted-style URLs (`bucket.endpoint`) instead of path style (`MCU_S3_VIRTUAL_HOST`).
    pub virtual_host: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            bucket: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            prefix: "recordings/".into(),
            part_size_mb: 8,
            checkpoint_s: 2,
            virtual_host: false,
        }
    }
}

impl S3Config {
    /// Whether recordings go to object storage.
    pub fn enabled(&self) -> bool {
        self.bucket.is_some()
    }
}

/// A TURN server sharing a secret with this server (coturn `use-auth-secret`): every participant
/// gets its own time-limited credentials in `welcome` (the TURN REST API convention, see
/// [`crate::turn`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs handed to clients (`MCU_TURN_URLS`, comma separated), e.g.
    /// `turn:turn.example.com:3478?transport=udp`. Empty = no TURN.
    pub urls: Vec<String>,
    /// The shared secret, coturn's `static-auth-secret` (`MCU_TURN_SECRET`).
    pub secret: Option<String>,
    /// Lifetime of the credentials, seconds (`MCU_TURN_TTL_S`).
    pub ttl_s: u32,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            urls: Vec::new(),
            secret: None,
            ttl_s: 86_400,
        }
    }
}

/// Shortest accepted TURN shared secret outside `--dev`, characters.
pub const TURN_SECRET_MIN: usize = 16;
/// Accepted range of `turn.ttl_s`: a minute to a week.
pub const TURN_TTL_RANGE: std::ops::RangeInclusive<u32> = 60..=604_800;

/// WebRTC transport settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct RtcConfig {
    /// IP the media sockets bind to and advertise (`MCU_RTC_BIND`); None = all interfaces.
    pub bind: Option<IpAddr>,
    /// IP to advertise instead of the bound one, for NAT 1:1 (`MCU_PUBLIC_IP`).
    pub public_ip: Option<IpAddr>,
    /// Media UDP ports (`MCU_UDP_PORTS`): one shared port (the default, 40000; 0 = chosen by the
    /// OS at start), or a `min-max` pool with a socket per participant.
    pub udp_ports: UdpPorts,
    /// ICE servers handed to clients in `welcome`.
    pub ice_servers: Vec<IceServer>,
}

/// Where media is received.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub enum UdpPorts {
    /// Every participant on this one port (0: a port the OS picks at start).
    Shared(u16),
    /// A socket per participant, from this range.
    Pool(PortRange),
}

/// The default media port.
pub const DEFAULT_UDP_PORT: u16 = 40000;

impl Default for UdpPorts {
    fn default() -> Self {
        UdpPorts::Shared(DEFAULT_UDP_PORT)
    }
}

impl TryFrom<String> for UdpPorts {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.contains('-') {
            return PortRange::try_from(s).map(UdpPorts::Pool);
        }
        let t = s.trim();
        t.parse()
            .map(UdpPorts::Shared)
            .map_err(|_| format!("bad UDP port '{t}' (PORT, or MIN-MAX for a pool)"))
    }
}

impl From<UdpPorts> for String {
    fn from(p: UdpPorts) -> String {
        match p {
            UdpPorts::Shared(port) => port.to_string(),
            UdpPorts::Pool(r) => r.into(),
        }
    }
}

/// An inclusive UDP port range.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port.
    pub min: u16,
    /// Last port (inclusive).
    pub max: u16,
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let min: u16 = a.parse().map_err(|_| format!("bad UDP port '{a}'"))?;
        let max: u16 = b.parse().map_err(|_| format!("bad UDP port '{b}'"))?;
        if min == 0 || max < min {
            return Err(format!("bad UDP port range '{s}'"));
        }
        Ok(PortRange { min, max })
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        format!("{}-{}", r.min, r.max)
    }
}

/// One ICE server as handed to the browser (`RTCIceServer`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct IceServer {
    /// `stun:` / `turn:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential: Option<String>,
}

/// Media plane settings (the composite and the encoders).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSettings {
    /// Composite width in pixels (`MCU_CANVAS`, `WxH@fps`).
    pub canvas_width: u32,
    /// Composite height in pixels.
    pub canvas_height: u32,
    /// Composite frame rate.
    pub fps: u32,
    /// Video bitrate tiers in kbit/s, ascending (`MCU_VIDEO_TIERS`, comma separated). Each
    /// tier's resolution and frame rate follow its bitrate (`mixer::tier::tier_shape`).
    pub video_tiers_kbps: Vec<u32>,
    /// Tier for receivers without a bandwidth estimate.
    pub default_tier_kbps: u32,
    /// Opus bitrate of the mixes, bit/s.
    pub opus_bitrate: i32,
    /// Opus encoder complexity 0..=10.
    pub opus_complexity: i32,
    /// Video bitrate of recordings, kbit/s (`MCU_RECORDING_KBPS`). A recording shares the encoder
    /// of the tier with this bitrate; a bitrate matching no tier costs one dedicated encoder.
    /// Recordings have the composite's size and frame rate (`MCU_CANVAS`).
    pub recording_kbps: u32,
    /// Audio jitter buffer target in 20 ms frames (`MCU_JITTER_FRAMES`, 1..=10): added latency
    /// against robustness to network jitter. 1 suits clean links (LAN), 2 (default) typical ones.
    pub jitter_frames: usize,
    /// Most tiles the `grid` layout shows (`MCU_MAX_TILES`, 1..=25); only shown inputs are
    /// decoded, so fewer tiles cost less in large rooms. The active speaker always gets one.
    pub max_tiles: usize,
    /// From this many listeners up in a room (`MCU_AUDIO_PAIR_FROM`; 0: never), the mix they
    /// share goes out in 40 ms packets (two 20 ms Opus frames each) instead of 20 ms ones: half
    /// the packets, which are most of what a large room costs, for 20 ms more latency.
    pub audio_pair_from: usize,
}

impl Default for MediaSettings {
    fn default() -> Self {
        MediaSettings {
            canvas_width: 640,
            canvas_height: 360,
            fps: 15,
            video_tiers_kbps: vec![50, 100, 150, 250, 400, 800],
            default_tier_kbps: 150,
            opus_bitrate: 32_000,
            opus_complexity: 5,
            recording_kbps: 400,
            jitter_frames: 2,
            max_tiles: 25,
            audio_pair_from: 100,
        }
    }
}

fn default_node_ttl_s() -> u32 {
    10
}

fn default_drain_timeout_s() -> u32 {
    600
}

fn default_auth_failures_burst() -> u32 {
    20
}

/// Longest ban a kick may set (30 days), seconds.
pub const KICK_BAN_MAX_S: u32 = 30 * 86_400;

/// Defaults and limits for rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomDefaults {
    /// `max_participants` when a room is created without one.
    pub max_participants: u32,
    /// Upper bound accepted for `max_participants`.
    pub max_participants_limit: u32,
    /// `empty_timeout_s` when a room is created without one.
    pub empty_timeout_s: u32,
    /// Default join-token lifetime, seconds.
    pub token_ttl_s: u32,
    /// How long a kicked identity is kept out of the room, seconds, when the kick names no
    /// `ban_s`; 0 = it may rejoin at once.
    pub kick_ban_s: u32,
}

impl Default for RoomDefaults {
    fn default() -> Self {
        RoomDefaults {
            max_participants: 50,
            max_participants_limit: 1000,
            empty_timeout_s: 300,
            token_ttl_s: 6 * 3600,
            kick_ban_s: 300,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            api_key: None,
            token_secret: None,
            database_url: "sqlite://./data/mcu.db".to_string(),
            recordings_dir: PathBuf::from("./data/recordings"),
            web_dir: PathBuf::from("./web"),
            public_url: None,
            allowed_origins: Vec::new(),
            auth_failures_burst: default_auth_failures_burst(),
            cpu_budget: None,
            node_id: None,
            node_ttl_s: default_node_ttl_s(),
            drain_timeout_s: default_drain_timeout_s(),
            dev: false,
            rtc: RtcConfig::default(),
            media: MediaSettings::default(),
            rooms: RoomDefaults::default(),
            turn: TurnConfig::default(),
            s3: S3Config::default(),
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this tree.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An environment variable has a value that does not parse.
    #[error("invalid value for {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The settings are unsafe or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    fn validate_s3(&self) -> Result<(), ConfigError> {
        let s3 = &self.s3;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !s3.enabled() {
            if s3.endpoint.is_some() {
                return bad("MCU_S3_ENDPOINT is set but MCU_S3_BUCKET is not".into());
            }
            return Ok(());
        }
        let Some(endpoint) = &s3.endpoint else {
            return bad("MCU_S3_BUCKET is set but MCU_S3_ENDPOINT is not (e.g. \
                        https://s3.eu-west-1.amazonaws.com)"
                .into());
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return bad(format!(
                "MCU_S3_ENDPOINT '{endpoint}' must be an http:// or https:// URL"
            ));
        }
        if s3.access_key_id.is_none() || s3.secret_access_key.is_none() {
            return bad(
                "object storage needs MCU_S3_ACCESS_KEY_ID and MCU_S3_SECRET_ACCESS_KEY".into(),
            );
        }
        if !(5..=5120).contains(&s3.part_size_mb) {
            return bad(format!(
                "MCU_S3_PART_MB {} must be 5 to 5120 (S3's part sizes)",
                s3.part_size_mb
            ));
        }
        if !(1..=60).contains(&s3.checkpoint_s) {
            return bad(format!(
                "MCU_S3_CHECKPOINT_S {} must be 1 to 60 seconds",
                s3.checkpoint_s
            ));
        }
        Ok(())
    }

    /// Reads the optional TOML file, then applies environment overrides from `env`.
    pub fn load(
        path: Option<&std::path::Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                message: e.to_string(),
            })
        }
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("MCU_LISTEN") {
            self.listen = parse("MCU_LISTEN", &v)?;
        }
        if let Some(v) = get("MCU_API_KEY") {
            self.api_key = Some(v);
        }
        if let Some(v) = get("MCU_TOKEN_SECRET") {
            self.token_secret = Some(v);
        }
        if let Some(v) = get("DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = get("MCU_RECORDINGS_DIR") {
            self.recordings_dir = PathBuf::from(v);
        }
        if let Some(v) = get("MCU_S3_ENDPOINT") {
            self.s3.endpoint = Some(v);
        }
        if let Some(v) = get("MCU_S3_BUCKET") {
            self.s3.bucket = Some(v);
        }
        if let Some(v) = get("MCU_S3_REGION") {
            self.s3.region = v;
        }
        if let Some(v) = get("MCU_S3_ACCESS_KEY_ID") {
            self.s3.access_key_id = Some(v);
        }
        if let Some(v) = get("MCU_S3_SECRET_ACCESS_KEY") {
            self.s3.secret_access_key = Some(v);
        }
        if let Some(v) = env("MCU_S3_PREFIX") {
            self.s3.prefix = v.trim().to_string();
        }
        if let Some(v) = get("MCU_S3_PART_MB") {
            self.s3.part_size_mb = parse("MCU_S3_PART_MB", &v)?;
        }
        if let Some(v) = get("MCU_S3_CHECKPOINT_S") {
            self.s3.checkpoint_s = parse("MCU_S3_CHECKPOINT_S", &v)?;
        }
        if let Some(v) = get("MCU_S3_VIRTUAL_HOST") {
            self.s3.virtual_host = parse("MCU_S3_VIRTUAL_HOST", &v)?;
        }
        if let Some(v) = get("MCU_WEB_DIR") {
            self.web_dir = PathBuf::from(v);
        }
        if let Some(v) = get("MCU_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = get("MCU_ALLOWED_ORIGINS") {
            self.allowed_origins = v
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect();
        }
        if let Some(v) = get("MCU_CPU_BUDGET") {
            self.cpu_budget = Some(parse("MCU_CPU_BUDGET", &v)?);
        }
        if let Some(v) = get("MCU_NODE_ID") {
            self.node_id = Some(v);
        }
        if let Some(v) = get("MCU_NODE_TTL_S") {
            self.node_ttl_s = parse("MCU_NODE_TTL_S", &v)?;
        }
        if let Some(v) = get("MCU_DRAIN_TIMEOUT_S") {
            self.drain_timeout_s = parse("MCU_DRAIN_TIMEOUT_S", &v)?;
        }
        if let Some(v) = get("MCU_AUTH_FAILURES_BURST") {
            self.auth_failures_burst = parse("MCU_AUTH_FAILURES_BURST", &v)?;
        }
        if let Some(v) = get("MCU_RTC_BIND") {
            self.rtc.bind = Some(parse("MCU_RTC_BIND", &v)?);
        }
        if let Some(v) = get("MCU_PUBLIC_IP") {
            self.rtc.public_ip = Some(parse("MCU_PUBLIC_IP", &v)?);
        }
        if let Some(v) = get("MCU_UDP_PORTS") {
            self.rtc.udp_ports = UdpPorts::try_from(v).map_err(|message| ConfigError::Env {
                var: "MCU_UDP_PORTS",
                message,
            })?;
        }
        if let Some(v) = get("MCU_ICE_SERVERS") {
            // Comma-separated STUN/TURN URLs without credentials, e.g. `stun:stun.example.org:3478`.
            self.rtc.ice_servers = v
                .split(',')
                .map(|u| IceServer {
                    urls: vec![u.trim().to_string()],
                    username: None,
                    credential: None,
                })
                .collect();
        }
        if let Some(v) = get("MCU_CANVAS") {
            let (size, fps) = v.split_once('@').unwrap_or((v.as_str(), "15"));
            let (w, h) = size.split_once('x').ok_or(ConfigError::Env {
                var: "MCU_CANVAS",
                message: "expected WxH@fps, e.g. 640x360@15".into(),
            })?;
            self.media.canvas_width = parse("MCU_CANVAS", w)?;
            self.media.canvas_height = parse("MCU_CANVAS", h)?;
            self.media.fps = parse("MCU_CANVAS", fps)?;
        }
        if let Some(v) = get("MCU_VIDEO_TIERS") {
            self.media.video_tiers_kbps = v
                .split(',')
                .map(|t| parse("MCU_VIDEO_TIERS", t))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("MCU_MAX_TILES") {
            self.media.max_tiles = parse("MCU_MAX_TILES", &v)?;
        }
        if let Some(v) = get("MCU_AUDIO_PAIR_FROM") {
            self.media.audio_pair_from = parse("MCU_AUDIO_PAIR_FROM", &v)?;
        }
        if let Some(v) = get("MCU_JITTER_FRAMES") {
            self.media.jitter_frames = parse("MCU_JITTER_FRAMES", &v)?;
        }
        if let Some(v) = get("MCU_RECORDING_KBPS") {
            self.media.recording_kbps = parse("MCU_RECORDING_KBPS", &v)?;
        }
        if let Some(v) = get("MCU_DEFAULT_TIER") {
            self.media.default_tier_kbps = parse("MCU_DEFAULT_TIER", &v)?;
        }
        if let Some(v) = get("MCU_OPUS_BITRATE") {
            self.media.opus_bitrate = parse("MCU_OPUS_BITRATE", &v)?;
        }
        if let Some(v) = get("MCU_OPUS_COMPLEXITY") {
            self.media.opus_complexity = parse("MCU_OPUS_COMPLEXITY", &v)?;
        }
        if let Some(v) = get("MCU_ROOM_MAX_PARTICIPANTS") {
            self.rooms.max_participants = parse("MCU_ROOM_MAX_PARTICIPANTS", &v)?;
        }
        if let Some(v) = get("MCU_ROOM_MAX_PARTICIPANTS_LIMIT") {
            self.rooms.max_participants_limit = parse("MCU_ROOM_MAX_PARTICIPANTS_LIMIT", &v)?;
        }
        if let Some(v) = get("MCU_ROOM_EMPTY_TIMEOUT_S") {
            self.rooms.empty_timeout_s = parse("MCU_ROOM_EMPTY_TIMEOUT_S", &v)?;
        }
        if let Some(v) = get("MCU_TOKEN_TTL_S") {
            self.rooms.token_ttl_s = parse("MCU_TOKEN_TTL_S", &v)?;
        }
        if let Some(v) = get("MCU_KICK_BAN_S") {
            self.rooms.kick_ban_s = parse("MCU_KICK_BAN_S", &v)?;
        }
        if let Some(v) = get("MCU_TURN_URLS") {
            self.turn.urls = v
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
        }
        if let Some(v) = get("MCU_TURN_SECRET") {
            self.turn.secret = Some(v);
        }
        if let Some(v) = get("MCU_TURN_TTL_S") {
            self.turn.ttl_s = parse("MCU_TURN_TTL_S", &v)?;
        }
        Ok(())
    }

    /// Refuses unsafe or inconsistent settings with a message an operator can act on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_s3()?;
        if !(2..=3600).contains(&self.node_ttl_s) {
            return Err(ConfigError::Invalid(format!(
                "node_ttl_s {} must be 2 to 3600 seconds",
                self.node_ttl_s
            )));
        }
        if self.drain_timeout_s > 86_400 {
            return Err(ConfigError::Invalid(format!(
                "drain_timeout_s {} must be at most 86400 seconds (a day)",
                self.drain_timeout_s
            )));
        }
        if let Some(id) = &self.node_id
            && !crate::cluster::valid_node_id(id)
        {
            return Err(ConfigError::Invalid(format!(
                "node id '{id}' must be 1 to 64 characters of A-Z a-z 0-9 _ - ."
            )));
        }
        if let Some(b) = self.cpu_budget
            && !(b.is_finite() && b >= 0.0)
        {
            return Err(ConfigError::Invalid(format!(
                "cpu_budget {b} must be a number of cores >= 0"
            )));
        }
        if !self.dev && self.api_key.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid(
                "no API key configured: set MCU_API_KEY (or api_key in the config file), or run with --dev"
                    .into(),
            ));
        }
        if !self.dev && self.api_key.as_deref().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError::Invalid(
                "the API key must be at least 16 characters".into(),
            ));
        }
        if !self.dev && self.token_secret.as_deref().is_none_or(|s| s.len() < 32) {
            return Err(ConfigError::Invalid(
                "MCU_TOKEN_SECRET must be set to at least 32 characters (or run with --dev)".into(),
            ));
        }
        let m = &self.media;
        if !(16..=1280).contains(&m.canvas_width)
            || !(16..=720).contains(&m.canvas_height)
            || !m.canvas_width.is_multiple_of(2)
            || !m.canvas_height.is_multiple_of(2)
        {
            return Err(ConfigError::Invalid(format!(
                "canvas {}x{} out of range: even sizes up to 1280x720",
                m.canvas_width, m.canvas_height
            )));
        }
        if !(1..=30).contains(&m.fps) {
            return Err(ConfigError::Invalid(format!(
                "fps {} out of range 1..=30",
                m.fps
            )));
        }
        if m.video_tiers_kbps.is_empty() || !m.video_tiers_kbps.windows(2).all(|w| w[0] < w[1]) {
            return Err(ConfigError::Invalid(
                "video_tiers_kbps must be a non-empty ascending list".into(),
            ));
        }
        if !(1..=25).contains(&m.max_tiles) {
            return Err(ConfigError::Invalid(format!(
                "max_tiles {} out of range 1..=25",
                m.max_tiles
            )));
        }
        if !(1..=10).contains(&m.jitter_frames) {
            return Err(ConfigError::Invalid(format!(
                "jitter_frames {} out of range 1..=10",
                m.jitter_frames
            )));
        }
        if !(50..=20_000).contains(&m.recording_kbps) {
            return Err(ConfigError::Invalid(format!(
                "recording_kbps {} out of range 50..=20000",
                m.recording_kbps
            )));
        }
        if !(6_000..=510_000).contains(&m.opus_bitrate) {
            return Err(ConfigError::Invalid(format!(
                "opus_bitrate {} out of range 6000..=510000 bit/s",
                m.opus_bitrate
            )));
        }
        if !(0..=10).contains(&m.opus_complexity) {
            return Err(ConfigError::Invalid(format!(
                "opus_complexity {} out of range 0..=10",
                m.opus_complexity
            )));
        }
        let r = &self.rooms;
        if r.max_participants_limit == 0
            || !(1..=r.max_participants_limit).contains(&r.max_participants)
        {
            return Err(ConfigError::Invalid(format!(
                "rooms.max_participants {} must be between 1 and rooms.max_participants_limit ({})",
                r.max_participants, r.max_participants_limit
            )));
        }
        if r.empty_timeout_s > 86_400 {
            return Err(ConfigError::Invalid(format!(
                "rooms.empty_timeout_s {} out of range 0..=86400",
                r.empty_timeout_s
            )));
        }
        if !(1..=86_400).contains(&r.token_ttl_s) {
            return Err(ConfigError::Invalid(format!(
                "rooms.token_ttl_s {} out of range 1..=86400",
                r.token_ttl_s
            )));
        }
        if r.kick_ban_s > KICK_BAN_MAX_S {
            return Err(ConfigError::Invalid(format!(
                "rooms.kick_ban_s {} out of range 0..={KICK_BAN_MAX_S}",
                r.kick_ban_s
            )));
        }
        self.validate_turn()?;
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "DATABASE_URL must start with sqlite: or postgres://".into(),
            ));
        }
        Ok(())
    }

    fn validate_turn(&self) -> Result<(), ConfigError> {
        let t = &self.turn;
        let secret = t.secret.as_deref().filter(|s| !s.is_empty());
        if let Some(bad) = t
            .urls
            .iter()
            .find(|u| !(u.starts_with("turn:") || u.starts_with("turns:")))
        {
            return Err(ConfigError::Invalid(format!(
                "TURN URL '{bad}' must start with turn: or turns: (STUN servers go in MCU_ICE_SERVERS)"
            )));
        }
        match (t.urls.is_empty(), secret) {
            (false, None) => {
                return Err(ConfigError::Invalid(
                    "TURN URLs are configured but no shared secret: set MCU_TURN_SECRET (turn.secret) to coturn's static-auth-secret"
                        .into(),
                ));
            }
            (true, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "a TURN secret is configured but no TURN URL: set MCU_TURN_URLS (turn.urls)"
                        .into(),
                ));
            }
            (false, Some(s)) if !self.dev && s.len() < TURN_SECRET_MIN => {
                return Err(ConfigError::Invalid(format!(
                    "MCU_TURN_SECRET must be at least {TURN_SECRET_MIN} characters"
                )));
            }
            _ => {}
        }
        if !TURN_TTL_RANGE.contains(&t.ttl_s) {
            return Err(ConfigError::Invalid(format!(
                "MCU_TURN_TTL_S {} out of range {}..={} seconds",
                t.ttl_s,
                TURN_TTL_RANGE.start(),
                TURN_TTL_RANGE.end()
            )));
        }
        Ok(())
    }

    /// The effective configuration as TOML with secrets masked (`--print-config`).
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        let mask = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("********".into());
            }
        };
        mask(&mut c.api_key);
        mask(&mut c.token_secret);
        mask(&mut c.turn.secret);
        mask(&mut c.s3.secret_access_key);
        if let Some(i) = c.database_url.find('@')
            && let Some(s) = c.database_url.find("://")
        {
            c.database_url.replace_range(s + 3..i, "********");
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn environment_overrides_defaults() {
        let c = Config::load(
            None,
            env_of(&[
                ("MCU_LISTEN", "127.0.0.1:9000"),
                ("MCU_UDP_PORTS", "40000-40100"),
                ("MCU_CANVAS", "1280x720@30"),
                ("MCU_VIDEO_TIERS", "200,600"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(
            c.rtc.udp_ports,
            UdpPorts::Pool(PortRange {
                min: 40000,
                max: 40100
            })
        );
        assert_eq!(Config::default().rtc.udp_ports, UdpPorts::Shared(40000));
        let one = Config::load(None, env_of(&[("MCU_UDP_PORTS", "41000")])).unwrap();
        assert_eq!(one.rtc.udp_ports, UdpPorts::Shared(41000));
        let e = Config::load(None, env_of(&[("MCU_UDP_PORTS", "4x")])).unwrap_err();
        assert!(e.to_string().contains("MCU_UDP_PORTS"), "{e}");
        assert_eq!(
            (c.media.canvas_width, c.media.canvas_height, c.media.fps),
            (1280, 720, 30)
        );
        assert_eq!(c.media.video_tiers_kbps, vec![200, 600]);
    }

    #[test]
    fn refuses_missing_api_key_outside_dev() {
        let c = Config::default();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("MCU_API_KEY"), "{e}");
        let dev = Config {
            dev: true,
            ..Config::default()
        };
        assert!(dev.validate().is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = Config::load(None, env_of(&[("MCU_UDP_PORTS", "9-1")])).unwrap_err();
        assert!(e.to_string().contains("MCU_UDP_PORTS"));
        let e = Config::load(None, env_of(&[("MCU_CANVAS", "big")])).unwrap_err();
        assert!(e.to_string().contains("MCU_CANVAS"));
    }

    #[test]
    fn print_config_masks_secrets() {
        let mut c = Config {
            api_key: Some("supersecretkey-123456".into()),
            database_url: "postgres://u:pw@h/db".into(),
            ..Config::default()
        };
        c.s3.secret_access_key = Some("supersecret-s3".into());
        let t = c.to_masked_toml();
        assert!(!t.contains("supersecret") && !t.contains(":pw@"), "{t}");
    }

    #[test]
    fn object_storage_settings_from_the_environment_and_their_checks() {
        let full: &'static [(&str, &str)] = &[
            ("MCU_API_KEY", "kkkkkkkkkkkkkkkkkkkk"),
            ("MCU_TOKEN_SECRET", "ssssssssssssssssssssssssssssssssssss"),
            ("MCU_S3_ENDPOINT", "http://minio:9000"),
            ("MCU_S3_BUCKET", "recs"),
            ("MCU_S3_ACCESS_KEY_ID", "id"),
            ("MCU_S3_SECRET_ACCESS_KEY", "secret"),
            ("MCU_S3_PREFIX", ""),
            ("MCU_S3_PART_MB", "16"),
            ("MCU_S3_CHECKPOINT_S", "3"),
        ];
        let c = Config::load(None, env_of(full)).unwrap();
        c.validate().unwrap();
        assert!(c.s3.enabled());
        assert_eq!(c.s3.bucket.as_deref(), Some("recs"));
        assert_eq!(c.s3.prefix, "", "an empty prefix is kept");
        assert_eq!((c.s3.part_size_mb, c.s3.checkpoint_s), (16, 3));
        assert!(!Config::default().s3.enabled());
        let refused = |change: fn(&mut S3Config), why: &str| {
            let mut c = Config::load(None, env_of(full)).unwrap();
            change(&mut c.s3);
            let e = c.validate().expect_err(why).to_string();
            assert!(e.contains("MCU_S3"), "{why}: {e}");
        };
        refused(|s| s.endpoint = None, "a bucket without an endpoint");
        refused(|s| s.bucket = None, "an endpoint without a bucket");
        refused(|s| s.secret_access_key = None, "no secret key");
        refused(|s| s.part_size_mb = 4, "parts under S3's 5 MiB");
        refused(|s| s.checkpoint_s = 0, "no checkpoint");
        refused(|s| s.endpoint = Some("minio:9000".into()), "no scheme");
    }

    /// A configuration that passes `validate` outside `--dev`.
    fn production() -> Config {
        Config {
            api_key: Some("k".repeat(20)),
            token_secret: Some("s".repeat(40)),
            ..Config::default()
        }
    }

    fn turn(urls: &[&str], secret: Option<&str>) -> Config {
        let mut c = production();
        c.turn.urls = urls.iter().map(|u| u.to_string()).collect();
        c.turn.secret = secret.map(str::to_string);
        c
    }

    #[test]
    fn turn_from_environment() {
        let c = Config::load(
            None,
            env_of(&[
                (
                    "MCU_TURN_URLS",
                    "turn:turn.example.com:3478?transport=udp, turns:turn.example.com:5349",
                ),
                ("MCU_TURN_SECRET", "0123456789abcdef0123"),
                ("MCU_TURN_TTL_S", "3600"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.turn,
            TurnConfig {
                urls: vec![
                    "turn:turn.example.com:3478?transport=udp".into(),
                    "turns:turn.example.com:5349".into()
                ],
                secret: Some("0123456789abcdef0123".into()),
                ttl_s: 3600,
            }
        );
        let e = Config::load(None, env_of(&[("MCU_TURN_TTL_S", "a day")])).unwrap_err();
        assert!(e.to_string().contains("MCU_TURN_TTL_S"), "{e}");
    }

    #[test]
    fn refuses_unsafe_turn_settings() {
        assert!(production().validate().is_ok());
        assert!(
            turn(&["turn:h:3478"], Some(&"x".repeat(16)))
                .validate()
                .is_ok()
        );
        let cases: [(Config, &str); 5] = [
            (turn(&["turn:h:3478"], None), "MCU_TURN_SECRET"),
            (turn(&["turn:h:3478"], Some("")), "MCU_TURN_SECRET"),
            (turn(&[], Some(&"x".repeat(20))), "MCU_TURN_URLS"),
            (turn(&["turn:h:3478"], Some("short")), "at least 16"),
            (
                turn(&["stun:h:3478"], Some(&"x".repeat(20))),
                "turn: or turns:",
            ),
        ];
        for (c, want) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "'{e}' should mention '{want}'");
        }
        let mut c = turn(&["turn:h:3478"], Some(&"x".repeat(20)));
        for (ttl, ok) in [(59, false), (60, true), (604_800, true), (604_801, false)] {
            c.turn.ttl_s = ttl;
            assert_eq!(c.validate().is_ok(), ok, "ttl {ttl}");
        }
    }

    #[test]
    fn every_subsystem_reads_the_environment() {
        let c = Config::load(
            None,
            env_of(&[
                ("MCU_OPUS_BITRATE", "24000"),
                ("MCU_OPUS_COMPLEXITY", "3"),
                ("MCU_ROOM_MAX_PARTICIPANTS", "12"),
                ("MCU_ROOM_MAX_PARTICIPANTS_LIMIT", "100"),
                ("MCU_ROOM_EMPTY_TIMEOUT_S", "0"),
                ("MCU_TOKEN_TTL_S", "900"),
                ("MCU_RECORDING_KBPS", "800"),
                ("MCU_DEFAULT_TIER", "150"),
                ("MCU_PUBLIC_URL", "https://mcu.example.com"),
                ("MCU_RTC_BIND", "10.0.0.5"),
                ("MCU_PUBLIC_IP", "203.0.113.7"),
                ("MCU_ICE_SERVERS", "stun:a:3478, stun:b:3478"),
            ]),
        )
        .unwrap();
        assert_eq!((c.media.opus_bitrate, c.media.opus_complexity), (24_000, 3));
        assert_eq!(
            (
                c.rooms.max_participants,
                c.rooms.max_participants_limit,
                c.rooms.empty_timeout_s,
                c.rooms.token_ttl_s
            ),
            (12, 100, 0, 900)
        );
        assert_eq!(
            (c.media.recording_kbps, c.media.default_tier_kbps),
            (800, 150)
        );
        assert_eq!(c.public_url.as_deref(), Some("https://mcu.example.com"));
        assert_eq!(c.rtc.bind, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.rtc.ice_servers.len(), 2);
        assert_eq!(c.rtc.ice_servers[1].urls, vec!["stun:b:3478".to_string()]);
        // Empty values are ignored (compose passes `VAR=` for unset optional variables).
        let c = Config::load(None, env_of(&[("MCU_PUBLIC_IP", ""), ("MCU_LISTEN", " ")])).unwrap();
        assert_eq!((c.rtc.public_ip, c.listen.port()), (None, 8080));
    }

    #[test]
    fn refuses_out_of_range_media_and_room_settings() {
        type Case = (fn(&mut Config), &'static str);
        let cases: [Case; 8] = [
            (|c| c.media.opus_complexity = 11, "opus_complexity"),
            (|c| c.media.opus_bitrate = 1000, "opus_bitrate"),
            (|c| c.rooms.max_participants = 0, "rooms.max_participants"),
            (
                |c| c.rooms.max_participants = c.rooms.max_participants_limit + 1,
                "rooms.max_participants",
            ),
            (|c| c.rooms.empty_timeout_s = 86_401, "empty_timeout_s"),
            (|c| c.rooms.token_ttl_s = 0, "token_ttl_s"),
            (|c| c.rooms.kick_ban_s = KICK_BAN_MAX_S + 1, "kick_ban_s"),
            (|c| c.media.video_tiers_kbps = vec![400, 150], "ascending"),
        ];
        for (f, want) in cases {
            let mut c = production();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "'{e}' should mention '{want}'");
        }
    }

    #[test]
    fn refuses_short_secrets_outside_dev() {
        let mut c = production();
        c.api_key = Some("short".into());
        assert!(c.validate().unwrap_err().to_string().contains("16"));
        let mut c = production();
        c.token_secret = Some("s".repeat(31));
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("MCU_TOKEN_SECRET")
        );
        c.dev = true;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mcu.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:7000"
api_key = "from-the-file-0123456789"
[rtc]
public_ip = "203.0.113.7"
udp_ports = "40000-40099"
[turn]
urls = ["turn:turn.example.com:3478"]
secret = "file-turn-secret-0123456789"
ttl_s = 600
"#,
        )
        .unwrap();
        let c = Config::load(Some(&path), env_of(&[("MCU_LISTEN", "127.0.0.1:7001")])).unwrap();
        assert_eq!(c.listen.port(), 7001, "the environment wins");
        assert_eq!(c.api_key.as_deref(), Some("from-the-file-0123456789"));
        assert_eq!(c.rtc.public_ip, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(c.turn.ttl_s, 600);
        let masked = c.to_masked_toml();
        assert!(
            !masked.contains("file-turn-secret") && !masked.contains("from-the-file"),
            "{masked}"
        );
        assert!(masked.contains("turn:turn.example.com:3478"), "{masked}");
        // What --print-config prints loads back as the same tree (secrets aside).
        let back: Config = toml::from_str(&masked).unwrap();
        assert_eq!(back.turn.urls, c.turn.urls);
        assert_eq!(back.rtc.udp_ports, c.rtc.udp_ports);

        std::fs::write(&path, "[turn]\nsecrte = \"typo\"\n").unwrap();
        let e = Config::load(Some(&path), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid config file") && e.contains("secrte"),
            "{e}"
        );
    }
}
