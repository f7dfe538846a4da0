//! The connection to one running child: the frames in both directions and the calls in
//! hand.
//!
//! A writer task sends the host's frames (through a channel, so that any task can send
//! without waiting); a reader task reads the child's frames and routes each: a reply to
//! the call that waits for it, a push batch to the hub (answered `PushAck` once applied), a
//! heartbeat answer to the supervisor's clock and the instance's counters. Any frame that
//! does not decode, or that this state does not expect, kills the child ("protocol
//! error").
//!
//! Snapshot parts are held (decoding on blocking threads, several at once) until their
//! call's final frame, up to `snapshot_limit` bytes of frames and `max_entities` entities
//! per call: past either the call fails at once with an error saying so (a failed snapshot
//! deletes nothing), the parts held are dropped and the call's further parts are read and
//! dropped until its final frame. The child is not killed for that: a snapshot that large
//! is the plugin's answer, not a protocol error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use abi_stable::std_types::RString;
use synchronizer_plugin_api::abi::FfiError;
use synchronizer_plugin_api::{Entity, ErrorKind};
use tokio::io::{AsyncWriteExt as _, BufReader, BufWriter};
use tokio::process::ChildStdout;
use tokio::sync::{mpsc, oneshot};

use super::lock;
use super::process::Shared;
use super::supervision::Why;
use super::wire::{self, FromChild, ToChild};
use crate::instance::{CallError, apply_pushed, delivered};

/// Abandoned snapshot calls (timed out, or past `snapshot_limit`) whose late parts are
/// still read and dropped. A child may send parts after it answered a cancellation, so an
/// abandoned call is remembered until its final frame; this many at most, the oldest
/// forgotten first (a part for a forgotten call is then a protocol error).
const MAX_ABANDONED: usize = 64;

/// One part of a streamed snapshot, decoded on a blocking thread.
type PartTask = tokio::task::JoinHandle<Result<Vec<Entity>, wire::WireError>>;

/// A snapshot call the child may stream parts for.
pub(super) enum Stream {
    /// Its caller waits: parts are decoded and held, in order, until the final frame.
    Collecting {
        /// The parts, decoding or decoded.
        parts: Vec<PartTask>,
        /// Their frames' bytes.
        bytes: u64,
        /// Their entities, as their frames count them.
        entities: u64,
    },
    /// Its caller has its answer or gave up (the call passed its timeout, or its parts
    /// passed `snapshot_limit` or `max_entities`): further parts are dropped until the
    /// final frame.
    Abandoned,
}

/// One running child and the calls it has in hand.
pub(super) struct Conn {
    pub(super) pid: u32,
    pub(super) tx: mpsc::UnboundedSender<Vec<u8>>,
    pub(super) pending: Mutex<HashMap<u64, oneshot::Sender<FromChild>>>,
    /// Every snapshot call in hand (or abandoned and not finished), with its parts: a
    /// part for any other call id is a protocol error.
    pub(super) partial: Mutex<HashMap<u64, Stream>>,
    pub(super) next_id: AtomicU64,
    pub(super) in_flight: AtomicU32,
    pub(super) kill_tx: mpsc::UnboundedSender<(Why, String)>,
    pub(super) killed: AtomicBool,
    pub(super) exit: OnceLock<String>,
    pub(super) last_pong: Mutex<Instant>,
}

impl Conn {
    pub(super) fn send(&self, msg: &ToChild) -> bool {
        self.tx.send(msg.encode()).is_ok()
    }

    /// Registers a call and sends it.
    pub(super) fn call(
        &self,
        make: impl FnOnce(u64) -> ToChild,
    ) -> (u64, oneshot::Receiver<FromChild>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        self.send(&make(id));
        (id, rx)
    }

    /// Registers a snapshot call and sends it.
    pub(super) fn call_snapshot(&self, types: Vec<String>) -> (u64, oneshot::Receiver<FromChild>) {
        self.call(|id| {
            lock(&self.partial).insert(
                id,
                Stream::Collecting {
                    parts: Vec::new(),
                    bytes: 0,
                    entities: 0,
                },
            );
            ToChild::Snapshot { id, types }
        })
    }

