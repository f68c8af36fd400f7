//! Several nodes: a REST call about a room's live state (the room itself, its participants, kick,
//! mute, stats, recording start and stop) asked of a node that does not host the room is answered
//! by the node that does. This node checks the caller's API key, then sends the same request on to
//! the hosting node over HTTP with the cluster's internal credential ([`INTERNAL_HEADER`]) instead
//! of the key, and returns its answer as is. A forwarded call is never forwarded again.

use crate::AppState;
use crate::auth::AdminAuth;
use crate::error::ApiError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use std::time::Duration;

/// Header of a call one node forwards to another: the internal credential.
pub const INTERNAL_HEADER: &str = "x-mcu-internal";
/// Header naming the node that answered a forwarded call.
pub const NODE_HEADER: &str = "x-mcu-node";
/// Largest body forwarded (the API's own body limit).
const BODY_MAX: usize = 64 * 1024;
/// How long the hosting node may take to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The internal credential of a cluster: derived from the join-token secret every node shares,
/// so that no new secret is needed and the API key never travels between nodes.
pub fn internal_credential(token_secret: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(token_secret).expect("HMAC takes a key of any length");
    mac.update(b"mcu-internal-call-v1");
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a path is about: a room by name, or a recording by id.
#[derive(Debug, PartialEq, Eq)]
enum Subject<'a> {
    Room(&'a str),
    Recording(uuid::Uuid),
}

/// The live-state calls that go to the hosting node: `/rooms/{name}` (any method: settings apply
/// to the live room, delete closes it), `/rooms/{name}/participants…`, `/stats`,
/// `/recordings` (start), and `/recordings/{id}` (stop, delete) of a running recording.
fn subject(path: &str) -> Option<Subject<'_>> {
    let rest = path.strip_prefix("/api/v1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["rooms", name] => Some(Subject::Room(name)),
        ["rooms", name, "participants", ..] | ["rooms", name, "stats" | "recordings"] => {
            Some(Subject::Room(name))
        }
        ["recordings", id] | ["recordings", id, "stop"] => {
            uuid::Uuid::try_parse(id).ok().map(Subject::Recording)
        }
        _ => None,
    }
}

/// The base URL of the live node other than this one that hosts `subject`, if any.
async fn elsewhere(state: &AppState, subject: Subject<'_>) -> Result<Option<String>, ApiError> {
    let node = match subject {
        Subject::Room(name) => {
            if !crate::store::valid_room_name(name) {
                return Ok(None);
            }
            state.store.get_room(name).await?.and_then(|r| r.node_id)
        }
        Subject::Recording(id) => state
            .store
            .get_recording(id)
            .await?
            .filter(|r| r.status == crate::model::RecordingStatus::Recording)
            .and_then(|r| r.node_id),
    };
    let Some(node) = node.filter(|n| *n != state.cluster.node_id) else {
        return Ok(None);
    };
    let nodes = state.cluster.nodes(&state.store).await?;
    Ok(nodes
        .into_iter()
        .find(|n| n.id == node && n.status != "dead")
        .map(|n| n.url))
}

/// The middleware (`actix_web::middleware::from_fn(forward)`).
pub async fn forward(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let path = req.path().to_string();
    if req.headers().contains_key(INTERNAL_HEADER) {
        // Forwarded to us (the handler's AdminAuth checks the credential): answered here.
        let mut res = next.call(req).await?.map_into_boxed_body();
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&state.cluster.node_id) {
            res.headers_mut().insert(
                actix_web::http::header::HeaderName::from_static(NODE_HEADER),
                v,
            );
        }
        return Ok(res);
    }
    // A SQLite file is one node: nothing to forward, no lookup on every call.
    let single = state.store.backend() == "sqlite";
    let target = match subject(&path).filter(|_| !single) {
        Some(s) => match elsewhere(&state, s).await {
            Ok(t) => t,
            Err(e) => return Ok(req.error_response(e)),
        },
        None => None,
    };
    let Some(base) = target else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // The caller's key is checked here: the hosting node sees the internal credential only.
    let (http_req, mut payload) = req.into_parts();
    if let Err(e) = AdminAuth::check(&http_req, &state.api_key, &state.auth_limiter) {
        return Ok(ServiceResponse::new(http_req, HttpResponse::from_error(e)));
    }
    let body = match read_body(&mut payload).await {
        Ok(b) => b,
        Err(e) => return Ok(ServiceResponse::new(http_req, HttpResponse::from_error(e))),
    };
    let url = format!(
        "{}{}",
        base.trim_end_matches('/'),
        http_req
            .uri()
            .path_and_query()
            .map_or(path.as_str(), |p| p.as_str())
    );
    let resp = match send(&state, &http_req, &url, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%url, error = %e, "cannot forward a call to the hosting node");
            let e = ApiError::Unavailable(format!(
                "the node hosting this room did not answer ({e}); try again shortly"
            ));
            return Ok(ServiceResponse::new(http_req, HttpResponse::from_error(e)));
        }
    };
    Ok(ServiceResponse::new(http_req, resp))
}

