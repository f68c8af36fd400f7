//! Authentication: the admin API key (REST) and join tokens (signaling).
//!
//! - Admin calls carry `Authorization: Bearer <api key>`; [`AdminAuth`] is the actix extractor
//!   that every admin handler takes. The comparison is constant-time (both sides are hashed to a
//!   fixed length first, so not even the key's length leaks).
//! - Join tokens are HS256 JWTs ([`JoinClaims`]). Only HS256 is accepted (a token whose header
//!   names another algorithm, or `none`, is invalid) and `exp` is enforced with zero leeway.
//! - Signed media URLs ([`TokenKeys::sign_media`]): a recording's file may be fetched without the
//!   bearer header (a `<video src>` cannot send one) with `?exp=<unix>&sig=<hex>`, where `sig` is
//!   HMAC-SHA256 under the token secret of `"<recording id>:<exp>"`. Such a message never contains
//!   a `.`, so it can never be the signing input of a JWT (`header.payload`) and the other way
//!   round: neither signature can stand in for the other.

use crate::AppState;
use crate::error::ApiError;
use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// `n_bytes` of OS randomness, URL-safe base64 without padding (4 characters per 3 bytes).
pub fn random_secret(n_bytes: usize) -> String {
    let mut bytes = vec![0u8; n_bytes];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Constant-time equality of two secrets of any length.
fn secrets_equal(a: &str, b: &str) -> bool {
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

/// Failed API-key attempts allowed per client address: a burst of `burst`, then `burst` a minute
/// (a token bucket per IP). Past it every admin call from that address, right key or not, gets
/// 429 `rate_limited` with `Retry-After` until the bucket refills, so a key cannot be guessed at
/// speed. Calls with the right key never use the allowance. Bounded: at most [`LIMITER_IPS`]
/// addresses are tracked; full buckets are forgotten first.
#[derive(Debug)]
pub struct FailedAuthLimiter {
    burst: f64,
    per_sec: f64,
    buckets:
        parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

/// Most client addresses the failed-auth limiter tracks at once.
pub const LIMITER_IPS: usize = 10_000;

impl FailedAuthLimiter {
    /// A limiter allowing `burst` failures then `burst` a minute; 0 turns it off.
    pub fn new(burst: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_sec: f64::from(burst) / 60.0,
            buckets: Default::default(),
        }
    }

    /// The allowance of `ip` at `now` (refilled) in `buckets`.
    fn level(
        &self,
        buckets: &std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>,
        ip: std::net::IpAddr,
        now: std::time::Instant,
    ) -> f64 {
        buckets.get(&ip).map_or(self.burst, |(level, at)| {
            (level + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst)
        })
    }

    /// The address a client is counted under: its IPv4 address, or its IPv6 /64 (one host
    /// usually holds a whole /64).
    fn key(ip: std::net::IpAddr) -> std::net::IpAddr {
        match ip {
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            v4 => v4,
        }
    }

    /// `Err(seconds to wait)` when `ip` has used its allowance.
    pub fn check(&self, ip: std::net::IpAddr, now: std::time::Instant) -> Result<(), u64> {
        if self.burst == 0.0 {
            return Ok(());
        }
        let level = self.level(&self.buckets.lock(), Self::key(ip), now);
        if level >= 1.0 {
            Ok(())
        } else {
            Err(((1.0 - level) / self.per_sec).ceil() as u64)
        }
    }

    /// Counts one failed attempt of `ip`.
    pub fn failed(&self, ip: std::net::IpAddr, now: std::time::Instant) {
        if self.burst == 0.0 {
            return;
        }
        let ip = Self::key(ip);
        // One lock for the read and the write: concurrent failures each count.
        let mut buckets = self.buckets.lock();
        let level = self.level(&buckets, ip, now);
        if buckets.len() >= LIMITER_IPS && !buckets.contains_key(&ip) {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets
                .retain(|_, (l, at)| *l + now.duration_since(*at).as_secs_f64() * per_sec < burst);
            if buckets.len() >= LIMITER_IPS {
                return; // every tracked address is being limited: do not grow
            }
        }
        buckets.insert(ip, ((level - 1.0).max(0.0), now));
    }
}

/// Proof that the request carried the admin API key. Take it as a handler argument.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl AdminAuth {
    /// Checks the `Authorization` header of `req` against `api_key`, within the failed-attempt
    /// allowance of its client address.
    pub fn check(
        req: &HttpRequest,
        api_key: &str,
        limiter: &FailedAuthLimiter,
    ) -> Result<AdminAuth, ApiError> {
        let ip = req.peer_addr().map(|a| a.ip());
        let now = std::time::Instant::now();
        if let Some(ip) = ip
            && let Err(wait) = limiter.check(ip, now)
        {
            return Err(ApiError::RateLimited(wait));
        }
        let result = Self::check_key(req, api_key);
        if result.is_err()
            && let Some(ip) = ip
        {
            limiter.failed(ip, now);
        }
        result
    }

    fn check_key(req: &HttpRequest, api_key: &str) -> Result<AdminAuth, ApiError> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "missing Authorization header (expected: Bearer <api key>)".into(),
            ));
        };
        let value = value.to_str().unwrap_or("");
        let Some((scheme, key)) = value.split_once(' ') else {
            return Err(ApiError::Unauthorized(
                "malformed Authorization header (expected: Bearer <api key>)".into(),
            ));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized(
                "unsupported Authorization scheme (expected: Bearer <api key>)".into(),
            ));
        }
        if !secrets_equal(key.trim(), api_key) {
            tracing::warn!(peer = ?req.peer_addr(), path = req.path(), "admin call with a wrong API key");
            return Err(ApiError::Unauthorized("invalid API key".into()));
        }
        Ok(AdminAuth)
    }
}

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = std::future::Ready<Result<AdminAuth, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let result = match req.app_data::<web::Data<AppState>>() {
            // A call another node of the cluster forwarded (it checked the caller's key).
            Some(state)
                if req
                    .headers()
                    .contains_key(crate::api::forward::INTERNAL_HEADER) =>
            {
                let given = req
                    .headers()
                    .get(crate::api::forward::INTERNAL_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if secrets_equal(given, &state.internal_key) {
                    Ok(AdminAuth)
                } else {
                    tracing::warn!(peer = ?req.peer_addr(), path = req.path(), "a forwarded call with a wrong internal credential");
                    Err(ApiError::Unauthorized("invalid internal credential".into()))
                }
            }
            Some(state) => AdminAuth::check(req, &state.api_key, &state.auth_limiter),
            None => Err(ApiError::Unexpected(anyhow::anyhow!(
                "AppState missing from the app data"
            ))),
        };
        std::future::ready(result)
    }
}

