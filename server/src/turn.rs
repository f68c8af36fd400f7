//! Time-limited TURN credentials (the "TURN REST API" convention that coturn implements with
//! `use-auth-secret` / `static-auth-secret`).
//!
//! The TURN server and this server share one secret; nothing else is exchanged. For each
//! participant we mint
//! - username = `<expiry as unix seconds>:<participant id>`,
//! - credential = base64(HMAC-SHA1(secret, username)).
//!
//! coturn recomputes the HMAC from the username it receives and refuses the allocation when it
//! differs or when the expiry has passed. The participant id (`PA_<hex>`) is used as the identity:
//! it is ASCII without `:` whatever the join token's identity holds, and it matches our logs.

use crate::config::{Config, IceServer, TurnConfig};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use std::time::{SystemTime, UNIX_EPOCH};

/// A username/credential pair for one participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `<expiry unix seconds>:<identity>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub credential: String,
    /// Expiry, unix seconds.
    pub expires_at: u64,
}

/// Credentials for `identity`, valid until `now + ttl_s`.
pub fn credentials(secret: &str, identity: &str, ttl_s: u32, now: SystemTime) -> TurnCredentials {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires_at = now + u64::from(ttl_s);
    let username = format!("{expires_at}:{identity}");
    TurnCredentials {
        credential: sign(secret, &username),
        username,
        expires_at,
    }
}

/// base64(HMAC-SHA1(secret, username)).
pub fn sign(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The TURN entry for a participant, if TURN is configured.
pub fn ice_server(turn: &TurnConfig, identity: &str, now: SystemTime) -> Option<IceServer> {
    let secret = turn.secret.as_deref().filter(|s| !s.is_empty())?;
    if turn.urls.is_empty() {
        return None;
    }
    let c = credentials(secret, identity, turn.ttl_s, now);
    Some(IceServer {
        urls: turn.urls.clone(),
        username: Some(c.username),
        credential: Some(c.credential),
    })
}

/// What `welcome.ice_servers` holds for a participant: the configured STUN/TURN servers
/// (`rtc.ice_servers`), then the TURN relay with this participant's own credentials.
pub fn ice_servers_for(config: &Config, identity: &str, now: SystemTime) -> Vec<IceServer> {
    let mut v = config.rtc.ice_servers.clone();
    v.extend(ice_server(&config.turn, identity, now));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn username_carries_the_expiry_and_identity() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = credentials("s3cret", "PA_1", 3600, now);
        assert_eq!(c.username, "1700003600:PA_1");
        assert_eq!(c.expires_at, 1_700_003_600);
        assert_eq!(c.credential, sign("s3cret", "1700003600:PA_1"));
    }

    #[test]
    fn hmac_sha1_known_answers() {
        // RFC 2202 test case 2 (key "Jefe"), base64 of 0xeffcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        // A REST-API style username, the expected value computed with
        // `printf '%s' 1433369144:ninefingers | openssl dgst -sha1 -hmac north -binary | base64`.
        assert_eq!(
            sign("north", "1433369144:ninefingers"),
            "aEYdSaUCG2Ywz5nP+o46NuqwFCg="
        );
    }

    #[test]
    fn welcome_gets_turn_only_when_configured() {
        let mut cfg = Config::default();
        cfg.rtc.ice_servers = vec![IceServer {
            urls: vec!["stun:stun.example.org:3478".into()],
            username: None,
            credential: None,
        }];
        let now = SystemTime::now();
        assert_eq!(ice_servers_for(&cfg, "PA_1", now).len(), 1);
        cfg.turn.urls = vec!["turn:127.0.0.1:3478".into()];
        cfg.turn.secret = Some("0123456789abcdef".into());
        cfg.turn.ttl_s = 600;
        let v = ice_servers_for(&cfg, "PA_1", now);
        assert_eq!(v.len(), 2);
        let t = &v[1];
        assert_eq!(t.urls, vec!["turn:127.0.0.1:3478".to_string()]);
        let user = t.username.as_deref().unwrap();
        let (exp, who) = user.split_once(':').unwrap();
        assert_eq!(who, "PA_1");
        let exp: u64 = exp.parse().unwrap();
        let now_s = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(exp, now_s + 600);
        assert_eq!(
            t.credential.as_deref(),
            Some(sign("0123456789abcdef", user).as_str())
        );
    }
}
