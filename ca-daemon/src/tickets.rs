//! Enrollment ticket secrets (DESIGN §3).
//!
//! A ticket is an 8-digit number and an 8-digit password, both drawn from the OS CSPRNG with
//! rejection sampling (no modulo bias). The password is shown once, in the `CreateTicket`
//! response, and stored only as `HMAC-SHA256(pepper, number ‖ 0x00 ‖ password)`: the pepper is
//! sealed beside the CA keys, so a stolen database alone does not let anyone test guesses
//! offline. Binding the number into the MAC means two tickets with the same password do not
//! share a MAC. Comparison is constant time (`ring::hmac::verify`).
//!
//! An 8-digit password has 10^8 ≈ 2^26.6 values: the lockout after the policy's attempts (5) is
//! what protects it online, see `docs/threat-model.md`.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Errors of ticket secret handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TicketSecretError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// The pepper is too short to key the HMAC safely.
    #[error("the ticket pepper is too short ({len} bytes, need at least 32)")]
    WeakPepper {
        /// Length of the pepper in bytes.
        len: usize,
    },
}

/// Draws a uniformly random string of `n` decimal digits from the OS CSPRNG.
pub fn random_digits(n: usize) -> Result<String, TicketSecretError> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 32];
    while out.len() < n {
        rng.fill(&mut buf).map_err(|_| TicketSecretError::Rng)?;
        for b in buf {
            // 250 = 25 * 10: accepting 0..250 keeps every digit equally likely.
            if b < 250 && out.len() < n {
                out.push(char::from(b'0' + b % 10));
            }
        }
    }
    buf.iter_mut().for_each(|b| *b = 0);
    Ok(out)
}

/// Alphabet of [`random_bundle_password`]: digits and lowercase letters without `i`, `l`, `o`,
/// `u` (Crockford's base 32), so nothing reads as another character on a phone screen.
pub const BUNDLE_PASSWORD_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A random PKCS#12 bundle password for `[tickets] bundle_password = "random"` (issue #12
/// item 10): 16 characters of [`BUNDLE_PASSWORD_ALPHABET`] (5 bits each, 80 bits; 256 is a
/// multiple of 32 so `byte & 31` is unbiased), in groups of four joined by `-`.
pub fn random_bundle_password() -> Result<Zeroizing<String>, TicketSecretError> {
    let mut raw = Zeroizing::new([0u8; 16]);
    SystemRandom::new()
        .fill(raw.as_mut())
        .map_err(|_| TicketSecretError::Rng)?;
    let mut out = Zeroizing::new(String::with_capacity(19));
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(BUNDLE_PASSWORD_ALPHABET[usize::from(b & 31)]));
    }
    Ok(out)
}

/// A freshly drawn ticket password. Its `Debug` never shows the digits.
pub struct TicketPassword(Zeroizing<String>);

impl TicketPassword {
    /// Draws a new 8-digit password.
    pub fn generate() -> Result<Self, TicketSecretError> {
        Ok(Self(Zeroizing::new(random_digits(8)?)))
    }

    /// The digits, for the one response that shows them.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for TicketPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketPassword(<redacted>)")
    }
}

/// Keys ticket password MACs with the sealed pepper.
pub struct TicketMac {
    key: hmac::Key,
    /// `HMAC-SHA256(pepper, AUDIT_TAG_LABEL)`: keys the tags of unknown numbers in the audit
    /// log, a key apart from the password MACs.
    audit_key: hmac::Key,
}

/// Derivation label of the key of [`TicketMac::unknown_number_tag`].
const AUDIT_TAG_LABEL: &[u8] = b"care-pki/v1/audit-tag-of-unknown-ticket-number";

impl std::fmt::Debug for TicketMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketMac(<pepper>)")
    }
}

impl TicketMac {
    /// Builds the MAC key from the pepper (at least 32 bytes).
    pub fn new(pepper: &[u8]) -> Result<Self, TicketSecretError> {
        if pepper.len() < 32 {
            return Err(TicketSecretError::WeakPepper { len: pepper.len() });
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, pepper);
        let audit_key = hmac::Key::new(
            hmac::HMAC_SHA256,
            hmac::sign(&key, AUDIT_TAG_LABEL).as_ref(),
        );
        Ok(Self { key, audit_key })
    }

    /// How the audit log and the daemon log name a ticket number that matches no ticket:
    /// `ticket-tag:` and 16 bytes of `HMAC-SHA256(audit key, number)` in hex, the key derived
    /// from the sealed pepper. An unknown "number" is often a password typed into the wrong
    /// field: the permanent audit chain must not keep it, yet repeated probes of one value
    /// still show as one tag. 8 digits are easy to enumerate for whoever holds the pepper,
    /// which is sealed with the CA keys.
    pub fn unknown_number_tag(&self, number: &str) -> String {
        let tag = hmac::sign(&self.audit_key, number.as_bytes());
        format!("ticket-tag:{}", hex::encode(&tag.as_ref()[..16]))
    }

    fn message(number: &str, password: &str) -> Zeroizing<Vec<u8>> {
        let mut msg = Zeroizing::new(Vec::with_capacity(number.len() + 1 + password.len()));
        msg.extend_from_slice(number.as_bytes());
        msg.push(0);
        msg.extend_from_slice(password.as_bytes());
        msg
    }

