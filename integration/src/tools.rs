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
    t.lines()
        .filter(|l| {
            l.contains("(WARNING)")
                || l.contains("(ERROR)")
                || l.contains("(FATAL)")
                || l.contains("Traceback")
        })
        .filter(|l| !ALLOWED_PKILINT.iter().any(|a| l.contains(a)))
        .map(str::to_string)
        .collect()
}