fn yes() -> bool {
    true
}

/// The claims of a join token. Field names are part of the public contract (services holding
/// the secret mint their own tokens): `room`, `sub` (identity), `name` (display name), `iat`,
/// `exp`, `can_publish`, `can_subscribe`, `is_admin`, `room_id`. Permissions default to publish + subscribe,
/// no admin, when a third-party token leaves them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// Room name the token admits to.
    pub room: String,
    /// Participant identity.
    pub sub: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: i64,
    /// Expiry, Unix seconds (required, no leeway).
    pub exp: i64,
    /// May send audio/video.
    #[serde(default = "yes")]
    pub can_publish: bool,
    /// May receive the mixes.
    #[serde(default = "yes")]
    pub can_subscribe: bool,
    /// May moderate the room (kick, mute others).
    #[serde(default)]
    pub is_admin: bool,
    /// The id of the room the token was minted for (tokens from `POST /rooms/{name}/tokens` carry
    /// it): such a token admits only to that room, never to a room created again under the same
    /// name after a delete. Tokens without it admit to whichever room has the name, creating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<uuid::Uuid>,
}

/// Why a join token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Signature fine, but `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Malformed, wrong signature, wrong algorithm, missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Signs and verifies join tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// The secret again, as the HMAC key of signed media URLs.
    media: Hmac<Sha256>,
}

