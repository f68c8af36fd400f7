//! The same synthetic participant against Janus AudioBridge, for the side-by-side benchmark.
//!
//! [`Janus`] runs the Debian package's `janus` binary as a child process with a configuration
//! generated into a temporary directory: only the AudioBridge plugin and the HTTP transport (no
//! admin API), no event handlers or loggers, IPv6 off, no STUN/TURN, an RTP port range, logging
//! to a file in that directory, not daemonised. It is killed on drop.
//!
//! Janus runs in a network namespace of its own ([`Netns`]), joined to the host by a veth pair
//! with private test addresses (a free `/30` of 10.231.0.0/16: host end `.1`, namespace end
//! `.2`), because its media cannot use 127.0.0.1:
//! - Janus never gathers on a loopback interface: `janus_ice_setup_local` (src/ice.c, 1.1.2 and
//!   later) skips every interface flagged `IFF_LOOPBACK`, so it cannot offer a 127.0.0.1
//!   candidate;
//! - libnice pins each host candidate's socket to its interface (`IP_UNICAST_IF`), so Janus's
//!   packets to a peer on 127.0.0.1 would be routed out of that interface.
//!
//! In the namespace the veth is the only interface besides `lo` and there is no default route,
//! so nothing Janus sends can go anywhere but the host end of the pair. Janus's HTTP API is
//! bound to the namespace end, its ICE is restricted to the veth (`ice_enforce_list`), the Janus
//! participants bind their UDP sockets to the host end, and [`run`] refuses an answer with any
//! candidate but the namespace end. The namespace and the veth are deleted on drop; ones left by
//! runs that died are deleted when the next one starts ([`clean_stale`]).
//!
//! [`run`] joins like a Janus client over the HTTP API: create a session, attach
//! `janus.plugin.audiobridge`, `join` with a JSEP offer (audio only, the candidates gathered
//! into it), take the answer from the long-poll (`GET /janus/<session>?maxev=…`, which also
//! keeps the session alive), then send and measure exactly as [`crate::participant`] does.
//!
//! Debugging: `LOADGEN_KEEP_JANUS=1` keeps the generated directory (configuration, `janus.log`,
//! `janus.out`); `LOADGEN_JANUS_DEBUG_LEVEL=7` makes Janus log its ICE in detail.

use crate::media::Voice;
use crate::participant::{
    Handler, Report, Rx, Shared, Spec, audio_track, collect, dtx_asked, payload_type,
    peer_connection, send_audio,
};
use parking_lot::Mutex;
use rtc::peer_connection::sdp::RTCSessionDescription;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::PeerConnection;

/// Janus's RTP/ICE port range (below Linux's default ephemeral range, where the synthetic
/// participants' own sockets live).
pub const RTP_PORT_RANGE: (u16, u16) = (20_000, 29_999);
/// Events fetched per long-poll.
const MAX_EVENTS: usize = 20;
/// The plugin and transport kept; every other plugin, transport and logger is disabled.
const KEEP: [&str; 2] = ["libjanus_audiobridge.so", "libjanus_http.so"];

/// Janus's HTTP port (on the namespace end of the veth; the namespace is ours alone).
const HTTP_PORT: u16 = 8088;
/// Prefix of our network namespaces: `mcu-janus-<pid>-<n>`.
const NS_PREFIX: &str = "mcu-janus-";
/// Prefixes of our veth ends, host side and namespace side: `vjh<pid>-<n>`, `vjn<pid>-<n>`.
const VETH_HOST: &str = "vjh";
const VETH_NS: &str = "vjn";

/// A running Janus in its own network namespace, killed (and the namespace deleted) on drop.
pub struct Janus {
    child: Child,
    /// `http://<namespace end>:8088/janus`.
    pub url: String,
    /// The namespace and veth pair Janus runs on (dropped after the child is killed).
    pub net: Netns,
    dir: PathBuf,
}

