//! Authentication of the plain files beside the sealed keys (issue #12 item 9).
//!
//! `keys/pki.toml` (root fingerprint, KDF parameters for new keys, dev flag, URL base),
//! `keys/service-ca.crt` (the trust anchor of every gRPC client) and `keys/server.crt` are not
//! secret, so they are not sealed; but with write access and no passphrase one could swap the
//! service CA (and mint `ops` certificates) or make the next sealed key cheap to crack. So
//! `init` writes `keys/integrity.mac`:
//!
//! ```text
//! care-pki-integrity v1 <hex HMAC-SHA256(K, transcript)>
//! K          = HMAC-SHA256(pepper, "care-pki/v1/integrity-key")
//! transcript = "care-pki/v1/integrity" ‖ for each item: len(name) ‖ name ‖ len(value) ‖ value
//! ```
//!
//! over the fields of `pki.toml` that only `init` sets (format, url_base, root fingerprint,
//! seal_kdf, dev) and the SHA-256 of the two certificate files. The pepper is sealed under the
//! passphrase, so only a passphrase holder can write a valid tag; [`verify`] runs in
//! `pki::load` and a mismatch or a missing file refuses the start. Fields that change in normal
//! operation without the keys' passphrase (`issuers` at rotation, `root_crl_number` when the
//! root CRL is re-signed with the root's own passphrase) are not covered: each is checked
//! against sealed or signed material where it is used (issuer keys are sealed, the root CRL is
//! signed).
//!
//! A PKI created before this record existed has no file: `ca-daemon integrity seal` writes it
//! once the operator has checked the files (it needs the passphrase).

use std::path::Path;

use ring::hmac;
use zeroize::Zeroizing;

use crate::keys::fsutil::{self, Overwrite, PUBLIC_FILE_MODE};
use crate::pki::{Layout, PkiError, PkiMetadata};

const MAGIC: &str = "care-pki-integrity v1";
const KEY_LABEL: &[u8] = b"care-pki/v1/integrity-key";
const TRANSCRIPT_LABEL: &[u8] = b"care-pki/v1/integrity";

/// The record's path.
pub fn path(layout: &Layout) -> std::path::PathBuf {
    layout.keys_dir().join("integrity.mac")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn push(t: &mut Vec<u8>, name: &str, value: &[u8]) {
    t.extend_from_slice(&(name.len() as u64).to_be_bytes());
    t.extend_from_slice(name.as_bytes());
    t.extend_from_slice(&(value.len() as u64).to_be_bytes());
    t.extend_from_slice(value);
}

fn digest_of(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    Ok(ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .to_vec())
}

/// The tag over the files of `layout` as they are now.
pub fn compute(layout: &Layout, pepper: &[u8]) -> Result<[u8; 32], PkiError> {
    let meta = PkiMetadata::read(layout)?;
    let mut t = Vec::with_capacity(512);
    t.extend_from_slice(TRANSCRIPT_LABEL);
    push(&mut t, "pki.toml/format", &meta.format.to_be_bytes());
    push(&mut t, "pki.toml/url_base", meta.url_base.as_bytes());
    push(
        &mut t,
        "pki.toml/root_fingerprint_sha256",
        meta.root_fingerprint_sha256.as_bytes(),
    );
    push(
        &mut t,
        "pki.toml/seal_kdf",
        &[
            meta.seal_kdf.m_cost_kib.to_be_bytes(),
            meta.seal_kdf.t_cost.to_be_bytes(),
            meta.seal_kdf.p_cost.to_be_bytes(),
        ]
        .concat(),
    );
    push(&mut t, "pki.toml/dev", &[u8::from(meta.dev)]);
    push(
        &mut t,
        "service-ca.crt/sha256",
        &digest_of(&layout.service_ca_cert())?,
    );
    push(
        &mut t,
        "server.crt/sha256",
        &digest_of(&layout.server_cert())?,
    );
    let key_bytes = Zeroizing::new(
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, pepper), KEY_LABEL)
            .as_ref()
            .to_vec(),
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key_bytes), &t);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Writes (or replaces) the record for the files as they are now.
pub fn seal(layout: &Layout, pepper: &[u8]) -> Result<(), PkiError> {
    let tag = compute(layout, pepper)?;
    let p = path(layout);
    let text = format!("{MAGIC} {}\n", hex::encode(tag));
    fsutil::write_atomic(&p, text.as_bytes(), PUBLIC_FILE_MODE, Overwrite::Replace)
        .map_err(io_err(&p))
}

