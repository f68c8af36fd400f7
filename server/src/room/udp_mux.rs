//! Every participant's media on one UDP socket (`MCU_UDP_PORTS=PORT`, the default).
//!
//! The webrtc 0.21 wrapper binds a socket per connection and hands it to its [`Runtime`] to wrap.
//! [`MuxRuntime`] is that runtime for one peer: it lets the wrapper bind its throwaway socket
//! (the port it picks is what the connection's ICE agent believes is local; the candidates we
//! hand out are rewritten to the shared port, see [`rewrite_candidate_port`]), closes it, and
//! returns a [`MuxSocket`]: a queue fed by the one [`UdpMux`] receive loop, sending through the
//! shared socket. The connection's sans-IO core (`rtc`) cannot tell the difference.
//!
//! Routing a datagram that arrives at the port, in this order:
//! 1. its source address is known: to that peer (routes are learned from the two below);
//! 2. a STUN binding request whose USERNAME starts with a registered ufrag (each answer's
//!    `a=ice-ufrag`, so an ICE restart registers the new one): to that peer, and the source
//!    becomes a route. A client whose address changes (NAT rebinding) is found again this way at
//!    its next consent check. When the address the connection sends media to has been silent
//!    for [`REBIND_SILENCE`] while the client talks from the new one, the new one stands for the
//!    old one both ways (the ICE agent of `rtc` keeps the pair it selected first, so it would go
//!    on sending to an address that is gone);
//! 3. anything else is dropped after a look at a few bytes, counted. An address also becomes a
//!    route when a peer sends to it (its ICE agent checks the candidates its client signalled),
//!    unless another peer holds it.
//!
//! Limits: a peer keeps at most [`MAX_ROUTES_PER_PEER`] addresses (oldest forgotten), its queue
//! holds [`PEER_QUEUE`] datagrams (a flooding participant loses its own packets, nobody else's),
//! and STUN from addresses that are not routes is rate-limited per source IP
//! ([`STUN_PER_SOURCE_PER_S`]), so a host spraying binding requests cannot make the loop parse
//! or route at its pace.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::mpsc;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    Transmit, UdpSockRef, UdpSocketState,
};

/// Datagrams queued for one peer's connection before new ones are dropped.
pub const PEER_QUEUE: usize = 1024;
/// Remote addresses one peer may hold (its client's candidates that checked in).
pub const MAX_ROUTES_PER_PEER: usize = 8;
/// A client silent this long on every address it used, then heard from a new one with a check
/// naming its connection, has been moved by its NAT (rebinding).
pub const REBIND_SILENCE: Duration = Duration::from_secs(1);
/// STUN messages per second accepted from one source IP that is not a route yet.
pub const STUN_PER_SOURCE_PER_S: u32 = 200;
/// Source IPs whose STUN rate is tracked at once (beyond it, the table starts again).
const TRACKED_SOURCES: usize = 4096;
/// Receive buffer asked of the kernel (capped by `net.core.rmem_max`).
const RECV_BUFFER_BYTES: usize = 8 << 20;
/// Largest datagram read (GRO may coalesce several of one flow in a buffer).
const DATAGRAM_MAX: usize = 1500;
/// STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// One datagram for a peer.
#[derive(Debug)]
struct Datagram {
    from: SocketAddr,
    data: Vec<u8>,
}

/// What the shared socket saw, for the logs and the metrics.
#[derive(Debug, Default)]
pub struct MuxCounters {
    /// Datagrams routed to a peer.
    pub routed: AtomicU64,
    /// Datagrams from an unknown source that were not a STUN request for a known ufrag.
    pub dropped_unknown: AtomicU64,
    /// STUN from non-routes over the per-source rate.
    pub dropped_rate: AtomicU64,
    /// Datagrams dropped because the peer's queue was full.
    pub dropped_queue: AtomicU64,
}

/// A peer's entry: its sockets (one per local IP its connection bound), ufrags and addresses.
#[derive(Debug, Default)]
struct PeerRoutes {
    sockets: Vec<(IpAddr, mpsc::Sender<Datagram>)>,
    ufrags: Vec<String>,
    addrs: VecDeque<SocketAddr>,
    /// Where its connection sends media (DTLS, SRTP): the address it selected, as it knows it.
    sends_to: Option<SocketAddr>,
}

/// Where a source address leads.
#[derive(Debug, Clone, Copy)]
struct Route {
    peer: u64,
    /// The address the peer's connection knows this client by: the source itself, or after a
    /// NAT rebinding the address the client had before.
    core: SocketAddr,
    /// Last datagram from it.
    seen: Option<Instant>,
}

