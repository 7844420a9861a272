//! The hash-chained audit log (DESIGN §3).
//!
//! Every state change (ticket created / redeemed / locked, certificate issued / revoked, CRL
//! published, issuer rotated) appends one [`AuditEntry`]. Entries are numbered from 1 without
//! gaps; each carries the SHA-256 hash of its predecessor (`prev_hash`, all zeros for entry 1)
//! and its own hash over every other field ([`entry_hash`]), so changing, removing or reordering
//! any stored entry breaks the chain, and [`verify_chain`] names the first entry that is wrong.
//!
//! The store appends entries inside the same transaction as the change they record (see
//! [`crate::store`]) and, once that change is durable, also emits each entry as a `tracing`
//! event on the fixed target [`AUDIT_TARGET`] so that log shippers can route and keep them.
//!
//! Hash input (version 1), all integers big-endian:
//! `"pki-ca-daemon audit v1\0"`, `seq` (u64), `time` as Unix nanoseconds (i128) and UTC offset
//! in seconds (i32), then `actor`, `action`, `target`, `detail` each as a u64 byte length
//! followed by the UTF-8 bytes, then `prev_hash` (32 bytes). The length prefixes make the
//! encoding unambiguous: no two different entries hash the same input.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The `tracing` target every audit entry is logged on.
pub const AUDIT_TARGET: &str = "audit";

/// Domain-separation tag at the start of every hashed entry.
const HASH_TAG: &[u8] = b"pki-ca-daemon audit v1\0";

/// What a caller hands to the store to be recorded: the store adds the sequence number, the
/// time and the hashes when it appends the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who did it: caller role plus client-certificate identity (e.g. `portal:portal.example`),
    /// or `cli:<user>` for operator commands.
    pub actor: String,
    /// What was done, a short stable verb (`ticket.create`, `certificate.revoke`, ...).
    pub action: String,
    /// What it was done to (ticket number, serial, issuer id, ...).
    pub target: String,
    /// Free-text detail for humans; never secrets.
    pub detail: String,
}

impl AuditEvent {
    /// Builds an event from its four parts.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        }
    }
}

/// One stored entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the entry was appended (UTC).
    pub time: OffsetDateTime,
    /// See [`AuditEvent::actor`].
    pub actor: String,
    /// See [`AuditEvent::action`].
    pub action: String,
    /// See [`AuditEvent::target`].
    pub target: String,
    /// See [`AuditEvent::detail`].
    pub detail: String,
    /// `hash` of the previous entry; all zeros for entry 1.
    pub prev_hash: [u8; 32],
    /// [`entry_hash`] over all the fields above.
    pub hash: [u8; 32],
}

/// The end of the chain: the last entry's sequence number and hash. The empty log's head is
/// [`ChainHead::GENESIS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last entry (0 when the log is empty).
    pub seq: u64,
    /// Hash of the last entry (all zeros when the log is empty).
    pub hash: [u8; 32],
}

impl ChainHead {
    /// The head of an empty log.
    pub const GENESIS: ChainHead = ChainHead {
        seq: 0,
        hash: [0; 32],
    };

    /// Length of [`ChainHead::to_bytes`].
    pub const ENCODED_LEN: usize = 40;

    /// Fixed 40-byte encoding: seq (u64 big-endian) then the hash.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.hash);
        out
    }

    /// Parses [`ChainHead::to_bytes`]; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let (seq, hash) = bytes.split_at(8);
        Some(Self {
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            hash: hash.try_into().ok()?,
        })
    }

    /// The entry that follows this head: `seq + 1`, linked to this head's hash, hashed.
    /// `time` is normalised to UTC.
    pub fn next_entry(&self, time: OffsetDateTime, event: &AuditEvent) -> AuditEntry {
        let time = time.to_offset(time::UtcOffset::UTC);
        let seq = self.seq + 1;
        let hash = entry_hash(
            seq,
            time,
            &event.actor,
            &event.action,
            &event.target,
            &event.detail,
            &self.hash,
        );
        AuditEntry {
            seq,
            time,
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            detail: event.detail.clone(),
            prev_hash: self.hash,
            hash,
        }
    }
}

impl AuditEntry {
    /// The head of a chain that ends with this entry.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash,
        }
    }

    /// Recomputes [`entry_hash`] over this entry's fields.
    pub fn computed_hash(&self) -> [u8; 32] {
        entry_hash(
            self.seq,
            self.time,
            &self.actor,
            &self.action,
            &self.target,
            &self.detail,
            &self.prev_hash,
        )
    }
}

