//! Sealed key files: secrets (private keys, the ticket pepper) encrypted at rest under a
//! passphrase.
//!
//! Format, version 1 (all integers big-endian):
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CNPKSEAL"
//! 8       2     format version (1)
//! 10      4     total file length (lets a truncated file be told apart from a corrupted one)
//! 14      1     KDF id (1 = Argon2id, version 0x13)
//! 15      12    KDF parameters: m_cost (KiB), t_cost, p_cost, each u32
//! 27      1     salt length S (16..=64)
//! 28      S     salt
//! ..      12    AES-GCM nonce
//! ..      32    passphrase check value
//! ..      2     label length L (1..=255), then L bytes of UTF-8 label
//! ..      4     ciphertext length C (plaintext + 16-byte tag)
//! ..      C     AES-256-GCM ciphertext and tag (ring)
//! end-32  32    SHA-256 of every byte before it
//! ```
//!
//! Argon2id derives 64 bytes from the passphrase and salt: the first 32 are the AES-256-GCM key,
//! the last 32 key an HMAC-SHA256 over a fixed string, which is the check value. A wrong
//! passphrase therefore fails the check ([`SealError::WrongPassphrase`]) while a file whose check
//! matches but whose AEAD tag does not was altered ([`SealError::Tampered`]). The AEAD's
//! additional data is the whole header (everything before the ciphertext), which binds the label,
//! the KDF parameters, salt and nonce. The trailing checksum is not a security measure (anyone
//! can recompute it): it reports accidental damage as [`SealError::Corrupted`] before the costly
//! KDF runs.
//!
//! Unsealing validates in this order: length / magic, checksum, version, structure, label, KDF
//! parameter bounds, then the KDF, the check value and the AEAD.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::{digest, hmac};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::Passphrase;
use super::fsutil::{self, Overwrite, SECRET_FILE_MODE};

/// File magic of sealed files.
pub const MAGIC: &[u8; 8] = b"CNPKSEAL";
/// The format version this code writes.
pub const FORMAT_VERSION: u16 = 1;
/// KDF id for Argon2id (version 0x13).
pub const KDF_ARGON2ID: u8 = 1;
/// Largest plaintext accepted by [`seal`] (sealed files hold keys, not bulk data).
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;
/// Largest label length in bytes.
pub const MAX_LABEL_LEN: usize = 255;

const SALT_LEN: usize = 16;
const MIN_SALT_LEN: usize = 16;
const MAX_SALT_LEN: usize = 64;
const CHECK_LEN: usize = 32;
const TAG_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;
const PREFIX_LEN: usize = 8 + 2 + 4;
const CHECK_INFO: &[u8] = b"care-pki sealed file v1: passphrase check";

/// Upper bounds on KDF parameters read from a file, so a crafted file cannot make the daemon
/// allocate gigabytes or spin for minutes.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

