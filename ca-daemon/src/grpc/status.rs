//! The one place where domain errors become gRPC statuses.

use tonic::Status;

use crate::error::CaError;

impl From<CaError> for Status {
    fn from(e: CaError) -> Self {
        let msg = e.to_string();
        match e {
            CaError::InvalidArgument { .. } => Status::invalid_argument(msg),
            CaError::BadTicketCredentials => Status::unauthenticated(msg),
            CaError::TicketNotRedeemable { .. } | CaError::WrongState { .. } => {
                Status::failed_precondition(msg)
            }
            CaError::RedemptionInProgress => Status::failed_precondition(msg),
            CaError::NotFound { .. } => Status::not_found(msg),
            CaError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            CaError::Unavailable(_) => Status::unavailable(msg),
            CaError::Internal { .. } => Status::internal(msg),
        }
    }
}

impl From<pki_proto::convert::ConvertError> for CaError {
    fn from(e: pki_proto::convert::ConvertError) -> Self {
        CaError::InvalidArgument {
            field: e.field.clone(),
            problem: e.problem.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn mapping() {
        assert_eq!(
            Status::from(CaError::BadTicketCredentials).code(),
            Code::Unauthenticated
        );
        assert_eq!(
            Status::from(CaError::invalid("person.job", "too long")).code(),
            Code::InvalidArgument
        );
        assert!(
            Status::from(CaError::invalid("person.job", "too long"))
                .message()
                .contains("person.job")
        );
        assert_eq!(
            Status::from(CaError::TicketNotRedeemable {
                state: crate::store::TicketState::Redeemed
            })
            .code(),
            Code::FailedPrecondition
        );
    }
}
