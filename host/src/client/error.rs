//! What a control-plane call can fail with. Every variant names the call
//! (`GET /api/server/instances/abc`), so a log line says which request went wrong.

use std::time::Duration;

use reqwest::StatusCode;

/// A failed control-plane call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control plane answered 404: the instance (or endpoint) does not exist. The
    /// controller classifies an instance it recorded but the control plane no longer
    /// knows as *orphaned* by this variant, so it is never folded into [`Error::Status`].
    #[error("{call}: 404 not found{}", excerpt_suffix(body))]
    NotFound {
        /// The request, e.g. `GET /api/server/instances/abc`.
        call: String,
        /// The start of the response body (the control plane's explanation), if any.
        body: String,
    },
    /// The control plane answered with a status other than success or 404.
    #[error("{call}: {status}{}", excerpt_suffix(body))]
    Status {
        /// The request.
        call: String,
        /// The HTTP status.
        status: StatusCode,
        /// The start of the response body, at most [`MAX_BODY_EXCERPT`] bytes.
        body: String,
        /// What the control plane asked for in `Retry-After` (seconds form only).
        retry_after: Option<Duration>,
    },
    /// The request could not be sent or its answer not read: connection refused, reset,
    /// DNS failure. Check the base URL and that the control plane runs.
    #[error("{call}: cannot reach the control plane")]
    Unreachable {
        /// The request.
        call: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// No complete answer arrived within the request timeout.
    #[error("{call}: no answer within {timeout:?}")]
    Timeout {
        /// The request.
        call: String,
        /// The timeout that elapsed (for a long-poll, the wait plus the request timeout).
        timeout: Duration,
    },
    /// The answer was not the JSON this client expects.
    #[error(
        "{call}: cannot decode the response{}",
        field.as_deref().map(|f| format!(" at `{f}`")).unwrap_or_default()
    )]
    Decode {
        /// The request.
        call: String,
        /// Where in the body decoding failed (`[2].status`), when serde can say.
        field: Option<String>,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// This control plane does not offer the call (an extension of the DRaaS API, see
    /// [`Capabilities`](super::Capabilities)). Strategies that need it are unavailable.
    #[error("{call}: not supported by this control plane")]
    Unsupported {
        /// The trait method, e.g. `clone_instance`.
        call: String,
    },
    /// The control plane has no sequence-numbered change feed (`?after=` answered 404 or
    /// 400, or with the seed's plain array). Poll
    /// [`changes_since`](super::ControlPlane::changes_since) instead, accepting that lost
    /// changes go unnoticed until the next resync.
    #[error(
        "{call}: the control plane has no sequence-numbered change feed ({reason}); poll changes_since instead"
    )]
    FeedUnsupported {
        /// The request.
        call: String,
        /// What gave it away.
        reason: String,
    },
    /// A client setting cannot work; fix the configuration.
    #[error("invalid control-plane client setting `{key}`: {reason}")]
    InvalidConfig {
        /// The setting, e.g. `base_url`.
        key: &'static str,
        /// What is wrong and what was expected.
        reason: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How much of an error response's body is kept in [`Error::Status`] and
/// [`Error::NotFound`]: enough for a .NET problem-details message, not a whole HTML page.
pub const MAX_BODY_EXCERPT: usize = 512;

impl Error {
    /// Whether repeating the same request may succeed: the control plane was unreachable,
    /// slow, overloaded (429) or behind a failing gateway (502, 503, 504). Only idempotent
    /// reads are repeated automatically.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Status { status, .. } => matches!(
                *status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ),
            _ => false,
        }
    }

    /// Whether the control plane said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// The request that failed, if the error comes from one.
    pub fn call(&self) -> Option<&str> {
        match self {
            Self::NotFound { call, .. }
            | Self::Status { call, .. }
            | Self::Unreachable { call, .. }
            | Self::Timeout { call, .. }
            | Self::Decode { call, .. }
            | Self::Unsupported { call }
            | Self::FeedUnsupported { call, .. } => Some(call),
            Self::InvalidConfig { .. } => None,
        }
    }

    /// The delay the control plane asked for with `Retry-After`, if any.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// The start of a response body, cut at a character boundary, with whitespace collapsed
/// so that a multi-line body stays on one log line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() <= MAX_BODY_EXCERPT {
        return text;
    }
    let mut end = MAX_BODY_EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_say_call_status_and_body() {
        let e = Error::Status {
            call: "GET /api/server/instances/abc".into(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: "try later".into(),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "GET /api/server/instances/abc: 503 Service Unavailable: try later"
        );
        assert!(e.is_retryable());
        let e = Error::NotFound {
            call: "GET /x".into(),
            body: String::new(),
        };
        assert_eq!(e.to_string(), "GET /x: 404 not found");
        assert!(!e.is_retryable() && e.is_not_found());
    }

    #[test]
    fn excerpts_are_bounded_and_single_line() {
        assert_eq!(excerpt(b"a\n  b"), "a b");
        let long = "é".repeat(MAX_BODY_EXCERPT);
        let cut = excerpt(long.as_bytes());
        assert!(cut.len() <= MAX_BODY_EXCERPT + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