/// Errors of sealing and unsealing. Messages never contain passphrases, key bytes or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The file ends before its header says it should.
    #[error("sealed file is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes expected (as far as could be told).
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The bytes do not start with the sealed-file magic.
    #[error("not a sealed key file (bad magic)")]
    NotSealed,
    /// The checksum does not match, or the structure is inconsistent: the file was damaged.
    #[error("sealed file is corrupted: {reason}")]
    Corrupted {
        /// What is inconsistent.
        reason: &'static str,
    },
    /// The file has a format version this build cannot read.
    #[error(
        "sealed file format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The file names a KDF this build does not know.
    #[error("sealed file uses unknown KDF id {kdf_id}")]
    UnsupportedKdf {
        /// KDF id in the file.
        kdf_id: u8,
    },
    /// KDF parameters out of the accepted range (too weak for Argon2 or absurdly expensive).
    #[error(
        "KDF parameters out of range: m_cost={m_cost_kib} KiB, t_cost={t_cost}, p_cost={p_cost}"
    )]
    InvalidKdfParams {
        /// Memory cost in KiB.
        m_cost_kib: u32,
        /// Iterations.
        t_cost: u32,
        /// Parallelism.
        p_cost: u32,
    },
    /// The file was sealed for another purpose than the one asked for (e.g. an issuer key
    /// file put where the server key belongs).
    #[error("sealed file holds {found:?}, expected {expected:?}")]
    LabelMismatch {
        /// Label asked for.
        expected: String,
        /// Label in the file.
        found: String,
    },
    /// The label is empty, too long (over 255 bytes) or the plaintext too large.
    #[error("invalid seal input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: &'static str,
    },
    /// The passphrase does not match the one the file was sealed with.
    #[error("wrong passphrase for sealed file")]
    WrongPassphrase,
    /// The passphrase check matched but the ciphertext failed authentication: the file was
    /// modified after sealing.
    #[error(
        "sealed file failed authentication although the passphrase is right: it was tampered with"
    )]
    Tampered,
    /// The key file may be read or written by group or others.
    #[error(
        "sealed key file {path} has insecure permissions {mode:04o}; it must not be accessible \
         by group or others (chmod 600)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is not a regular file.
    #[error("sealed key file {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The target exists and overwriting was not asked for.
    #[error("refusing to overwrite existing file {path}")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing the file failed.
    #[error("I/O error on sealed key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key derivation or the cipher failed for an internal reason (should not happen).
    #[error("cryptographic failure while {during}")]
    Crypto {
        /// The step that failed.
        during: &'static str,
    },
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism (lanes).
    pub p_cost: u32,
}

impl KdfParams {
    /// Production parameters (issue #12 item 9): RFC 9106's second recommended option,
    /// 64 MiB memory and 3 passes (1 lane), about 3x the OWASP baseline in memory × time. The
    /// KDF runs once per sealed file at start and at rotation, never per request, so a few
    /// hundred milliseconds per file are affordable; an offline guess costs as much.
    pub const fn production() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
        }
    }

    /// Dev PKIs (`init --dev`, `serve --dev`): the OWASP Argon2id baseline, 19 MiB and 2
    /// passes (the former production setting), so dev starts stay fast. A dev PKI keeps its
    /// passphrase beside the keys anyway.
    pub const fn dev() -> Self {
        Self::PRODUCTION_FLOOR
    }

    /// The least a production PKI accepts for new keys (`init`, `issuer rotate`): the OWASP
    /// Password Storage Cheat Sheet's Argon2id minimum, 19 MiB, 2 passes.
    pub const PRODUCTION_FLOOR: KdfParams = KdfParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };

    /// The least a dev PKI accepts: 1 MiB, 1 pass. Only for throw-away data.
    pub const DEV_FLOOR: KdfParams = KdfParams {
        m_cost_kib: 1024,
        t_cost: 1,
        p_cost: 1,
    };

    /// Whether these parameters cost at least `floor` in memory and passes.
    pub fn meets(&self, floor: KdfParams) -> bool {
        self.m_cost_kib >= floor.m_cost_kib && self.t_cost >= floor.t_cost
    }

    /// Very cheap parameters for tests only (never use for real keys).
    pub const fn test_fast() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    fn validate(&self) -> Result<(), SealError> {
        let ok = self.p_cost >= 1
            && self.p_cost <= MAX_P_COST
            && self.t_cost >= 1
            && self.t_cost <= MAX_T_COST
            && self.m_cost_kib >= 8 * self.p_cost
            && self.m_cost_kib <= MAX_M_COST_KIB;
        if ok {
            Ok(())
        } else {
            Err(SealError::InvalidKdfParams {
                m_cost_kib: self.m_cost_kib,
                t_cost: self.t_cost,
                p_cost: self.p_cost,
            })
        }
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::production()
    }
}