impl Janus {
    /// Creates the namespace, generates the configuration, starts `bin` in the namespace and
    /// waits for its HTTP API.
    pub async fn start(bin: &str) -> anyhow::Result<Janus> {
        let exe = which(bin).ok_or_else(|| anyhow::anyhow!("no `{bin}` binary"))?;
        let lib = lib_dir(bin).ok_or_else(|| {
            anyhow::anyhow!("no Janus plugins folder (…/janus/plugins/libjanus_audiobridge.so)")
        })?;
        clean_stale();
        let net = Netns::create()?;
        let dir = std::env::temp_dir().join(format!("janus-bench-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        let names = |sub: &str| -> Vec<String> {
            std::fs::read_dir(lib.join(sub))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let (disable_plugins, disable_transports, disable_loggers) = (
            disable_list(&names("plugins")),
            disable_list(&names("transports")),
            disable_list(&names("loggers")),
        );
        let cfg = Config {
            dir: dir.clone(),
            lib,
            ice_interface: net.ns_if.clone(),
            http_ip: net.ns_ip,
            http_port: HTTP_PORT,
            disable_plugins,
            disable_transports,
            disable_loggers,
            debug_level: std::env::var("LOADGEN_JANUS_DEBUG_LEVEL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4),
        };
        for (file, text) in cfg.files() {
            std::fs::write(dir.join(file), text)?;
        }
        // What Janus prints before its log is configured (and libnice's debugging) goes here.
        let out = std::fs::File::create(dir.join("janus.out"))?;
        // `ip netns exec` enters the namespace and execs Janus in place (no fork): the child's
        // pid is Janus's, for its CPU figures and for killing it.
        let child = Command::new("ip")
            .args(["netns", "exec", &net.name])
            .arg(&exe)
            .arg(format!("--configs-folder={}", dir.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                anyhow::anyhow!("starting {} in {}: {e}", exe.display(), net.name)
            })?;
        let mut janus = Janus {
            child,
            url: format!("http://{}:{HTTP_PORT}/janus", net.ns_ip),
            net,
            dir,
        };
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = http.get(format!("{}/info", janus.url)).send().await
                && r.status().is_success()
            {
                let comm = std::fs::read_to_string(format!("/proc/{}/comm", janus.child.id()))
                    .unwrap_or_default();
                anyhow::ensure!(
                    comm.trim() == "janus",
                    "the process started in {} is `{}`, not janus: its CPU would not be Janus's",
                    janus.net.name,
                    comm.trim()
                );
                return Ok(janus);
            }
            if let Ok(Some(status)) = janus.child.try_wait() {
                anyhow::bail!("janus exited ({status}): {}", janus.log_tail());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "janus did not answer: {}",
                janus.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// CPU-seconds the Janus process has used (user + system, all threads).
    pub fn cpu_seconds(&self) -> f64 {
        crate::bench::process_cpu_seconds(self.child.id())
    }

    /// The last lines of Janus's log (for error messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// Creates an AudioBridge room (48 kHz, not recorded) through a short-lived session.
    pub async fn create_room(&self, room: u64) -> anyhow::Result<()> {
        let api = Api::new(&self.url);
        let session = api.create_session().await?;
        let handle = api.attach(session).await?;
        let r = api
            .message(
                session,
                handle,
                json!({"request": "create", "room": room, "description": "loadgen",
                       "sampling_rate": 48000, "record": false, "permanent": false}),
                None,
            )
            .await;
        let _ = api.destroy(session).await;
        match plugin_result(&r?) {
            Ok(_) => Ok(()),
            Err(PluginError { code: 486, .. }) => Ok(()), // already exists
            Err(e) => Err(anyhow::anyhow!("create room: {e}")),
        }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("LOADGEN_KEEP_JANUS").is_some() {
            eprintln!("Janus configuration and log kept in {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why Janus cannot run on this machine, if it cannot: no binary, no AudioBridge plugin, or no
/// way to give it a network namespace (no `ip` from iproute2, or not root).
pub fn preflight(bin: &str) -> Result<(), String> {
    if which(bin).is_none() {
        return Err(format!(
            "no `{bin}` binary (Debian package `janus`, see scripts/setup.sh)"
        ));
    }
    if lib_dir(bin).is_none() {
        return Err(format!(
            "`{bin}` found but not its AudioBridge plugin (…/janus/plugins)"
        ));
    }
    if which("ip").is_none() {
        return Err(
            "Janus runs in a network namespace of its own and there is no `ip` (iproute2) to \
             create one"
                .into(),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !can_create_netns(&status) {
        return Err(
            "Janus runs in a network namespace of its own and creating one needs root \
             (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
                .into(),
        );
    }
    Ok(())
}

/// Whether the effective capabilities in a `/proc/<pid>/status` text include CAP_NET_ADMIN (12)
/// and CAP_SYS_ADMIN (21), which `ip netns add` and the veth pair need.
fn can_create_netns(status: &str) -> bool {
    let Some(hex) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
    else {
        return false;
    };
    let caps = u64::from_str_radix(hex, 16).unwrap_or(0);
    caps & (1 << 12) != 0 && caps & (1 << 21) != 0
}

/// The Janus version `bin` reports (`Janus version: 1102 (1.1.2)` → `1.1.2`).
pub fn version(bin: &str) -> Option<String> {
    let out = Command::new(bin).arg("--help").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    parse_version(&text)
}

fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("Janus version:"))?;
    let v = line.split_once('(')?.1.split_once(')')?.0;
    Some(v.to_string())
}

/// Where the package's plugins live: `/usr/lib/<multiarch>/janus` on Debian, found next to the
/// binary's prefix.
fn lib_dir(bin: &str) -> Option<PathBuf> {
    let exe = which(bin)?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let prefix = exe.parent()?.parent()?.to_path_buf(); // …/bin/janus → …
    let mut candidates = vec![prefix.join("lib/janus")];
    if let Ok(d) = std::fs::read_dir(prefix.join("lib")) {
        candidates.extend(d.filter_map(|e| Some(e.ok()?.path().join("janus"))));
    }
    candidates
        .into_iter()
        .find(|c| c.join("plugins/libjanus_audiobridge.so").exists())
}

/// `bin` itself if it is a path, else its location on `PATH`.
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        return Path::new(bin).is_file().then(|| PathBuf::from(bin));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The `disable` value that leaves only [`KEEP`] of a plugin folder's files (`.so` names).
fn disable_list(files: &[String]) -> String {
    let mut v: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| f.ends_with(".so") && !KEEP.contains(f))
        .collect();
    v.sort_unstable();
    v.join(",")
}

/// Runs `ip` with `args`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace joined to the host by a veth pair (`host_if` 10.231.k.1/30 on the host,
/// `ns_if` 10.231.k.2/30 in the namespace, no default route there): both are deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// `mcu-janus-<pid>-<n>`.
    pub name: String,
    /// The host end of the veth pair.
    pub host_if: String,
    /// The namespace end of the veth pair (the only interface there besides `lo`).
    pub ns_if: String,
    /// The host end's address: the Janus participants bind it.
    pub host_ip: Ipv4Addr,
    /// The namespace end's address: Janus's HTTP API and its only ICE candidates.
    pub ns_ip: Ipv4Addr,
}

impl Netns {
    /// Creates the namespace and the veth pair on a `/30` no interface or route of this host
    /// uses yet.
    pub fn create() -> anyhow::Result<Netns> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let used = used_prefixes(
            &(ip(&["-4", "-o", "addr", "show"])? + &ip(&["-4", "route", "show", "table", "all"])?),
        );
        let net = free_subnet(&used, pid.wrapping_add(n))
            .ok_or_else(|| anyhow::anyhow!("no free /30 in 10.231.0.0/16 for Janus's veth"))?;
        let [a, b, c, d] = net.octets();
        let ns = Netns {
            name: format!("{NS_PREFIX}{pid}-{n}"),
            host_if: format!("{VETH_HOST}{pid}-{n}"),
            ns_if: format!("{VETH_NS}{pid}-{n}"),
            host_ip: Ipv4Addr::new(a, b, c, d + 1),
            ns_ip: Ipv4Addr::new(a, b, c, d + 2),
        };
        ns.setup()?; // on error, dropping `ns` deletes what was created
        Ok(ns)
    }

    fn setup(&self) -> anyhow::Result<()> {
        let (ns, h, v) = (
            self.name.as_str(),
            self.host_if.as_str(),
            self.ns_if.as_str(),
        );
        let host_cidr = format!("{}/30", self.host_ip);
        let ns_cidr = format!("{}/30", self.ns_ip);
        ip(&["netns", "add", ns])?;
        ip(&["link", "add", h, "type", "veth", "peer", "name", v])?;
        ip(&["link", "set", v, "netns", ns])?;
        // IPv6 off on both ends (best effort: the kernel may have no IPv6): the pair carries
        // only the IPv4 test traffic.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{h}/disable_ipv6"), "1");
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg(format!(
                "echo 1 > /proc/sys/net/ipv6/conf/{v}/disable_ipv6; \
                 echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6"
            ))
            .stderr(Stdio::null())
            .status();
        ip(&["addr", "add", &host_cidr, "dev", h])?;
        ip(&["link", "set", h, "up"])?;
        ip(&["-n", ns, "addr", "add", &ns_cidr, "dev", v])?;
        ip(&["-n", ns, "link", "set", v, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // Nothing can leave the namespace but towards the host end: only the /30 is routed.
        let routes = ip(&["-n", ns, "-4", "route", "show", "table", "all"])?;
        anyhow::ensure!(
            !routes.lines().any(|l| l.starts_with("default")),
            "namespace {ns} has a default route: {routes}"
        );
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the host end; deleting the
        // host end as well covers a pair that never made it into the namespace.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Deletes the namespaces and host-side veths that runs which died left behind (ours are named
/// after the creating process's pid; those of live processes, parallel runs, are kept).
pub fn clean_stale() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in stale_names(&list, NS_PREFIX, alive) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show", "type", "veth"]) {
        // `5: vjh123-0@if4: <…` → `vjh123-0`.
        let names: String = links
            .lines()
            .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
            .map(|n| format!("{n}\n"))
            .collect();
        for name in stale_names(&names, VETH_HOST, alive) {
            let _ = ip(&["link", "del", &name]);
        }
    }
}

/// The names (first word of each line) that start with `prefix<pid>-` for a `pid` not alive.
fn stale_names(list: &str, prefix: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
                .is_some_and(|pid| !alive(pid))
        })
        .map(str::to_owned)
        .collect()
}

/// Every IPv4 prefix (`a.b.c.d/len`, or an address as a /32) named in `ip -4 addr` / `ip -4
/// route` output. The default route is not a prefix any interface uses.
fn used_prefixes(text: &str) -> Vec<(Ipv4Addr, u8)> {
    text.split_whitespace()
        .filter_map(|w| {
            let (a, len) = w.split_once('/').unwrap_or((w, "32"));
            Some((a.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
        })
        .collect()
}

/// Whether two prefixes overlap.
fn overlaps((a, la): (Ipv4Addr, u8), (b, lb): (Ipv4Addr, u8)) -> bool {
    let l = u32::from(la.min(lb));
    let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
    u32::from(a) & mask == u32::from(b) & mask
}

/// A 10.231.k.0/30 that overlaps none of `used`, searched from k = `seed` mod 256 (so that
/// parallel runs start apart).
fn free_subnet(used: &[(Ipv4Addr, u8)], seed: u32) -> Option<Ipv4Addr> {
    (0..256u32)
        .map(|i| Ipv4Addr::new(10, 231, ((seed + i) % 256) as u8, 0))
        .find(|net| !used.iter().any(|u| overlaps(*u, (*net, 30))))
}

/// An HTTP client for Janus's API that never goes through a proxy (the API is on the veth).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// The generated configuration.
struct Config {
    dir: PathBuf,
    lib: PathBuf,
    /// The only interface Janus gathers ICE candidates on (the namespace end of the veth).
    ice_interface: String,
    /// Where the HTTP API listens (the namespace end's address).
    http_ip: Ipv4Addr,
    http_port: u16,
    disable_plugins: String,
    disable_transports: String,
    disable_loggers: String,
    /// Janus's log level (4: info; `LOADGEN_JANUS_DEBUG_LEVEL` up to 7 to debug ICE).
    debug_level: u8,
}

impl Config {
    /// (file name, contents) of every configuration file.
    fn files(&self) -> Vec<(&'static str, String)> {
        let (dir, lib, level) = (self.dir.display(), self.lib.display(), self.debug_level);
        let core = format!(
            r#"general: {{
	configs_folder = "{dir}"
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	log_to_stdout = false
	log_to_file = "{dir}/janus.log"
	debug_level = {level}
	debug_colors = false
	daemonize = false
	session_timeout = 60
}}
media: {{
	ipv6 = false
	rtp_port_range = "{}-{}"
}}
nat: {{
	nice_debug = false
	ice_enforce_list = "{}"
	ignore_mdns = true
}}
plugins: {{
	disable = "{}"
}}
transports: {{
	disable = "{}"
}}
loggers: {{
	disable = "{}"
}}
events: {{
	broadcast = false
}}
"#,
            RTP_PORT_RANGE.0,
            RTP_PORT_RANGE.1,
            self.ice_interface,
            self.disable_plugins,
            self.disable_transports,
            self.disable_loggers,
        );
        let http = format!(
            r#"general: {{
	json = "plain"
	base_path = "/janus"
	http = true
	ip = "{}"
	port = {}
	https = false
}}
admin: {{
	admin_http = false
	admin_https = false
}}
"#,
            self.http_ip, self.http_port
        );
        // Rooms are created through the API; no static ones.
        let audiobridge = "general: {\n\tevents = false\n}\n".to_string();
        vec![
            ("janus.jcfg", core),
            ("janus.transport.http.jcfg", http),
            ("janus.plugin.audiobridge.jcfg", audiobridge),
        ]
    }
}

/// An error reported by the AudioBridge plugin (`error_code`, `error`).
#[derive(Debug, PartialEq)]
pub struct PluginError {
    /// AudioBridge error code (486: room exists, 485: no such room…).
    pub code: i64,
    /// Its text.
    pub reason: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AudioBridge error {}: {}", self.code, self.reason)
    }
}

/// A Janus API error (`"janus": "error"`) as a message, or the reply itself.
fn janus_ok(v: Value) -> anyhow::Result<Value> {
    if v["janus"] == "error" {
        anyhow::bail!(
            "Janus error {}: {}",
            v["error"]["code"],
            v["error"]["reason"].as_str().unwrap_or("?")
        );
    }
    Ok(v)
}

/// The id in a `success` reply to `create` / `attach`.
fn success_id(v: &Value) -> anyhow::Result<u64> {
    anyhow::ensure!(v["janus"] == "success", "expected success, got {v}");
    v["data"]["id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no id in {v}"))
}

/// The plugin's data of a reply or event, or the error it reports.
fn plugin_result(v: &Value) -> Result<&Value, PluginError> {
    let data = &v["plugindata"]["data"];
    if let Some(code) = data["error_code"].as_i64() {
        return Err(PluginError {
            code,
            reason: data["error"].as_str().unwrap_or_default().into(),
        });
    }
    if data.is_null() {
        return Err(PluginError {
            code: 0,
            reason: format!("no plugin data in {v}"),
        });
    }
    Ok(data)
}

/// What a participant does with one long-poll event.
#[derive(Debug, PartialEq)]
enum Event {
    /// Our join's answer.
    Answer(String),
    /// The plugin refused something we asked.
    Error(String),
    /// Janus closed our PeerConnection.
    Hangup(String),
    /// Anything else (keepalives, `webrtcup`, `media`, other participants joining).
    Other,
}

/// The events of a long-poll reply (an array with `maxev`, a single object without).
fn poll_events(body: Value) -> Vec<Value> {
    match body {
        Value::Array(v) => v,
        v => vec![v],
    }
}

/// Classifies a long-poll event for handle `handle`.
fn classify(v: &Value, handle: u64) -> Event {
    if v["sender"].as_u64() != Some(handle) {
        return Event::Other;
    }
    match v["janus"].as_str() {
        Some("event") => {
            if let Err(e) = plugin_result(v) {
                return Event::Error(e.to_string());
            }
            match (v["jsep"]["type"].as_str(), v["jsep"]["sdp"].as_str()) {
                (Some("answer"), Some(sdp)) => Event::Answer(sdp.into()),
                _ => Event::Other,
            }
        }
        Some("hangup") => Event::Hangup(v["reason"].as_str().unwrap_or("?").into()),
        _ => Event::Other,
    }
}

/// Connection addresses of the `a=candidate` lines of an SDP.
fn candidate_ips(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

/// Janus's HTTP API (one client per participant, as a browser would be).
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            http: client(),
            base: base.into(),
        }
    }