    /// The caller of snapshot `id` has its answer or gave up: its parts are dropped now,
    /// later ones on arrival. Forgets the oldest abandoned calls past [`MAX_ABANDONED`].
    pub(super) fn abandon_snapshot(&self, id: u64) {
        let mut streams = lock(&self.partial);
        if let Some(stream) = streams.get_mut(&id) {
            *stream = Stream::Abandoned;
        }
        let mut abandoned: Vec<u64> = streams
            .iter()
            .filter(|(_, s)| matches!(s, Stream::Abandoned))
            .map(|(id, _)| *id)
            .collect();
        if abandoned.len() > MAX_ABANDONED {
            abandoned.sort_unstable();
            for old in &abandoned[..abandoned.len() - MAX_ABANDONED] {
                streams.remove(old);
            }
        }
    }

    pub(super) fn kill(&self, why: Why, cause: String) {
        if !self.killed.swap(true, Ordering::SeqCst) {
            let _ = self.kill_tx.send((why, cause));
        }
    }

    /// The error a call gets when the child ended under it.
    pub(super) fn died(&self) -> CallError {
        let cause = self
            .exit
            .get()
            .cloned()
            .unwrap_or_else(|| "the child process ended".into());
        CallError {
            kind: ErrorKind::Failed,
            message: format!("the plugin child process ended during the call: {cause}"),
        }
    }
}

pub(super) fn name_of(m: &FromChild) -> &'static str {
    match m {
        FromChild::Ready { .. } => "Ready",
        FromChild::CreateFailed { .. } => "CreateFailed",
        FromChild::Snapshot { .. } => "Snapshot",
        FromChild::SnapshotPart { .. } => "SnapshotPart",
        FromChild::Cancelled { .. } => "Cancelled",
        FromChild::Push { .. } => "Push",
        FromChild::RunEnded { .. } => "RunEnded",
        FromChild::Health { .. } => "Health",
        FromChild::Pong { .. } => "Pong",
    }
}

