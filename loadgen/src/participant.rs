//! One synthetic participant: joins through the real REST and WebSocket API exactly as the
//! browser page does (token → `welcome` → offer with one audio and one video m-line → trickle),
//! sends its pre-encoded media on a 20 ms / 1/15 s clock, and measures what it receives.
//!
//! The peer itself (media engine, settings, the audio sender, the receive-side measurements) is
//! shared with the Janus AudioBridge participant in [`crate::janus`], so both sides of the
//! comparison send and measure exactly the same way.

use crate::media::{Camera, FPS, Schedule, SendLimit, VIDEO_LOOP, Voice, read_marks};
use crate::shaper::{LinkShape, ShapedLink};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::media_stream::Track as _;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionIceEvent,
};
use webrtc::rtp_transceiver::RtpSender;

/// What one participant does.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Participant index (drawn into its video, 0..64).
    pub id: u32,
    /// Tone frequency, Hz.
    pub freq: u32,
    /// When it talks.
    pub schedule: Schedule,
    /// Sends video.
    pub video: bool,
    /// Decodes what it receives to measure latency (costs CPU: use on a few).
    pub probe: bool,
    /// Receives through this constrained link (in-process, see [`crate::shaper`]).
    pub shape: Option<LinkShape>,
}

/// Where to join.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port`.
    pub base_url: String,
    /// Admin API key (to mint the join token).
    pub api_key: String,
    /// Room name.
    pub room: String,
}

/// Send times shared by every participant of one run (one process, one clock).
pub struct Shared {
    /// Common start of the talk schedules.
    pub start: Instant,
    /// Per participant id: when each video loop frame was last sent.
    pub video_sent: Vec<Mutex<Vec<Option<Instant>>>>,
    /// Per participant id: start instants of its talk bursts.
    pub bursts: Vec<Mutex<Vec<Instant>>>,
    /// Participants connected (for the probes' layout guess).
    pub in_room: AtomicUsize,
    /// Tiles the server's grid shows at most (`MCU_MAX_TILES`).
    pub max_tiles: usize,
    /// Video senders follow the server's `video_constraints`.
    pub honour_limits: bool,
}

impl Shared {
    /// For up to `n` participant ids.
    pub fn new(n: usize) -> Arc<Shared> {
        Arc::new(Shared {
            start: Instant::now(),
            video_sent: (0..n).map(|_| Mutex::new(vec![None; VIDEO_LOOP])).collect(),
            bursts: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            in_room: AtomicUsize::new(0),
            max_tiles: mixer::MAX_GRID_TILES,
            honour_limits: true,
        })
    }

    /// The same, for a server showing at most `max_tiles` tiles.
    pub fn with_max_tiles(self: Arc<Self>, max_tiles: usize) -> Arc<Shared> {
        match Arc::try_unwrap(self) {
            Ok(mut s) => {
                s.max_tiles = max_tiles.clamp(1, mixer::MAX_GRID_TILES);
                Arc::new(s)
            }
            Err(shared) => shared, // already shared: keep as is
        }
    }

    /// The same, with video senders that follow the server's `video_constraints` or not.
    pub fn honouring_limits(self: Arc<Self>, honour: bool) -> Arc<Shared> {
        match Arc::try_unwrap(self) {
            Ok(mut s) => {
                s.honour_limits = honour;
                Arc::new(s)
            }
            Err(shared) => shared,
        }
    }
}