#[derive(Debug, Default)]
struct Routes {
    next_id: u64,
    peers: HashMap<u64, PeerRoutes>,
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, Route>,
    /// Rebound clients: the address a connection sends to -> where the client is now.
    moved: HashMap<SocketAddr, SocketAddr>,
    /// STUN budget per source IP over the current second.
    stun_budget: HashMap<IpAddr, u32>,
    budget_since: Option<Instant>,
}

impl Routes {
    fn add_addr(&mut self, peer: u64, addr: SocketAddr) {
        self.add_route(peer, addr, addr, None);
    }

    fn add_route(&mut self, peer: u64, addr: SocketAddr, core: SocketAddr, seen: Option<Instant>) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        let route = Route { peer, core, seen };
        if let Some(old) = self.by_addr.insert(addr, route)
            && old.peer != peer
            && let Some(o) = self.peers.get_mut(&old.peer)
        {
            o.addrs.retain(|a| *a != addr);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.addrs.contains(&addr) {
            p.addrs.push_back(addr);
            if p.addrs.len() > MAX_ROUTES_PER_PEER
                && let Some(gone) = p.addrs.pop_front()
            {
                self.by_addr.remove(&gone);
            }
        }
    }

    /// The address `peer`'s connection sends media to, when nothing has come from there (or
    /// from where it moved) for [`REBIND_SILENCE`]: its client is gone from it. If the client
    /// talks from another address meanwhile, its NAT moved it.
    fn stale_target(&self, peer: u64, now: Instant) -> Option<SocketAddr> {
        let target = self.peers.get(&peer)?.sends_to?;
        let wire = self.moved.get(&target).copied().unwrap_or(target);
        let seen = self.by_addr.get(&wire)?.seen?;
        (now.duration_since(seen) >= REBIND_SILENCE).then_some(target)
    }

    /// A datagram of `peer` came from `from`, which its connection knows as itself: when the
    /// connection's media goes to an address gone silent, `from` is where the client went, and
    /// from now on stands for it both ways. Returns the address to hand the connection.
    fn follow_rebinding(&mut self, peer: u64, from: SocketAddr, now: Instant) -> SocketAddr {
        let Some(target) = self.stale_target(peer, now).filter(|t| *t != from) else {
            return from;
        };
        self.moved.insert(target, from);
        if let Some(route) = self.by_addr.get_mut(&from) {
            route.core = target;
        }
        tracing::info!(%from, was = %target, peer, "client moved (NAT rebinding)");
        target
    }

    /// Whether one more STUN message from `ip` fits this second's budget.
    fn stun_allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self
            .budget_since
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            || self.stun_budget.len() >= TRACKED_SOURCES
        {
            self.stun_budget.clear();
            self.budget_since = Some(now);
        }
        let used = self.stun_budget.entry(ip).or_insert(0);
        *used += 1;
        *used <= STUN_PER_SOURCE_PER_S
    }
}

/// The one media socket and its routing table.
#[derive(Debug)]
pub struct UdpMux {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
    routes: Mutex<Routes>,
    /// What it saw.
    pub counters: MuxCounters,
}