/// SHA-256 over the unambiguous, length-prefixed encoding described in the module doc.
pub fn entry_hash(
    seq: u64,
    time: OffsetDateTime,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_TAG);
    h.update(seq.to_be_bytes());
    h.update(time.unix_timestamp_nanos().to_be_bytes());
    h.update(time.offset().whole_seconds().to_be_bytes());
    for field in [actor, action, target, detail] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    h.update(prev_hash);
    h.finalize().into()
}

/// Result of checking an audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// `true` if every entry checked out.
    pub ok: bool,
    /// Number of entries that verified before the first bad one (all of them when `ok`).
    pub entries: u64,
    /// Sequence number of the first bad entry (the number it should have had, when the entry
    /// itself is unreadable or misnumbered).
    pub first_bad_entry: Option<u64>,
    /// What is wrong with it, for the operator.
    pub problem: Option<String>,
}

impl AuditVerification {
    fn good(entries: u64) -> Self {
        Self {
            ok: true,
            entries,
            first_bad_entry: None,
            problem: None,
        }
    }

    /// A failed verification naming entry `seq` and what is wrong with it.
    pub fn bad(entries: u64, seq: u64, problem: impl Into<String>) -> Self {
        Self {
            ok: false,
            entries,
            first_bad_entry: Some(seq),
            problem: Some(problem.into()),
        }
    }

    /// A chain that verified up to `last` must also end at the recorded `head`: a deleted last
    /// entry, or a rewritten one, is found here. Returns `self` unchanged when it already failed
    /// or when it ends where it should. Every store calls it after [`verify_chain`].
    #[must_use]
    pub fn ending_at(self, last: ChainHead, head: ChainHead) -> Self {
        if !self.ok {
            return self;
        }
        if last.seq != head.seq {
            return Self::bad(
                last.seq,
                last.seq + 1,
                format!(
                    "the log ends at entry {} but {} entries were recorded",
                    last.seq, head.seq
                ),
            );
        }
        if last.hash != head.hash {
            return Self::bad(
                last.seq.saturating_sub(1),
                last.seq,
                format!("entry {} is not the entry that was recorded last", last.seq),
            );
        }
        self
    }
}

/// Checks a whole chain, read in order from entry 1: sequence numbers continue without gaps,
/// each `prev_hash` equals the previous entry's `hash` (zeros for entry 1), and each `hash`
/// is [`entry_hash`] of its entry. Stops at, and names, the first bad entry; an `Err` item
/// (an entry that cannot be read) counts as bad at the position it occupies.
pub fn verify_chain<E: fmt::Display>(
    entries: impl Iterator<Item = Result<AuditEntry, E>>,
) -> AuditVerification {
    let mut head = ChainHead::GENESIS;
    for item in entries {
        let expected = head.seq + 1;
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                return AuditVerification::bad(
                    head.seq,
                    expected,
                    format!("entry {expected} cannot be read: {e}"),
                );
            }
        };
        if entry.seq != expected {
            return AuditVerification::bad(
                head.seq,
                expected,
                format!("expected entry {expected}, found entry {}", entry.seq),
            );
        }
        if entry.prev_hash != head.hash {
            return AuditVerification::bad(
                head.seq,
                expected,
                format!(
                    "entry {expected} does not link to the previous entry (prev_hash {}, expected {})",
                    hex::encode(entry.prev_hash),
                    hex::encode(head.hash)
                ),
            );
        }
        if entry.computed_hash() != entry.hash {
            return AuditVerification::bad(
                head.seq,
                expected,
                format!("entry {expected} was altered: its hash does not match its contents"),
            );
        }
        head = entry.head();
    }
    AuditVerification::good(head.seq)
}

