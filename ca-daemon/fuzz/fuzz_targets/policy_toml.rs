//! `Policy::from_toml_str` on arbitrary UTF-8.
//!
//! Properties: no panic (TOML parsing, the merge over the built-in defaults, every validation
//! step); an error renders to a non-empty message; parsing is deterministic; an accepted policy
//! maps every OS to a keystore profile that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pki_policy::Policy;
use pki_policy::domain::TargetOs;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml_str(text) {
        Ok(policy) => {
            let again = Policy::from_toml_str(text).expect("same text, same answer");
            assert_eq!(policy, again, "parsing is deterministic");
            for os in TargetOs::ALL {
                let profile = policy
                    .keystore_for(os, None)
                    .expect("every OS has a default keystore profile");
                assert!(policy.keystore.contains_key(&profile.name));
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty());
        }
    }
});