async fn read_body(payload: &mut actix_web::dev::Payload) -> Result<web::Bytes, ApiError> {
    use futures_util::StreamExt as _;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::InvalidRequest(format!("body: {e}")))?;
        if body.len() + chunk.len() > BODY_MAX {
            return Err(ApiError::PayloadTooLarge(format!(
                "request body over {BODY_MAX} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Node `base`'s live participant counts of the rooms on one page of `GET /rooms` (the same
/// `limit` and `cursor`), by room name; `None` if it does not answer.
pub async fn room_counts(
    state: &AppState,
    base: &str,
    limit: u32,
    cursor: Option<&str>,
) -> Option<std::collections::HashMap<String, u32>> {
    let url = format!("{}/api/v1/rooms", base.trim_end_matches('/'));
    let mut query = vec![("limit", limit.to_string())];
    if let Some(c) = cursor {
        query.push(("cursor", c.to_string()));
    }
    let answer = client()
        .get(&url)
        .query(&query)
        .header(INTERNAL_HEADER, &state.internal_key)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let body: serde_json::Value = match answer {
        Ok(a) => a.json().await.ok()?,
        Err(e) => {
            tracing::warn!(%url, error = %e, "cannot ask a node for its rooms' participants");
            return None;
        }
    };
    Some(
        body["rooms"]
            .as_array()?
            .iter()
            .filter_map(|r| {
                let n = u32::try_from(r["active_participants"].as_u64()?).ok()?;
                Some((r["name"].as_str()?.to_string(), n))
            })
            .collect(),
    )
}

fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .build()
            .unwrap_or_default()
    })
}

/// Sends the call on; the answer's status, type and body come back as they are.
async fn send(
    state: &AppState,
    req: &actix_web::HttpRequest,
    url: &str,
    body: web::Bytes,
) -> Result<HttpResponse, reqwest::Error> {
    let client = client();
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut out = client
        .request(method, url)
        .header(INTERNAL_HEADER, &state.internal_key)
        .body(body.to_vec());
    for name in ["content-type", "x-request-id", "range"] {
        if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
            out = out.header(name, v);
        }
    }
    let answer = out.send().await?;
    let status = actix_web::http::StatusCode::from_u16(answer.status().as_u16())
        .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY);
    let mut resp = HttpResponse::build(status);
    for name in ["content-type", "retry-after", "allow", "content-range"] {
        if let Some(v) = answer.headers().get(name).and_then(|v| v.to_str().ok()) {
            resp.insert_header((name, v.to_string()));
        }
    }
    if let Some(node) = answer
        .headers()
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        resp.insert_header((NODE_HEADER, node.to_string()));
    }
    let bytes = answer.bytes().await?;
    Ok(resp.body(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_calls_go_to_the_hosting_node() {
        let id = uuid::Uuid::new_v4();
        let cases: Vec<(String, Option<Subject<'_>>)> = vec![
            ("/api/v1/rooms/a".into(), Some(Subject::Room("a"))),
            (
                "/api/v1/rooms/a/participants".into(),
                Some(Subject::Room("a")),
            ),
            (
                "/api/v1/rooms/a/participants/PA_1".into(),
                Some(Subject::Room("a")),
            ),
            (
                "/api/v1/rooms/a/participants/PA_1/mute".into(),
                Some(Subject::Room("a")),
            ),
            ("/api/v1/rooms/a/stats".into(), Some(Subject::Room("a"))),
            (
                "/api/v1/rooms/a/recordings".into(),
                Some(Subject::Room("a")),
            ),
            (
                format!("/api/v1/recordings/{id}/stop"),
                Some(Subject::Recording(id)),
            ),
            (
                format!("/api/v1/recordings/{id}"),
                Some(Subject::Recording(id)),
            ),
            (format!("/api/v1/recordings/{id}/media"), None),
            ("/api/v1/recordings/not-an-id/stop".into(), None),
            ("/api/v1/rooms/a/tokens".into(), None),
            ("/api/v1/rooms".into(), None),
            ("/api/v1/nodes".into(), None),
            ("/api/v1/ws".into(), None),
            ("/healthz".into(), None),
        ];
        for (path, want) in &cases {
            assert_eq!(subject(path).as_ref(), want.as_ref(), "{path}");
        }
    }

    #[test]
    fn the_credential_depends_on_the_secret_only() {
        let a = internal_credential(b"secret-one-0123456789abcdef0123456789");
        assert_eq!(
            a,
            internal_credential(b"secret-one-0123456789abcdef0123456789")
        );
        assert_ne!(
            a,
            internal_credential(b"secret-two-0123456789abcdef0123456789")
        );
        assert_eq!(a.len(), 64);
    }
}
