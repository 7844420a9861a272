//! A store's whole content as a stream of rows, engine-neutral: what `store copy` (sled ->
//! PostgreSQL) and [`crate::store::PgStore`]'s backup (PostgreSQL -> a new sled store) move.
//!
//! Rows carry records exactly as stored, audit entries with their sequence numbers and
//! hashes, so the chain arrives intact. Order: issuers, then certificates (a certificate
//! references its issuer), then everything else; audit entries in sequence order.

use time::OffsetDateTime;

use super::{AuditEntry, CertRecord, CrlRecord, IssuerRecord, RevokedEntry, TicketRecord};

/// One row of a store image. (Rows move one at a time, so the size of the largest variant
/// does not matter.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum ImageRow {
    /// An issuer.
    Issuer(IssuerRecord),
    /// A ticket and, for a renewal ticket, the serial it renews.
    Ticket(TicketRecord, Option<String>),
    /// A certificate (its revocation inside).
    Cert(CertRecord),
    /// An entry of the revoked-by-issuer index (also for serials the store does not know).
    Revoked(String, RevokedEntry),
    /// A renewed certificate: (serial, renewed by, due if still scheduled).
    Supersession(String, String, Option<OffsetDateTime>),
    /// A saved CRL.
    Crl(CrlRecord),
    /// The highest CRL number reserved or saved of an issuer.
    CrlNumber(String, u64),
    /// An audit entry, as stored.
    Audit(AuditEntry),
    /// A key blob.
    KeyBlob(String, Vec<u8>),
}

impl ImageRow {
    /// Short name of the row's kind, for progress lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Issuer(_) => "issuers",
            Self::Ticket(..) => "tickets",
            Self::Cert(_) => "certificates",
            Self::Revoked(..) => "revocations",
            Self::Supersession(..) => "supersessions",
            Self::Crl(_) => "crls",
            Self::CrlNumber(..) => "crl_numbers",
            Self::Audit(_) => "audit",
            Self::KeyBlob(..) => "key_blobs",
        }
    }
}
