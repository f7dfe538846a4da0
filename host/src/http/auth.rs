//! The optional bearer token: read once from `token_file` (its first line) or from the
//! environment variable `token_env`, never from the command line; compared in constant
//! time; never logged (its `Debug` form is redacted, and no log line carries headers).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::{AppState, HttpError};
use crate::config::HttpConfig;

/// The bearer token every protected request must carry.
#[derive(Clone)]
pub(super) struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// The configured token, if any. Both sources at once, an unreadable file, an unset
    /// variable or an empty token are errors: a service meant to be protected must not
    /// come up open.
    pub(super) fn load(config: &HttpConfig) -> Result<Option<Token>, HttpError> {
        let text = match (&config.token_file, &config.token_env) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(HttpError::Token(
                    "set token_file or token_env, not both".to_owned(),
                ));
            }
            (Some(path), None) => {
                warn_if_readable_by_others(path);
                let text = std::fs::read_to_string(path).map_err(|e| {
                    HttpError::Token(format!("cannot read token_file {}: {e}", path.display()))
                })?;
                text.lines().next().unwrap_or("").trim().to_owned()
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) => v.trim().to_owned(),
                Err(std::env::VarError::NotPresent) => {
                    return Err(HttpError::Token(format!(
                        "token_env: environment variable {var} is not set"
                    )));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(HttpError::Token(format!(
                        "token_env: environment variable {var} is not UTF-8"
                    )));
                }
            },
        };
        if text.is_empty() {
            return Err(HttpError::Token("the token is empty".to_owned()));
        }
        Ok(Some(Token(Arc::from(text.into_bytes()))))
    }

    /// Whether `presented` is the token, in time that does not depend on where they
    /// differ (only on the lengths).
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(presented))
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o004 != 0 {
        tracing::warn!(
            file = %path.display(),
            "token_file is readable by every user; chmod 600 (or 640 for the service's group)"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &std::path::Path) {}

/// The credentials of a request: the token of `Authorization: Bearer <token>`.
fn bearer(request: &Request) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Middleware: lets the request through when no token is configured or it carries the
/// token; 401 otherwise.
pub(super) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let presented = bearer(&request);
    if presented.is_some_and(|p| token.matches(p)) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    tracing::warn!(
        path = %request.uri().path(),
        %peer,
        credentials = if presented.is_some() { "wrong token" } else { "none" },
        "HTTP request refused"
    );
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(file: Option<&std::path::Path>, env: Option<&str>) -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            token_file: file.map(|p| p.to_owned()),
            token_env: env.map(str::to_owned),
            replay: 10,
            ..HttpConfig::default()
        }
    }

    #[test]
    fn token_sources() {
        assert!(Token::load(&config(None, None)).unwrap().is_none());
        let dir = std::env::temp_dir().join(format!("sync-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret \nsecond line\n").unwrap();
        let t = Token::load(&config(Some(&file), None)).unwrap().unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cret "));
        assert!(!t.matches(b"second line"));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");

        std::fs::write(&file, "\n").unwrap();
        let err = Token::load(&config(Some(&file), None)).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        let err = Token::load(&config(Some(&dir.join("absent")), None)).unwrap_err();
        assert!(err.to_string().contains("cannot read token_file"), "{err}");
        let err = Token::load(&config(Some(&file), Some("X"))).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err = Token::load(&config(None, Some("SYNCHRONIZER_TEST_NO_SUCH_VAR"))).unwrap_err();
        assert!(err.to_string().contains("is not set"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_required() {
        let req = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bear")), None);
    }
}
