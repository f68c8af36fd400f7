//! Bad input on the signaling WebSocket: every case gets an `error` or a clean close, never a
//! panic, and the other participants do not notice.

mod common;

use common::{Ws, next_json};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server::auth::JoinClaims;
use server::config::Config;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

struct App {
    addr: std::net::SocketAddr,
    state: actix_web::web::Data<server::AppState>,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_key: Some("signaling-test-key-0123456789".into()),
        token_secret: Some("signaling-test-secret-0123456789abcdef012345".into()),
        database_url: format!("sqlite://{}/mcu.db", dir.path().display()),
        rtc: server::config::RtcConfig {
            bind: Some("127.0.0.1".parse().unwrap()),
            udp_ports: server::config::UdpPorts::Shared(0),
            ..Default::default()
        },
        ..Config::default()
    };
    let running = server::start(config).await.unwrap();
    let (addr, state) = (running.addr, running.state.clone());
    actix_web::rt::spawn(running.server);
    App {
        addr,
        state,
        _dir: dir,
    }
}

impl App {
    fn token(&self, room: &str, identity: &str, ttl: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        self.state.tokens.mint(&JoinClaims {
            room: room.into(),
            sub: identity.into(),
            name: Some(identity.into()),
            iat: now,
            exp: now + ttl,
            can_publish: true,
            can_subscribe: true,
            is_admin: false,
            room_id: None,
        })
    }

    async fn connect(&self, token: &str) -> Ws {
        let url = format!("ws://{}/api/v1/ws?token={token}", self.addr);
        tokio_tungstenite::connect_async(url).await.unwrap().0
    }

    /// Connects and reads the welcome.
    async fn join(&self, room: &str, identity: &str) -> (Ws, Value) {
        let mut ws = self.connect(&self.token(room, identity, 600)).await;
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }
}

