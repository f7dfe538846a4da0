//! `GET /v1/changes`: change notifications as Server-Sent Events.
//!
//! Each event's `data:` is one JSON object of [`crate::output`]: a change, with
//! `id: <seq>@<epoch>` (its `seq`, and the epoch of this run of the stream, so that an
//! id from before a restart is recognised as such); or a resync marker, snapshot
//! entities and the snapshot's end, without an id (a client's `Last-Event-ID` stays the
//! last change it saw).
//!
//! - Without `Last-Event-ID`: live changes from now on; with `snapshot=true`, first a
//!   resync marker (`"reason":"initial"`) and a snapshot of the current view.
//! - With `Last-Event-ID` (`<seq>@<epoch>`, or a bare `<seq>` taken as this run's): the
//!   changes after `seq` from the replay window, then live changes, with neither a gap
//!   nor a repeat. When some change after it is no longer in the window, or the id is of
//!   another run or a `seq` not reached yet, a resync marker (`"reason":"lagged"`) and a
//!   snapshot come first instead.
//! - A client that reads too slowly has its own bounded subscription fill up; the hub
//!   then drops its changes and, as soon as it has room, sends it a resync marker and a
//!   snapshot. It never delays the host or any other client.
//! - While changes stream in, a client gets at most one write per `LINGER` (10 ms); the first
//!   change after a quiet spell goes out at once.
//! - At the host's shutdown a stream ends after the drain: it is sent every change the
//!   host accepted before it stopped its producers, then it ends; the host waits for that
//!   (see [`crate::subscription::Drain`]) before it closes the HTTP API.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use super::replay::{Resume, Window};
use crate::change::{Event, ResyncReason};
use crate::hub::TypeFilter;
use crate::output;
use crate::subscription::{SubscribeOptions, Subscription};

/// Events a client may have queued before it counts as fallen behind.
const CLIENT_QUEUE: usize = 4_096;
/// A comment is sent after this long without events, so that dead connections are
/// noticed and proxies keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Live changes are written at most once per this long while they stream in (the first
/// after a quiet spell at once): at high rates a client gets one write of many events
/// instead of one per hub batch, which is what keeps 100 clients at 10,000 changes/s
/// within a 2-core budget.
const LINGER: Duration = Duration::from_millis(10);
/// How long a resuming client waits for the replay window to catch up with the host.
const CATCH_UP: Duration = Duration::from_secs(2);
/// How long a live change waits for its JSON from the replay window before the client
/// serialises it itself.
const JSON_WAIT: Duration = Duration::from_millis(500);
/// A chunk of the stream carries at most this many events...
const CHUNK_EVENTS: usize = 512;
/// ... and stops growing past this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;
/// Snapshot entities per chunk.
const SNAPSHOT_CHUNK: usize = 256;
/// The reconnection delay the stream asks clients for, in milliseconds.
const RETRY_MS: u32 = 1_000;

/// The handler.
pub(super) async fn changes(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = super::handlers::params(query, &["snapshot"])?;
    let last_id = last_event_id(&headers, state.window.epoch())?;
    if state.shutdown.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let filter = TypeFilter::new(&params.types);
    let subscribe = |initial_snapshot: bool| {
        state.sync.subscribe(&SubscribeOptions {
            types: params.types.clone(),
            queue: CLIENT_QUEUE,
            initial_snapshot,
            resync_every: None,
        })
    };
    let resync = || {
        let mut stream = ChangeStream::new(peer, subscribe(true), &state, Vec::new(), 0);
        stream.initial_is_lag = true;
        (stream, "resync")
    };
    let (stream, mode) = match last_id {
        None => {
            let initial = params.flag("snapshot");
            let stream = ChangeStream::new(peer, subscribe(initial), &state, Vec::new(), 0);
            (stream, if initial { "snapshot" } else { "live" })
        }
        // An id of another run of the stream (the host restarted): nothing to resume.
        Some(LastId::OtherRun) => resync(),
        Some(LastId::Seq(after)) => {
            let sub = subscribe(false);
            // Every change after `through` reaches `sub`; the window has the rest.
            let through = state.sync.hub().last_seq();
            let resume = if after > through {
                Resume::TooOld
            } else if state.window.caught_up(through, CATCH_UP).await {
                state.window.resume(after, through, &filter)
            } else {
                Resume::TooOld
            };
            match resume {
                Resume::Replay(entries) => {
                    let replay = entries
                        .into_iter()
                        .map(|e| (e.change.seq, e.json().clone()))
                        .collect();
                    (
                        ChangeStream::new(peer, sub, &state, replay, through),
                        "resume",
                    )
                }
                Resume::TooOld => {
                    drop(sub);
                    resync()
                }
            }
        }
    };
    let resume_after = match &last_id {
        None => String::new(),
        Some(LastId::Seq(seq)) => seq.to_string(),
        Some(LastId::OtherRun) => "another run".to_owned(),
    };
    tracing::info!(
        %peer,
        types = %params.types.join(","),
        %resume_after,
        mode,
        "change stream opened"
    );
    let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
        s.next_chunk()
            .await
            .map(|chunk| (Ok::<Bytes, std::convert::Infallible>(chunk), s))
    }));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// What a client's `Last-Event-ID` says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LastId {
    /// The `seq` of the last change it saw, in this run of the stream.
    Seq(u64),
    /// An id from another run (the host restarted since): its seqs mean nothing here.
    OtherRun,
}