/// What one participant measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Participant index.
    pub id: u32,
    /// Received through a constrained link.
    pub shaped: bool,
    /// WebSocket open → `welcome`, ms (Janus: session create → AudioBridge's answer).
    pub welcome_ms: Option<f64>,
    /// WebSocket open → first mixed audio packet, ms.
    pub first_audio_ms: Option<f64>,
    /// WebSocket open → first composite video frame, ms.
    pub first_video_ms: Option<f64>,
    /// Audio packets received.
    pub audio_packets: u64,
    /// Composite frames received.
    pub video_frames: u64,
    /// Media payload bytes received.
    pub bytes: u64,
    /// Gaps of more than 100 ms between mixed audio packets, but for the silence after a DTX
    /// frame (the server's stream goes quiet while the mix is silent).
    pub audio_gaps: u64,
    /// Seconds between the first and last packet received.
    pub receive_s: f64,
    /// Tone onset heard minus burst sent, ms (probes only).
    pub mouth_to_ear_ms: Vec<f64>,
    /// Frame counter seen in the composite minus the frame's send time, ms (probes only).
    pub video_latency_ms: Vec<f64>,
    /// Error that ended it early, if any.
    pub error: Option<String>,
}

/// What the receive tasks of one participant accumulate (turned into a [`Report`] by [`collect`]).
#[derive(Default)]
pub(crate) struct Rx {
    first_audio: Option<Instant>,
    first_video: Option<Instant>,
    last_audio: Option<Instant>,
    /// The last audio packet was a DTX frame (RFC 7587: a TOC byte or two): silence follows
    /// until the next, and the time to it is not a gap.
    last_audio_dtx: bool,
    last_any: Option<Instant>,
    audio_packets: u64,
    video_frames: u64,
    bytes: u64,
    audio_gaps: u64,
    m2e: Vec<f64>,
    video_latency: Vec<f64>,
}

/// A participant's peer events: local candidates are trickled over our signaling socket
/// (`ws_out`) or, without one, left in the local description, whose gathering completion is
/// signalled on `gathered`; remote tracks are measured by [`receive`].
pub(crate) struct Handler {
    ws_out: Option<mpsc::Sender<String>>,
    gathered: tokio::sync::watch::Sender<bool>,
    rx: Arc<Mutex<Rx>>,
    spec: Spec,
    shared: Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
}

impl Handler {
    /// The handler, and a receiver that turns true once ICE gathering is complete.
    pub(crate) fn new(
        ws_out: Option<mpsc::Sender<String>>,
        rx: Arc<Mutex<Rx>>,
        spec: Spec,
        shared: Arc<Shared>,
        talkers: Arc<Vec<(u32, u32)>>,
    ) -> (Arc<Handler>, tokio::sync::watch::Receiver<bool>) {
        let (gathered, gathered_rx) = tokio::sync::watch::channel(false);
        let h = Handler {
            ws_out,
            gathered,
            rx,
            spec,
            shared,
            talkers,
        };
        (Arc::new(h), gathered_rx)
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Some(ws_out) = &self.ws_out
            && let Ok(c) = event.candidate.to_json()
        {
            let msg = json!({"type": "candidate", "candidate": {
                "candidate": c.candidate, "sdpMid": c.sdp_mid, "sdpMLineIndex": c.sdp_mline_index}});
            let _ = ws_out.try_send(msg.to_string());
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let (rx, spec, shared, talkers) = (
            self.rx.clone(),
            self.spec,
            self.shared.clone(),
            self.talkers.clone(),
        );
        tokio::spawn(receive(track, rx, spec, shared, talkers));
    }
}

/// A peer connection with the participant's media engine and settings (Opus 111 and VP8 96,
/// the default interceptors, no mDNS, loopback candidates), its UDP bound to `bind` only
/// (127.0.0.1 against our server, the host end of its veth pair against Janus).
pub(crate) async fn peer_connection(
    handler: Arc<Handler>,
    bind: std::net::IpAddr,
    shape: Option<LinkShape>,
) -> anyhow::Result<impl PeerConnection> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(MIME_TYPE_OPUS, 48000, 2, "minptime=10;useinbandfec=1"),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: codec(MIME_TYPE_VP8, 90000, 0, ""),
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )?;
    // Like a browser, mark each audio packet with its level (RFC 6464): the server does not
    // decode the silence of someone not talking.
    me.register_header_extension(
        rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
            uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    let mut registry = register_default_interceptors(Registry::new(), &mut me)?;
    if let Some(shape) = shape {
        // Wire-most: everything above sees what the weak link delivers.
        registry = registry.with(Slot::from(500), ShapedLink::new(shape, rand::random()));
    }
    let se = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_include_loopback_candidate(true)
        .build();
    Ok(PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_setting_engine(se)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![std::net::SocketAddr::new(bind, 0)])
        .build()
        .await?)
}