/// Emits `entry` as an `info` event on the [`AUDIT_TARGET`] target. The store calls this once
/// the change the entry records is durable.
pub fn log_entry(entry: &AuditEntry) {
    tracing::info!(
        target: AUDIT_TARGET,
        seq = entry.seq,
        time = %entry.time,
        actor = %entry.actor,
        action = %entry.action,
        object = %entry.target,
        detail = %entry.detail,
        hash = %hex::encode(entry.hash),
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;

    fn chain(events: &[AuditEvent], start: OffsetDateTime) -> Vec<AuditEntry> {
        let mut head = ChainHead::GENESIS;
        let mut out = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            let e = head.next_entry(start + time::Duration::seconds(i as i64), ev);
            head = e.head();
            out.push(e);
        }
        out
    }

    fn verify(entries: &[AuditEntry]) -> AuditVerification {
        verify_chain(entries.iter().cloned().map(Ok::<_, Infallible>))
    }

    fn sample() -> Vec<AuditEntry> {
        let events: Vec<AuditEvent> = (0..5)
            .map(|i| AuditEvent::new("portal:p", "ticket.create", format!("{i:08}"), "山田 太郎"))
            .collect();
        chain(
            &events,
            OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
        )
    }

    #[test]
    fn empty_chain_is_ok() {
        let v = verify(&[]);
        assert!(v.ok);
        assert_eq!(v.entries, 0);
    }

    #[test]
    fn good_chain_verifies() {
        let v = verify(&sample());
        assert_eq!(v, AuditVerification::good(5));
    }

    #[test]
    fn gap_reorder_and_unreadable_entries_are_named() {
        let mut c = sample();
        c.remove(2);
        let v = verify(&c);
        assert_eq!((v.ok, v.first_bad_entry, v.entries), (false, Some(3), 2));

        let mut c = sample();
        c.swap(1, 2);
        assert_eq!(verify(&c).first_bad_entry, Some(2));

        let c = sample();
        let items = c
            .into_iter()
            .enumerate()
            .map(|(i, e)| if i == 3 { Err("garbled") } else { Ok(e) });
        let v = verify_chain(items);
        assert_eq!(v.first_bad_entry, Some(4));
        assert!(v.problem.unwrap_or_default().contains("cannot be read"));
    }

    #[test]
    fn hash_encoding_is_unambiguous() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let z = [0u8; 32];
        assert_ne!(
            entry_hash(1, t, "ab", "c", "", "", &z),
            entry_hash(1, t, "a", "bc", "", "", &z)
        );
        // The offset is part of the hash even when the instant is the same.
        let t9 = t.to_offset(time::macros::offset!(+9));
        assert_ne!(
            entry_hash(1, t, "", "", "", "", &z),
            entry_hash(1, t9, "", "", "", "", &z)
        );
    }

    #[test]
    fn chain_head_bytes_round_trip() {
        let h = ChainHead {
            seq: 42,
            hash: [7; 32],
        };
        assert_eq!(ChainHead::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(ChainHead::from_bytes(&[0; 39]), None);
    }

    /// Flips one byte of a string, keeping it a `String` (invalid UTF-8 becomes U+FFFD).
    fn flip_str(s: &str, pos: usize, mask: u8) -> String {
        let mut b = s.as_bytes().to_vec();
        let i = pos % b.len();
        b[i] ^= mask;
        String::from_utf8_lossy(&b).into_owned()
    }

    proptest! {
        /// Any single-byte change in any field of any entry is detected, and the entry named.
        #[test]
        fn any_single_byte_change_is_detected(
            texts in proptest::collection::vec(("[a-z:]{1,12}", "[a-z.]{1,12}", "\\PC{1,10}", "\\PC{1,20}"), 1..6),
            which in any::<prop::sample::Index>(),
            field in 0usize..8,
            pos in any::<usize>(),
            mask in 1u8..=255,
        ) {
            let events: Vec<AuditEvent> = texts.iter()
                .map(|(a, b, c, d)| AuditEvent::new(a.clone(), b.clone(), c.clone(), d.clone()))
                .collect();
            let mut c = chain(&events, OffsetDateTime::UNIX_EPOCH + time::Duration::days(19_000));
            let i = which.index(c.len());
            let original = c[i].clone();
            let e = &mut c[i];
            match field {
                0 => e.seq ^= u64::from(mask) << (8 * (pos % 8)),
                1 => e.time += time::Duration::nanoseconds(i64::from(mask) << (8 * (pos % 4))),
                2 => e.actor = flip_str(&e.actor, pos, mask),
                3 => e.action = flip_str(&e.action, pos, mask),
                4 => e.target = flip_str(&e.target, pos, mask),
                5 => e.detail = flip_str(&e.detail, pos, mask),
                6 => e.prev_hash[pos % 32] ^= mask,
                _ => e.hash[pos % 32] ^= mask,
            }
            prop_assume!(*e != original);
            let v = verify(&c);
            prop_assert!(!v.ok);
            prop_assert_eq!(v.first_bad_entry, Some(original.seq));
            prop_assert_eq!(v.entries, original.seq - 1);
        }
    }
}
