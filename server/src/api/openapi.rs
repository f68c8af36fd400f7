//! The OpenAPI 3 document, generated from the handlers' `#[utoipa::path]` annotations and served
//! at `GET /api/v1/openapi.json`. Limits that come from the configuration (the largest
//! `max_participants`) are written into the document at request time, so it describes the running
//! server exactly.

use crate::AppState;
use crate::api::{health, recordings, rest};
use crate::error::{ErrorBody, ErrorDetail};
use crate::model::{Layout, Participant, RecordingStatus};
use actix_web::{HttpResponse, web};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Routes of this module (inside the `/api/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/openapi.json")
            .route(web::get().to(openapi_json))
            .default_service(rest::method_not_allowed("GET")),
    );
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin API key: `Authorization: Bearer <key>`"))
                    .build(),
            ),
        );
    }
}

/// The REST API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mcu-server",
        description = "WebRTC MCU: rooms, join tokens, participants, recordings. Every non-2xx \
                       response has the body `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        rest::create_room,
        rest::list_rooms,
        rest::get_room,
        rest::update_room,
        rest::delete_room,
        rest::create_token,
        rest::list_participants,
        rest::kick_participant,
        rest::mute_participant,
        rest::list_nodes,
        super::stats::room_stats,
        recordings::start_recording,
        recordings::stop_recording,
        recordings::list_recordings,
        recordings::get_recording,
        recordings::recording_media,
        recordings::delete_recording,
        health::healthz,
        health::metrics,
        openapi_json,
        super::web::dev_token,
    ),
    components(schemas(
        rest::Room,
        rest::RoomList,
        rest::CreateRoomRequest,
        rest::UpdateRoomRequest,
        rest::CreateTokenRequest,
        rest::TokenResponse,
        rest::ParticipantList,
        rest::MuteRequest,
        rest::NodeList,
        crate::cluster::NodeInfo,
        super::stats::RoomStats,
        crate::room::manager::MediaStats,
        crate::room::manager::ReceiverStats,
        recordings::Recording,
        recordings::RecordingList,
        recordings::StartRecordingRequest,
        RecordingStatus,
        health::Health,
        super::web::DevToken,
        Participant,
        Layout,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "rooms", description = "Rooms"),
        (name = "tokens", description = "Join tokens for the signaling WebSocket"),
        (name = "participants", description = "Participants connected to a room"),
        (name = "recordings", description = "Recordings of rooms (WebM files)"),
        (name = "nodes", description = "The nodes sharing this database (a cluster)"),
        (name = "health", description = "Operations (no authentication)"),
    )
)]
pub struct ApiDoc;