/// The participant's outgoing Opus track.
pub(crate) fn audio_track() -> anyhow::Result<Arc<TrackLocalStaticSample>> {
    track(
        RtpCodecKind::Audio,
        "audio",
        codec(MIME_TYPE_OPUS, 48000, 2, ""),
    )
}

fn codec(mime: &str, clock: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.into(),
        clock_rate: clock,
        channels,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: vec![],
    }
}

fn track(
    kind: RtpCodecKind,
    id: &str,
    c: RTCRtpCodec,
) -> anyhow::Result<Arc<TrackLocalStaticSample>> {
    let t = TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            "loadgen".into(),
            id.into(),
            id.into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(rand::random()),
                    ..Default::default()
                },
                codec: c,
                ..Default::default()
            }],
        ),
    )?;
    Ok(Arc::new(t))
}

/// The payload type negotiated for a sender's first codec.
pub(crate) async fn payload_type(sender: &Arc<dyn RtpSender>) -> anyhow::Result<u8> {
    sender
        .get_parameters()
        .await?
        .rtp_parameters
        .codecs
        .first()
        .map(|c| c.payload_type)
        .ok_or_else(|| anyhow::anyhow!("no negotiated codec"))
}

/// Mints a join token through the REST API.
pub async fn token(http: &reqwest::Client, t: &Target, identity: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{}/api/v1/rooms/{}/tokens", t.base_url, t.room))
        .bearer_auth(&t.api_key)
        .json(&json!({"identity": identity}))
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    body["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("token: {status} {body}"))
}

/// Joins, sends and receives until `stop` fires, then leaves and reports.
pub async fn run(
    spec: Spec,
    target: Target,
    voice: Arc<Voice>,
    camera: Option<Arc<Camera>>,
    shared: Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Report {
    let rx = Arc::new(Mutex::new(Rx::default()));
    let mut report = Report {
        id: spec.id,
        shaped: spec.shape.is_some(),
        ..Report::default()
    };
    let opened = Instant::now();
    let r = session(
        &spec,
        &target,
        voice,
        camera,
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

/// Fills `report` with what the receive tasks measured (times relative to `opened`).
pub(crate) fn collect(rx: &Mutex<Rx>, opened: Instant, report: &mut Report) {
    let rx = rx.lock();
    let ms = |t: Option<Instant>| t.map(|t| (t - opened).as_secs_f64() * 1000.0);
    report.first_audio_ms = ms(rx.first_audio);
    report.first_video_ms = ms(rx.first_video);
    report.audio_packets = rx.audio_packets;
    report.video_frames = rx.video_frames;
    report.bytes = rx.bytes;
    report.audio_gaps = rx.audio_gaps;
    report.receive_s = match (rx.first_audio.or(rx.first_video), rx.last_any) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    report.mouth_to_ear_ms = rx.m2e.clone();
    report.video_latency_ms = rx.video_latency.clone();
}

/// `wrong_node` redirects followed before a join gives up.
const MAX_REDIRECTS: u32 = 3;

#[allow(clippy::too_many_arguments)]
async fn session(
    spec: &Spec,
    target: &Target,
    voice: Arc<Voice>,
    camera: Option<Arc<Camera>>,
    shared: &Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
    rx: &Arc<Mutex<Rx>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    report: &mut Report,
    opened: Instant,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let tok = token(&http, target, &format!("synthetic-{}", spec.id)).await?;
    let mut ws_url = format!(
        "{}/api/v1/ws?token={tok}",
        target.base_url.replacen("http", "ws", 1)
    );
    // Several nodes: a join on the wrong one names the hosting node's URL (same token).
    let mut redirects = 0;
    let (ws, welcome) = loop {
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await?;
        let first = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => break serde_json::from_str::<Value>(&t)?,
                Some(Ok(_)) => continue,
                other => anyhow::bail!("socket ended before welcome: {other:?}"),
            }
        };
        if first["type"] == "welcome" {
            break (ws, first);
        }
        match first["ws_url"].as_str() {
            Some(url) if first["code"] == "wrong_node" && redirects < MAX_REDIRECTS => {
                redirects += 1;
                ws_url = url.to_string();
            }
            _ => anyhow::bail!("expected welcome, got {first}"),
        }
    };
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(256);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if ws_tx.send(Message::Text(m)).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });

    report.welcome_ms = Some(opened.elapsed().as_secs_f64() * 1000.0);
    let _ = welcome;

    let (handler, _) = Handler::new(
        Some(out_tx.clone()),
        rx.clone(),
        *spec,
        shared.clone(),
        talkers,
    );
    let pc = peer_connection(handler, std::net::Ipv4Addr::LOCALHOST.into(), spec.shape).await?;
    let audio = audio_track()?;
    let a: Arc<dyn TrackLocal> = audio.clone();
    let audio_sender = pc.add_track(a).await?;
    let video = match &camera {
        Some(_) => {
            let v = track(
                RtpCodecKind::Video,
                "video",
                codec(MIME_TYPE_VP8, 90000, 0, ""),
            )?;
            let t: Arc<dyn TrackLocal> = v.clone();
            Some((v, pc.add_track(t).await?))
        }
        None => {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await?;
            None
        }
    };
    let offer = pc.create_offer(None).await?;
    // The offer goes into the socket's queue before gathering starts (in set_local_description),
    // so no trickled candidate can overtake it: the server refuses candidates before an offer.
    out_tx
        .send(json!({"type": "offer", "sdp": offer.sdp.clone()}).to_string())
        .await?;
    pc.set_local_description(offer).await?;

    let mut senders: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    // The server's latest `video_constraints` (the video sender follows it).
    let (limit_tx, limit_rx) = tokio::sync::watch::channel(None::<SendLimit>);
    shared.in_room.fetch_add(1, Ordering::Relaxed);
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                m = ws_rx.next() => {
                    let Some(Ok(m)) = m else { anyhow::bail!("signaling socket closed") };
                    let Message::Text(t) = m else { continue };
                    let v: Value = serde_json::from_str(&t)?;
                    match v["type"].as_str() {
                        Some("answer") => {
                            let sdp = v["sdp"].as_str().unwrap_or_default().to_string();
                            pc.set_remote_description(RTCSessionDescription::answer(sdp.clone())?).await?;
                            let apt = payload_type(&audio_sender).await?;
                            let dtx = dtx_asked(&sdp, apt);
                            senders.push(tokio::spawn(send_audio(audio.clone(), apt, voice.clone(), *spec, shared.clone(), dtx)));
                            if let (Some((vt, vs)), Some(cam)) = (&video, &camera) {
                                let vpt = payload_type(vs).await?;
                                senders.push(tokio::spawn(send_video(vt.clone(), vpt, cam.clone(), spec.id, shared.clone(), limit_rx.clone())));
                            }
                        }
                        Some("candidate") => {
                            if let Some(c) = v["candidate"].as_object() {
                                let init = RTCIceCandidateInit {
                                    candidate: c.get("candidate").and_then(Value::as_str).unwrap_or_default().into(),
                                    sdp_mid: c.get("sdpMid").and_then(Value::as_str).map(str::to_owned),
                                    sdp_mline_index: c.get("sdpMLineIndex").and_then(Value::as_u64).map(|x| x as u16),
                                    ..Default::default()
                                };
                                pc.add_ice_candidate(init).await?;
                            }
                        }
                        Some("video_constraints") if shared.honour_limits => {
                            let _ = limit_tx.send(SendLimit::from_message(&v));
                        }
                        Some("error") => anyhow::bail!("server error: {v}"),
                        Some("closed") => anyhow::bail!("closed by the server: {v}"),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    shared.in_room.fetch_sub(1, Ordering::Relaxed);
    for s in senders {
        s.abort();
    }
    let _ = out_tx.send(json!({"type": "leave"}).to_string()).await;
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    let _ = pc.close().await;
    result
}

/// One audio frame.
const FRAME: Duration = Duration::from_millis(20);
/// Frames of silence one DTX packet stands for (400 ms, what libwebrtc's Opus sends).
const DTX_FRAMES: u64 = 20;

/// Whether an answer asks for Opus DTX (`usedtx=1` on the fmtp of payload type `pt`): a browser
/// then sends a packet every 400 ms in silence instead of 50 a second.
pub(crate) fn dtx_asked(sdp: &str, pt: u8) -> bool {
    let prefix = format!("a=fmtp:{pt} ");
    sdp.lines().any(|l| {
        l.strip_prefix(&prefix).is_some_and(|params| {
            params
                .split(';')
                .any(|p| p.trim().eq_ignore_ascii_case("usedtx=1"))
        })
    })
}

/// Sends the participant's voice on a 20 ms clock, per its talk schedule (recording the start
/// of each burst in `shared` for the listeners' mouth-to-ear measurement). With `dtx`, silence
/// is one packet every 400 ms whose RTP duration spans the gap up to the next packet (sequence
/// numbers stay contiguous, as RFC 7587 DTX has them), cut short where a burst starts.
pub(crate) async fn send_audio(
    track: Arc<TrackLocalStaticSample>,
    pt: u8,
    voice: Arc<Voice>,
    spec: Spec,
    shared: Arc<Shared>,
    dtx: bool,
) {
    let Some(&ssrc) = track.ssrcs().await.first() else {
        return;
    };
    // Frame `n` is due at `clock + n × 20 ms`; a task that wakes late skips the frames it
    // missed (as a browser's capture would drop them), and in DTX it sleeps until the next
    // packet rather than waking every 20 ms.
    let clock = tokio::time::Instant::now();
    let (mut n, mut was) = (0u64, false);
    loop {
        tokio::time::sleep_until(clock + FRAME * n as u32).await;
        let late = (clock.elapsed().as_millis() / FRAME.as_millis()) as u64;
        n = n.max(late);
        let now = Instant::now();
        let t_ms = (now - shared.start).as_millis() as u64;
        let talking = spec.schedule.talking(t_ms);
        let frames = if dtx && !talking {
            (1..DTX_FRAMES)
                .find(|j| spec.schedule.talking(t_ms + 20 * j))
                .unwrap_or(DTX_FRAMES)
        } else {
            1
        };
        if talking
            && !was
            && let Some(b) = shared.bursts.get(spec.id as usize)
        {
            b.lock().push(now);
        }
        was = talking;
        let s = rtc::media::Sample {
            data: bytes::Bytes::copy_from_slice(&voice.packet(n, talking)),
            duration: FRAME * frames as u32,
            ..rtc::media::Sample::new(now)
        };
        // The tone is at about -9 dBov; the silence is digital silence.
        let level = rtc::rtp::extension::HeaderExtension::AudioLevel(
            rtc::rtp::extension::audio_level_extension::AudioLevelExtension {
                level: if talking { 9 } else { 127 },
                voice: talking,
            },
        );
        let _ = track.write_sample(ssrc, pt, &s, &[level]).await;
        n += frames;
    }
}

/// Sends the camera loop at 15 fps, at the size the server's `video_constraints` ask (switching
/// at the next keyframe, as a browser's encoder restarts on one), or nothing while not shown.
async fn send_video(
    track: Arc<TrackLocalStaticSample>,
    pt: u8,
    cam: Arc<Camera>,
    id: u32,
    shared: Arc<Shared>,
    limit: tokio::sync::watch::Receiver<Option<SendLimit>>,
) {
    let Some(&ssrc) = track.ssrcs().await.first() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / FPS as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0usize;
    let mut layer = Some(0);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let frame_no = i % VIDEO_LOOP;
        i += 1;
        let want = cam.layer_for(limit.borrow().as_ref());
        if want != layer && (want.is_none() || cam.layers[0].frames[frame_no].1) {
            layer = want;
        }
        let Some(l) = layer else { continue };
        let (data, _) = &cam.layers[l].frames[frame_no];
        if let Some(v) = shared.video_sent.get(id as usize) {
            v.lock()[frame_no] = Some(now);
        }
        let s = rtc::media::Sample {
            data: bytes::Bytes::copy_from_slice(data),
            duration: Duration::from_micros(1_000_000 / FPS as u64),
            ..rtc::media::Sample::new(now)
        };
        let _ = track.write_sample(ssrc, pt, &s, &[]).await;
    }
}

async fn receive(
    track: Arc<dyn TrackRemote>,
    rx: Arc<Mutex<Rx>>,
    spec: Spec,
    shared: Arc<Shared>,
    talkers: Arc<Vec<(u32, u32)>>,
) {
    let kind = track.kind().await;
    let mut opus = if spec.probe && kind == RtpCodecKind::Audio {
        mixer::OpusDecoder::new().ok()
    } else {
        None
    };
    let mut vp8 = if spec.probe && kind == RtpCodecKind::Video {
        mixer::Vp8Decoder::new().ok()
    } else {
        None
    };
    let mut frame_buf: Vec<u8> = Vec::new();
    // A packet may carry several 20 ms frames (a large room pairs them): room for the longest.
    let mut pcm = vec![0i16; mixer::opus_codec::MAX_PACKET_SAMPLES];
    // Per talker: currently hearing its tone.
    let mut hearing: Vec<bool> = vec![false; talkers.len()];
    let mut last_counter: Vec<Option<u32>> = vec![None; shared.video_sent.len()];
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(p) = ev else {
            if matches!(ev, TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError) {
                break;
            }
            continue;
        };
        let now = Instant::now();
        {
            let mut r = rx.lock();
            r.bytes += p.payload.len() as u64;
            r.last_any = Some(now);
            match kind {
                RtpCodecKind::Audio => {
                    r.first_audio.get_or_insert(now);
                    if let Some(last) = r.last_audio
                        && now - last > Duration::from_millis(100)
                        && !r.last_audio_dtx
                    {
                        r.audio_gaps += 1;
                    }
                    r.last_audio_dtx = p.payload.len() <= 2;
                    r.last_audio = Some(now);
                    r.audio_packets += 1;
                }
                _ => {
                    if p.header.marker {
                        r.first_video.get_or_insert(now);
                        r.video_frames += 1;
                    }
                }
            }
        }
        if let Some(dec) = opus.as_mut()
            && let Ok(n) = dec.decode(&p.payload, &mut pcm)
        {
            // Each 20 ms frame on its own, so that a tone starting in the second frame of a
            // packet is seen there.
            for frame in pcm[..n.min(pcm.len())].chunks(960) {
                for (i, (id, freq)) in talkers.iter().enumerate() {
                    if *id == spec.id {
                        continue;
                    }
                    let a = mixer::tone_amplitude(frame, *freq as f64);
                    if !hearing[i] && a > 2000.0 {
                        hearing[i] = true;
                        let start = shared
                            .bursts
                            .get(*id as usize)
                            .and_then(|b| b.lock().iter().rev().find(|s| **s <= now).copied());
                        if let Some(s) = start {
                            let ms = (now - s).as_secs_f64() * 1000.0;
                            if ms < 1000.0 {
                                rx.lock().m2e.push(ms);
                            }
                        }
                    } else if hearing[i] && a < 800.0 {
                        hearing[i] = false;
                    }
                }
            }
        }
        if let Some(dec) = vp8.as_mut() {
            // Reassemble the frame (descriptor stripped), decode at the marker.
            if let Some(hdr) = vp8_descriptor_len(&p.payload) {
                frame_buf.extend_from_slice(&p.payload[hdr..]);
            }
            if p.header.marker {
                let data = std::mem::take(&mut frame_buf);
                if let Ok(Some(pic)) = dec.decode(&data)
                    && let Ok(view) = mixer::I420View::from_video(pic)
                {
                    read_composite(&view, &shared, &mut last_counter, now, &rx);
                }
            }
        }
    }
}