    async fn post(&self, path: &str, mut body: Value) -> anyhow::Result<Value> {
        body["transaction"] = json!(format!("{:016x}", rand::random::<u64>()));
        let v: Value = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        janus_ok(v)
    }

    async fn create_session(&self) -> anyhow::Result<u64> {
        success_id(&self.post("", json!({"janus": "create"})).await?)
    }

    async fn attach(&self, session: u64) -> anyhow::Result<u64> {
        let r = self
            .post(
                &format!("/{session}"),
                json!({"janus": "attach", "plugin": "janus.plugin.audiobridge"}),
            )
            .await?;
        success_id(&r)
    }

    async fn message(
        &self,
        session: u64,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut m = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            m["jsep"] = j;
        }
        self.post(&format!("/{session}/{handle}"), m).await
    }

    /// One long-poll: returns when Janus has events, or after its 30 s keepalive.
    async fn poll(&self, session: u64) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/{session}?maxev={MAX_EVENTS}", self.base))
            .send()
            .await?
            .json()
            .await?;
        Ok(poll_events(janus_ok(v)?))
    }

    async fn destroy(&self, session: u64) -> anyhow::Result<()> {
        self.post(&format!("/{session}"), json!({"janus": "destroy"}))
            .await
            .map(|_| ())
    }
}