/// Parses `Last-Event-ID`: absent or empty (none), `<seq>@<epoch>` (what the stream
/// sends), or a bare `<seq>` (taken as this run's, for consumers that kept the `seq` of
/// the JSON).
pub(super) fn last_event_id(headers: &HeaderMap, epoch: &str) -> Result<Option<LastId>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".to_owned()))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (seq, run) = match text.split_once('@') {
        Some((seq, run)) => (seq, Some(run)),
        None => (text, None),
    };
    let seq = seq.parse::<u64>().map_err(|_| {
        ApiError::BadRequest(format!(
            "Last-Event-ID must be an id the stream sent (<seq>@<epoch>) or a seq, not {text:?}"
        ))
    })?;
    Ok(Some(match run {
        Some(run) if run != epoch => LastId::OtherRun,
        _ => LastId::Seq(seq),
    }))
}

/// One client's stream: its subscription, what is to be sent before live changes, and
/// a snapshot being sent.
struct ChangeStream {
    peer: SocketAddr,
    /// This run's epoch, the second half of every id.
    epoch: Arc<str>,
    sub: Subscription,
    window: Arc<Window>,
    shutdown: CancellationToken,
    /// Sent first: the `retry:` hint (which also gets the headers out at once).
    hello: bool,
    /// Changes replayed from the window, sent before live ones.
    replay: VecDeque<(u64, Arc<str>)>,
    /// Live changes up to this `seq` were replayed already.
    skip_through: u64,
    /// The first resync marker is the one asked for because the client's id was too old:
    /// reported as `lagged` (the hub calls it `initial`).
    initial_is_lag: bool,
    /// A snapshot being sent: its entities and how many are sent.
    snapshot: Option<(crate::view::Snapshot, usize)>,
    /// Events taken from the subscription, not yet sent (they wait behind a snapshot).
    pending: VecDeque<Event>,
    /// When live changes were last written.
    last_write: Instant,
    closed: bool,
}

impl ChangeStream {
    fn new(
        peer: SocketAddr,
        mut sub: Subscription,
        state: &AppState,
        replay: Vec<(u64, Arc<str>)>,
        skip_through: u64,
    ) -> Self {
        // The host drives this consumer: its shutdown waits until the stream has sent
        // everything (or the client is gone).
        sub.track();
        ChangeStream {
            peer,
            epoch: state.window.epoch_arc(),
            sub,
            window: state.window.clone(),
            shutdown: state.shutdown.clone(),
            hello: true,
            replay: replay.into(),
            skip_through,
            initial_is_lag: false,
            snapshot: None,
            pending: VecDeque::new(),
            last_write: Instant::now()
                .checked_sub(LINGER)
                .unwrap_or_else(Instant::now),
            closed: false,
        }
    }

