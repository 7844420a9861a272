//! The independent checkers. A test that needs a tool fails (not skips) when it is missing,
//! naming what to install, unless `PKI_ALLOW_MISSING_TOOLS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The Python venv with `cryptography`, `pkilint`, `grpcio-tools` (`$PKI_VENV` or `<workspace>/.venv`).
pub fn venv() -> PathBuf {
    std::env::var_os("PKI_VENV")
        .map_or_else(|| crate::workspace_root().join(".venv"), PathBuf::from)
}

/// Path of a venv executable (python, lint_pkix_cert, ...).
pub fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// Whether a missing tool may be skipped.
pub fn allow_missing() -> bool {
    std::env::var("PKI_ALLOW_MISSING_TOOLS").is_ok_and(|v| v == "1")
}

/// Runs a command with stdin closed; panics with a clear message if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run {desc}: {e} — install it (.ci/run shows how: apt-get install openssl openjdk-17-jre-headless; python venv with pkilint cryptography grpcio-tools)"
        ),
    }
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The pkilint findings allowed for a private PKI (DESIGN §4), by exact code.
pub const ALLOWED_PKILINT: [&str; 2] =
    ["pkix.invalid_uri_syntax", "pkix.invalid_domain_name_syntax"];

/// Runs a pkilint linter (`lint_pkix_cert lint`, `lint_crl lint -t CRL -p PKIX`, ...) at
/// WARNING and returns the findings that are not allowed (empty = clean).
pub fn pkilint(tool: &str, extra: &[&str], file: &Path) -> Vec<String> {
    let mut cmd = Command::new(venv_bin(tool));
    cmd.arg("lint")
        .args(extra)
        .arg("-s")
        .arg("WARNING")
        .arg(file);
    let out = run(&mut cmd);
    let t = text(&out);
    let mut findings: Vec<String> = t
        .lines()
        .filter(|l| {
            l.contains("(WARNING)")
                || l.contains("(ERROR)")
                || l.contains("(FATAL)")
                || l.contains("Traceback")
                || l.contains("Failed to")
        })
        .filter(|l| !ALLOWED_PKILINT.iter().any(|a| l.contains(a)))
        .map(str::to_string)
        .collect();
    // pkilint's exit code counts findings at or above the threshold; a non-zero exit with no
    // finding line at all means it could not read the input: never report that as clean.
    let any_finding_line = t
        .lines()
        .any(|l| l.contains("(WARNING)") || l.contains("(ERROR)"));
    if !out.status.success() && !any_finding_line && findings.is_empty() {
        findings.push(format!("{tool} failed without findings: {}", t.trim()));
    }
    findings
}

/// Whether `program` (a path or a name on `PATH`) can be started with `probe` arguments.
/// When it cannot: panics with `install` as the hint, or — with `PKI_ALLOW_MISSING_TOOLS=1` —
/// prints a notice and returns `false` so the caller skips that check.
pub fn require(program: &Path, probe: &[&str], install: &str) -> bool {
    let started = Command::new(program)
        .args(probe)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match started {
        Ok(_) => true,
        Err(e) if allow_missing() => {
            eprintln!(
                "SKIPPED a check: cannot run {} ({e}); install: {install}",
                program.display()
            );
            false
        }
        Err(e) => panic!(
            "cannot run {}: {e} — install: {install} (or set PKI_ALLOW_MISSING_TOOLS=1 to skip)",
            program.display()
        ),
    }
}

/// [`require`] for `openssl`.
pub fn require_openssl() -> bool {
    require(
        Path::new("openssl"),
        &["version"],
        "OpenSSL 3 (apt-get install openssl)",
    )
}

/// [`require`] for `keytool`.
pub fn require_keytool() -> bool {
    require(
        Path::new("keytool"),
        &["-help"],
        "Java 17 keytool (apt-get install openjdk-17-jre-headless)",
    )
}

/// [`require`] for the venv's Python with `cryptography` and `grpcio-tools`.
pub fn require_python() -> bool {
    require(
        &venv_bin("python"),
        &["-c", "import cryptography, grpc_tools"],
        "a Python venv at $PKI_VENV or <workspace>/.venv with `pip install cryptography grpcio-tools pkilint`",
    )
}

/// [`require`] for a pkilint linter of the venv (`lint_pkix_cert`, `lint_crl`, ...).
pub fn require_pkilint(tool: &str) -> bool {
    require(
        &venv_bin(tool),
        &["--help"],
        "pkilint in the Python venv (`pip install pkilint`)",
    )
}

/// The Python helper scripts of the integration tests (`integration/tests/python/<name>`).
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("python")
        .join(name)
}

/// PEM encoding of DER under `label` (64-character lines).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER of the first `CERTIFICATE` block of a PEM file.
pub fn cert_der_from_pem_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| std::io::Error::other(format!("{}: not PEM: {e}", path.display())))?;
    if p.label != "CERTIFICATE" {
        return Err(std::io::Error::other(format!(
            "{}: PEM label {}, expected CERTIFICATE",
            path.display(),
            p.label
        )));
    }
    Ok(p.contents)
}

/// Writes a secret (password, key) to a file readable by the owner only.
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)
}
