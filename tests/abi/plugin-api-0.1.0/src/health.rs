//! A plugin's report on its own health: what a plugin's `health` returns, what a plugin
//! child sends its host, and what the host's HTTP API shows, as one type.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::abi::FfiHealth;

/// A plugin's report on its own health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// True when the plugin can do its work.
    pub healthy: bool,
    /// What is wrong, or anything worth saying (empty when healthy and nothing to say).
    pub message: String,
}

impl Health {
    /// Healthy, nothing to say.
    pub fn healthy() -> Self {
        Health {
            healthy: true,
            message: String::new(),
        }
    }

    /// Unhealthy, and why.
    pub fn unhealthy(message: impl fmt::Display) -> Self {
        Health {
            healthy: false,
            message: message.to_string(),
        }
    }
}

impl From<Health> for FfiHealth {
    fn from(h: Health) -> Self {
        FfiHealth {
            healthy: h.healthy,
            message: h.message.into(),
        }
    }
}

impl From<FfiHealth> for Health {
    fn from(h: FfiHealth) -> Self {
        Health {
            healthy: h.healthy,
            message: h.message.into(),
        }
    }
}
