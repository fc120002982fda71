use thiserror::Error;

/// A configuration value that was rejected before anything touched the kernel.
///
/// `field` is what the user wrote: the flag (`--istio-inbound-ports`), the environment
/// variable (`ISTIO_OUTBOUND_OWNER_GROUPS`) or the configuration key that carried the value,
/// so the message points at the exact place to fix.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {field}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("{field}: {reason}")]
    Conflict { field: String, reason: String },
    #[error("cannot read the group database {path}: {reason}")]
    GroupDatabase { path: String, reason: String },
}

impl ConfigError {
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
