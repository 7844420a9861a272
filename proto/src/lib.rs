//! The v1 gRPC contract of the care-network PKI daemon (`pki.ca.v1`, DESIGN.md §10) and its
//! conversions to the domain types of `pki-policy` (DESIGN.md §2: handlers see domain types
//! only).
//!
//! - [`v1`]: messages, enums, clients (`v1::enrollment_client::EnrollmentClient`, ...) and
//!   servers (`v1::enrollment_server::{Enrollment, EnrollmentServer}`, ...) generated from
//!   `proto/pki/ca/v1/*.proto` by `protox` + `tonic-prost-build` at build time (no system
//!   `protoc`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptor set for `tonic-reflection`.
//! - [`convert`]: structural validation and `TryFrom`/`From` conversions at this edge.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod convert;

/// Generated code of package `pki.ca.v1`.
///
/// The `Debug` implementations of the messages that carry a secret (ticket password, PKCS#12
/// bytes) are written by hand below and print `<redacted>` instead.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::doc_markdown
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pki.ca.v1.rs"));
}

/// The encoded `google.protobuf.FileDescriptorSet` of `pki.ca.v1` (with its imports and source
/// comments), for `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pki_ca_v1_descriptor.bin"));

/// Fully qualified names of the four services of the v1 contract.
pub const SERVICE_NAMES: [&str; 4] = [
    "pki.ca.v1.Enrollment",
    "pki.ca.v1.Certificates",
    "pki.ca.v1.Revocation",
    "pki.ca.v1.Admin",
];

mod redacted_debug {
    //! Hand-written `Debug` for the generated messages listed in `build.rs` (`SKIP_DEBUG`).
    use std::fmt;

    use crate::v1;

    /// Placeholder printed instead of a secret.
    const REDACTED: &str = "<redacted>";

    /// Prints a byte field as its length only.
    struct Len(usize);