    /// The stored form of a password: HMAC-SHA256(pepper, number ‖ 0 ‖ password).
    pub fn mac(&self, number: &str, password: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.key, &Self::message(number, password));
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Constant-time check of a password against the stored MAC.
    pub fn verify(&self, number: &str, password: &str, stored: &[u8; 32]) -> bool {
        hmac::verify(&self.key, &Self::message(number, password), stored).is_ok()
    }
}

/// Serialises redemption attempts per ticket number (issue #12 item 4): an attempt reads the
/// ticket, checks the password and durably records the outcome (a counted failure, or the
/// redemption) before the next attempt on that number reads it. So a burst of concurrent
/// guesses is checked one after the other and no more than the policy's `max_attempts` of
/// them are ever tested against the password; and the right password never races a lockout.
///
/// A fixed set of stripes, chosen by a per-process keyed hash of the number, bounds the memory
/// whatever numbers callers send; two numbers sharing a stripe only wait for each other.
pub struct TicketGate {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl TicketGate {
    /// Stripes: far more than the redemptions the CPU permits run at once.
    const STRIPES: usize = 256;

    /// A gate with every stripe open.
    pub fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Waits for this number's turn; the turn lasts as long as the guard.
    pub async fn turn(&self, number: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let i = (self.hasher.hash_one(number) % Self::STRIPES as u64) as usize;
        self.stripes[i].lock().await
    }
}

impl Default for TicketGate {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TicketGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketGate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digits_are_digits_and_vary() {
        let a = random_digits(8).expect("rng");
        let b = random_digits(8).expect("rng");
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|c| c.is_ascii_digit()));
        // 1e-8 chance of a false failure.
        assert_ne!(a, b);
    }

    #[test]
    fn digit_distribution_is_roughly_uniform() {
        let s = random_digits(100_000).expect("rng");
        let mut counts = [0u32; 10];
        for c in s.bytes() {
            counts[usize::from(c - b'0')] += 1;
        }
        for c in counts {
            // expectation 10_000, sd ~95: 8 sd margin
            assert!((9_200..=10_800).contains(&c), "{counts:?}");
        }
    }

    #[tokio::test]
    async fn ticket_gate_serialises_one_number() {
        let gate = std::sync::Arc::new(TicketGate::new());
        let first = gate.turn("12345678").await;
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move {
            let _t = g2.turn("12345678").await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiter.is_finished(),
            "a second attempt on the number must wait"
        );
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("runs once the first turn ends")
            .expect("task");
    }

    #[test]
    fn bundle_passwords_have_80_bits_in_four_groups() {
        let a = random_bundle_password().expect("rng");
        let b = random_bundle_password().expect("rng");
        assert_ne!(*a, *b);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(groups.len(), 4, "{}", a.len());
        assert!(groups.iter().all(|g| g.len() == 4));
        assert!(
            a.bytes()
                .filter(|c| *c != b'-')
                .all(|c| BUNDLE_PASSWORD_ALPHABET.contains(&c))
        );
        // 16 symbols of a 32-letter alphabet: 80 bits.
        assert_eq!(16.0 * (BUNDLE_PASSWORD_ALPHABET.len() as f64).log2(), 80.0);
        // Every symbol is used (2,000 draws: a missing one is a bias).
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            seen.extend(random_bundle_password().expect("rng").bytes());
        }
        assert_eq!(seen.len(), 33, "32 symbols and the hyphen");
    }

    #[test]
    fn weak_pepper_refused() {
        assert!(matches!(
            TicketMac::new(&[0u8; 16]),
            Err(TicketSecretError::WeakPepper { len: 16 })
        ));
    }

    #[test]
    fn unknown_number_tag_hides_the_number_and_is_keyed() {
        let m = TicketMac::new(&[7u8; 32]).expect("pepper");
        let tag = m.unknown_number_tag("12345678");
        assert!(tag.starts_with("ticket-tag:"), "{tag}");
        assert_eq!(tag.len(), "ticket-tag:".len() + 32);
        assert!(!tag.contains("12345678"), "{tag}");
        assert_eq!(tag, m.unknown_number_tag("12345678"), "stable for one key");
        assert_ne!(tag, m.unknown_number_tag("12345679"));
        let other = TicketMac::new(&[8u8; 32]).expect("pepper");
        assert_ne!(
            tag,
            other.unknown_number_tag("12345678"),
            "keyed by the pepper"
        );
        // Not the password MAC of any password: a key of its own.
        assert_ne!(
            &tag["ticket-tag:".len()..],
            &hex::encode(m.mac("12345678", ""))[..32]
        );
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = TicketPassword::generate().expect("rng");
        assert!(!format!("{p:?}").contains(p.expose()));
    }

    proptest! {
        #[test]
        fn mac_verifies_only_the_right_pair(n in "[0-9]{8}", p in "[0-9]{8}", q in "[0-9]{8}") {
            let m = TicketMac::new(&[7u8; 32]).expect("pepper");
            let tag = m.mac(&n, &p);
            prop_assert!(m.verify(&n, &p, &tag));
            prop_assert_eq!(m.verify(&n, &q, &tag), p == q);
            let other = TicketMac::new(&[8u8; 32]).expect("pepper");
            prop_assert!(!other.verify(&n, &p, &tag));
        }
    }
}
