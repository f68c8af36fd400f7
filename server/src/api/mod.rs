//! HTTP and WebSocket: routes, auth, error mapping.

pub mod body;
pub mod forward;
pub mod health;
pub mod openapi;
pub mod recordings;
pub mod request_id;
pub mod rest;
pub mod stats;
pub mod web;
pub mod ws;

use crate::AppState;
use actix_web::web as aw;
use actix_web::{App, HttpServer};

/// Builds the actix server on an already bound listener.
pub fn http_server(
    state: aw::Data<AppState>,
    listener: std::net::TcpListener,
) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        let dir = state.config.web_dir.clone();
        App::new()
            .wrap(actix_web::middleware::from_fn(forward::forward))
            .wrap(security_headers())
            .wrap(actix_web::middleware::from_fn(request_id::request_id))
            .app_data(state.clone())
            .configure(configure)
            .configure(|cfg| web::configure_static(cfg, &dir))
    })
    .workers(2)
    // SIGTERM/SIGINT are handled by `server::shutdown` (participants told, recordings
    // finalized) before the HTTP server stops.
    .disable_signals()
    .shutdown_timeout(3)
    .listen(listener)?
    .run();
    Ok(server)
}

/// What the pages may load: only this origin's scripts, styles and media (no inline code, no
/// framing), and WebSockets to any node (a room may live on another node of the cluster).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; media-src 'self' blob:; connect-src 'self' ws: wss:; \
    object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Security headers on every response (a handler that sets one keeps its own).
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
}

/// All routes (also used by tests with `actix_web::test`).
pub fn configure(cfg: &mut aw::ServiceConfig) {
    health::configure(cfg);
    cfg.service(
        aw::scope("/api/v1")
            .configure(rest::configure)
            .configure(stats::configure)
            .configure(recordings::configure)
            .configure(openapi::configure)
            .configure(ws::configure)
            .route("/dev/token", actix_web::web::get().to(web::dev_token)),
    );
}
