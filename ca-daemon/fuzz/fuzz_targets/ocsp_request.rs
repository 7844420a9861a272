//! `OcspResponder::respond` on arbitrary bytes, against a fixed tiny PKI built once.
//!
//! Two issuers (fixtures/make-fixtures.sh): A (P-256) answered for by a delegated responder, B
//! (P-384) signing its own responses. The status table is a pure function of the serial (short
//! serials good, 3-octet serials revoked, the rest unknown) so every answer shape is reachable
//! from the seed corpus (real `openssl ocsp` requests for both issuers) while the cache stays
//! bounded. Properties, for every input:
//! - no panic;
//! - the answer is a DER `OCSPResponse` that parses;
//! - an input that is not a DER `OCSPRequest` gets `malformedRequest`;
//! - a `successful` answer holds a `BasicOCSPResponse` with one SingleResponse per request, in
//!   order, with the request's CertID; its signature verifies under the responder key of the
//!   issuer the CertIDs name; a request nonce is echoed byte for byte.
#![no_main]

use std::sync::LazyLock;

use ca_daemon::ocsp::{CertStatus, OcspResponder, ResponderIssuer, StatusLookup};
use der::{Decode, Encode};
use libfuzzer_sys::fuzz_target;
use pki_policy::domain::RevocationReason;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, UnparsedPublicKey};
use time::OffsetDateTime;
use x509_ocsp::{BasicOcspResponse, OcspRequest, OcspResponse, OcspResponseStatus};
use x509_parser::prelude::{FromDer, X509Certificate};

const ISSUER_A: &[u8] = include_bytes!("../fixtures/issuer-a.der");
const RESPONDER_A: &[u8] = include_bytes!("../fixtures/responder-a.der");
const RESPONDER_A_KEY: &[u8] = include_bytes!("../fixtures/responder-a.key.der");
const ISSUER_B: &[u8] = include_bytes!("../fixtures/issuer-b.der");
const ISSUER_B_KEY: &[u8] = include_bytes!("../fixtures/issuer-b.key.der");

/// KNOWN BUG (reported to the lead; seed `corpus/ocsp_request/regress-certid-params.der`):
/// the response cache is keyed by (issuer, serial, hash OID) only, so a cached answer is served
/// with the CertID of whichever request filled the cache, even when this request's
/// `hashAlgorithm` parameters differ (absent vs NULL, or any garbage a client put there).
/// While `true`, the CertID check below ignores `hashAlgorithm.parameters`; set it to `false`
/// once `ocsp.rs` caches only canonical CertIDs.
const TOLERATE_CERTID_PARAMS_BUG: bool = false;

/// OID of the OCSP nonce extension (RFC 8954), 1.3.6.1.5.5.7.48.1.2.
const NONCE: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");

struct Fixture {
    responder: OcspResponder,
    /// notBefore of issuer A + 1 day: every certificate of the fixture is valid then.
    base: OffsetDateTime,
    /// Raw public keys (SEC1 points) of A's responder and of B.
    key_a: Vec<u8>,
    key_b: Vec<u8>,
}

fn spk(der: &[u8]) -> (OffsetDateTime, Vec<u8>) {
    let (_, cert) = X509Certificate::from_der(der).expect("fixture certificate parses");
    (
        cert.validity().not_before.to_datetime(),
        cert.public_key().subject_public_key.data.to_vec(),
    )
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let key = |der: &[u8]| rcgen::KeyPair::try_from(der).expect("fixture key loads");
    let responder = OcspResponder::new(
        vec![
            ResponderIssuer {
                issuer_id: "fuzz-a".into(),
                issuer_cert_der: ISSUER_A.to_vec(),
                responder_cert_der: RESPONDER_A.to_vec(),
                responder_key: key(RESPONDER_A_KEY),
            },
            ResponderIssuer {
                issuer_id: "fuzz-b".into(),
                issuer_cert_der: ISSUER_B.to_vec(),
                responder_cert_der: ISSUER_B.to_vec(),
                responder_key: key(ISSUER_B_KEY),
            },
        ],
        time::Duration::hours(24),
        time::Duration::hours(8),
    )
    .expect("fixture responder");
    let (not_before, _) = spk(ISSUER_A);
    Fixture {
        responder,
        base: not_before + time::Duration::days(1),
        key_a: spk(RESPONDER_A).1,
        key_b: spk(ISSUER_B).1,
    }
});