/// The header fields of a sealed file, as parsed (no secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedHeader {
    /// Format version.
    pub version: u16,
    /// KDF parameters.
    pub kdf: KdfParams,
    /// The label the file was sealed with.
    pub label: String,
    salt: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    check: [u8; CHECK_LEN],
    /// Bytes of the header (the AEAD additional data).
    header_len: usize,
    /// Ciphertext + tag length.
    ct_len: usize,
}

impl fmt::Debug for SealedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedHeader")
            .field("version", &self.version)
            .field("kdf", &self.kdf)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Derived key material: AES key and check key, wiped on drop.
struct Derived(Zeroizing<[u8; 64]>);

impl Derived {
    fn new(passphrase: &Passphrase, salt: &[u8], kdf: KdfParams) -> Result<Self, SealError> {
        kdf.validate()?;
        let params = argon2::Params::new(kdf.m_cost_kib, kdf.t_cost, kdf.p_cost, Some(64))
            .map_err(|_| SealError::InvalidKdfParams {
                m_cost_kib: kdf.m_cost_kib,
                t_cost: kdf.t_cost,
                p_cost: kdf.p_cost,
            })?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 64]);
        argon
            .hash_password_into(passphrase.expose(), salt, out.as_mut())
            .map_err(|_| SealError::Crypto {
                during: "deriving the key (Argon2id)",
            })?;
        Ok(Derived(out))
    }

    fn aead_key(&self) -> Result<LessSafeKey, SealError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, &self.0[..32]).map_err(|_| SealError::Crypto {
                during: "creating the AES-256-GCM key",
            })?;
        Ok(LessSafeKey::new(unbound))
    }

    fn check_value(&self) -> [u8; CHECK_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0[32..]);
        let tag = hmac::sign(&key, CHECK_INFO);
        let mut out = [0u8; CHECK_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

fn validate_label(label: &str) -> Result<(), SealError> {
    if label.is_empty() {
        return Err(SealError::InvalidInput {
            reason: "the label is empty",
        });
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(SealError::InvalidInput {
            reason: "the label is longer than 255 bytes",
        });
    }
    Ok(())
}

/// Encrypts `plaintext` under `passphrase`, binding `label` (the purpose of the secret, e.g.
/// `"issuer:iss-0123abcd"`), and returns the sealed file bytes.
pub fn seal(
    plaintext: &[u8],
    passphrase: &Passphrase,
    label: &str,
    kdf: KdfParams,
) -> Result<Vec<u8>, SealError> {
    validate_label(label)?;
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(SealError::InvalidInput {
            reason: "the plaintext is larger than 1 MiB",
        });
    }
    kdf.validate()?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    super::random_bytes(&mut salt).map_err(|_| SealError::Crypto {
        during: "drawing the salt",
    })?;
    super::random_bytes(&mut nonce).map_err(|_| SealError::Crypto {
        during: "drawing the nonce",
    })?;
    let derived = Derived::new(passphrase, &salt, kdf)?;
    let ct_len = plaintext.len() + TAG_LEN;
    let header_len =
        PREFIX_LEN + 1 + 12 + 1 + SALT_LEN + NONCE_LEN + CHECK_LEN + 2 + label.len() + 4;
    let total = header_len + ct_len + CHECKSUM_LEN;
    let total_u32 = u32::try_from(total).map_err(|_| SealError::InvalidInput {
        reason: "the sealed file would be too large",
    })?;
    let ct_len_u32 = u32::try_from(ct_len).map_err(|_| SealError::InvalidInput {
        reason: "the sealed file would be too large",
    })?;

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&total_u32.to_be_bytes());
    out.push(KDF_ARGON2ID);
    out.extend_from_slice(&kdf.m_cost_kib.to_be_bytes());
    out.extend_from_slice(&kdf.t_cost.to_be_bytes());
    out.extend_from_slice(&kdf.p_cost.to_be_bytes());
    out.push(SALT_LEN as u8);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&derived.check_value());
    // validate_label bounded the length to 255.
    out.extend_from_slice(&(label.len() as u16).to_be_bytes());
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(&ct_len_u32.to_be_bytes());
    debug_assert_eq!(out.len(), header_len);

    let mut in_out = Zeroizing::new(Vec::with_capacity(ct_len));
    in_out.extend_from_slice(plaintext);
    let key = derived.aead_key()?;
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&out[..header_len]),
        &mut *in_out,
    )
    .map_err(|_| SealError::Crypto {
        during: "encrypting (AES-256-GCM)",
    })?;
    out.extend_from_slice(&in_out);
    let sum = digest::digest(&digest::SHA256, &out);
    out.extend_from_slice(sum.as_ref());
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// A cursor over the header bytes; running out means the structure is inconsistent.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SealError> {
        let end = self.pos.checked_add(n).ok_or(SealError::Corrupted {
            reason: "a length field overflows",
        })?;
        let s = self.buf.get(self.pos..end).ok_or(SealError::Corrupted {
            reason: "a length field points past the end of the file",
        })?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SealError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SealError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SealError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Checks length, magic, checksum and version, and parses the header. No KDF runs.
