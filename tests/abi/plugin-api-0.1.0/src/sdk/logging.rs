//! Log and panic forwarding from inside a plugin to the host.
//!
//! Each cdylib has its own copy of `tracing`'s globals, so a plugin's `tracing::info!`
//! would go nowhere. The SDK makes each instance's runtime threads use a dispatcher whose
//! layer hands every event (level, target, message, fields) to the host through the
//! instance's [`HostContext`](crate::abi::HostContext); the host re-emits it under the
//! instance's name. A panic hook, installed once per plugin library, logs panics the same
//! way before they are caught and returned as errors.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Once};

use abi_stable::std_types::RStr;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer};
use tracing_subscriber::prelude::*;

use crate::abi::{HostContextBox, LogLevel, LogRecord};

/// The most recently created instance's dispatcher: where panics on threads that belong
/// to no instance (an entry point called on a host thread) are reported.
static FALLBACK: Mutex<Option<Dispatch>> = Mutex::new(None);

thread_local! {
    static HAS_DISPATCH: Cell<bool> = const { Cell::new(false) };
}

struct Forward {
    ctx: Arc<HostContextBox>,
    max: LogLevel,
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        Level::TRACE => LogLevel::Trace,
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, "{}{}={:?}", sep(&self.rest), field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, "{}{}={:?}", sep(&self.rest), field.name(), value);
        }
    }
}

fn sep(s: &str) -> &'static str {
    if s.is_empty() { "" } else { " " }
}

impl<S: Subscriber> Layer<S> for Forward {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: LayerContext<'_, S>) -> bool {
        level_of(metadata.level()) <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        let meta = event.metadata();
        let level = level_of(meta.level());
        if level > self.max {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.ctx.log(LogRecord {
            level,
            target: RStr::from_str(meta.target()),
            message: RStr::from_str(&fields.message),
            fields: RStr::from_str(&fields.rest),
        });
    }
}

/// The dispatcher for one instance: every event goes to its host context.
pub(crate) fn dispatch_for(ctx: Arc<HostContextBox>) -> Dispatch {
    let max = ctx.max_level();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(Forward { ctx, max }));
    if let Ok(mut slot) = FALLBACK.lock() {
        *slot = Some(dispatch.clone());
    }
    dispatch
}

/// Makes `dispatch` the default for the rest of this thread's life (runtime threads).
pub(crate) fn set_thread_dispatch(dispatch: &Dispatch) {
    let guard = tracing::dispatcher::set_default(dispatch);
    // The thread belongs to the instance's runtime for its whole life.
    std::mem::forget(guard);
    HAS_DISPATCH.with(|c| c.set(true));
}

/// Installs, once per plugin library, a panic hook that logs the panic through the
/// current instance's dispatcher instead of printing to stderr.
pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            let report = || {
                tracing::error!(target: "panic", thread = name, "plugin panicked: {info}");
            };
            let has_default = HAS_DISPATCH.with(|c| c.get())
                || tracing::dispatcher::get_default(|d| {
                    !d.is::<tracing::subscriber::NoSubscriber>()
                });
            if has_default {
                report();
            } else if let Some(d) = FALLBACK.lock().ok().and_then(|g| g.clone()) {
                tracing::dispatcher::with_default(&d, report);
            } else {
                eprintln!("plugin panicked on thread {name}: {info}");
            }
        }));
    });
}
