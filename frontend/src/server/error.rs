//! Every error the server answers, in OpenAI's shape, from one mapping.

use warp::http::StatusCode;

use super::api::{ErrorBody, ErrorDetail};
use warp::reply::Response;
use warp::Reply;

/// An error answer: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds to wait before retrying (sent as `Retry-After`, with 503s that will pass).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400 about one field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            code: Some("invalid_value"),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::not_found(format!("The model `{model}` does not exist."))
        }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", format!("{method} is not allowed on {path}"))
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(StatusCode::UNAUTHORIZED, "authentication_error", "Missing or incorrect API key.")
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self { code: Some("server_overloaded"), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message) }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body (also sent inside an SSE stream when a stream fails midway).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code,
            },
        }
    }

    pub fn into_response(self) -> Response {
        let status = self.status;
        let mut resp = warp::reply::with_status(warp::reply::json(&self.body()), status).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert("retry-after", s.into());
        }
        resp
    }
}

/// The engine's refusals of a request's values: 400 naming the field, with OpenAI's `code`.
impl From<runtime::ValidationError> for ApiError {
    fn from(e: runtime::ValidationError) -> Self {
        Self {
            param: Some(e.param),
            code: Some(e.code.as_str()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", e.message)
        }
    }
}

/// A valid request the engine could not queue: 503, to be retried (the request itself is dropped here, after the
/// engine gave it back, because the client will send it again).
impl From<runtime::SubmitError> for ApiError {
    fn from(e: runtime::SubmitError) -> Self {
        match e {
            runtime::SubmitError::QueueFull(_) => Self { retry_after: Some(1), ..ApiError::overloaded(e.to_string()) },
            runtime::SubmitError::Stopped(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<grammar::Error> for ApiError {
    fn from(e: grammar::Error) -> Self {
        if e.is_too_large() {
            ApiError::bad_request(format!("the constraint is too large to compile: {e}"))
        } else {
            ApiError::bad_request(format!("unsupported or invalid constraint: {e}"))
        }
    }
}