    /// The next piece of the stream; `None` ends it (after the host's drain, or when the
    /// HTTP API stops and nothing is queued).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.closed {
            return None;
        }
        if std::mem::take(&mut self.hello) {
            return Some(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
        }
        let mut out = String::new();
        if !self.replay.is_empty() {
            while let Some((seq, json)) = self.replay.pop_front() {
                push_event(&mut out, Some((seq, &self.epoch)), &json);
                if out.len() >= CHUNK_BYTES {
                    break;
                }
            }
            return Some(Bytes::from(out));
        }
        if self.snapshot.is_some() {
            self.snapshot_chunk(&mut out);
            return Some(Bytes::from(out));
        }
        if self.pending.is_empty() {
            match self.sub.try_recv() {
                // Behind: catch up at once.
                Some(e) => self.pending.push_back(e),
                None => {
                    // Live: wait for an event...
                    let first = tokio::select! {
                        _ = self.shutdown.cancelled() => None,
                        e = tokio::time::timeout(KEEP_ALIVE, self.sub.recv()) => match e {
                            Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                            Ok(e) => e,
                        },
                    };
                    let Some(first) = first else {
                        self.closed = true;
                        return None;
                    };
                    self.pending.push_back(first);
                    // ... and, when the last write was less than LINGER ago, let what
                    // follows it gather until then: one write per LINGER at most while
                    // changes stream in, at once after a quiet spell.
                    let since = self.last_write.elapsed();
                    if since < LINGER {
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(LINGER - since) => {}
                        }
                    }
                }
            }
            while self.pending.len() < CHUNK_EVENTS {
                match self.sub.try_recv() {
                    Some(e) => self.pending.push_back(e),
                    None => break,
                }
            }
        }
        self.pending_chunk(&mut out).await;
        self.last_write = Instant::now();
        Some(Bytes::from(out))
    }

    /// Formats pending events, up to and including the start of a snapshot.
    async fn pending_chunk(&mut self, out: &mut String) {
        // The changes' JSON comes from the window. Its subscription got them before
        // this one did, but its task may not have stored them yet: wait for it briefly.
        let highest = self
            .pending
            .iter()
            .map_while(|e| match e {
                Event::Change(c) => Some(c.seq),
                Event::Resync(_) => Some(0),
                Event::Snapshot(_) => None,
            })
            .max();
        if let Some(highest) = highest {
            if self.window.seen() < highest {
                self.window.caught_up(highest, JSON_WAIT).await;
            }
        }
        // Copied straight from the window, under one lock; no await from here on.
        let json = self.window.json();
        while let Some(event) = self.pending.pop_front() {
            match event {
                Event::Change(c) => {
                    if c.seq <= self.skip_through {
                        continue;
                    }
                    let id = Some((c.seq, &*self.epoch));
                    match json.get(c.seq) {
                        Some(text) => push_event(out, id, text),
                        None => push_event(out, id, &output::change_to_json(&c)),
                    }
                }
                Event::Resync(reason) => {
                    let reason = if std::mem::take(&mut self.initial_is_lag)
                        && reason == ResyncReason::Initial
                    {
                        ResyncReason::Lagged
                    } else {
                        reason
                    };
                    push_event(out, None, &output::resync_to_json(reason));
                }
                Event::Snapshot(entities) => {
                    self.snapshot = Some((entities, 0));
                    break;
                }
            }
        }
        drop(json);
        if self.snapshot.is_some() && out.len() < CHUNK_BYTES {
            self.snapshot_chunk(out);
        }
    }

    fn snapshot_chunk(&mut self, out: &mut String) {
        let Some((entities, sent)) = &mut self.snapshot else {
            return;
        };
        let end = (*sent + SNAPSHOT_CHUNK).min(entities.len());
        for e in &entities[*sent..end] {
            push_event(out, None, &output::snapshot_entity_to_json(e));
        }
        *sent = end;
        if end == entities.len() {
            push_event(out, None, &output::snapshot_end_to_json(entities.len()));
            self.snapshot = None;
        }
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        tracing::info!(peer = %self.peer, "change stream closed");
    }
}

/// Appends one SSE event (`id: <seq>@<epoch>` when given; the data is one JSON line).
pub(super) fn push_event(out: &mut String, id: Option<(u64, &str)>, json: &str) {
    if let Some((seq, epoch)) = id {
        let _ = writeln!(out, "id: {seq}@{epoch}");
    }
    out.push_str("data: ");
    out.push_str(json);
    out.push_str("\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: &str) -> Result<Option<LastId>, ApiError> {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_str(v).unwrap());
        last_event_id(&h, "e1")
    }

    #[test]
    fn last_event_ids() {
        assert_eq!(last_event_id(&HeaderMap::new(), "e1").unwrap(), None);
        assert_eq!(id(" ").unwrap(), None);
        assert_eq!(id("42@e1").unwrap(), Some(LastId::Seq(42)));
        assert_eq!(id("42").unwrap(), Some(LastId::Seq(42)));
        assert_eq!(id("42@e0").unwrap(), Some(LastId::OtherRun));
        assert!(id("x@e1").is_err());
        assert!(id("-1").is_err());
        assert!(id("yesterday").is_err());
    }

    #[test]
    fn events_are_framed() {
        let mut out = String::new();
        push_event(&mut out, Some((7, "e1")), "{\"a\":1}");
        push_event(&mut out, None, "{}");
        assert_eq!(out, "id: 7@e1\ndata: {\"a\":1}\n\ndata: {}\n\n");
    }
}