fn read_composite(
    view: &mixer::I420View<'_>,
    shared: &Shared,
    last_counter: &mut [Option<u32>],
    now: Instant,
    rx: &Mutex<Rx>,
) {
    let Ok(frame) = mixer::I420Frame::from_view(view) else {
        return;
    };
    let (w, h) = (frame.width(), frame.height());
    let (luma, _, _) = frame.planes();
    let n = shared
        .in_room
        .load(Ordering::Relaxed)
        .clamp(1, shared.max_tiles);
    // The probe cannot know exactly how many tiles are shown: try the neighbours too and keep
    // the reading with the most valid tiles.
    let mut best: Vec<(u32, u32)> = Vec::new();
    for cand in [n, n.saturating_sub(1).max(1), (n + 1).min(shared.max_tiles)] {
        let rects = mixer::layout(cand, mixer::Layout::Grid, w, h, 0);
        let marks: Vec<(u32, u32)> = rects
            .iter()
            .filter_map(|r| read_marks(luma, w as usize, r.x, r.y, r.w, r.h))
            .collect();
        if marks.len() > best.len() {
            best = marks;
        }
    }
    for (id, counter) in best {
        let Some(slot) = last_counter.get_mut(id as usize) else {
            continue;
        };
        if *slot == Some(counter) {
            continue; // the same frame of that participant again
        }
        *slot = Some(counter);
        let sent = shared
            .video_sent
            .get(id as usize)
            .and_then(|v| v.lock().get(counter as usize).copied().flatten());
        if let Some(s) = sent {
            let ms = (now.saturating_duration_since(s)).as_secs_f64() * 1000.0;
            if ms < 5000.0 {
                rx.lock().video_latency.push(ms);
            }
        }
    }
}