pub fn parse_header(file_bytes: &[u8]) -> Result<SealedHeader, SealError> {
    let actual = file_bytes.len();
    // Magic first, on as many bytes as exist, so a short random file is "not sealed".
    let magic_part = &file_bytes[..actual.min(MAGIC.len())];
    if magic_part != &MAGIC[..magic_part.len()] {
        return Err(SealError::NotSealed);
    }
    if actual < PREFIX_LEN + CHECKSUM_LEN {
        return Err(SealError::Truncated {
            expected: PREFIX_LEN + CHECKSUM_LEN,
            actual,
        });
    }
    let total = u32::from_be_bytes([
        file_bytes[10],
        file_bytes[11],
        file_bytes[12],
        file_bytes[13],
    ]) as usize;
    if actual < total {
        return Err(SealError::Truncated {
            expected: total,
            actual,
        });
    }
    if actual > total {
        return Err(SealError::Corrupted {
            reason: "the file is longer than its header says (trailing bytes or damaged length)",
        });
    }
    let (body, sum) = file_bytes.split_at(actual - CHECKSUM_LEN);
    let computed = digest::digest(&digest::SHA256, body);
    if computed.as_ref() != sum {
        return Err(SealError::Corrupted {
            reason: "checksum mismatch",
        });
    }
    let version = u16::from_be_bytes([file_bytes[8], file_bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(SealError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut r = Reader {
        buf: body,
        pos: PREFIX_LEN,
    };
    let kdf_id = r.u8()?;
    if kdf_id != KDF_ARGON2ID {
        return Err(SealError::UnsupportedKdf { kdf_id });
    }
    let kdf = KdfParams {
        m_cost_kib: r.u32()?,
        t_cost: r.u32()?,
        p_cost: r.u32()?,
    };
    let salt_len = r.u8()? as usize;
    if !(MIN_SALT_LEN..=MAX_SALT_LEN).contains(&salt_len) {
        return Err(SealError::Corrupted {
            reason: "salt length out of range",
        });
    }
    let salt = r.take(salt_len)?.to_vec();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(r.take(NONCE_LEN)?);
    let mut check = [0u8; CHECK_LEN];
    check.copy_from_slice(r.take(CHECK_LEN)?);
    let label_len = r.u16()? as usize;
    if label_len == 0 || label_len > MAX_LABEL_LEN {
        return Err(SealError::Corrupted {
            reason: "label length out of range",
        });
    }
    let label = std::str::from_utf8(r.take(label_len)?)
        .map_err(|_| SealError::Corrupted {
            reason: "label is not UTF-8",
        })?
        .to_owned();
    let ct_len = r.u32()? as usize;
    let header_len = r.pos;
    if ct_len < TAG_LEN || header_len + ct_len != body.len() {
        return Err(SealError::Corrupted {
            reason: "ciphertext length does not match the file length",
        });
    }
    Ok(SealedHeader {
        version,
        kdf,
        label,
        salt,
        nonce,
        check,
        header_len,
        ct_len,
    })
}

/// Decrypts sealed file bytes. `label` must equal the label the file was sealed with.
pub fn unseal(
    file_bytes: &[u8],
    passphrase: &Passphrase,
    label: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let h = parse_header(file_bytes)?;
    if h.label != label {
        return Err(SealError::LabelMismatch {
            expected: label.to_owned(),
            found: h.label,
        });
    }
    let derived = Derived::new(passphrase, &h.salt, h.kdf)?;
    if !bool::from(derived.check_value().ct_eq(&h.check)) {
        return Err(SealError::WrongPassphrase);
    }
    let key = derived.aead_key()?;
    let ct = &file_bytes[h.header_len..h.header_len + h.ct_len];
    let mut in_out = Zeroizing::new(ct.to_vec());
    let plain_len = key
        .open_in_place(
            Nonce::assume_unique_for_key(h.nonce),
            Aad::from(&file_bytes[..h.header_len]),
            &mut in_out,
        )
        .map_err(|_| SealError::Tampered)?
        .len();
    in_out.truncate(plain_len);
    Ok(in_out)
}

/// Writes a sealed file with mode 0600, crash-safely (temporary file, fsync, link/rename,
/// directory fsync). Refuses to replace an existing file: see [`write_sealed_file_replace`].
pub fn write_sealed_file(path: &Path, sealed: &[u8]) -> Result<(), SealError> {
    write_impl(path, sealed, Overwrite::Refuse)
}

/// Like [`write_sealed_file`] but atomically replaces an existing file (key renewal).
pub fn write_sealed_file_replace(path: &Path, sealed: &[u8]) -> Result<(), SealError> {
    write_impl(path, sealed, Overwrite::Replace)
}

fn write_impl(path: &Path, sealed: &[u8], overwrite: Overwrite) -> Result<(), SealError> {
    fsutil::write_atomic(path, sealed, SECRET_FILE_MODE, overwrite).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            SealError::AlreadyExists {
                path: path.to_path_buf(),
            }
        } else {
            SealError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Reads and unseals a sealed file. The permissions are checked on the opened file before any
/// byte is read: a file that group or others may access is refused, and so is anything that is
/// not a regular file (symlinks are not followed).
pub fn read_sealed_file(
    path: &Path,
    passphrase: &Passphrase,
    label: &str,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let bytes = read_sealed_bytes(path)?;
    unseal(&bytes, passphrase, label)
}

/// Reads the raw bytes of a sealed file after the same permission checks as
/// [`read_sealed_file`] (e.g. to inspect its header).
pub fn read_sealed_bytes(path: &Path) -> Result<Vec<u8>, SealError> {
    let io_err = |source| SealError::Io {
        path: path.to_path_buf(),
        source,
    };
    // lstat first: a symlink is refused rather than followed.
    let link_meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    if !link_meta.file_type().is_file() {
        return Err(SealError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    // The opened file must be the one checked (no swap between lstat and open).
    if !meta.is_file() || meta.dev() != link_meta.dev() || meta.ino() != link_meta.ino() {
        return Err(SealError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SealError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let limit = (MAX_PLAINTEXT_LEN + 64 * 1024) as u64;
    if meta.size() > limit {
        return Err(SealError::Corrupted {
            reason: "the file is far larger than any sealed key",
        });
    }
    let mut bytes = Vec::with_capacity(meta.size() as usize);
    file.take(limit).read_to_end(&mut bytes).map_err(io_err)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PASS: &[u8] = b"correct horse battery staple";
    const SECRET: &[u8] = b"-----TOP SECRET KEY MATERIAL 0123456789-----";

    fn pass() -> Passphrase {
        Passphrase(Zeroizing::new(PASS.to_vec()))
    }

    fn sealed() -> Vec<u8> {
        seal(SECRET, &pass(), "issuer:iss-test", KdfParams::test_fast())
            .unwrap_or_else(|e| panic!("seal failed: {e}"))
    }

    fn assert_no_secrets(msg: &str) {
        for secret in [PASS, SECRET] {
            let raw = String::from_utf8_lossy(secret);
            assert!(!msg.contains(raw.as_ref()), "{msg:?} contains a secret");
            assert!(
                !msg.contains(&hex::encode(secret)),
                "{msg:?} contains hex secret"
            );
            assert!(
                !msg.to_lowercase().contains(&hex::encode(&secret[..8])),
                "{msg:?} contains hex of a secret prefix"
            );
        }
    }

    #[test]
    fn round_trip() -> Result<(), SealError> {
        let s = sealed();
        assert!(!s.windows(SECRET.len()).any(|w| w == SECRET));
        let p = unseal(&s, &pass(), "issuer:iss-test")?;
        assert_eq!(p.as_slice(), SECRET);
        let h = parse_header(&s)?;
        assert_eq!(h.kdf, KdfParams::test_fast());
        assert_eq!(h.label, "issuer:iss-test");
        // Empty plaintext works too.
        let e = seal(b"", &pass(), "x", KdfParams::test_fast())?;
        assert!(unseal(&e, &pass(), "x")?.is_empty());
        Ok(())
    }

    #[test]
    fn two_seals_differ() -> Result<(), SealError> {
        let a = seal(SECRET, &pass(), "l", KdfParams::test_fast())?;
        let b = seal(SECRET, &pass(), "l", KdfParams::test_fast())?;
        assert_ne!(a, b, "salt and nonce must be fresh");
        Ok(())
    }

    #[test]
    fn wrong_passphrase_is_reported_as_such() -> Result<(), Box<dyn std::error::Error>> {
        let s = sealed();
        let wrong = Passphrase::from_bytes(b"incorrect horse")?;
        let err = unseal(&s, &wrong, "issuer:iss-test").err();
        assert!(matches!(err, Some(SealError::WrongPassphrase)), "{err:?}");
        Ok(())
    }

    #[test]
    fn wrong_label_is_reported() {
        let s = sealed();
        let err = unseal(&s, &pass(), "server").err();
        assert!(
            matches!(&err, Some(SealError::LabelMismatch { expected, found }) if expected == "server" && found == "issuer:iss-test"),
            "{err:?}"
        );
    }

    #[test]
    fn production_params_round_trip() -> Result<(), SealError> {
        let s = seal(SECRET, &pass(), "pepper", KdfParams::production())?;
        assert_eq!(unseal(&s, &pass(), "pepper")?.as_slice(), SECRET);
        Ok(())
    }

    /// Re-computes the checksum after a change, as an attacker (not an accident) would.
    fn fix_checksum(b: &mut [u8]) {
        let n = b.len() - CHECKSUM_LEN;
        let sum = digest::digest(&digest::SHA256, &b[..n]);
        b[n..].copy_from_slice(sum.as_ref());
    }

    #[test]
    fn flipped_byte_in_every_region() -> Result<(), SealError> {
        let s = sealed();
        let h = parse_header(&s)?;
        let label_start = PREFIX_LEN + 1 + 12 + 1 + SALT_LEN + NONCE_LEN + CHECK_LEN + 2;
        for i in 0..s.len() {
            let mut b = s.clone();
            b[i] ^= 0x01;
            let err = unseal(&b, &pass(), "issuer:iss-test").err();
            let ok = match i {
                0..=7 => matches!(err, Some(SealError::NotSealed)),
                // total length field: reads as truncated or as too long.
                10..=13 => matches!(
                    err,
                    Some(SealError::Truncated { .. } | SealError::Corrupted { .. })
                ),
                // everything else (version, header, ciphertext, checksum): accidental damage.
                _ => matches!(err, Some(SealError::Corrupted { .. })),
            };
            assert!(ok, "flip at {i}: {err:?}");
        }
        // Deliberate changes with a re-computed checksum: told apart by region.
        let regions: Vec<(usize, &str)> = vec![
            (8, "version"),
            (14, "kdf id"),
            (15, "m_cost"),
            (PREFIX_LEN + 1 + 12 + 1, "salt"),
            (PREFIX_LEN + 1 + 12 + 1 + SALT_LEN, "nonce"),
            (PREFIX_LEN + 1 + 12 + 1 + SALT_LEN + NONCE_LEN, "check"),
            (label_start, "label"),
            (h.header_len, "ciphertext"),
            (h.header_len + h.ct_len - 1, "tag"),
        ];
        for (i, region) in regions {
            let mut b = s.clone();
            b[i] ^= 0x01;
            fix_checksum(&mut b);
            let err = unseal(&b, &pass(), "issuer:iss-test").err();
            let ok = match region {
                "version" => matches!(err, Some(SealError::UnsupportedVersion { found: 257, .. })),
                "kdf id" => matches!(err, Some(SealError::UnsupportedKdf { kdf_id: 0 })),
                "m_cost" => matches!(err, Some(SealError::InvalidKdfParams { .. })),
                "salt" | "check" => matches!(err, Some(SealError::WrongPassphrase)),
                "label" => matches!(err, Some(SealError::LabelMismatch { .. })),
                // Nonce and ciphertext are only covered by the AEAD.
                "nonce" | "ciphertext" | "tag" => matches!(err, Some(SealError::Tampered)),
                _ => false,
            };
            assert!(ok, "forged {region} at {i}: {err:?}");
        }
        Ok(())
    }

    #[test]
    fn truncated_at_every_length() {
        let s = sealed();
        for n in 0..s.len() {
            let err = unseal(&s[..n], &pass(), "issuer:iss-test").err();
            assert!(
                matches!(err, Some(SealError::Truncated { .. })),
                "truncated to {n}: {err:?}"
            );
        }
        let mut longer = s.clone();
        longer.push(0);
        assert!(matches!(
            unseal(&longer, &pass(), "issuer:iss-test"),
            Err(SealError::Corrupted { .. })
        ));
    }

    #[test]
    fn garbage_is_not_sealed() {
        assert!(matches!(
            unseal(b"-----BEGIN PRIVATE KEY-----", &pass(), "x"),
            Err(SealError::NotSealed)
        ));
    }

    #[test]
    fn invalid_inputs_are_refused() -> Result<(), SealError> {
        assert!(matches!(
            seal(b"x", &pass(), "", KdfParams::test_fast()),
            Err(SealError::InvalidInput { .. })
        ));
        let long = "l".repeat(256);
        assert!(matches!(
            seal(b"x", &pass(), &long, KdfParams::test_fast()),
            Err(SealError::InvalidInput { .. })
        ));
        let weak = KdfParams {
            m_cost_kib: 4,
            t_cost: 1,
            p_cost: 1,
        };
        assert!(matches!(
            seal(b"x", &pass(), "l", weak),
            Err(SealError::InvalidKdfParams { .. })
        ));
        let max_label = "l".repeat(255);
        let s = seal(b"x", &pass(), &max_label, KdfParams::test_fast())?;
        assert_eq!(unseal(&s, &pass(), &max_label)?.as_slice(), b"x");
        Ok(())
    }

    #[test]
    fn files_0600_and_0644_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("k.sealed");
        write_sealed_file(&p, &sealed())?;
        assert_eq!(std::fs::metadata(&p)?.permissions().mode() & 0o7777, 0o600);
        assert_eq!(
            read_sealed_file(&p, &pass(), "issuer:iss-test")?.as_slice(),
            SECRET
        );
        // No silent overwrite.
        assert!(matches!(
            write_sealed_file(&p, &sealed()),
            Err(SealError::AlreadyExists { .. })
        ));
        write_sealed_file_replace(&p, &sealed())?;

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        let err = read_sealed_file(&p, &pass(), "issuer:iss-test")
            .err()
            .ok_or("0644 accepted")?;
        assert!(
            matches!(&err, SealError::InsecurePermissions { mode: 0o644, path } if path == &p),
            "{err:?}"
        );
        assert!(err.to_string().contains("0644"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640))?;
        assert!(matches!(
            read_sealed_file(&p, &pass(), "issuer:iss-test"),
            Err(SealError::InsecurePermissions { mode: 0o640, .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400))?;
        assert!(read_sealed_file(&p, &pass(), "issuer:iss-test").is_ok());

        // Symlinks and directories are refused.
        let link = dir.path().join("link.sealed");
        std::os::unix::fs::symlink(&p, &link)?;
        assert!(matches!(
            read_sealed_file(&link, &pass(), "issuer:iss-test"),
            Err(SealError::NotAFile { .. })
        ));
        assert!(matches!(
            read_sealed_file(dir.path(), &pass(), "issuer:iss-test"),
            Err(SealError::NotAFile { .. } | SealError::InsecurePermissions { .. })
        ));
        assert!(matches!(
            read_sealed_file(&dir.path().join("missing"), &pass(), "x"),
            Err(SealError::Io { .. })
        ));
        Ok(())
    }

    #[test]
    fn no_error_message_contains_secrets() -> Result<(), Box<dyn std::error::Error>> {
        let s = sealed();
        let mut msgs = Vec::new();
        let wrong = Passphrase::from_bytes(b"incorrect horse")?;
        msgs.push(
            unseal(&s, &wrong, "issuer:iss-test")
                .err()
                .map(|e| e.to_string()),
        );
        msgs.push(unseal(&s, &pass(), "server").err().map(|e| e.to_string()));
        let mut t = s.clone();
        let n = parse_header(&s)?.header_len;
        t[n] ^= 1;
        msgs.push(
            unseal(&t, &pass(), "issuer:iss-test")
                .err()
                .map(|e| e.to_string()),
        );
        fix_checksum(&mut t);
        msgs.push(
            unseal(&t, &pass(), "issuer:iss-test")
                .err()
                .map(|e| format!("{e} {e:?}")),
        );
        msgs.push(
            unseal(&s[..40], &pass(), "issuer:iss-test")
                .err()
                .map(|e| format!("{e:?}")),
        );
        msgs.push(Some(format!("{:?}", parse_header(&s)?)));
        msgs.push(Some(format!("{:?}", pass())));
        for m in msgs {
            let m = m.ok_or("expected an error")?;
            assert_no_secrets(&m);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_truncation_or_flip_is_an_error(
            plain in proptest::collection::vec(any::<u8>(), 0..200),
            cut in any::<prop::sample::Index>(),
            flip_at in any::<prop::sample::Index>(),
            flip_mask in 1u8..=255,
            forge in any::<bool>(),
        ) {
            let s = seal(&plain, &pass(), "prop", KdfParams::test_fast())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            // Truncation: always an error.
            let n = cut.index(s.len());
            prop_assert!(unseal(&s[..n], &pass(), "prop").is_err());
            // Flip (with or without a forged checksum): an error, or (never) other plaintext.
            let mut b = s.clone();
            let i = flip_at.index(b.len());
            b[i] ^= flip_mask;
            if forge && i < b.len() - CHECKSUM_LEN {
                fix_checksum(&mut b);
            }
            match unseal(&b, &pass(), "prop") {
                Err(_) => {}
                Ok(p) => prop_assert!(false, "modified file unsealed to {} bytes", p.len()),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = unseal(&bytes, &pass(), "prop");
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = unseal(&with_magic, &pass(), "prop");
        }
    }
}