/// Why a signed media URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaSigError {
    /// `exp` has passed.
    #[error("the signed link has expired")]
    Expired,
    /// Malformed, or not signed for this recording and expiry.
    #[error("the signed link is not valid")]
    Invalid,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Keys for `secret`.
    pub fn new(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // Third-party minters may add an audience; we do not scope by it.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            // HMAC takes keys of any length.
            media: Hmac::<Sha256>::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
        }
    }

    fn media_mac(&self, id: &uuid::Uuid, exp: i64) -> Hmac<Sha256> {
        let mut mac = self.media.clone();
        mac.update(format!("{id}:{exp}").as_bytes());
        mac
    }

    /// The hex signature that lets `GET /recordings/{id}/media?exp=&sig=` through until `exp`
    /// (Unix seconds).
    pub fn sign_media(&self, id: &uuid::Uuid, exp: i64) -> String {
        hex::encode(self.media_mac(id, exp).finalize().into_bytes())
    }

    /// Checks a signed media URL's `exp` and `sig` (as they came in the query) at `now` (Unix
    /// seconds). The comparison is constant-time.
    pub fn verify_media(
        &self,
        id: &uuid::Uuid,
        exp: &str,
        sig: &str,
        now: i64,
    ) -> Result<(), MediaSigError> {
        let exp: i64 = exp.trim().parse().map_err(|_| MediaSigError::Invalid)?;
        let sig = hex::decode(sig.trim()).map_err(|_| MediaSigError::Invalid)?;
        self.media_mac(id, exp)
            .verify_slice(&sig)
            .map_err(|_| MediaSigError::Invalid)?;
        // Checked after the signature so that a forged link learns nothing from the answer.
        if exp <= now {
            return Err(MediaSigError::Expired);
        }
        Ok(())
    }

    /// Signs `claims` (HS256).
    pub fn mint(&self, claims: &JoinClaims) -> String {
        // HS256 with an HMAC key and a plain struct cannot fail to encode; if it ever did, an
        // empty token is simply rejected by every verifier.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).unwrap_or_else(
            |e| {
                tracing::error!(error = %e, "cannot sign a join token");
                String::new()
            },
        )
    }

    /// Checks signature, algorithm and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Result<JoinClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        match jsonwebtoken::decode::<JoinClaims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid(e.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_auth_allowance_refills_and_stays_bounded() {
        let l = FailedAuthLimiter::new(2);
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = std::time::Instant::now();
        l.failed(a, t0);
        assert!(l.check(a, t0).is_ok());
        l.failed(a, t0);
        // 2 a minute: one attempt back after 30 s.
        assert_eq!(l.check(a, t0), Err(30));
        assert!(l.check(b, t0).is_ok(), "per address");
        // IPv6 counts per /64.
        let (v6a, v6b): (std::net::IpAddr, std::net::IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::ffff:2".parse().unwrap(),
        );
        l.failed(v6a, t0);
        l.failed(v6b, t0);
        assert!(l.check(v6a, t0).is_err(), "one /64, one allowance");
        assert!(l.check(a, t0 + std::time::Duration::from_secs(30)).is_ok());
        // Off.
        let off = FailedAuthLimiter::new(0);
        for _ in 0..100 {
            off.failed(a, t0);
        }
        assert!(off.check(a, t0).is_ok());
        // Bounded: addresses being limited are kept, refilled ones make room.
        let l = FailedAuthLimiter::new(1);
        for i in 0..LIMITER_IPS as u32 + 50 {
            l.failed(std::net::IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.buckets.lock().len(), LIMITER_IPS);
        let later = t0 + std::time::Duration::from_secs(120);
        l.failed(b, later);
        assert_eq!(l.buckets.lock().len(), 1, "refilled addresses forgotten");
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn claims(exp: i64) -> JoinClaims {
        JoinClaims {
            room: "standup".into(),
            sub: "alice".into(),
            name: Some("Alice".into()),
            iat: now(),
            exp,
            can_publish: true,
            can_subscribe: false,
            is_admin: true,
            room_id: None,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let c = claims(now() + 60);
        let t = keys.mint(&c);
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(keys.verify(&t), Ok(c));
    }

    #[test]
    fn expired_token_is_expired_not_invalid() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = keys.mint(&claims(now() - 1));
        assert_eq!(keys.verify(&t), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_payload_or_signature_is_invalid() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = keys.mint(&claims(now() + 60));
        let parts: Vec<&str> = t.split('.').collect();
        let mut other = claims(now() + 60);
        other.room = "boardroom".into();
        let forged_payload = b64(&serde_json::to_value(&other).unwrap());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(matches!(keys.verify(&forged), Err(TokenError::Invalid(_))));
        let mut sig = parts[2].to_string();
        let last = if sig.ends_with('A') { 'B' } else { 'A' };
        sig.pop();
        sig.push(last);
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], sig);
        assert!(matches!(keys.verify(&bad_sig), Err(TokenError::Invalid(_))));
        assert!(matches!(
            keys.verify("not a jwt"),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn wrong_secret_is_invalid() {
        let a = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let b = TokenKeys::new(b"fedcba9876543210fedcba9876543210");
        let t = a.mint(&claims(now() + 60));
        assert!(matches!(b.verify(&t), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_rejected() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let payload = b64(&serde_json::to_value(claims(now() + 60)).unwrap());
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg":"none","typ":"JWT"})),
            payload
        );
        assert!(matches!(keys.verify(&none), Err(TokenError::Invalid(_))));
        // Same secret, but HS512: still refused, only HS256 is accepted.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(now() + 60),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(matches!(keys.verify(&hs512), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn missing_exp_is_invalid_and_permissions_default() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"room":"r","sub":"s"}),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert!(matches!(keys.verify(&no_exp), Err(TokenError::Invalid(_))));
        let minimal = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"room":"r","sub":"s","exp": now() + 60}),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        let c = keys.verify(&minimal).unwrap();
        assert!(c.can_publish && c.can_subscribe && !c.is_admin && c.name.is_none());
    }

    #[test]
    fn signed_media_links_name_one_recording_until_they_expire() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let (id, other) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let exp = now() + 3600;
        let sig = keys.sign_media(&id, exp);
        assert_eq!(sig.len(), 64);
        let e = exp.to_string();
        assert_eq!(keys.verify_media(&id, &e, &sig, now()), Ok(()));
        assert_eq!(
            keys.verify_media(&id, &e, &sig.to_uppercase(), now()),
            Ok(())
        );
        // Another recording, another expiry, another secret, a flipped or cut signature.
        let invalid = Err(MediaSigError::Invalid);
        assert_eq!(keys.verify_media(&other, &e, &sig, now()), invalid);
        assert_eq!(
            keys.verify_media(&id, &(exp + 1).to_string(), &sig, now()),
            invalid
        );
        let b = TokenKeys::new(b"fedcba9876543210fedcba9876543210");
        assert_eq!(b.verify_media(&id, &e, &sig, now()), invalid);
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(keys.verify_media(&id, &e, &flipped, now()), invalid);
        assert_eq!(keys.verify_media(&id, &e, &sig[..62], now()), invalid);
        for (exp, sig) in [
            ("", sig.as_str()),
            ("x", sig.as_str()),
            (e.as_str(), ""),
            (e.as_str(), "zz"),
        ] {
            assert_eq!(
                keys.verify_media(&id, exp, sig, now()),
                invalid,
                "{exp:?} {sig:?}"
            );
        }
        // Expired: refused once `now` reaches `exp`.
        assert_eq!(
            keys.verify_media(&id, &e, &sig, exp),
            Err(MediaSigError::Expired)
        );
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert_ne!(random_secret(24), random_secret(24));
        assert_eq!(random_secret(24).len(), 32);
    }
}
