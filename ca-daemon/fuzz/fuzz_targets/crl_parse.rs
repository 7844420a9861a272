//! `parse_crl_summary` on arbitrary bytes.
//!
//! Properties: no panic; an accepted CRL reports serials in canonical form (lowercase hex of
//! the magnitude, no leading zero octet) and reason codes of one octet, and parsing is
//! deterministic.
#![no_main]

use ca_daemon::crl::parse_crl_summary;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(summary) = parse_crl_summary(data) else {
        return;
    };
    for (serial, _reason) in &summary.serials {
        assert!(serial.len() % 2 == 0, "{serial}");
        assert!(!serial.starts_with("00"), "{serial}");
        assert!(
            serial
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{serial}"
        );
    }
    assert_eq!(parse_crl_summary(data).ok(), Some(summary));
});
