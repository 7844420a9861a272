//! `build_pfx` with a fixed key and certificate (fixtures/leaf.*, chain = issuer A) and an
//! arbitrary friendly name, password and profile.
//!
//! The profile is one of the five defaults of the policy, optionally with its algorithms, MAC
//! salt length, chain flag and iteration count changed (iterations are lowered to the policy
//! minimum, 1000, unless the input picks a count, so an execution costs well under a
//! millisecond). Properties:
//! - no panic;
//! - `Ok` exactly when the inputs satisfy the documented rules (non-empty password without NUL
//!   and at most 256 UTF-16 units; friendly name not blank, without control characters, at most
//!   256 characters; iterations and MAC salt length in the policy ranges), otherwise the error
//!   for the first rule broken (profile, then password, then friendly name) — never an
//!   encoding or internal error;
//! - `Ok` output is one DER `PFX` (v3, with MAC data at the profile's iteration count) that
//!   re-encodes to the same bytes.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use ca_daemon::pkcs12::{BundleInput, KeystoreProfile, Pkcs12Error, build_pfx};
use der::{Decode, Encode};
use libfuzzer_sys::fuzz_target;
use pki_policy::Policy;
use pki_policy::keystore::{BagEncryption, ITERATIONS_RANGE, MAC_SALT_LEN_RANGE, MacAlgorithm};

const LEAF: &[u8] = include_bytes!("../fixtures/leaf.der");
const LEAF_KEY: &[u8] = include_bytes!("../fixtures/leaf.key.der");
const ISSUER_A: &[u8] = include_bytes!("../fixtures/issuer-a.der");

static PROFILES: LazyLock<Vec<KeystoreProfile>> = LazyLock::new(|| {
    let profiles: Vec<_> = Policy::default_policy().keystore.into_values().collect();
    assert_eq!(profiles.len(), 5, "the five default profiles");
    profiles
});
static CHAIN: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| vec![ISSUER_A.to_vec()]);

#[derive(Debug, Arbitrary)]
struct Tweak {
    aes_keys: bool,
    aes_certs: bool,
    sha1_mac: bool,
    mac_salt_len: u8,
    include_chain: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    profile: u8,
    tweak: Option<Tweak>,
    /// `Some(n)`: iterations = n % 3000 (below the minimum is refused); `None`: 1000.
    iterations: Option<u16>,
    friendly_name: String,
    password: String,
}

fn password_ok(p: &str) -> bool {
    !p.is_empty() && !p.contains('\0') && p.encode_utf16().count() <= 256
}

fn friendly_name_ok(n: &str) -> bool {
    !n.trim().is_empty() && !n.chars().any(char::is_control) && n.chars().count() <= 256
}

fuzz_target!(|input: Input| {
    let mut profile = PROFILES[usize::from(input.profile) % PROFILES.len()].clone();
    profile.iterations = input.iterations.map_or(1000, |n| u32::from(n) % 3000);
    if let Some(t) = &input.tweak {
        let enc = |aes| {
            if aes {
                BagEncryption::Pbes2Aes256
            } else {
                BagEncryption::Pbe3Des
            }
        };
        profile.key_encryption = enc(t.aes_keys);
        profile.cert_encryption = enc(t.aes_certs);
        profile.mac = if t.sha1_mac {
            MacAlgorithm::HmacSha1
        } else {
            MacAlgorithm::HmacSha256
        };
        profile.mac_salt_len = usize::from(t.mac_salt_len);
        profile.include_chain = t.include_chain;
    }
    let result = build_pfx(
        &profile,
        &BundleInput {
            key_pkcs8: LEAF_KEY,
            leaf_der: LEAF,
            chain_der: &CHAIN,
            friendly_name: &input.friendly_name,
            password: &input.password,
        },
    );

    let profile_ok = ITERATIONS_RANGE.contains(&profile.iterations)
        && MAC_SALT_LEN_RANGE.contains(&profile.mac_salt_len);
    match result {
        Ok(pfx) => {
            assert!(profile_ok, "out-of-range profile accepted: {profile:?}");
            assert!(password_ok(&input.password), "bad password accepted");
            assert!(
                friendly_name_ok(&input.friendly_name),
                "bad friendly name accepted"
            );
            let parsed = pkcs12::pfx::Pfx::from_der(&pfx).expect("the bundle is one DER PFX");
            assert_eq!(parsed.version, pkcs12::pfx::Version::V3);
            let mac = parsed.mac_data.as_ref().expect("MAC data present");
            assert_eq!(i64::from(mac.iterations), i64::from(profile.iterations));
            assert_eq!(mac.mac_salt.as_bytes().len(), profile.mac_salt_len);
            assert_eq!(
                &parsed.to_der().expect("re-encodes")[..],
                &pfx[..],
                "DER is canonical"
            );
        }
        Err(Pkcs12Error::InvalidProfile { .. }) => assert!(!profile_ok),
        Err(Pkcs12Error::EmptyPassword | Pkcs12Error::InvalidPassword { .. }) => {
            assert!(profile_ok && !password_ok(&input.password));
        }
        Err(Pkcs12Error::InvalidFriendlyName { .. }) => {
            assert!(profile_ok && password_ok(&input.password));
            assert!(!friendly_name_ok(&input.friendly_name));
        }
        Err(other) => panic!("unexpected error for {profile:?}: {other:?}"),
    }
});