/// Checks the record; a missing, malformed or mismatching one is an error naming the files.
pub fn verify(layout: &Layout, pepper: &[u8]) -> Result<(), PkiError> {
    let p = path(layout);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PkiError::InvalidFile {
                path: p,
                reason: "missing: the plain files beside the sealed keys (pki.toml, \
                         service-ca.crt, server.crt) cannot be authenticated; check them, then \
                         run `ca-daemon integrity seal`"
                    .into(),
            });
        }
        Err(e) => return Err(io_err(&p)(e)),
    };
    let stored = text
        .trim()
        .strip_prefix(MAGIC)
        .map(str::trim)
        .and_then(|h| hex::decode(h).ok())
        .filter(|b| b.len() == 32)
        .ok_or_else(|| PkiError::InvalidFile {
            path: p.clone(),
            reason: format!("not a `{MAGIC}` record"),
        })?;
    let tag = compute(layout, pepper)?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&tag[..], &stored[..])) {
        return Err(PkiError::InvalidFile {
            path: p,
            reason: "pki.toml, service-ca.crt or server.crt changed since they were sealed \
                     (a change made without the passphrase); refusing to start"
                .into(),
        });
    }
    Ok(())
}

/// `ca-daemon integrity` subcommands (wired in [`crate::cli`]).
pub mod cli {
    use std::path::PathBuf;

    use clap::{Args, Subcommand};

    use super::*;

    /// The authentication record of pki.toml, service-ca.crt and server.crt.
    #[derive(Debug, Subcommand)]
    pub enum IntegrityCommand {
        /// Write keys/integrity.mac for the files as they are now (once, for a PKI created before the record existed, after checking the files). Needs the passphrase.
        #[command(
            after_help = "Example:\n  ca-daemon integrity seal --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase"
        )]
        Seal(SealArgs),
        /// Check keys/integrity.mac (what `serve` does at start). Needs the passphrase.
        #[command(
            after_help = "Example:\n  ca-daemon integrity verify --data-dir /var/lib/ca-daemon --passphrase-file /etc/ca-daemon/passphrase"
        )]
        Verify(SealArgs),
    }

    /// `integrity seal` / `verify`.
    #[derive(Debug, Args)]
    pub struct SealArgs {
        /// Data directory.
        #[arg(long, default_value = "./var")]
        pub data_dir: PathBuf,
        /// File with the keys' passphrase [default: DATA_DIR/dev/passphrase].
        #[arg(long)]
        pub passphrase_file: Option<PathBuf>,
    }

    fn pepper(a: &SealArgs) -> Result<(Layout, Zeroizing<Vec<u8>>), String> {
        let file = a
            .passphrase_file
            .clone()
            .unwrap_or_else(|| crate::pki::dev_passphrase_path(&a.data_dir));
        let pass = crate::keys::Passphrase::from_file(&file).map_err(|e| e.to_string())?;
        let layout = Layout::new(&a.data_dir);
        let p = layout.pepper();
        let pepper = crate::keys::sealed::read_sealed_file(&p, &pass, crate::pki::PEPPER_LABEL)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Ok((layout, pepper))
    }

    /// Runs an `integrity` subcommand (blocking: the KDF).
    pub fn run(cmd: IntegrityCommand) -> Result<(), String> {
        match cmd {
            IntegrityCommand::Seal(a) => {
                let (layout, pepper) = pepper(&a)?;
                seal(&layout, &pepper).map_err(|e| e.to_string())?;
                println!("wrote {}", path(&layout).display());
                Ok(())
            }
            IntegrityCommand::Verify(a) => {
                let (layout, pepper) = pepper(&a)?;
                verify(&layout, &pepper).map_err(|e| e.to_string())?;
                println!("integrity OK: pki.toml, service-ca.crt, server.crt");
                Ok(())
            }
        }
    }
}
