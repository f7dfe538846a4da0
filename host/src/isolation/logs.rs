//! Log re-emission: the child's log lines, re-emitted through the host's tracing.
//!
//! The child writes JSON lines to its stderr (the plugin's events, forwarded by the SDK as
//! in process, the child's own, and panics through its hook; see [`super::child`]). The
//! host reads them on a task of their own and re-emits each at its level, target `plugin`,
//! with the instance's name and the child's `pid`; anything else on stderr (a plugin
//! printing, the runtime's last words) is re-emitted as a warning.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::ChildStderr;

/// Re-emits the child's JSON log lines (and anything else it writes to stderr) in the
/// host's log with the instance's name.
pub(super) async fn forward_logs(instance: Arc<str>, pid: u32, stderr: ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        emit_child_log(&instance, pid, &line);
    }
}

fn emit_child_log(instance: &str, pid: u32, line: &str) {
    let Ok(serde_json::Value::Object(mut v)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        // Not one of the child's JSON lines: a plugin printing, or the runtime's own
        // last words.
        tracing::warn!(target: "plugin", instance, pid, "{line}");
        return;
    };
    let level = v
        .get("level")
        .and_then(|l| l.as_str())
        .unwrap_or("INFO")
        .to_owned();
    let child_target = v
        .get("target")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_owned();
    let mut fields = match v.remove("fields") {
        Some(serde_json::Value::Object(f)) => f,
        _ => serde_json::Map::new(),
    };
    let message = match fields.remove("message") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    fields.remove("instance");
    let plugin_target = match fields.remove("plugin_target") {
        Some(serde_json::Value::String(s)) => s,
        _ => child_target,
    };
    // A plugin's own fields arrive as one `fields` string (see `instance::HostLog`);
    // the child's own events carry ordinary fields.
    let mut rest: Vec<String> = Vec::new();
    if let Some(serde_json::Value::String(own)) = fields.remove("fields")
        && !own.is_empty()
    {
        rest.push(own);
    }
    rest.extend(fields.iter().map(|(k, v)| match v {
        serde_json::Value::String(s) => format!("{k}={s}"),
        other => format!("{k}={other}"),
    }));
    let fields = rest.join(" ");
    let t = plugin_target.as_str();
    match level.as_str() {
        "ERROR" => {
            tracing::error!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        "WARN" => {
            tracing::warn!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        "DEBUG" => {
            tracing::debug!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        "TRACE" => {
            tracing::trace!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
        _ => {
            tracing::info!(target: "plugin", instance, pid, plugin_target = t, fields, "{message}")
        }
    }
}
