//! `decode_get_path` (RFC 5019 GET) on arbitrary text, plus a round trip on arbitrary bytes.
//!
//! Properties:
//! - any UTF-8 input: no panic; `Ok` is never empty and never longer than a request can be;
//!   a path over `MAX_GET_PATH_LEN` characters is refused;
//! - the input bytes taken as a request: their standard base64, the URL-safe alphabet without
//!   padding, the percent-encoded form (with and without a leading `/`) and the form a form
//!   decoder makes of it (`+` turned into a space) all decode back to exactly those bytes.
//!   Exception (by design, found by this target): a leading `/` is taken as the path separator,
//!   so base64 that itself starts with `/` (a first octet of 0xfc..=0xff, never an OCSPRequest,
//!   which starts with 0x30) round-trips only with the separator in front.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ca_daemon::ocsp::{MAX_GET_PATH_LEN, MAX_REQUEST_LEN, OcspError, decode_get_path};
use libfuzzer_sys::fuzz_target;

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match decode_get_path(text) {
            Ok(raw) => {
                assert!(!raw.is_empty(), "Ok is never empty");
                assert!(
                    text.len() <= MAX_GET_PATH_LEN + 1,
                    "over-long path accepted"
                );
                // 3 octets per 4 characters at most.
                assert!(raw.len() <= text.len().div_ceil(4) * 3);
            }
            Err(OcspError::GetPathTooLong { len, max }) => {
                assert_eq!(max, MAX_GET_PATH_LEN);
                assert!(len > max);
            }
            Err(OcspError::InvalidGetPath { .. }) => {}
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }

    if data.is_empty() || data.len() > MAX_REQUEST_LEN {
        return;
    }
    let std = STANDARD.encode(data);
    let ambiguous = std.starts_with('/');
    let forms = [
        (!ambiguous).then(|| std.clone()),
        Some(format!("/{std}")),
        Some(URL_SAFE_NO_PAD.encode(data)),
        Some(percent_encode(&std)),
        Some(format!("/{}", percent_encode(&std))),
        (!ambiguous).then(|| std.replace('+', " ")),
    ];
    for form in forms.into_iter().flatten() {
        assert!(
            form.len() <= MAX_GET_PATH_LEN + 1,
            "limit covers a maximal request"
        );
        let back = decode_get_path(&form).unwrap_or_else(|e| panic!("{form:?}: {e}"));
        assert_eq!(back, data, "{form:?}");
    }
});
