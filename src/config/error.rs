//! The one error type of configuration: which value was refused, and why.

use thiserror::Error;

/// A configuration value that was rejected before anything touched the kernel.
///
/// `field` is what the user wrote: the flag (`--istio-inbound-ports`), the environment
/// variable (`ISTIO_OUTBOUND_OWNER_GROUPS`) or the configuration key that carried the value,
/// so the message points at the exact place to fix.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid value {value:?} for {field}: {reason}")]
    Invalid {
        /// The flag, variable or key that carried the value.
        field: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Values that are fine alone but not together.
    #[error("{field}: {reason}")]
    Conflict {
        /// The flag, variable or key to change.
        field: String,
        /// Why it conflicts.
        reason: String,
    },
    /// The group file could not be read to resolve an owner-group name.
    #[error("cannot read the group database {path}: {reason}")]
    GroupDatabase {
        /// The group file.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `value` of `field`.
    pub fn invalid(field: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The flag, variable or key the error is about.
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::Conflict { field, .. } => field,
            ConfigError::GroupDatabase { .. } => "group database",
        }
    }
}