impl UdpMux {
    /// Binds the shared socket and starts its receive loop on `rt`.
    pub fn bind(addr: SocketAddr, rt: &tokio::runtime::Handle) -> io::Result<Arc<UdpMux>> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let _guard = rt.enter();
        let io = tokio::net::UdpSocket::from_std(std)?;
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        if let Err(e) = state.set_recv_buffer_size(UdpSockRef::from(&io), RECV_BUFFER_BYTES) {
            tracing::warn!(error = %e, "cannot enlarge the media socket's receive buffer");
        }
        let local = io.local_addr()?;
        let mux = Arc::new(UdpMux {
            io,
            state,
            local,
            routes: Mutex::new(Routes::default()),
            counters: MuxCounters::default(),
        });
        rt.spawn(receive_loop(Arc::downgrade(&mux)));
        tracing::info!(%local, "media on one UDP socket");
        Ok(mux)
    }

    /// The shared socket's address (its port is what candidates advertise).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Registers a new peer; it is forgotten when the returned handle drops.
    pub fn register(self: &Arc<Self>) -> MuxPeer {
        let mut r = self.routes.lock();
        r.next_id += 1;
        let id = r.next_id;
        r.peers.insert(id, PeerRoutes::default());
        MuxPeer {
            mux: self.clone(),
            id,
        }
    }

    /// Routes one received datagram.
    fn deliver(&self, from: SocketAddr, dst_ip: Option<IpAddr>, data: &[u8], now: Instant) {
        let mut r = self.routes.lock();
        let (peer, core) = match r.by_addr.get_mut(&from) {
            Some(route) => {
                route.seen = Some(now);
                let (peer, core) = (route.peer, route.core);
                if core == from {
                    (peer, r.follow_rebinding(peer, from, now))
                } else {
                    (peer, core)
                }
            }
            None => {
                if !is_stun(data) {
                    self.counters.dropped_unknown.fetch_add(1, Relaxed);
                    return;
                }
                if !r.stun_allowed(from.ip(), now) {
                    self.counters.dropped_rate.fetch_add(1, Relaxed);
                    return;
                }
                let Some(p) = stun_binding_ufrag(data).and_then(|u| r.by_ufrag.get(u).copied())
                else {
                    self.counters.dropped_unknown.fetch_add(1, Relaxed);
                    return;
                };
                r.add_route(p, from, from, Some(now));
                tracing::debug!(%from, peer = p, "media route learned from a STUN check");
                (p, r.follow_rebinding(p, from, now))
            }
        };
        let Some(entry) = r.peers.get(&peer) else {
            return;
        };
        // The socket the client sent to (a connection binds one per local IP).
        let socket = entry
            .sockets
            .iter()
            .find(|(ip, _)| Some(*ip) == dst_ip)
            .or_else(|| entry.sockets.first());
        let Some((_, tx)) = socket else {
            return;
        };
        let d = Datagram {
            from: core,
            data: data.to_vec(),
        };
        if tx.try_send(d).is_ok() {
            self.counters.routed.fetch_add(1, Relaxed);
        } else {
            self.counters.dropped_queue.fetch_add(1, Relaxed);
        }
    }

    /// Sends one transmit, or registers `wait` (this sender's own wait for writability: tokio
    /// keeps a single waker for `poll_send_ready`, and every peer's driver sends here).
    fn poll_send(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        t: &Transmit<'_>,
        destination: SocketAddr,
        src_ip: Option<IpAddr>,
        wait: &mut Option<WritableWait>,
    ) -> Poll<io::Result<usize>> {
        let t = Transmit {
            destination,
            ecn: t.ecn,
            contents: t.contents,
            segment_size: t.segment_size,
            src_ip,
        };
        loop {
            if let Some(w) = wait.as_mut() {
                match w.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        *wait = None;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Ready(Ok(())) => *wait = None,
                }
            }
            // Through `try_io` so that tokio's cached readiness learns about WouldBlock.
            match self.io.try_io(Interest::WRITABLE, || {
                self.state
                    .try_send(UdpSockRef::from(&self.io), &t)
                    .map(|()| t.contents.len())
            }) {
                Err(ref e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mux = self.clone();
                    *wait = Some(Box::pin(async move { mux.io.writable().await }));
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

/// One sender's wait for the shared socket to become writable.
type WritableWait = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// Reads the shared socket until the mux is dropped.
async fn receive_loop(mux: std::sync::Weak<UdpMux>) {
    let batch = webrtc::runtime::BATCH_SIZE.max(1);
    let gro = mux.upgrade().map_or(1, |m| m.state.gro_segments().max(1));
    let mut storage = vec![vec![0u8; DATAGRAM_MAX * gro]; batch];
    let mut meta = vec![RecvMeta::default(); batch];
    loop {
        let Some(m) = mux.upgrade() else { return };
        if let Err(e) = m.io.readable().await {
            tracing::error!(error = %e, "media socket unreadable; media stops");
            return;
        }
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let got = m.io.try_io(Interest::READABLE, || {
            let n = m
                .state
                .recv(UdpSockRef::from(&m.io), &mut bufs, &mut meta)?;
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        drop(bufs);
        match got {
            Ok(n) => {
                let now = Instant::now();
                for (buf, meta) in storage.iter().zip(&meta).take(n) {
                    let stride = if meta.stride == 0 {
                        meta.len.max(1)
                    } else {
                        meta.stride
                    };
                    for d in buf[..meta.len].chunks(stride) {
                        m.deliver(meta.addr, meta.dst_ip, d, now);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // ICMP errors surface here (port unreachable from a client that left): not fatal.
            Err(e) => tracing::debug!(error = %e, "media socket receive error"),
        }
    }
}

/// RFC 7983: a STUN message starts with 0..=3, and RFC 5389 puts the cookie at 4..8.
fn is_stun(data: &[u8]) -> bool {
    data.len() >= 20 && data[0] < 4 && data[4..8] == MAGIC_COOKIE
}

/// The local ufrag named by a STUN binding request (USERNAME is `local:remote`), if it is one.
fn stun_binding_ufrag(data: &[u8]) -> Option<&str> {
    if !is_stun(data) || data[0..2] != [0x00, 0x01] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    let body = data.get(20..20 + len)?;
    let mut pos = 0;
    while pos + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[pos], body[pos + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[pos + 2], body[pos + 3]]));
        let value = body.get(pos + 4..pos + 4 + alen)?;
        if typ == 0x0006 {
            let user = std::str::from_utf8(value).ok()?;
            return user.split(':').next();
        }
        pos += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// A peer's registration; dropping it removes every route to it.
#[derive(Debug)]
pub struct MuxPeer {
    mux: Arc<UdpMux>,
    id: u64,
}

impl MuxPeer {
    /// Routes STUN checks naming `ufrag` (the ICE username fragment of our answer) to this peer.
    pub fn add_ufrag(&self, ufrag: &str) {
        let mut r = self.mux.routes.lock();
        if let Some(other) = r.by_ufrag.insert(ufrag.to_owned(), self.id)
            && other != self.id
        {
            tracing::warn!(
                ufrag,
                "ICE ufrag collision between two peers; the newer wins"
            );
        }
        if let Some(p) = r.peers.get_mut(&self.id) {
            p.ufrags.push(ufrag.to_owned());
        }
    }

    /// The runtime to build this peer's connection with.
    pub fn runtime(&self, inner: Arc<dyn Runtime>) -> Arc<dyn Runtime> {
        Arc::new(MuxRuntime {
            inner,
            mux: self.mux.clone(),
            peer: self.id,
        })
    }

    /// The shared port (what the candidates we hand out must name).
    pub fn port(&self) -> u16 {
        self.mux.local.port()
    }
}

impl Drop for MuxPeer {
    fn drop(&mut self) {
        let mut r = self.mux.routes.lock();
        if let Some(p) = r.peers.remove(&self.id) {
            for u in p.ufrags {
                if r.by_ufrag.get(&u) == Some(&self.id) {
                    r.by_ufrag.remove(&u);
                }
            }
            for a in p.addrs {
                if let Some(route) = r.by_addr.get(&a).copied()
                    && route.peer == self.id
                {
                    r.by_addr.remove(&a);
                    r.moved.remove(&route.core);
                }
            }
        }
    }
}

/// One peer's view of the shared socket, as its connection's driver uses it.
pub struct MuxSocket {
    mux: Arc<UdpMux>,
    peer: u64,
    /// What the connection's ICE agent believes is its local address.
    local: SocketAddr,
    rx: Mutex<mpsc::Receiver<Datagram>>,
    /// Waiting for the shared socket to take more (a full send buffer).
    writable: Mutex<Option<WritableWait>>,
}

impl std::fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxSocket")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for MuxSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // Our ICE agent only sends to candidates its client signalled: learn them as routes
        // (answers to our own checks then find their way), unless another peer holds one.
        let destination = {
            let mut r = self.mux.routes.lock();
            let d = r
                .moved
                .get(&transmit.destination)
                .copied()
                .unwrap_or(transmit.destination);
            if !r.by_addr.contains_key(&d) {
                r.add_addr(self.peer, d);
            }
            if !is_stun(transmit.contents)
                && let Some(p) = r.peers.get_mut(&self.peer)
            {
                p.sends_to = Some(transmit.destination);
            }
            d
        };
        let src_ip = Some(self.local.ip()).filter(|ip| !ip.is_unspecified());
        self.mux
            .poll_send(cx, transmit, destination, src_ip, &mut self.writable.lock())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut rx = self.rx.lock();
        let max = bufs.len().min(meta.len());
        if max == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut n = 0;
        while n < max {
            let d = if n == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => d,
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(io::Error::other("the media socket is gone")));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(d) => d,
                    Err(_) => break,
                }
            };
            let len = d.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&d.data[..len]);
            let mut m = RecvMeta::default();
            m.addr = d.from;
            m.len = len;
            m.stride = len.max(1);
            m.dst_ip = Some(self.local.ip());
            meta[n] = m;
            n += 1;
        }
        Poll::Ready(Ok(n))
    }
}

/// The runtime of one peer's connection: the process's own, except that UDP sockets are views of
/// the shared one.
#[derive(Debug)]
struct MuxRuntime {
    inner: Arc<dyn Runtime>,
    mux: Arc<UdpMux>,
    peer: u64,
}

impl Runtime for MuxRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // The connection keys this socket by the address it bound; that address stays its idea
        // of "local", while the socket itself closes here (one socket for the whole server).
        let local = socket.local_addr()?;
        drop(socket);
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        {
            let mut r = self.mux.routes.lock();
            let Some(p) = r.peers.get_mut(&self.peer) else {
                return Err(io::Error::other(
                    "peer no longer registered on the media socket",
                ));
            };
            // A rebind (ICE restart) replaces the socket of that IP.
            p.sockets.retain(|(ip, _)| *ip != local.ip());
            p.sockets.push((local.ip(), tx));
        }
        Ok(Arc::new(MuxSocket {
            mux: self.mux.clone(),
            peer: self.peer,
            local,
            rx: Mutex::new(rx),
            writable: Mutex::new(None),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "mcu-udp-mux"
    }
}

/// Rewrites the port of a UDP candidate (`candidate:f 1 udp prio ip PORT typ ...`, with or
/// without `a=`) to `port`; other candidates are returned as they are.
pub fn rewrite_candidate_port(candidate: &str, port: u16) -> String {
    let mut parts: Vec<&str> = candidate.split(' ').collect();
    let is_udp = parts.get(2).is_some_and(|p| p.eq_ignore_ascii_case("udp"));
    let port = port.to_string();
    if is_udp && parts.len() > 5 && parts[5].parse::<u16>().is_ok() {
        parts[5] = &port;
        return parts.join(" ");
    }
    candidate.to_owned()
}

/// Rewrites every UDP candidate line of an SDP to `port`.
pub fn rewrite_sdp_candidates(sdp: &str, port: u16) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        if body.starts_with("a=candidate:") {
            out.push_str(&rewrite_candidate_port(body, port));
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The `a=ice-ufrag` values of an SDP.
pub fn sdp_ufrags(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request with USERNAME `user` (no integrity: the mux does not check it).
    pub(crate) fn binding_request(user: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn reads_the_local_ufrag_of_a_binding_request() {
        assert_eq!(
            stun_binding_ufrag(&binding_request("srv1:cli9")),
            Some("srv1")
        );
        assert_eq!(stun_binding_ufrag(b"\x80\x60garbage garbage garbage"), None);
        // A truncated attribute.
        let mut m = binding_request("abcdefgh:x");
        m.truncate(26);
        assert_eq!(stun_binding_ufrag(&m), None);
    }

    #[test]
    fn rewrites_udp_candidate_ports_only() {
        let c = "candidate:1 1 udp 2130706431 10.0.0.1 54321 typ host";
        assert_eq!(
            rewrite_candidate_port(c, 40000),
            "candidate:1 1 udp 2130706431 10.0.0.1 40000 typ host"
        );
        let tcp = "candidate:2 1 tcp 1 10.0.0.1 9 typ host tcptype passive";
        assert_eq!(rewrite_candidate_port(tcp, 40000), tcp);
        let sdp = "v=0\r\na=ice-ufrag:abc\r\na=candidate:1 1 UDP 5 10.0.0.1 555 typ host\r\n";
        assert_eq!(
            rewrite_sdp_candidates(sdp, 40000),
            "v=0\r\na=ice-ufrag:abc\r\na=candidate:1 1 UDP 5 10.0.0.1 40000 typ host\r\n"
        );
        assert_eq!(sdp_ufrags(sdp), vec!["abc"]);
    }

    #[tokio::test]
    async fn routes_by_ufrag_then_by_address_and_drops_the_rest() {
        let rt = tokio::runtime::Handle::current();
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap(), &rt).unwrap();
        let a = mux.register();
        let b = mux.register();
        a.add_ufrag("ufA");
        b.add_ufrag("ufB");
        let inner = webrtc::runtime::default_runtime().unwrap();
        let wrap = |p: &MuxPeer| {
            let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            p.runtime(inner.clone()).wrap_udp_socket(std).unwrap()
        };
        let (sa, sb) = (wrap(&a), wrap(&b));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = mux.local_addr();
        let recv = |s: Arc<dyn AsyncUdpSocket>| async move {
            let mut buf = vec![0u8; 1500];
            let mut meta = [RecvMeta::default()];
            let n = tokio::time::timeout(
                Duration::from_secs(2),
                std::future::poll_fn(|cx| {
                    let mut bufs = [IoSliceMut::new(&mut buf)];
                    s.poll_recv(cx, &mut bufs, &mut meta)
                }),
            )
            .await
            .expect("a datagram")
            .unwrap();
            assert_eq!(n, 1);
            (buf[..meta[0].len].to_vec(), meta[0].addr)
        };
        // Garbage first: dropped (and counted) without reaching anyone.
        client
            .send_to(b"\x80\x60 not for anyone", server)
            .await
            .unwrap();
        client
            .send_to(&binding_request("nobody:x"), server)
            .await
            .unwrap();
        // A check naming B's ufrag reaches B and makes the client's address B's route.
        let check = binding_request("ufB:cli");
        client.send_to(&check, server).await.unwrap();
        let (got, from) = recv(sb.clone()).await;
        assert_eq!((got, from), (check, client.local_addr().unwrap()));
        client
            .send_to(b"\x80\x60 media for B", server)
            .await
            .unwrap();
        assert_eq!(recv(sb.clone()).await.0, b"\x80\x60 media for B");
        assert_eq!(mux.counters.dropped_unknown.load(Relaxed), 2);
        // A sends to its own client: that address becomes A's route, and the answer goes to A.
        let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let t = Transmit {
            destination: other.local_addr().unwrap(),
            ecn: None,
            contents: b"hello",
            segment_size: None,
            src_ip: None,
        };
        std::future::poll_fn(|cx| sa.poll_send(cx, &t))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = other.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], server));
        other.send_to(b"\x80\x60 reply", server).await.unwrap();
        assert_eq!(recv(sa.clone()).await.0, b"\x80\x60 reply");
        // B leaves: its address is no longer a route.
        drop(b);
        client.send_to(b"\x80\x60 late", server).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(mux.counters.dropped_unknown.load(Relaxed), 3);
    }

    #[test]
    fn media_to_an_address_gone_silent_follows_the_client_to_its_new_one() {
        let mut r = Routes::default();
        r.peers.insert(1, PeerRoutes::default());
        let old = SocketAddr::from(([10, 0, 0, 2], 20001));
        let new = SocketAddr::from(([10, 0, 0, 2], 21007));
        let t0 = Instant::now();
        r.add_route(1, old, old, Some(t0));
        r.peers.get_mut(&1).unwrap().sends_to = Some(old);
        // Another address while the selected one still talks: another candidate, left alone.
        r.add_route(1, new, new, Some(t0));
        let soon = t0 + Duration::from_millis(300);
        assert_eq!(r.follow_rebinding(1, new, soon), new);
        assert!(r.moved.is_empty());
        // The selected address silent for a second while the client talks from the new one:
        // the connection's `old` now means `new`, both ways.
        let later = t0 + REBIND_SILENCE;
        assert_eq!(r.follow_rebinding(1, new, later), old);
        assert_eq!(r.moved[&old], new);
        assert_eq!(r.by_addr[&new].core, old);
        // A peer whose connection never sent media has nothing to move.
        r.peers.insert(2, PeerRoutes::default());
        let other = SocketAddr::from(([10, 0, 0, 3], 1));
        r.add_route(2, other, other, Some(t0));
        assert_eq!(r.follow_rebinding(2, other, t0 + REBIND_SILENCE * 5), other);
    }

    #[test]
    fn stun_from_one_source_is_rate_limited() {
        let mut r = Routes::default();
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..1000).filter(|_| r.stun_allowed(ip, t0)).count();
        assert_eq!(allowed, STUN_PER_SOURCE_PER_S as usize);
        assert!(r.stun_allowed(ip, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_peer_keeps_a_bounded_set_of_addresses() {
        let mut r = Routes::default();
        r.peers.insert(1, PeerRoutes::default());
        r.peers.insert(2, PeerRoutes::default());
        for port in 0..20u16 {
            r.add_addr(1, SocketAddr::from(([10, 0, 0, 1], 1000 + port)));
        }
        assert_eq!(r.peers[&1].addrs.len(), MAX_ROUTES_PER_PEER);
        assert_eq!(r.by_addr.len(), MAX_ROUTES_PER_PEER);
        // An address that moves to another peer leaves the first.
        let moved = SocketAddr::from(([10, 0, 0, 1], 1019));
        r.add_addr(2, moved);
        assert_eq!(r.by_addr[&moved].peer, 2);
        assert!(!r.peers[&1].addrs.contains(&moved));
    }
}
