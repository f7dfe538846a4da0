//! The plugin's errors. Their messages never contain a broker password: URLs appear
//! redacted and AMQP client messages are scrubbed before they get here.

use synchronizer_plugin_api::redact::redact_url;

/// An unusable configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has an invalid value.
    #[error("config field `{field}`: {message}")]
    Invalid {
        /// The field's path (`urls`, `subscriptions[1].exchange`...).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A file named by the configuration cannot be read.
    #[error("config field `{field}`: cannot read {path}: {source}")]
    File {
        /// The field.
        field: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field's path and what is wrong with it, apart.
    pub fn field_and_message(&self) -> (String, String) {
        match self {
            ConfigError::Invalid { field, message } => (field.clone(), message.clone()),
            ConfigError::File {
                field,
                path,
                source,
            } => ((*field).to_owned(), format!("cannot read {path}: {source}")),
        }
    }
}

/// Why the consumer stopped working.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting to a broker failed.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// The broker, redacted.
        url: String,
        /// What the AMQP client said, scrubbed.
        message: String,
    },
    /// Declaring or binding the exchanges and queues failed (the broker refused a
    /// declaration: an existing queue with other arguments or durability, say).
    #[error("cannot set up {what}: {message}")]
    Setup {
        /// Which exchange, queue or binding.
        what: String,
        /// What the broker said.
        message: String,
    },
    /// The connection or a channel failed while consuming.
    #[error("lost the broker connection while {doing}: {message}")]
    Lost {
        /// What the consumer was doing.
        doing: &'static str,
        /// What the AMQP client said.
        message: String,
    },
    /// Heat's resources of a stack a notification names could not be read (see
    /// [`crate::heat`]): the batch is not pushed and its messages are redelivered.
    #[error("cannot read the resources of heat stack {stack} from Heat: {message}")]
    Heat {
        /// The stack's id (empty when Heat's endpoint itself could not be found).
        stack: String,
        /// What the OpenStack client said (URLs without credentials).
        message: String,
    },
    /// The host refused a batch of changes: the messages are not acknowledged and will be
    /// delivered again.
    #[error("the host did not accept a batch of {changes} change(s): {message}")]
    Sink {
        /// Changes in the batch.
        changes: usize,
        /// The host's message.
        message: String,
    },
}

impl BusError {
    pub(crate) fn connect(url: &str, message: String) -> Self {
        BusError::Connect {
            url: redact_url(url),
            message,
        }
    }

    /// Whether reconnecting may help (everything but a host that refuses changes).
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Sink { .. })
    }
}
