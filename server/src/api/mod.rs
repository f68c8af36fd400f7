//! HTTP and WebSocket: routes, auth, error mapping.

pub mod body;
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