/// Where a Janus participant joins.
#[derive(Debug, Clone)]
pub struct JanusTarget {
    /// `http://<namespace end>:8088/janus`.
    pub url: String,
    /// AudioBridge room.
    pub room: u64,
    /// The host end of Janus's veth pair: the participant binds its UDP sockets there.
    pub bind_ip: Ipv4Addr,
    /// The namespace end: Janus's answer may carry no other candidate.
    pub janus_ip: Ipv4Addr,
}

/// Joins the AudioBridge room, sends and receives until `stop` fires, then leaves and reports.
pub async fn run(
    spec: Spec,
    target: JanusTarget,
    voice: Arc<Voice>,
    shared: Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Report {
    let rx = Arc::new(Mutex::new(Rx::default()));
    let mut report = Report {
        id: spec.id,
        ..Report::default()
    };
    let opened = Instant::now();
    let r = session(
        &spec,
        &target,
        voice,
        &shared,
        talkers,
        &rx,
        &mut stop,
        &mut report,
        opened,
    )
    .await;
    if let Err(e) = r {
        report.error = Some(format!("{e:#}"));
    }
    collect(&rx, opened, &mut report);
    report
}

#[allow(clippy::too_many_arguments)]
async fn session(
    spec: &Spec,
    target: &JanusTarget,
    voice: Arc<Voice>,
    shared: &Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
    rx: &Arc<Mutex<Rx>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    report: &mut Report,
    opened: Instant,
) -> anyhow::Result<()> {
    let api = Api::new(&target.url);
    let session = api.create_session().await?;
    let result = joined(
        &api, session, spec, target, voice, shared, talkers, rx, stop, report, opened,
    )
    .await;
    // Destroying the session detaches the handle and hangs up its PeerConnection.
    let _ = tokio::time::timeout(Duration::from_secs(2), api.destroy(session)).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn joined(
    api: &Api,
    session: u64,
    spec: &Spec,
    target: &JanusTarget,
    voice: Arc<Voice>,
    shared: &Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
    rx: &Arc<Mutex<Rx>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    report: &mut Report,
    opened: Instant,
) -> anyhow::Result<()> {
    let handle = api.attach(session).await?;
    let (handler, mut gathered) = Handler::new(None, rx.clone(), *spec, shared.clone(), talkers);
    // Janus is in its own namespace (see the module doc): our sockets are on the host end of
    // its veth pair, so our candidates are that address only.
    let pc = peer_connection(handler, target.bind_ip.into(), None).await?;
    let audio = audio_track()?;
    let a: Arc<dyn TrackLocal> = audio.clone();
    let audio_sender = pc.add_track(a).await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    // Half-trickle: the offer carries our candidates (gathering on loopback takes milliseconds).
    tokio::time::timeout(Duration::from_secs(5), gathered.wait_for(|g| *g))
        .await
        .map_err(|_| anyhow::anyhow!("ICE gathering did not complete"))??;
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| anyhow::anyhow!("no local description"))?
        .sdp;
    let ack = api
        .message(
            session,
            handle,
            json!({"request": "join", "room": target.room,
                   "display": format!("synthetic-{}", spec.id), "muted": false}),
            Some(json!({"type": "offer", "sdp": sdp})),
        )
        .await?;
    if ack["janus"] != "ack" {
        // A synchronous reply instead of an ack is the plugin refusing the request.
        plugin_result(&ack).map_err(|e| anyhow::anyhow!("join: {e}"))?;
    }

    let mut sender: Option<tokio::task::JoinHandle<()>> = None;
    shared
        .in_room
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let result: anyhow::Result<()> = async {
        loop {
            let events = tokio::select! {
                _ = stop.changed() => break,
                r = api.poll(session) => r?,
            };
            for ev in &events {
                tracing::debug!(id = spec.id, "janus event: {ev}");
                match classify(ev, handle) {
                    Event::Answer(sdp) => {
                        let pinned = target.janus_ip.to_string();
                        if let Some(ip) = candidate_ips(&sdp).into_iter().find(|ip| *ip != pinned) {
                            anyhow::bail!("Janus answered with candidate {ip}, not its veth address {pinned}: refusing to send there");
                        }
                        report.welcome_ms = Some(opened.elapsed().as_secs_f64() * 1000.0);
                        pc.set_remote_description(RTCSessionDescription::answer(sdp.clone())?).await?;
                        let pt = payload_type(&audio_sender).await?;
                        let dtx = dtx_asked(&sdp, pt);
                        sender = Some(tokio::spawn(send_audio(audio.clone(), pt, voice.clone(), *spec, shared.clone(), dtx)));
                    }
                    Event::Error(e) => anyhow::bail!("{e}"),
                    Event::Hangup(reason) => anyhow::bail!("Janus hung up: {reason}"),
                    Event::Other => {}
                }
            }
        }
        Ok(())
    }
    .await;
    shared
        .in_room
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(s) = sender {
        s.abort();
    }
    let _ = pc.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_avoids_every_used_prefix() {
        // `ip -4 -o addr show` and `ip -4 route show table all` of a host with eth0 on
        // 192.0.2.0/24, one stale-looking 10.231.0.0/30 and a route covering 10.231.1.0/24.
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\n\
            4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n\
            9: vjh7-0    inet 10.231.0.1/30 scope global vjh7-0\n\
            default via 192.0.2.1 dev eth0\n\
            10.231.1.0/24 via 192.0.2.9 dev eth0\n\
            local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1\n";
        let used = used_prefixes(text);
        assert!(used.contains(&(Ipv4Addr::new(192, 0, 2, 2), 24)));
        assert!(used.contains(&(Ipv4Addr::new(192, 0, 2, 1), 32)));
        assert!(
            !used.iter().any(|(_, l)| *l == 0),
            "default is not a prefix"
        );
        assert_eq!(free_subnet(&used, 0), Some(Ipv4Addr::new(10, 231, 2, 0)));
        assert_eq!(
            free_subnet(&used, 256 + 5),
            Some(Ipv4Addr::new(10, 231, 5, 0))
        );
        assert_eq!(free_subnet(&[], 7), Some(Ipv4Addr::new(10, 231, 7, 0)));
        // A route over all of 10/8 leaves nothing.
        assert_eq!(free_subnet(&[(Ipv4Addr::new(10, 0, 0, 0), 8)], 0), None);
        assert!(overlaps(
            (Ipv4Addr::new(10, 231, 3, 2), 32),
            (Ipv4Addr::new(10, 231, 3, 0), 30)
        ));
        assert!(!overlaps(
            (Ipv4Addr::new(10, 231, 3, 4), 32),
            (Ipv4Addr::new(10, 231, 3, 0), 30)
        ));
    }

    #[test]
    fn stale_namespaces_and_links_of_dead_runs() {
        let list = "mcu-janus-100-0 (id: 3)\nmcu-janus-200-1\nother-ns\nmcu-janus-x-1\n";
        let alive = |pid: u32| pid == 200;
        assert_eq!(
            stale_names(list, NS_PREFIX, alive),
            vec!["mcu-janus-100-0".to_string()]
        );
        assert_eq!(
            stale_names("vjh100-0\nvjh200-0\nvethX\n", VETH_HOST, alive),
            vec!["vjh100-0".to_string()]
        );
    }

    #[test]
    fn namespace_needs_net_and_sys_admin() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let user = "Name:\tx\nCapEff:\t0000000000000000\n";
        let net_only = "CapEff:\t0000000000001000\n";
        assert!(can_create_netns(root));
        assert!(!can_create_netns(user));
        assert!(!can_create_netns(net_only));
        assert!(!can_create_netns(""));
    }

    #[test]
    fn version_line() {
        let help = "Janus version: 1102 (1.1.2)\nJanus commit: not-a-git-repo\n\nUsage:\n";
        assert_eq!(parse_version(help).as_deref(), Some("1.1.2"));
        assert_eq!(parse_version("Usage: janus"), None);
    }

    #[test]
    fn disable_everything_but_audiobridge_and_http() {
        let files: Vec<String> = [
            "libjanus_audiobridge.so",
            "libjanus_audiobridge.so.1",
            "libjanus_audiobridge.so.1.1.2",
            "libjanus_videoroom.so",
            "libjanus_videoroom.so.1.1.2",
            "libjanus_echotest.so",
            "libjanus_http.so",
            "libjanus_websockets.so",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            disable_list(&files),
            "libjanus_echotest.so,libjanus_videoroom.so,libjanus_websockets.so"
        );
        assert_eq!(disable_list(&[]), "");
    }

    #[test]
    fn config_binds_the_namespace_end_and_pins_ice_to_the_veth() {
        let c = Config {
            dir: "/tmp/j".into(),
            lib: "/usr/lib/x/janus".into(),
            ice_interface: "vjn42-0".into(),
            http_ip: Ipv4Addr::new(10, 231, 0, 2),
            http_port: 4321,
            disable_plugins: "a.so".into(),
            disable_transports: "b.so".into(),
            disable_loggers: "c.so".into(),
            debug_level: 4,
        };
        let files = c.files();
        let get = |n: &str| &files.iter().find(|(f, _)| *f == n).unwrap().1;
        let core = get("janus.jcfg");
        for want in [
            "configs_folder = \"/tmp/j\"",
            "plugins_folder = \"/usr/lib/x/janus/plugins\"",
            "log_to_file = \"/tmp/j/janus.log\"",
            "log_to_stdout = false",
            "daemonize = false",
            "ipv6 = false",
            "rtp_port_range = \"20000-29999\"",
            "ice_enforce_list = \"vjn42-0\"",
            "disable = \"a.so\"",
            "disable = \"b.so\"",
            "disable = \"c.so\"",
            "broadcast = false",
        ] {
            assert!(core.contains(want), "{want} missing in\n{core}");
        }
        assert!(!core.contains("stun_server") && !core.contains("turn_server"));
        let http = get("janus.transport.http.jcfg");
        assert!(http.contains("ip = \"10.231.0.2\"") && http.contains("port = 4321"));
        assert!(http.contains("admin_http = false") && http.contains("https = false"));
    }

    #[test]
    fn replies() {
        let created =
            json!({"janus": "success", "transaction": "t", "data": {"id": 7939998534523615u64}});
        assert_eq!(success_id(&created).unwrap(), 7939998534523615);
        let err = json!({"janus": "error", "error": {"code": 458, "reason": "No such session"}});
        let e = janus_ok(err).unwrap_err().to_string();
        assert!(e.contains("458") && e.contains("No such session"), "{e}");
        assert!(success_id(&json!({"janus": "ack"})).is_err());

        let room = json!({"janus": "success", "plugindata": {"plugin": "janus.plugin.audiobridge",
            "data": {"audiobridge": "created", "room": 77, "permanent": false}}});
        assert_eq!(plugin_result(&room).unwrap()["audiobridge"], "created");
        let exists = json!({"janus": "success", "plugindata": {"plugin": "janus.plugin.audiobridge",
            "data": {"audiobridge": "event", "error_code": 486, "error": "Room 77 already exists"}}});
        assert_eq!(
            plugin_result(&exists).unwrap_err(),
            PluginError {
                code: 486,
                reason: "Room 77 already exists".into()
            }
        );
        assert!(plugin_result(&json!({"janus": "ack"})).is_err());
    }

    #[test]
    fn long_poll_events() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 2015363327 10.231.0.2 41514 typ host\r\na=end-of-candidates\r\n";
        let joined = json!({"janus": "event", "sender": 5, "transaction": "d",
            "plugindata": {"plugin": "janus.plugin.audiobridge",
                "data": {"audiobridge": "joined", "room": 77, "id": 36, "participants": []}},
            "jsep": {"type": "answer", "sdp": sdp}});
        let other_joined = json!({"janus": "event", "sender": 5,
            "plugindata": {"plugin": "janus.plugin.audiobridge",
                "data": {"audiobridge": "joined", "room": 77, "participants": [{"id": 9}]}}});
        let refused = json!({"janus": "event", "sender": 5,
            "plugindata": {"plugin": "janus.plugin.audiobridge",
                "data": {"audiobridge": "event", "error_code": 485, "error": "No such room (78)"}}});
        let hangup = json!({"janus": "hangup", "sender": 5, "reason": "DTLS alert"});
        let events = poll_events(json!([joined, other_joined, refused, hangup,
            {"janus": "webrtcup", "sender": 5}, {"janus": "keepalive"}]));
        let got: Vec<Event> = events.iter().map(|e| classify(e, 5)).collect();
        assert_eq!(
            got,
            vec![
                Event::Answer(sdp.into()),
                Event::Other,
                Event::Error("AudioBridge error 485: No such room (78)".into()),
                Event::Hangup("DTLS alert".into()),
                Event::Other,
                Event::Other,
            ]
        );
        // Another handle's events are not ours; a single object (no maxev) is one event.
        assert_eq!(classify(&events[0], 6), Event::Other);
        assert_eq!(poll_events(json!({"janus": "keepalive"})).len(), 1);
        assert_eq!(candidate_ips(sdp), vec!["10.231.0.2".to_string()]);
    }
}