/// Status as a pure function of the canonical serial; the good and revoked sets are finite
/// (at most 2^16 + 2^16 serials per issuer), so the response cache stays bounded.
struct Table {
    revoked_at: OffsetDateTime,
}

impl StatusLookup for Table {
    fn status(&self, issuer_id: &str, serial_hex: &str) -> CertStatus {
        assert!(
            issuer_id == "fuzz-a" || issuer_id == "fuzz-b",
            "{issuer_id}"
        );
        assert!(
            !serial_hex.is_empty()
                && !serial_hex.starts_with("00")
                && serial_hex.len() % 2 == 0
                && serial_hex
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "serial not in canonical form: {serial_hex:?}"
        );
        match serial_hex.len() {
            2 | 4 => CertStatus::Good,
            6 if serial_hex.starts_with("01") => {
                let last = u8::from_str_radix(&serial_hex[4..], 16).unwrap_or(0);
                let all = RevocationReason::ALL;
                CertStatus::Revoked {
                    at: self.revoked_at,
                    reason: all[usize::from(last) % all.len()],
                }
            }
            _ => CertStatus::Unknown,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    // A time per input (deterministic), spread over two days so cached answers are served,
    // re-signed before nextUpdate, and replaced.
    let hours = data.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b))) % 48;
    let now = f.base + time::Duration::hours(i64::from(hours));
    let table = Table {
        revoked_at: f.base - time::Duration::hours(1),
    };
    let out = f.responder.respond(data, now, &table);

    let response = OcspResponse::from_der(&out).expect("the answer is a DER OCSPResponse");
    let request = OcspRequest::from_der(data);
    if request.is_err() {
        assert_eq!(
            response.response_status,
            OcspResponseStatus::MalformedRequest,
            "a non-request must get malformedRequest"
        );
    }
    if response.response_status != OcspResponseStatus::Successful {
        assert!(response.response_bytes.is_none(), "refusals carry no body");
        return;
    }
    let request = request.expect("a successful answer implies the request parsed");
    let bytes = response
        .response_bytes
        .expect("successful has responseBytes");
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .expect("responseBytes hold a BasicOCSPResponse");
    let data_ = &basic.tbs_response_data;
    let asked = &request.tbs_request.request_list;
    assert_eq!(data_.responses.len(), asked.len(), "one answer per CertID");
    for (single, req) in data_.responses.iter().zip(asked) {
        if TOLERATE_CERTID_PARAMS_BUG {
            let mut got = single.cert_id.clone();
            got.hash_algorithm.parameters = req.req_cert.hash_algorithm.parameters.clone();
            assert_eq!(got, req.req_cert, "answers follow the request order");
        } else {
            assert_eq!(
                single.cert_id, req.req_cert,
                "answers follow the request order"
            );
        }
    }

    // The signature verifies under the key of the issuer the CertIDs name.
    let tbs = data_.to_der().expect("ResponseData re-encodes");
    let sig = basic
        .signature
        .as_bytes()
        .expect("signature is whole octets");
    let ok_a = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &f.key_a)
        .verify(&tbs, sig)
        .is_ok();
    let ok_b = UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, &f.key_b)
        .verify(&tbs, sig)
        .is_ok();
    assert!(ok_a || ok_b, "the response signature verifies");

    // A nonce in the request is echoed byte for byte (and only then present).
    let nonce_of = |exts: Option<&Vec<x509_cert::ext::Extension>>| {
        exts.and_then(|e| e.iter().find(|x| x.extn_id == NONCE))
            .map(|x| x.extn_value.as_bytes().to_vec())
    };
    let asked_nonce = nonce_of(request.tbs_request.request_extensions.as_ref());
    let echoed = nonce_of(data_.response_extensions.as_ref());
    assert_eq!(asked_nonce, echoed, "nonce echoed");
});