/// The document for a server whose largest accepted `max_participants` is
/// `max_participants_limit`.
pub fn document(max_participants_limit: u32) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot serialize the OpenAPI document");
        serde_json::Value::Null
    });
    for schema in ["CreateRoomRequest", "UpdateRoomRequest"] {
        if let Some(prop) = doc
            .pointer_mut(&format!(
                "/components/schemas/{schema}/properties/max_participants"
            ))
            .and_then(|p| p.as_object_mut())
        {
            prop.insert("maximum".into(), max_participants_limit.into());
        }
    }
    // `POST /rooms/{name}/recordings` takes `{}` or no body at all; utoipa cannot say "optional"
    // without also allowing a JSON `null`.
    if let Some(body) = doc
        .pointer_mut("/paths/~1api~1v1~1rooms~1{name}~1recordings/post/requestBody")
        .and_then(|b| b.as_object_mut())
    {
        body.insert("required".into(), false.into());
    }
    // Every operation that can answer 401 can answer 429 too: the failed-auth limit
    // (`crate::auth::FailedAuthLimiter`) sits in the same extractor.
    if let Some(paths) = doc.pointer_mut("/paths").and_then(|p| p.as_object_mut()) {
        let limited = serde_json::json!({
            "description": "`rate_limited`: too many failed API-key attempts from this address",
            "headers": {"Retry-After": {"description": "Seconds until a new attempt is accepted",
                "schema": {"type": "integer", "minimum": 0}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        });
        for op in paths
            .values_mut()
            .filter_map(|p| p.as_object_mut())
            .flat_map(|p| p.values_mut())
        {
            if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                && responses.contains_key("401")
            {
                responses.insert("429".into(), limited.clone());
            }
        }
    }
    // Links from the created room to the operations on it, so clients and stateful fuzzers know
    // where a room's name leads.
    let name = serde_json::json!({"name": "$response.body#/name"});
    let links = serde_json::json!({
        "GetRoom": {"operationId": "get_room", "parameters": name},
        "UpdateRoom": {"operationId": "update_room", "parameters": name},
        "DeleteRoom": {"operationId": "delete_room", "parameters": name},
        "CreateToken": {"operationId": "create_token", "parameters": name},
        "ListParticipants": {"operationId": "list_participants", "parameters": name},
        "StartRecording": {"operationId": "start_recording", "parameters": name},
        "GetRoomStats": {"operationId": "room_stats", "parameters": name},
    });
    // And from a started recording to the operations on it.
    let id = serde_json::json!({"id": "$response.body#/id"});
    let recording_links = serde_json::json!({
        "GetRecording": {"operationId": "get_recording", "parameters": id},
        "StopRecording": {"operationId": "stop_recording", "parameters": id},
        "GetRecordingMedia": {"operationId": "recording_media", "parameters": id},
        "DeleteRecording": {"operationId": "delete_recording", "parameters": id},
    });
    for (path, links) in [
        ("/paths/~1api~1v1~1rooms/post/responses/201", links),
        (
            "/paths/~1api~1v1~1rooms~1{name}~1recordings/post/responses/201",
            recording_links,
        ),
    ] {
        if let Some(created) = doc.pointer_mut(path).and_then(|r| r.as_object_mut()) {
            created.insert("links".into(), links);
        }
    }
    doc
}

/// This document.
#[utoipa::path(
    get, path = "/api/v1/openapi.json", tag = "health",
    responses((status = 200, description = "OpenAPI 3 document", body = Object))
)]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(document(state.config.rooms.max_participants_limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_routes_and_limit() {
        let doc = document(77);
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/api/v1/rooms",
            "/api/v1/rooms/{name}",
            "/api/v1/rooms/{name}/tokens",
            "/api/v1/rooms/{name}/participants",
            "/api/v1/rooms/{name}/participants/{id}",
            "/api/v1/rooms/{name}/participants/{id}/mute",
            "/api/v1/rooms/{name}/recordings",
            "/api/v1/rooms/{name}/stats",
            "/api/v1/recordings",
            "/api/v1/recordings/{id}",
            "/api/v1/recordings/{id}/stop",
            "/api/v1/recordings/{id}/media",
            "/healthz",
            "/metrics",
            "/api/v1/openapi.json",
        ] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        assert_eq!(
            doc.pointer(
                "/components/schemas/CreateRoomRequest/properties/max_participants/maximum"
            ),
            Some(&serde_json::json!(77))
        );
        assert!(doc.pointer("/components/securitySchemes/bearer").is_some());
        // Every link names an operation that exists.
        let ops: Vec<&str> = paths
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        for (from, n) in [
            ("/paths/~1api~1v1~1rooms/post/responses/201/links", 7),
            (
                "/paths/~1api~1v1~1rooms~1{name}~1recordings/post/responses/201/links",
                4,
            ),
        ] {
            let links = doc.pointer(from).and_then(|l| l.as_object()).unwrap();
            assert_eq!(links.len(), n, "{from}");
            for link in links.values() {
                let id = link["operationId"].as_str().unwrap();
                assert!(ops.contains(&id), "{id} not an operation");
            }
        }
        // The media download is binary WebM, its range error documented.
        let media = &doc["paths"]["/api/v1/recordings/{id}/media"]["get"]["responses"];
        for code in ["200", "206"] {
            assert!(media[code]["content"]["video/webm"].is_object(), "{code}");
        }
        assert!(media["416"]["headers"]["Content-Range"].is_object());
        let start = &doc["paths"]["/api/v1/rooms/{name}/recordings"]["post"]["requestBody"];
        assert_eq!(start["required"], serde_json::json!(false));
        assert_eq!(
            start["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/StartRecordingRequest"
        );
    }
}