/// Takes one `SnapshotPart` frame for call `id`: decodes it off the reader task (several
/// at once, while the next arrive) and holds it for the call's final frame. `Err` is a
/// protocol error: the child is to be killed with that cause.
fn take_part(shared: &Shared, conn: &Arc<Conn>, id: u64, body: Vec<u8>) -> Result<(), String> {
    let limit = shared.options.snapshot_limit;
    let max_entities = shared.options.max_entities as u64;
    let mut streams = lock(&conn.partial);
    let (parts, bytes, entities) = match streams.get_mut(&id) {
        None => {
            return Err(format!(
                "protocol error: a snapshot part for call {id}, which is not a snapshot in hand"
            ));
        }
        Some(Stream::Abandoned) => return Ok(()), // read and dropped
        Some(Stream::Collecting {
            parts,
            bytes,
            entities,
        }) => (parts, bytes, entities),
    };
    *bytes = bytes.saturating_add(body.len() as u64);
    // A count the frame does not hold is the decoder's error, reported with the part.
    *entities = entities.saturating_add(wire::snapshot_part_count(&body).map_or(0, u64::from));
    let refusal = if *bytes > limit {
        tracing::error!(instance = %shared.name, pid = conn.pid, call = id, limit, "snapshot parts passed snapshot_limit; the snapshot fails");
        Some(format!(
            "the snapshot is larger than snapshot_limit: its parts passed {} MiB ({} bytes of frames); they are dropped and nothing is deleted",
            limit >> 20,
            *bytes
        ))
    } else if *entities > max_entities {
        tracing::error!(instance = %shared.name, pid = conn.pid, call = id, max_entities, "snapshot parts passed max_entities; the snapshot fails");
        Some(format!(
            "the snapshot has more than max_entities = {max_entities} entities (its parts alone hold {}); they are dropped and nothing is deleted (raise max_entities if the source really is this large)",
            *entities
        ))
    } else {
        None
    };
    if let Some(message) = refusal {
        drop(streams);
        conn.abandon_snapshot(id);
        let waiter = lock(&conn.pending).remove(&id);
        if let Some(w) = waiter {
            let _ = w.send(FromChild::Snapshot {
                id,
                result: Err(FfiError {
                    kind: ErrorKind::Failed,
                    message: RString::from(message),
                }),
            });
        }
        return Ok(());
    }
    let decoder = conn.clone();
    parts.push(tokio::task::spawn_blocking(move || {
        let result = match FromChild::decode(&body) {
            Ok(FromChild::SnapshotPart { entities, .. }) => Ok(entities),
            Ok(_) => Err(wire::WireError::UnknownTag(0)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            // At once: the call fails and the child is restarted now, not when (or if)
            // the final frame comes.
            decoder.kill(
                Why::Protocol,
                format!("protocol error: a snapshot part of call {id}: {e}"),
            );
        }
        result
    }));
    Ok(())
}

pub(super) async fn write_frames(
    stdin: tokio::process::ChildStdin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut w = BufWriter::with_capacity(64 << 10, stdin);
    while let Some(frame) = rx.recv().await {
        if w.write_all(&frame).await.is_err() {
            return;
        }
        while let Ok(frame) = rx.try_recv() {
            if w.write_all(&frame).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
}

pub(super) async fn read_frames(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    mut stdout: BufReader<ChildStdout>,
) {
    loop {
        let body = match wire::read_frame(&mut stdout).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    conn.kill(Why::Protocol, format!("protocol error: {e}"));
                }
                return;
            }
        };
        if let Some(id) = wire::snapshot_part_id(&body) {
            if let Err(cause) = take_part(&shared, &conn, id, body) {
                conn.kill(Why::Protocol, cause);
                return;
            }
            continue;
        }
        let msg = match FromChild::decode(&body) {
            Ok(m) => m,
            Err(e) => {
                conn.kill(Why::Protocol, format!("protocol error: {e}"));
                return;
            }
        };
        match msg {
            FromChild::Pong {
                calls_in_flight: _,
                counters,
                ..
            } => {
                *lock(&conn.last_pong) = Instant::now();
                *lock(&shared.counters) = counters;
            }
            FromChild::Push { id, batch } => {
                let bus = lock(&shared.bus).clone();
                // Applied here, in arrival order; the wait for reliable outputs (and so
                // the child's upstream acknowledgement) runs beside the reader.
                match bus {
                    Some((hub, origin)) => match apply_pushed(&hub, &origin, batch).await {
                        Ok(Some(seq)) if hub.deliveries().any() => {
                            let conn = conn.clone();
                            tokio::spawn(async move {
                                let result = delivered(&hub, Some(seq)).await;
                                conn.send(&ToChild::PushAck { id, result });
                            });
                        }
                        result => {
                            conn.send(&ToChild::PushAck {
                                id,
                                result: result.map(|_| ()),
                            });
                        }
                    },
                    None => {
                        conn.send(&ToChild::PushAck {
                            id,
                            result: Err(FfiError {
                                kind: ErrorKind::Failed,
                                message: RString::from("no push loop is running"),
                            }),
                        });
                    }
                }
            }
            FromChild::Ready { .. } | FromChild::CreateFailed { .. } => {
                conn.kill(
                    Why::Protocol,
                    format!("protocol error: unexpected {}", name_of(&msg)),
                );
                return;
            }
            FromChild::SnapshotPart { .. } => {} // routed above
            FromChild::Snapshot { id, result } => {
                let parts = match lock(&conn.partial).remove(&id) {
                    // Its caller has its answer already, or gave up.
                    Some(Stream::Abandoned) => continue,
                    Some(Stream::Collecting { parts, .. }) => Some(parts),
                    None => None,
                };
                let conn = conn.clone();
                // The parts are joined in order off this task: frames keep flowing.
                tokio::spawn(async move {
                    let result = match (result, parts) {
                        (Ok(mut snap), Some(parts)) => {
                            let mut all: Vec<Entity> = Vec::new();
                            let mut failed = None;
                            for part in parts {
                                match part.await {
                                    Ok(Ok(entities)) => {
                                        if all.is_empty() {
                                            all.reserve(entities.len() * 10);
                                        }
                                        all.extend(entities)
                                    }
                                    Ok(Err(e)) => failed = Some(e.to_string()),
                                    Err(e) => failed = Some(e.to_string()),
                                }
                            }
                            if let Some(e) = failed {
                                // Killed when the part failed already (`take_part`); this
                                // covers a decoding task that did not finish.
                                conn.kill(
                                    Why::Protocol,
                                    format!("protocol error: a snapshot part of call {id}: {e}"),
                                );
                                return;
                            }
                            all.extend(std::mem::take(&mut snap.entities));
                            snap.entities = all.into();
                            Ok(snap)
                        }
                        (r, _) => r,
                    };
                    let waiter = lock(&conn.pending).remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(FromChild::Snapshot { id, result });
                    }
                });
            }
            FromChild::Cancelled { id, .. }
            | FromChild::RunEnded { id, .. }
            | FromChild::Health { id, .. } => {
                let waiter = lock(&conn.pending).remove(&id);
                if let Some(w) = waiter {
                    let _ = w.send(msg);
                }
            }
        }
    }
}
