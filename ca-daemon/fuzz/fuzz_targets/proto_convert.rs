//! prost decoding of arbitrary bytes as the three request messages that carry the most
//! structure, then the `TryFrom` conversions of `pki_proto::convert`.
//!
//! The first byte selects the message (0 `CreateTicketRequest`, 1 `RedeemTicketRequest`,
//! 2 `RevokeRequest`, modulo 3); the rest is the protobuf encoding. Properties:
//! - no panic in decoding or conversion;
//! - an error names a field and renders; it never contains a ticket password of eight or more
//!   digits;
//! - an accepted request survives the trip back: domain → v1 (the `From` impls) → domain gives
//!   the same value, also through a protobuf encode/decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki_proto::convert::{ConvertError, CreateTicket, RedeemTicket, Revoke, timestamp_from_time};
use pki_proto::v1;
use prost::Message;

fn check_error(e: &ConvertError) {
    assert!(!e.field.is_empty(), "an error names its field");
    assert!(!e.to_string().is_empty());
}

fn create(bytes: &[u8]) {
    let Ok(req) = v1::CreateTicketRequest::decode(bytes) else {
        return;
    };
    match CreateTicket::try_from(req) {
        Ok(ct) => {
            let back = v1::CreateTicketRequest::from(ct.clone());
            let again = CreateTicket::try_from(back.clone()).expect("round trip accepted");
            assert_eq!(again, ct);
            let wire = v1::CreateTicketRequest::decode(&back.encode_to_vec()[..])
                .expect("our own encoding decodes");
            assert_eq!(CreateTicket::try_from(wire).expect("wire round trip"), ct);
        }
        Err(e) => check_error(&e),
    }
}

fn redeem(bytes: &[u8]) {
    let Ok(req) = v1::RedeemTicketRequest::decode(bytes) else {
        return;
    };
    let password = req.password.clone();
    let os = req.os;
    match RedeemTicket::try_from(req) {
        Ok(r) => {
            assert!(r.number.len() == 8 && r.number.bytes().all(|b| b.is_ascii_digit()));
            assert!(r.password.len() == 8 && r.password.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(r.password.as_str(), password);
            if let Some(p) = &r.keystore_profile {
                assert!(!p.is_empty());
            }
        }
        Err(e) => {
            check_error(&e);
            // The only digits an error message can carry are an unknown enum value.
            if password.len() >= 8
                && password.bytes().all(|b| b.is_ascii_digit())
                && !os.to_string().contains(&password)
            {
                assert!(
                    !e.to_string().contains(&password),
                    "error message echoes the password"
                );
                assert!(
                    !format!("{e:?}").contains(&password),
                    "Debug echoes the password"
                );
            }
        }
    }
}

fn revoke(bytes: &[u8]) {
    let Ok(req) = v1::RevokeRequest::decode(bytes) else {
        return;
    };
    match Revoke::try_from(req) {
        Ok(r) => {
            let back = v1::RevokeRequest {
                target: Some(r.target.clone().into()),
                reason: v1::RevocationReason::from(r.reason) as i32,
                invalidity_date: r.invalidity_date.map(|t| {
                    timestamp_from_time("invalidity_date", t).expect("an accepted time converts")
                }),
            };
            let wire = v1::RevokeRequest::decode(&back.encode_to_vec()[..]).expect("decodes");
            assert_eq!(Revoke::try_from(wire).expect("round trip accepted"), r);
        }
        Err(e) => check_error(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => create(rest),
        1 => redeem(rest),
        _ => revoke(rest),
    }
});