/// Length of the VP8 payload descriptor (RFC 7741), None if malformed.
fn vp8_descriptor_len(p: &[u8]) -> Option<usize> {
    let b0 = *p.first()?;
    let mut n = 1;
    if b0 & 0x80 != 0 {
        let b1 = *p.get(1)?;
        n = 2;
        if b1 & 0x80 != 0 {
            n += if *p.get(n)? & 0x80 != 0 { 2 } else { 1 };
        }
        if b1 & 0x40 != 0 {
            n += 1;
        }
        if b1 & 0x30 != 0 {
            n += 1;
        }
    }
    (n < p.len()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtx_is_sent_only_when_the_answer_asks_for_it_on_the_opus_payload_type() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=rtpmap:111 opus/48000/2\r\n\
                      a=fmtp:111 minptime=10;useinbandfec=1; usedtx=1\r\na=fmtp:63 111/111\r\n";
        assert!(dtx_asked(answer, 111));
        assert!(!dtx_asked(answer, 63));
        assert!(!dtx_asked(&answer.replace("usedtx=1", "usedtx=0"), 111));
        assert!(!dtx_asked("a=fmtp:111 minptime=10;useinbandfec=1\r\n", 111));
        // Another payload type's parameters do not count.
        assert!(!dtx_asked("a=fmtp:1111 usedtx=1\r\n", 111));
    }
}
