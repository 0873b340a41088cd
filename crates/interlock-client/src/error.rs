//! The errors a caller of the SDK branches on.

use tonic::{Code, Status};

/// Why a call failed. Each variant maps from one gRPC status class.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The request was malformed; the message names the field and the reason.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Refused by a rule or precondition; nothing changed.
    #[error("refused: {0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// No node could serve the call (unreachable, or no leader).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call may or may not have taken effect.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// Classifies `status`; `previous` is an earlier attempt's failure, shown
    /// when the last one is less informative.
    pub(crate) fn from_status(status: Status, previous: Option<&Status>) -> ClientError {
        let message = match previous {
            Some(p) if p.message() != status.message() && status.code() == Code::Unavailable => {
                format!("{} (earlier: {})", status.message(), p.message())
            }
            _ => status.message().to_string(),
        };
        match status.code() {
            Code::InvalidArgument => ClientError::InvalidArgument(message),
            Code::FailedPrecondition | Code::OutOfRange => ClientError::Refused(message),
            Code::NotFound => ClientError::NotFound(message),
            Code::AlreadyExists => ClientError::AlreadyExists(message),
            Code::Unavailable => ClientError::Unavailable(message),
            Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => ClientError::OutcomeUnknown(message),
            Code::PermissionDenied | Code::Unauthenticated => ClientError::PermissionDenied(message),
            _ => ClientError::Other(format!("{:?}: {message}", status.code())),
        }
    }
}