    impl fmt::Debug for Len {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "<{} bytes>", self.0)
        }
    }

    impl fmt::Debug for v1::CreateTicketResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreateTicketResponse")
                .field("number", &self.number)
                .field("password", &REDACTED)
                .field("expires_at", &self.expires_at)
                .field("ticket", &self.ticket)
                .finish()
        }
    }

    impl fmt::Debug for v1::RedeemTicketRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedeemTicketRequest")
                .field("number", &self.number)
                .field("password", &REDACTED)
                .field("os", &self.os())
                .field("keystore_profile", &self.keystore_profile)
                .finish()
        }
    }

    impl fmt::Debug for v1::RedeemTicketResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RedeemTicketResponse")
                .field("pkcs12", &Len(self.pkcs12.len()))
                .field("file_name", &self.file_name)
                .field("media_type", &self.media_type)
                .field("mobileconfig", &Len(self.mobileconfig.len()))
                .field("serial", &self.serial)
                .field("certificate_der", &Len(self.certificate_der.len()))
                .field("chain_der", &Len(self.chain_der.len()))
                .field("not_after", &self.not_after)
                .field("mobileconfig_file_name", &self.mobileconfig_file_name)
                .field("bundle_password", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for v1::BackupChunk {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("BackupChunk")
                .field("data", &Len(self.data.len()))
                .finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use prost::Message as _;
    use prost_types::FileDescriptorSet;

    use super::*;

    fn descriptor_set() -> FileDescriptorSet {
        FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("the build script wrote a valid set")
    }

    /// Files of our package (the set also holds google/protobuf/timestamp.proto).
    fn own_files(fds: &FileDescriptorSet) -> Vec<&prost_types::FileDescriptorProto> {
        fds.file
            .iter()
            .filter(|f| f.package() == "pki.ca.v1")
            .collect()
    }

    #[test]
    fn descriptor_set_has_the_four_services_with_the_contract_rpcs() {
        let fds = descriptor_set();
        assert!(
            fds.file
                .iter()
                .any(|f| f.name() == "google/protobuf/timestamp.proto"),
            "imports are included, for reflection"
        );
        let services: BTreeMap<String, BTreeSet<String>> = own_files(&fds)
            .into_iter()
            .flat_map(|f| f.service.iter())
            .map(|s| {
                (
                    format!("pki.ca.v1.{}", s.name()),
                    s.method.iter().map(|m| m.name().to_owned()).collect(),
                )
            })
            .collect();
        let expected: BTreeMap<String, BTreeSet<String>> = [
            (
                "pki.ca.v1.Enrollment",
                &["CreateTicket", "RedeemTicket", "GetTicket", "CancelTicket"][..],
            ),
            (
                "pki.ca.v1.Certificates",
                &["GetCertificate", "ListCertificates", "Revoke"][..],
            ),
            (
                "pki.ca.v1.Revocation",
                &["GetCaChain", "GetCrl", "WatchCrl", "CheckStatus", "Ocsp"][..],
            ),
            (
                "pki.ca.v1.Admin",
                &[
                    "ListIssuers",
                    "PublishCrl",
                    "VerifyAudit",
                    "ReloadIssuers",
                    "GetStatus",
                    "Backup",
                ][..],
            ),
        ]
        .into_iter()
        .map(|(s, ms)| (s.to_owned(), ms.iter().map(|m| (*m).to_owned()).collect()))
        .collect();
        assert_eq!(services, expected);
        let names: BTreeSet<&str> = SERVICE_NAMES.into_iter().collect();
        assert_eq!(names, expected.keys().map(String::as_str).collect());
    }

    #[test]
    fn streaming_rpcs_are_server_streams() {
        let fds = descriptor_set();
        let streaming: BTreeSet<String> = own_files(&fds)
            .into_iter()
            .flat_map(|f| f.service.iter())
            .flat_map(|s| s.method.iter())
            .filter(|m| m.server_streaming() || m.client_streaming())
            .map(|m| {
                assert!(
                    !m.client_streaming(),
                    "{} must not be client-streaming",
                    m.name()
                );
                m.name().to_owned()
            })
            .collect();
        assert_eq!(streaming, ["Backup", "WatchCrl"].map(str::to_owned).into());
    }

    /// Every service, RPC, message, field, oneof, enum and enum value carries a comment, and
    /// every message says which field number is next, correctly.
    #[test]
    fn everything_is_documented_and_field_numbers_are_tracked() {
        let fds = descriptor_set();
        for file in own_files(&fds) {
            let comments: BTreeMap<Vec<i32>, String> = file
                .source_code_info
                .as_ref()
                .expect("protox keeps source info")
                .location
                .iter()
                .map(|l| (l.path.clone(), l.leading_comments().trim().to_owned()))
                .collect();
            let documented = |path: &[i32], what: &str| {
                let comment = comments.get(path).map(String::as_str).unwrap_or_default();
                assert!(
                    !comment.is_empty(),
                    "{}: {what} has no comment",
                    file.name()
                );
            };
            // FileDescriptorProto: message_type = 4, enum_type = 5, service = 6.
            // DescriptorProto: field = 2, nested enum = 4, oneof = 8. Enum: value = 2.
            // Service: method = 2.
            for (i, s) in file.service.iter().enumerate() {
                documented(&[6, i as i32], s.name());
                for (j, m) in s.method.iter().enumerate() {
                    documented(&[6, i as i32, 2, j as i32], m.name());
                }
            }
            let check_enum = |prefix: &[i32], e: &prost_types::EnumDescriptorProto| {
                documented(prefix, e.name());
                for (k, v) in e.value.iter().enumerate() {
                    let mut path = prefix.to_vec();
                    path.extend([2, k as i32]);
                    documented(&path, v.name());
                }
            };
            for (i, e) in file.enum_type.iter().enumerate() {
                check_enum(&[5, i as i32], e);
            }
            for (i, m) in file.message_type.iter().enumerate() {
                let path = [4, i as i32];
                documented(&path, m.name());
                for (j, f) in m.field.iter().enumerate() {
                    documented(
                        &[4, i as i32, 2, j as i32],
                        &format!("{}.{}", m.name(), f.name()),
                    );
                }
                for (j, o) in m.oneof_decl.iter().enumerate() {
                    documented(&[4, i as i32, 8, j as i32], o.name());
                }
                for (j, e) in m.enum_type.iter().enumerate() {
                    check_enum(&[4, i as i32, 4, j as i32], e);
                }
                // The only nested messages are the synthetic entries of `map<,>` fields.
                assert!(
                    m.nested_type
                        .iter()
                        .all(|n| n.options.as_ref().is_some_and(|o| o.map_entry())),
                    "{}: add nested messages to this test",
                    m.name()
                );
                let next = m
                    .field
                    .iter()
                    .map(|f| f.number())
                    .chain(m.reserved_range.iter().map(|r| r.end() - 1))
                    .max()
                    .unwrap_or(0)
                    + 1;
                let wanted = format!("Next unused field number: {next}");
                assert!(
                    comments[&path[..]].lines().any(|l| l.trim() == wanted),
                    "{}: message {} must say {wanted:?}",
                    file.name(),
                    m.name()
                );
            }
        }
    }

    #[test]
    fn enum_values_follow_the_contract() {
        assert_eq!(v1::TargetOs::Unspecified as i32, 0);
        assert_eq!(v1::TargetOs::Windows as i32, 1);
        assert_eq!(v1::TargetOs::Macos as i32, 2);
        assert_eq!(v1::TargetOs::Android as i32, 3);
        assert_eq!(v1::TargetOs::Ios as i32, 4);
        assert_eq!(v1::RevocationReason::KeyCompromise as i32, 1);
        assert_eq!(v1::RevocationReason::AffiliationChanged as i32, 3);
        assert_eq!(v1::RevocationReason::Superseded as i32, 4);
        assert_eq!(v1::RevocationReason::CessationOfOperation as i32, 5);
        assert_eq!(v1::RevocationReason::CertificateHold as i32, 6);
        assert_eq!(v1::RevocationReason::PrivilegeWithdrawn as i32, 9);
        assert_eq!(
            v1::RevocationReason::KeyCompromise.as_str_name(),
            "REVOCATION_REASON_KEY_COMPROMISE"
        );
        assert_eq!(
            v1::CertificateState::Revoked.as_str_name(),
            "CERTIFICATE_STATE_REVOKED"
        );
        assert_eq!(
            v1::certificate_status::Status::Good.as_str_name(),
            "STATUS_GOOD"
        );
        assert_eq!(
            v1::IssuerState::Retiring.as_str_name(),
            "ISSUER_STATE_RETIRING"
        );
        assert_eq!(v1::TicketState::Locked.as_str_name(), "TICKET_STATE_LOCKED");
    }
}
