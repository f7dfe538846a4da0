//! Errors of the OpenStack client layer. Each names the request (method and URL, with
//! any user name or password in the URL removed) and, where there is one, the HTTP
//! status and the service's own message, so that one log line is enough to act on.

use std::time::Duration;

use crate::config::ConfigError;

/// What went wrong talking to OpenStack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work (the HTTP client cannot be built, a catalog URL
    /// that is not one).
    #[error("configuration: {0}")]
    Config(String),
    /// A field of the `cloud` table cannot work (missing credentials, a bad URL, an
    /// unreadable CA file): see [`CloudConfig::validate`](crate::CloudConfig::validate).
    #[error("configuration: {0}")]
    Field(ConfigError),
    /// Keystone refused to issue a token.
    #[error(
        "Keystone refused to authenticate: POST {url}: HTTP {status}{}",
        detail(message)
    )]
    Auth {
        /// The token URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Keystone's message.
        message: String,
    },
    /// A service answered with an error status.
    #[error("{method} {url}: HTTP {status} {}{}", reason(*status), detail(message))]
    Status {
        /// `GET`, `POST`.
        method: &'static str,
        /// The URL, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The service's own message (`computeFault.message`, `error.message`), or the
        /// start of the body.
        message: String,
    },
    /// The request did not complete in time.
    #[error("{method} {url}: timed out after {after:?}")]
    Timeout {
        /// `GET`, `POST`.
        method: &'static str,
        /// The URL, without credentials.
        url: String,
        /// The configured limit.
        after: Duration,
    },
    /// No answer: connection refused, DNS, TLS, a connection closed mid-body.
    #[error("{method} {url}: {message}")]
    Transport {
        /// `GET`, `POST`.
        method: &'static str,
        /// The URL, without credentials.
        url: String,
        /// The cause, with its chain.
        message: String,
    },
    /// The answer is not what the API documents (a cut or garbled page).
    #[error("{method} {url}: HTTP {status}: unexpected response body: {message}")]
    Decode {
        /// `GET`, `POST`.
        method: &'static str,
        /// The URL, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What did not parse, and where.
        message: String,
    },
    /// The service catalog has no matching endpoint.
    #[error(
        "no {interface} endpoint for service type `{service_type}`{} in the service catalog (available: {available}); set `cloud.region`, `cloud.interface` or `cloud.endpoint_override`",
        region.as_ref().map(|r| format!(" in region `{r}`")).unwrap_or_default()
    )]
    Catalog {
        /// The service type looked for.
        service_type: String,
        /// The interface looked for.
        interface: &'static str,
        /// The region looked for.
        region: Option<String>,
        /// What the catalog has for that type (`public@RegionOne, internal@RegionOne`).
        available: String,
    },
    /// The catalog offers the service in several regions and none is configured.
    #[error(
        "service type `{service_type}` has {interface} endpoints in several regions ({regions}); set `cloud.region` (one plugin instance per region)"
    )]
    AmbiguousRegion {
        /// The service type.
        service_type: String,
        /// The interface.
        interface: &'static str,
        /// The regions found.
        regions: String,
    },
    /// Pagination went wrong: a marker repeated (the service returns the same page
    /// again) or a `next` link without a marker.
    #[error("{url}: broken pagination: {message}")]
    Pagination {
        /// The URL of the page.
        url: String,
        /// What is wrong.
        message: String,
    },
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Error {
    /// The HTTP status, when the service answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Auth { status, .. }
            | Error::Status { status, .. }
            | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a 403 from a service.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Status { status: 403, .. })
    }

    /// True for errors that retrying later will not fix: configuration, credentials,
    /// permissions (401 / 403), a missing endpoint.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::Config(_)
                | Error::Field(_)
                | Error::Auth { .. }
                | Error::Catalog { .. }
                | Error::AmbiguousRegion { .. }
                | Error::Status {
                    status: 401 | 403,
                    ..
                }
        )
    }

    /// The service's message, for errors that carry one.
    pub fn service_message(&self) -> Option<&str> {
        match self {
            Error::Auth { message, .. } | Error::Status { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// The text of an error and its sources, `outer: inner: innermost`, without repeats.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// The message in an OpenStack error body: Nova's `{"computeFault": {"message": ..}}`,
/// Heat's and Keystone's `{"error": {"message": ..}}`, a top-level `message`, or else
/// the start of the body as text.
pub fn service_message(body: &[u8]) -> String {
    const MAX: usize = 300;
    fn find(v: &serde_json::Value, depth: u8) -> Option<String> {
        let obj = v.as_object()?;
        if let Some(m) = obj.get("message").and_then(|m| m.as_str()) {
            return Some(m.to_owned());
        }
        if depth == 0 {
            return None;
        }
        obj.values().find_map(|v| find(v, depth - 1))
    }
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => find(&v, 2).unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_message_of_each_service() {
        assert_eq!(
            service_message(
                br#"{"computeFault": {"code": 500, "message": "Unexpected API Error."}}"#
            ),
            "Unexpected API Error."
        );
        assert_eq!(
            service_message(
                br#"{"code": 403, "title": "Forbidden", "error": {"type": "Forbidden", "message": "You are not authorized to use stacks:global_index."}}"#
            ),
            "You are not authorized to use stacks:global_index."
        );
        assert_eq!(
            service_message(b"<html>\n  Bad   Gateway</html>"),
            "<html> Bad Gateway</html>"
        );
        assert!(service_message(&[b'x'; 1000]).len() < 310);
    }

    #[test]
    fn display_names_url_and_status() {
        let e = Error::Status {
            method: "GET",
            url: "http://nova:8774/v2.1/servers/detail?all_tenants=1".into(),
            status: 500,
            message: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "GET http://nova:8774/v2.1/servers/detail?all_tenants=1: HTTP 500 Internal Server Error: boom"
        );
    }
}
