//! The daemon's one domain error, mapped to gRPC status codes in exactly one place
//! (`grpc::status`) and to HTTP codes in `http`.
//!
//! Messages help the caller and never carry secrets (ticket passwords, keys, bundles) or
//! internals: internal failures are logged with detail and surface as a generic message.

use crate::store::TicketState;

/// An error a caller can see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A request field is malformed or out of policy limits.
    #[error("invalid argument: {field}: {problem}")]
    InvalidArgument {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Ticket number unknown, or password wrong (deliberately indistinguishable), or the
    /// ticket is locked.
    #[error("ticket number or password is incorrect")]
    BadTicketCredentials,
    /// The ticket exists and the password is right, but it cannot be redeemed in this state.
    #[error("ticket cannot be redeemed: it is {state}")]
    TicketNotRedeemable {
        /// The ticket's state.
        state: TicketState,
    },
    /// The ticket is being redeemed by a concurrent request.
    #[error("ticket is being redeemed by another request")]
    RedemptionInProgress,
    /// A state change was refused because the object is in another state.
    #[error("{what} is {state}, not {expected}")]
    WrongState {
        /// What was changed.
        what: &'static str,
        /// Its current state.
        state: String,
        /// The state the change needs.
        expected: &'static str,
    },
    /// The object does not exist.
    #[error("{what} not found: {id}")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// Its identifier.
        id: String,
    },
    /// A rate or resource limit was hit.
    #[error("limit exceeded: {0}")]
    ResourceExhausted(String),
    /// The service cannot serve this now (e.g. no active issuer); retrying later may help.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something failed inside the daemon; details are in the log, not here.
    #[error("internal error (see the daemon log, reference {reference})")]
    Internal {
        /// A reference to find the log line.
        reference: String,
    },
}

impl CaError {
    /// Logs `detail` at error level with a fresh reference and returns the opaque error.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let reference = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        tracing::error!(reference = %reference, error = %detail, "internal error");
        CaError::Internal { reference }
    }

    /// An invalid-argument error for a field.
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        CaError::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
