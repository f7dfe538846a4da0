//! The webhook listener: Alertmanager's `webhook_configs` (with `send_resolved: true`)
//! POST a group's alerts here; each alert counts by its own status (a `firing` group
//! carries the alerts that resolved since the last notification), firing ones are upserted
//! and resolved ones deleted, through the host's sink. The answer is sent once the host
//! has taken the changes: 200, or 503 when it could not (Alertmanager retries).
//!
//! A body that is not an Alertmanager notification gets 400, a body over the limit 413,
//! a request without the configured credentials 401; each is counted
//! ([`crate::plugin::Prometheus`]'s counters) and logged without the body or the
//! credentials.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use synchronizer_plugin_api::{Change, Shutdown, Sink, tracing};

use crate::alerts::{AlertState, alarm_entity, parse_webhook, resolved_entity};
use crate::rules::Rules;

/// What a request must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Nothing.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Authorization: Basic <user:password>`, as the base64 Alertmanager sends.
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
}

/// The listener's counters (the plugin's `counters()`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Bodies accepted and pushed.
    pub accepted: AtomicU64,
    /// Alerts upserted from bodies.
    pub firing: AtomicU64,
    /// Alerts deleted from bodies.
    pub resolved: AtomicU64,
    /// Bodies refused as malformed (400).
    pub malformed: AtomicU64,
    /// Bodies over the limit (413).
    pub too_large: AtomicU64,
    /// Requests without the right credentials (401).
    pub unauthorized: AtomicU64,
    /// Bodies the host could not take (503).
    pub push_failed: AtomicU64,
}

/// What the handler needs.
pub struct Listener {
    /// Where changes go.
    pub sink: Sink,
    /// What a request must carry.
    pub auth: Auth,
    /// The largest body read.
    pub max_body_bytes: usize,
    /// The alarms' scope.
    pub scope: String,
    /// The label rules.
    pub rules: Arc<Rules>,
    /// The counters.
    pub stats: Arc<Stats>,
}

/// `a == b` in a time that depends on the lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(auth: &Auth, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match auth {
        Auth::None => true,
        Auth::Bearer(token) => given
            .strip_prefix("Bearer ")
            .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes())),
        Auth::Basic { username, password } => given
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .is_some_and(|pair| same(&pair, format!("{username}:{password}").as_bytes())),
    }
}

/// The changes one notification amounts to: each alert by its own status.
pub fn changes(body: &crate::alerts::Webhook, scope: &str, rules: &Rules) -> Vec<Change> {
    body.alerts
        .iter()
        .map(|a| match a.state {
            AlertState::Resolved => Change::Delete(resolved_entity(a, scope)),
            _ => match alarm_entity(a, scope, rules) {
                Some(e) => Change::Upsert(e),
                None => Change::Delete(resolved_entity(a, scope)),
            },
        })
        .collect()
}

async fn receive(
    State(l): State<Arc<Listener>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, &'static str) {
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an Alertmanager notification\n",
        );
    }
    if !authorized(&l.auth, &headers) {
        l.stats.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("webhook request without the configured credentials refused");
        return (StatusCode::UNAUTHORIZED, "unauthorized\n");
    }
    let bytes = match axum::body::to_bytes(body, l.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            l.stats.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(limit = l.max_body_bytes, error = %e, "webhook body over the limit (or unreadable) refused");
            return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
        }
    };
    let hook = match parse_webhook(&bytes) {
        Ok(h) => h,
        Err(e) => {
            l.stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bytes = bytes.len(), error = %e, "malformed webhook body refused");
            return (
                StatusCode::BAD_REQUEST,
                "not an Alertmanager webhook notification\n",
            );
        }
    };
    let batch = changes(&hook, &l.scope, &l.rules);
    let (firing, resolved) = batch.iter().fold((0, 0), |(f, r), c| match c {
        Change::Upsert(_) => (f + 1, r),
        Change::Delete(_) => (f, r + 1),
    });
    tracing::debug!(
        receiver = %hook.receiver,
        group_key = %hook.group_key,
        group_status = %hook.status,
        firing,
        resolved,
        "webhook notification"
    );
    if batch.is_empty() {
        l.stats.accepted.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::OK, "ok\n");
    }
    match l.sink.push(batch).await {
        Ok(()) => {
            l.stats.accepted.fetch_add(1, Ordering::Relaxed);
            l.stats.firing.fetch_add(firing, Ordering::Relaxed);
            l.stats.resolved.fetch_add(resolved, Ordering::Relaxed);
            (StatusCode::OK, "ok\n")
        }
        Err(e) => {
            l.stats.push_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "the host did not take a webhook's changes; answered 503");
            (StatusCode::SERVICE_UNAVAILABLE, "not taken, retry\n")
        }
    }
}

/// Serves `listener` on `addr` until `shutdown`. Fails when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    listener: Listener,
    shutdown: Shutdown,
) -> Result<(), std::io::Error> {
    let socket = tokio::net::TcpListener::bind(addr).await?;
    let local = socket.local_addr()?;
    tracing::info!(listen = %local, "webhook listener started");
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(Arc::new(listener));
    axum::serve(socket, app)
        .with_graceful_shutdown(async move { shutdown.requested().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked() {
        let mut h = HeaderMap::new();
        assert!(authorized(&Auth::None, &h));
        let bearer = Auth::Bearer("t0k".into());
        assert!(!authorized(&bearer, &h));
        h.insert(header::AUTHORIZATION, "Bearer t0k".parse().unwrap());
        assert!(authorized(&bearer, &h));
        h.insert(header::AUTHORIZATION, "Bearer t0".parse().unwrap());
        assert!(!authorized(&bearer, &h));
        let basic = Auth::Basic {
            username: "am".into(),
            password: "pw".into(),
        };
        // base64("am:pw")
        h.insert(header::AUTHORIZATION, "Basic YW06cHc=".parse().unwrap());
        assert!(authorized(&basic, &h));
        h.insert(header::AUTHORIZATION, "Basic YW06cHg=".parse().unwrap());
        assert!(!authorized(&basic, &h));
    }
}