/// Reads messages until one of type `ty` (skipping e.g. participant events).
async fn expect_type(ws: &mut Ws, ty: &str) -> Value {
    for _ in 0..20 {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
    panic!("no '{ty}' message");
}

/// Reads `participant_updated` messages until one whose participant has `field == value`; returns
/// that participant.
async fn expect_update(ws: &mut Ws, field: &str, value: bool) -> Value {
    for _ in 0..20 {
        let v = expect_type(ws, "participant_updated").await;
        if v["participant"][field] == value {
            return v["participant"].clone();
        }
    }
    panic!("no participant_updated with {field} = {value}");
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// The socket is alive: a chat goes round and comes back.
async fn assert_alive(ws: &mut Ws, tag: &str) {
    send(ws, &json!({"type": "chat", "text": tag}).to_string()).await;
    let v = expect_type(ws, "chat").await;
    assert_eq!(v["text"], tag);
}

async fn expect_close(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("not closed within 10 s");
        match m {
            Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[actix_web::test]
async fn bad_frames_get_errors_and_the_others_do_not_notice() {
    let app = app().await;
    let (mut alice, _) = app.join("bad", "alice").await;
    let (mut mallory, welcome) = app.join("bad", "mallory").await;
    assert_eq!(
        welcome["participants"].as_array().unwrap().len(),
        1,
        "alice is listed: {welcome}"
    );
    let joined = expect_type(&mut alice, "participant_joined").await;
    assert_eq!(joined["participant"]["identity"], "mallory");

    let cases: [(&str, &str); 8] = [
        ("{not json", "invalid_json"),
        ("[1,2,3]", "invalid_message"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"type":"offer"}"#, "invalid_message"),
        (r#"{"type":"offer","sdp":"garbage"}"#, "invalid_offer"),
        (
            r#"{"type":"offer","sdp":"v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"}"#,
            "no_media",
        ),
        (
            r#"{"type":"offer","sdp":"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n"}"#,
            "unsupported_codec",
        ),
        (
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
            "no_offer",
        ),
    ];
    for (frame, code) in cases {
        send(&mut mallory, frame).await;
        let e = expect_type(&mut mallory, "error").await;
        assert_eq!(e["code"], code, "for {frame}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    mallory.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        expect_type(&mut mallory, "error").await["code"],
        "invalid_message"
    );
    assert_alive(&mut mallory, "still here").await;

    // Over 64 KiB: disconnected with 1009, and alice is told mallory left.
    send(&mut mallory, &"x".repeat(70 * 1024)).await;
    assert_eq!(expect_close(&mut mallory).await, Some(CloseCode::Size));
    let left = expect_type(&mut alice, "participant_left").await;
    assert_eq!(left["participant_id"], welcome["participant_id"]);
    assert_alive(&mut alice, "alice fine").await;
}

#[actix_web::test]
async fn a_dropped_socket_leaves_the_room() {
    let app = app().await;
    let (mut alice, _) = app.join("drop", "alice").await;
    let (bob, welcome) = app.join("drop", "bob").await;
    expect_type(&mut alice, "participant_joined").await;
    drop(bob); // TCP closed without a close frame
    let left = expect_type(&mut alice, "participant_left").await;
    assert_eq!(left["participant_id"], welcome["participant_id"]);
    assert_eq!(app.state.rooms.active_count("drop"), 1);
    assert_alive(&mut alice, "ok").await;
}

#[actix_web::test]
async fn expired_and_invalid_tokens_are_refused() {
    let app = app().await;
    let mut ws = app.connect(&app.token("t", "late", -5)).await;
    assert_eq!(next_json(&mut ws).await["code"], "token_expired");
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::from(4001)));

    let mut ws = app.connect("not-a-jwt").await;
    assert_eq!(next_json(&mut ws).await["code"], "unauthorized");
    expect_close(&mut ws).await;
    assert_eq!(app.state.rooms.active_count("t"), 0);
}

#[actix_web::test]
async fn a_token_that_expires_during_the_call_closes_it() {
    let app = app().await;
    let mut ws = app.connect(&app.token("exp", "brief", 2)).await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let closed = expect_type(&mut ws, "closed").await;
    assert_eq!(closed["reason"], "token_expired");
}

#[actix_web::test]
async fn a_full_room_refuses_the_next_participant() {
    let app = app().await;
    app.state
        .store
        .ensure_room("small", &app.state.config.rooms)
        .await
        .unwrap();
    let patch = server::store::RoomPatch {
        max_participants: Some(1),
        ..Default::default()
    };
    app.state.store.update_room("small", &patch).await.unwrap();
    let (_first, _) = app.join("small", "first").await;
    let mut second = app.connect(&app.token("small", "second", 60)).await;
    assert_eq!(next_json(&mut second).await["code"], "room_full");
    assert_eq!(expect_close(&mut second).await, Some(CloseCode::from(4009)));
}

#[actix_web::test]
async fn mute_and_chat_reach_everyone() {
    let app = app().await;
    let (mut a, wa) = app.join("m", "a").await;
    let (mut b, _) = app.join("m", "b").await;
    expect_type(&mut a, "participant_joined").await;
    send(&mut a, r#"{"type":"mute","audio":true}"#).await;
    let up = expect_type(&mut b, "participant_updated").await;
    assert_eq!(up["participant"]["id"], wa["participant_id"]);
    assert_eq!(up["participant"]["audio_muted"], true);
    assert_eq!(up["participant"]["video_muted"], false);
    let id = wa["participant_id"].as_str().unwrap();
    assert!(app.state.rooms.participant("m", id).unwrap().audio_muted);
    send(&mut a, r#"{"type":"chat","text":"hello"}"#).await;
    let c = expect_type(&mut b, "chat").await;
    assert_eq!(c["from"], wa["participant_id"]);
    assert_eq!(c["text"], "hello");
    send(&mut a, r#"{"type":"leave"}"#).await;
    expect_type(&mut b, "participant_left").await;
}

#[actix_web::test]
async fn screen_sharing_reaches_everyone() {
    let app = app().await;
    let (mut a, wa) = app.join("s", "a").await;
    let (mut b, _) = app.join("s", "b").await;
    expect_type(&mut a, "participant_joined").await;
    assert_eq!(wa["participant"]["screen_sharing"], false);
    let id = wa["participant_id"].as_str().unwrap();
    for active in [true, false] {
        send(
            &mut a,
            &json!({"type": "screen_share", "active": active}).to_string(),
        )
        .await;
        let up = expect_type(&mut b, "participant_updated").await;
        assert_eq!(up["participant"]["id"], id);
        assert_eq!(up["participant"]["screen_sharing"], active);
        assert_eq!(
            app.state.rooms.participant("s", id).unwrap().screen_sharing,
            active
        );
    }
    send(&mut a, r#"{"type":"screen_share","active":"yes"}"#).await;
    assert_eq!(
        expect_type(&mut a, "error").await["code"],
        "invalid_message"
    );
    assert_alive(&mut b, "still here").await;
}

#[actix_web::test]
async fn a_token_without_a_name_takes_the_name_chosen_on_the_page() {
    let app = app().await;
    let now = chrono::Utc::now().timestamp();
    let mut claims = JoinClaims {
        room: "n".into(),
        sub: "guest-7".into(),
        name: None,
        iat: now,
        exp: now + 600,
        can_publish: true,
        can_subscribe: true,
        is_admin: false,
        room_id: None,
    };
    let name_of = |token: String, name: &'static str| {
        let addr = app.addr;
        async move {
            let url = format!("ws://{addr}/api/v1/ws?token={token}&name={name}");
            let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
            let w = next_json(&mut ws).await;
            w["participant"]["display_name"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let unnamed = app.state.tokens.mint(&claims);
    assert_eq!(name_of(unnamed.clone(), "Zo%C3%AB%20").await, "Zoë");
    assert_eq!(name_of(unnamed, "").await, "guest-7");
    claims.name = Some("Alice".into());
    let named = app.state.tokens.mint(&claims);
    assert_eq!(name_of(named, "Mallory").await, "Alice");
}

#[actix_web::test]
async fn chat_is_rate_limited_per_participant() {
    let app = app().await;
    let (mut a, _) = app.join("c", "a").await;
    let (mut b, _) = app.join("c", "b").await;
    expect_type(&mut a, "participant_joined").await;
    // A burst past the allowance: the first ten go round, the rest are refused to the sender.
    for i in 0..25 {
        send(
            &mut a,
            &json!({"type": "chat", "text": format!("m{i}")}).to_string(),
        )
        .await;
    }
    let mut refused = 0;
    for _ in 0..25 {
        let v = next_json(&mut a).await;
        match v["type"].as_str() {
            Some("chat") => {}
            Some("error") => {
                assert_eq!(v["code"], "rate_limited", "{v}");
                refused += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(refused, 15, "ten at once, the rest refused");
    for i in 0..10 {
        assert_eq!(expect_type(&mut b, "chat").await["text"], format!("m{i}"));
    }
    // The allowance comes back: one a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_alive(&mut a, "again").await;
}

#[actix_web::test]
async fn a_page_of_another_origin_cannot_open_the_socket() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = app().await;
    let token = app.token("o", "a", 600);
    let url = format!("ws://{}/api/v1/ws?token={token}", app.addr);
    let with_origin = |origin: &str| {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin was let in: {other:?}"),
    }
    // The server's own pages, and clients that are not browsers (no Origin), get in.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(with_origin(&format!("http://{}", app.addr)))
            .await
            .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let (_b, welcome) = app.join("o", "b").await;
    assert_eq!(welcome["type"], "welcome");
}

impl App {
    /// A token with the given permissions, minted like `POST /rooms/{name}/tokens` does when
    /// `room_id` is given.
    fn token_with(
        &self,
        room: &str,
        identity: &str,
        is_admin: bool,
        can_publish: bool,
        room_id: Option<uuid::Uuid>,
    ) -> String {
        let now = chrono::Utc::now().timestamp();
        self.state.tokens.mint(&JoinClaims {
            room: room.into(),
            sub: identity.into(),
            name: Some(identity.into()),
            iat: now,
            exp: now + 600,
            can_publish,
            can_subscribe: true,
            is_admin,
            room_id,
        })
    }

    async fn join_with(&self, token: &str) -> (Ws, Value) {
        let mut ws = self.connect(token).await;
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }
}

#[actix_web::test]
async fn a_moderator_kicks_and_the_kicked_identity_stays_out() {
    let app = app().await;
    let moderator = app.token_with("k", "mod", true, true, None);
    let (mut m, wm) = app.join_with(&moderator).await;
    assert_eq!(wm["permissions"]["is_admin"], true);
    let (mut a, wa) = app.join("k", "alice").await;
    assert_eq!(wa["permissions"]["is_admin"], false);
    let (mut b, wb) = app.join("k", "bob").await;
    let alice = wa["participant_id"].as_str().unwrap();
    let bob = wb["participant_id"].as_str().unwrap();

    // Alice has a second session (another tab): the kick's ban takes it out too.
    let (mut a2, _) = app.join("k", "alice").await;
    // A participant without is_admin cannot.
    send(
        &mut a,
        &json!({"type": "kick_participant", "participant_id": bob}).to_string(),
    )
    .await;
    let e = expect_type(&mut a, "error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    send(
        &mut a,
        &json!({"type": "mute_participant", "participant_id": bob, "audio": true}).to_string(),
    )
    .await;
    assert_eq!(expect_type(&mut a, "error").await["code"], "forbidden");
    assert!(app.state.rooms.participant("k", bob).is_some());
    assert!(!app.state.rooms.participant("k", bob).unwrap().audio_muted);

    // Bad input from a moderator gets precise errors.
    send(
        &mut m,
        &json!({"type": "kick_participant", "participant_id": "PA_nobody"}).to_string(),
    )
    .await;
    assert_eq!(
        expect_type(&mut m, "error").await["code"],
        "participant_not_found"
    );
    send(
        &mut m,
        &json!({"type": "kick_participant", "participant_id": bob, "ban_s": -1}).to_string(),
    )
    .await;
    assert_eq!(
        expect_type(&mut m, "error").await["code"],
        "invalid_request"
    );

    // The moderator removes alice: she is closed as kicked, the others see her leave.
    send(
        &mut m,
        &json!({"type": "kick_participant", "participant_id": alice}).to_string(),
    )
    .await;
    let closed = expect_type(&mut a, "closed").await;
    assert_eq!(closed["reason"], "kicked");
    expect_close(&mut a).await;
    assert_eq!(expect_type(&mut a2, "closed").await["reason"], "kicked");
    let mut left = Vec::new();
    for _ in 0..2 {
        left.push(expect_type(&mut b, "participant_left").await["participant_id"].clone());
    }
    assert!(left.contains(&json!(alice)), "{left:?}");

    // The same token (and a fresh one for the same identity) cannot come back for a while.
    for _ in 0..2 {
        let mut again = app.connect(&app.token("k", "alice", 600)).await;
        let e = next_json(&mut again).await;
        assert_eq!(e["code"], "banned", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("may rejoin after"),
            "{e}"
        );
        assert_eq!(expect_close(&mut again).await, Some(CloseCode::from(4403)));
    }
    // Others may still join.
    let (_c, _) = app.join("k", "carol").await;

    // A kick with ban_s 0 only disconnects.
    send(
        &mut m,
        &json!({"type": "kick_participant", "participant_id": bob, "ban_s": 0}).to_string(),
    )
    .await;
    assert_eq!(expect_type(&mut b, "closed").await["reason"], "kicked");
    let (_b2, _) = app.join("k", "bob").await;
}

#[actix_web::test]
async fn a_locked_mute_holds_until_the_moderator_allows() {
    let app = app().await;
    let (mut m, _) = app
        .join_with(&app.token_with("l", "mod", true, true, None))
        .await;
    let (mut a, wa) = app.join("l", "alice").await;
    let alice = wa["participant_id"].as_str().unwrap();
    expect_type(&mut m, "participant_joined").await;

    // An unlocked mute: alice may undo it (today's behaviour).
    send(
        &mut m,
        &json!({"type": "mute_participant", "participant_id": alice, "audio": true}).to_string(),
    )
    .await;
    let up = expect_update(&mut a, "audio_muted", true).await;
    assert_eq!(up["audio_locked"], false);
    send(&mut a, r#"{"type":"mute","audio":false}"#).await;
    expect_update(&mut m, "audio_muted", false).await;

    // A locked mute: alice's unmute is refused and she stays out of the mix.
    send(
        &mut m,
        &json!({"type": "mute_participant", "participant_id": alice, "audio": true, "lock": true})
            .to_string(),
    )
    .await;
    expect_update(&mut a, "audio_locked", true).await;
    send(&mut a, r#"{"type":"mute","audio":false,"video":true}"#).await;
    let e = expect_type(&mut a, "error").await;
    assert_eq!(e["code"], "mute_locked", "{e}");
    assert!(e["message"].as_str().unwrap().contains("audio"), "{e}");
    let p = app.state.rooms.participant("l", alice).unwrap();
    assert!(p.audio_muted && p.audio_locked, "{p:?}");
    assert!(p.video_muted, "the unlocked part of the message applies");
    // Leaving and joining again (a reload) does not lift the lock.
    send(&mut a, r#"{"type":"leave"}"#).await;
    expect_close(&mut a).await;
    let (mut a, wa) = app.join("l", "alice").await;
    let alice = wa["participant_id"].as_str().unwrap().to_string();
    let alice = alice.as_str();
    assert_eq!(wa["participant"]["audio_locked"], true, "{wa}");
    assert_eq!(wa["participant"]["audio_muted"], true, "{wa}");
    send(&mut a, r#"{"type":"mute","audio":false}"#).await;
    assert_eq!(expect_type(&mut a, "error").await["code"], "mute_locked");
    // Muting again without `lock` keeps the lock.
    send(
        &mut m,
        &json!({"type": "mute_participant", "participant_id": alice, "audio": true}).to_string(),
    )
    .await;
    assert_alive(&mut m, "after re-mute").await;
    assert!(
        app.state
            .rooms
            .participant("l", alice)
            .unwrap()
            .audio_locked
    );

    // The moderator lifts the lock: still muted, and now alice may unmute herself.
    send(
        &mut m,
        &json!({"type": "mute_participant", "participant_id": alice, "lock": false}).to_string(),
    )
    .await;
    let up = expect_update(&mut a, "audio_locked", false).await;
    assert_eq!(up["audio_muted"], true);
    send(&mut a, r#"{"type":"mute","audio":false}"#).await;
    assert_alive(&mut a, "after unmute").await;
    assert!(!app.state.rooms.participant("l", alice).unwrap().audio_muted);
}

#[actix_web::test]
async fn a_token_for_a_deleted_room_does_not_bring_it_back() {
    let app = app().await;
    let store = &app.state.store;
    let room = store
        .ensure_room("gone", &app.state.config.rooms)
        .await
        .unwrap();
    let old = app.token_with("gone", "alice", false, true, Some(room.id));
    let (ws, _) = app.join_with(&old).await; // admits while the room exists
    drop(ws);
    assert!(store.delete_room("gone").await.unwrap());
    let mut refused = app.connect(&old).await;
    let e = next_json(&mut refused).await;
    assert_eq!(e["code"], "room_not_found", "{e}");
    assert_eq!(
        expect_close(&mut refused).await,
        Some(CloseCode::from(4404))
    );
    assert!(
        store.get_room("gone").await.unwrap().is_none(),
        "not created again"
    );
    // Created again under the same name: the old token still does not admit.
    store
        .ensure_room("gone", &app.state.config.rooms)
        .await
        .unwrap();
    let mut refused = app.connect(&old).await;
    assert_eq!(next_json(&mut refused).await["code"], "room_not_found");
    // A token without a room id (minted by another service) keeps working by name.
    let (_ok, _) = app.join("gone", "bob").await;
}

#[actix_web::test]
async fn a_participant_who_may_not_publish_cannot_present() {
    let app = app().await;
    let (mut v, wv) = app
        .join_with(&app.token_with("p", "viewer", false, false, None))
        .await;
    assert_eq!(wv["permissions"]["can_publish"], false);
    send(&mut v, r#"{"type":"screen_share","active":true}"#).await;
    let e = expect_type(&mut v, "error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let id = wv["participant_id"].as_str().unwrap();
    assert!(!app.state.rooms.participant("p", id).unwrap().screen_sharing);
}

#[actix_web::test]
async fn past_its_cpu_budget_the_server_refuses_joins() {
    let app = app().await;
    let (_first, _) = app.join("busy", "alice").await;
    // Far past any budget (the default is 85 % of the cores).
    app.state.load.record(1000.0);
    let mut ws = app.connect(&app.token("busy", "bob", 600)).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["code"], "server_busy", "{e}");
    assert!(e["message"].as_str().unwrap().contains("CPU budget"), "{e}");
    assert_eq!(expect_close(&mut ws).await, Some(CloseCode::from(4503)));
    let metrics = reqwest::get(format!("http://{}/metrics", app.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mcu_process_cpu_cores ")),
        "{metrics}"
    );
}
