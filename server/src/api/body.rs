//! Request-body and parameter extraction that fails with the API's error body.
//!
//! [`ApiJson`] is the JSON body extractor of every REST handler: `Content-Type` must be JSON
//! (400 otherwise), the body is capped at [`MAX_BODY`] bytes (413 beyond, checked against
//! `Content-Length` first and again while reading), and decoding errors name the offending field
//! (`max_participants: invalid type: string "x", expected i64`). [`configure_extractors`] makes
//! actix's own `Json`/`Path`/`Query` extractors answer with the same body.

use crate::error::ApiError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, dev::Payload, error::JsonPayloadError, web};
use futures_util::StreamExt as _;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

/// Largest accepted request body, bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

fn too_large() -> ApiError {
    ApiError::PayloadTooLarge(format!("request body exceeds {MAX_BODY} bytes"))
}

/// `application/json` or any `application/*+json`, parameters (charset) ignored.
fn is_json(req: &HttpRequest) -> bool {
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Decodes `bytes` as one JSON value of type `T`; the error names the field at fault.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    // serde would also accept a struct written as an array (`["name"]`); the contract says object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "request body must be a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." && !path.is_empty() => {
                ApiError::InvalidRequest(format!("{path}: {inner}"))
            }
            serde_json::error::Category::Data => {
                ApiError::InvalidRequest(format!("invalid request body: {inner}"))
            }
            _ => ApiError::InvalidRequest(format!("malformed JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::InvalidRequest(format!("malformed JSON: {e}")))?;
    Ok(value)
}

impl<T: DeserializeOwned + 'static> FromRequest for ApiJson<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if !json {
                return Err(ApiError::InvalidRequest(
                    "Content-Type must be application/json".into(),
                ));
            }
            if declared.is_some_and(|n| n > MAX_BODY as u64) {
                return Err(too_large());
            }
            let mut buf =
                web::BytesMut::with_capacity(declared.map_or(1024, |n| n as usize).min(MAX_BODY));
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::InvalidRequest(format!("cannot read the request body: {e}"))
                })?;
                if buf.len() + chunk.len() > MAX_BODY {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            decode(&buf).map(ApiJson)
        })
    }
}

/// Makes actix's built-in `Json`, `Path` and `Query` extractors fail with the API error body.
pub fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY)
            .error_handler(|e, _| {
                let api = match &e {
                    JsonPayloadError::OverflowKnownLength { .. }
                    | JsonPayloadError::Overflow { .. } => too_large(),
                    JsonPayloadError::ContentType => {
                        ApiError::InvalidRequest("Content-Type must be application/json".into())
                    }
                    other => ApiError::InvalidRequest(format!("malformed JSON: {other}")),
                };
                api.into()
            }),
    )
    .app_data(web::PathConfig::default().error_handler(|e, _| {
        ApiError::InvalidRequest(format!("invalid path parameter: {e}")).into()
    }))
    .app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::InvalidRequest(format!("invalid query string: {e}")).into()
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: Option<i64>,
    }

    fn err(bytes: &str) -> String {
        decode::<Body>(bytes.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"name":"a","count":"x"}"#).starts_with("count: invalid type"));
        assert!(err(r#"{"name":"a","bogus":1}"#).contains("unknown field `bogus`"));
        assert!(err(r#"{"count":1}"#).contains("missing field `name`"));
        assert!(err(r#"{"name":"a"} trailing"#).contains("trailing"));
        assert!(err("").contains("empty"));
        assert!(err("{").contains("malformed JSON"));
        assert!(err(r#"{"name":"#).contains("malformed JSON"));
        assert!(err(r#"["a"]"#).contains("must be a JSON object"));
        assert!(err("null").contains("must be a JSON object"));
        assert_eq!(decode::<Body>(br#"{"name":"a"}"#).unwrap().name, "a");
    }
}
