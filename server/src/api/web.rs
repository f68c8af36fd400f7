//! The browser client: static files from `web/`, the pages behind the invite links
//! (`/r/{room}`) and the admin console (`/admin`), and in `--dev` a token endpoint so that the
//! join page works without a backend of one's own.

use crate::AppState;
use crate::auth::JoinClaims;
use crate::error::ApiError;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

/// Query of `GET /api/v1/dev/token`.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct DevTokenQuery {
    /// Room to join, `[A-Za-z0-9_-]{1,64}`.
    room: Option<String>,
    /// Display name (at most 128 characters), default `Guest`.
    name: Option<String>,
}

/// A join token minted in `--dev`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct DevToken {
    /// The JWT to pass as `?token=` to the signaling WebSocket.
    pub token: String,
}

/// `GET /api/v1/dev/token?room=&name=`: only with `--dev`; mints a join token for anybody.
#[utoipa::path(
    get, path = "/api/v1/dev/token", tag = "dev",
    params(DevTokenQuery),
    responses(
        (status = 200, description = "A join token (development mode only)", body = DevToken),
        (status = 400, description = "Bad room or name", body = crate::error::ErrorBody),
        (status = 403, description = "The server does not run with --dev", body = crate::error::ErrorBody),
    )
)]
pub async fn dev_token(
    state: web::Data<AppState>,
    q: web::Query<DevTokenQuery>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.dev {
        return Err(ApiError::Forbidden(
            "token minting without the API key is only available with --dev".into(),
        ));
    }
    let q = q.into_inner();
    let room = q.room.unwrap_or_default();
    let valid = |s: &str| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !valid(&room) {
        return Err(ApiError::InvalidRequest(
            "room: must match [A-Za-z0-9_-]{1,64}".into(),
        ));
    }
    let name = q.name.unwrap_or_else(|| "Guest".into());
    if name.chars().count() > 128 {
        return Err(ApiError::InvalidRequest(
            "name: at most 128 characters".into(),
        ));
    }
    let now = chrono::Utc::now().timestamp();
    let claims = JoinClaims {
        room,
        sub: format!("dev-{}", uuid::Uuid::new_v4().simple()),
        name: Some(name),
        iat: now,
        exp: now + state.config.rooms.token_ttl_s as i64,
        can_publish: true,
        can_subscribe: true,
        is_admin: false,
        room_id: None,
    };
    Ok(HttpResponse::Ok().json(DevToken {
        token: state.tokens.mint(&claims),
    }))
}

/// One HTML page of the web client, revalidated on every load (the client has no build step,
/// so its file names carry no version).
async fn page(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    file: &str,
) -> Result<HttpResponse, ApiError> {
    let path = state.config.web_dir.join(file);
    let file = actix_files::NamedFile::open_async(&path)
        .await
        .map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "web client page missing");
            ApiError::Unexpected(anyhow::anyhow!(
                "the web client is not installed (MCU_WEB_DIR)"
            ))
        })?;
    let mut res = file.into_response(&req);
    res.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-cache"),
    );
    Ok(res)
}

/// `GET /r/{room}?token=…`: the join page (pre-join, then the call). The room name is read by
/// the page; a bad one is reported there.
async fn room_page(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    page(state, req, "index.html").await
}

/// `GET /admin`: the admin console (rooms, participants, recordings).
async fn admin_page(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    page(state, req, "admin.html").await
}

/// Static files of the web client, and its pages (registered last: the files service matches
/// every remaining path).
pub fn configure_static(cfg: &mut web::ServiceConfig, dir: &std::path::Path) {
    if !dir.join("index.html").exists() {
        tracing::warn!(dir = %dir.display(), "web client not found; set MCU_WEB_DIR");
    }
    for path in ["/r/{room}", "/r/{room}/"] {
        cfg.route(path, web::get().to(room_page))
            .route(path, web::head().to(room_page));
    }
    for path in ["/admin", "/admin/"] {
        cfg.route(path, web::get().to(admin_page))
            .route(path, web::head().to(admin_page));
    }
    cfg.service(actix_files::Files::new("/", dir).index_file("index.html"));
}
