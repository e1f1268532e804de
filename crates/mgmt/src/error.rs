//! Errors as RabbitMQ's management API returns them: a status code and a JSON body
//! `{"error": …, "reason": …}`, with the same words, so tools that match on them keep working.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use warren_broker::AmqpError;
use warren_protocol::constants::{ACCESS_REFUSED, NOT_FOUND};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: no such object, or no such path.
    #[error("Not Found")]
    NotFound,
    /// 404 when the vhost of an object being created does not exist.
    #[error("vhost_not_found")]
    VHostNotFound,
    /// 400: a malformed body, or a request the broker refused (inequivalent arguments, …).
    #[error("{0}")]
    BadRequest(String),
    /// 401 with a `WWW-Authenticate` challenge: no or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// [`ApiError::Unauthorized`] without the challenge (the web console's requests).
    #[error("{0}")]
    LoginRefused(String),
    /// 401 for an operation the broker refuses (deleting `amq.*` exchanges, …).
    #[error("{0}")]
    AccessRefused(String),
    /// 500: the broker failed.
    #[error("{0}")]
    Internal(String),
    /// 400 with an error word of its own (`invalid_pagination_parameters`,
    /// `page_out_of_range`), as RabbitMQ's list parameters answer.
    #[error("{reason}")]
    Pagination { error: &'static str, reason: String },
    /// 404 `{"error": "not_found", "reason": "queue_not_found"}` and the like.
    #[error("{0}")]
    NotFoundReason(&'static str),
    /// 400 whose reason is an Erlang term RabbitMQ prints as JSON (`["not_int", "priority"]`).
    #[error("{0}")]
    BadRequestTerm(serde_json::Value),
}

impl ApiError {
    fn status_and_error(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "Object Not Found"),
            ApiError::VHostNotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) | ApiError::LoginRefused(_) => {
                (StatusCode::UNAUTHORIZED, "not_authorized")
            }
            ApiError::AccessRefused(_) => (StatusCode::UNAUTHORIZED, "not_authorised"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error"),
            ApiError::Pagination { error, .. } => (StatusCode::BAD_REQUEST, error),
            ApiError::NotFoundReason(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequestTerm(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = self.status_and_error();
        let reason = match &self {
            ApiError::BadRequestTerm(term) => term.clone(),
            other => other.to_string().into(),
        };
        let body = serde_json::json!({ "error": error, "reason": reason });
        let mut resp = (status, axum::Json(body)).into_response();
        if let ApiError::Unauthorized(_) = self {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"Warren Management\""),
            );
        }
        resp
    }
}

/// A broker refusal, with the reply text less its code name (`PRECONDITION_FAILED - `), as
/// RabbitMQ's API reports it.
impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> Self {
        let reason = match e.text.split_once(" - ") {
            Some((_, detail)) => detail.to_string(),
            None => e.text.clone(),
        };
        match e.code {
            NOT_FOUND => ApiError::NotFound,
            ACCESS_REFUSED => ApiError::AccessRefused(reason),
            _ => ApiError::BadRequest(reason),
        }
    }
}

/// Parses a request body as JSON whatever its content type (RabbitMQ does the same); an empty
/// body reads as `{}`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("not_json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_lose_their_code_name() {
        let e = ApiError::from(AmqpError::precondition("inequivalent arg 'durable'"));
        assert_eq!(e, ApiError::BadRequest("inequivalent arg 'durable'".into()));
        assert_eq!(
            ApiError::from(AmqpError::not_found("no queue 'x'")),
            ApiError::NotFound
        );
    }

    #[test]
    fn bodies_must_be_json_objects_of_the_right_shape() {
        #[derive(serde::Deserialize)]
        struct B {
            #[serde(default)]
            durable: bool,
        }
        assert!(!parse_body::<B>(b"").unwrap().durable);
        assert!(parse_body::<B>(b"{\"durable\":true}").unwrap().durable);
        assert!(matches!(
            parse_body::<B>(b"{\"durable\":"),
            Err(ApiError::BadRequest(_))
        ));
    }
}
