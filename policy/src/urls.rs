//! `[urls]`: the public base URL and the URLs derived from it (CRL distribution points, AIA
//! OCSP and caIssuers), which go into every certificate.

use crate::error::PolicyError;
use crate::raw::{RawUrls, require};

/// `[urls]`: where standard clients fetch CRLs, OCSP and CA certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    /// Base URL, `http` or `https`, without query, fragment, user info or trailing `/`.
    pub base: String,
}

impl Urls {
    pub(crate) fn from_raw(raw: RawUrls) -> Result<Self, PolicyError> {
        let base = require(raw.base, "urls.base")?;
        Ok(Self {
            base: check_base_url("urls.base", &base)?,
        })
    }

    /// CRL distribution point of an issuer: `{base}/crl/{issuer_id}.crl`. The issuer id is
    /// assigned by the daemon and URL-safe.
    pub fn crl_url(&self, issuer_id: &str) -> String {
        format!("{}/crl/{issuer_id}.crl", self.base)
    }

    /// CRL distribution point of the root's CRL (covering the issuers): `{base}/crl/root.crl`.
    pub fn root_crl_url(&self) -> String {
        format!("{}/crl/root.crl", self.base)
    }

    /// OCSP responder (AIA id-ad-ocsp): `{base}/ocsp`.
    pub fn ocsp_url(&self) -> String {
        format!("{}/ocsp", self.base)
    }

    /// Issuer certificate (AIA id-ad-caIssuers): `{base}/ca/{issuer_id}.crt`.
    pub fn ca_issuers_url(&self, issuer_id: &str) -> String {
        format!("{}/ca/{issuer_id}.crt", self.base)
    }
}

/// Checks an `http(s)` base URL and returns it without a trailing `/`.
///
/// Accepted: `http://` or `https://` (lower case), a host name (letters, digits, `-`, `.`),
/// an IPv4 address or a bracketed IPv6 address, an optional port 1–65535, and an optional
/// path of URI path characters. Refused: user info, query, fragment, spaces, anything
/// needing percent-encoding except existing `%XX` escapes.
pub fn check_base_url(field: &str, url: &str) -> Result<String, PolicyError> {
    let bad =
        |reason: &str| PolicyError::invalid(field, format!("`{}`: {reason}", url.escape_debug()));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.contains('?') {
        return Err(bad("must not have a query"));
    }
    if rest.contains('#') {
        return Err(bad("must not have a fragment"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("must not carry user info"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed `[` in host"))?;
        if addr.is_empty()
            || !addr
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad("invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
        };
        (addr, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if !authority.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad("invalid host name"));
        }
    }
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !ok {
            return Err(bad("invalid port"));
        }
    }
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b));
    if !path_ok {
        return Err(bad("path has characters that need percent-encoding"));
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(bad("invalid percent escape in path"));
        }
    }
    if path.contains("//") {
        return Err(bad("empty path segment (`//`)"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        for (input, out) in [
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://pki.example.jp/", "https://pki.example.jp"),
            (
                "https://pki.example.jp/care/pki/",
                "https://pki.example.jp/care/pki",
            ),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://localhost", "http://localhost"),
        ] {
            assert_eq!(
                check_base_url("urls.base", input).as_deref(),
                Ok(out),
                "{input}"
            );
        }
    }

    #[test]
    fn refuses() {
        for input in [
            "",
            "ftp://x",
            "HTTP://x",
            "http://",
            "http://x?y=1",
            "http://x/#frag",
            "http://user@x",
            "http://x:0",
            "http://x:99999",
            "http://x:",
            "http://exa mple",
            "http://x/a b",
            "http://x/%zz",
            "http://-x-",
            "http://[::1",
            "http://x//y",
        ] {
            let err = check_base_url("urls.base", input);
            assert!(
                matches!(&err, Err(e) if e.field() == Some("urls.base")),
                "{input:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn derived() {
        let urls = Urls {
            base: "http://127.0.0.1:8080".into(),
        };
        assert_eq!(urls.crl_url("i1"), "http://127.0.0.1:8080/crl/i1.crl");
        assert_eq!(urls.root_crl_url(), "http://127.0.0.1:8080/crl/root.crl");
        assert_eq!(urls.ocsp_url(), "http://127.0.0.1:8080/ocsp");
        assert_eq!(urls.ca_issuers_url("i1"), "http://127.0.0.1:8080/ca/i1.crt");
    }
}
