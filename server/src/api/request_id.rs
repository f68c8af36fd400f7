//! Request ids: every HTTP request (WebSocket upgrades included) runs inside a `request` tracing
//! span carrying `request_id`, so each of its log lines (and, in JSON logs, each line's `span`)
//! names it. The id is taken from the client's `x-request-id` header when it is a sane token
//! (1..=128 of `[A-Za-z0-9._:-]`, so a proxy's id links both logs), else generated; either way it
//! is returned in the response's `x-request-id`.
//!
//! One line per finished request is logged at `info` (`debug` for `/healthz` and `/metrics`,
//! which probes and scrapers call every few seconds).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use std::time::Instant;
use tracing::Instrument as _;

/// The header read and written.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest accepted client-supplied id.
pub const MAX_LEN: usize = 128;

/// The client's id if it is safe to log and echo, else a new one.
pub fn pick(header: Option<&HeaderValue>) -> String {
    header
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid(s))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

fn valid(s: &str) -> bool {
    (1..=MAX_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The middleware (`actix_web::middleware::from_fn(request_id)`).
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = pick(req.headers().get(&X_REQUEST_ID));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    let quiet = matches!(req.path(), "/healthz" | "/metrics");
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID, v);
    }
    let status = res.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    span.in_scope(|| {
        if quiet {
            tracing::debug!(status, elapsed_ms = ms, "request done");
        } else {
            tracing::info!(status, elapsed_ms = ms, "request done");
        }
    });
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test as atest;
    use actix_web::{App, HttpResponse, web};

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        let keep = HeaderValue::from_static("lb-42:abc_DEF.9");
        assert_eq!(pick(Some(&keep)), "lb-42:abc_DEF.9");
        for bad in ["", "has space", "new\u{7f}line", &"x".repeat(129)] {
            let v = HeaderValue::from_str(bad).ok();
            let got = pick(v.as_ref());
            assert_ne!(got, bad);
            assert_eq!(got.len(), 32, "a generated uuid");
        }
        assert_ne!(pick(None), pick(None));
    }

    #[actix_web::test]
    async fn echoes_or_generates_the_header() {
        let app = atest::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(request_id))
                .route("/x", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let req = atest::TestRequest::get()
            .uri("/x")
            .insert_header(("x-request-id", "abc-123"))
            .to_request();
        let res = atest::call_service(&app, req).await;
        assert_eq!(res.headers().get("x-request-id").unwrap(), "abc-123");
        let res = atest::call_service(&app, atest::TestRequest::get().uri("/x").to_request()).await;
        let id = res.headers().get("x-request-id").unwrap().to_str().unwrap();
        assert_eq!(id.len(), 32);
        // Errors (here a 404) carry it too.
        let res =
            atest::call_service(&app, atest::TestRequest::get().uri("/nope").to_request()).await;
        assert_eq!(res.status(), 404);
        assert!(res.headers().contains_key("x-request-id"));
    }
}
