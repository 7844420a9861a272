//! The operator CLI against a running daemon (DESIGN §7): `ticket create --json`, then
//! `ticket redeem --password-file ... --os ios --out DIR` writes the bundle files, which openssl
//! opens; `status --json` is JSON.

use std::path::Path;
use std::process::Command;

use integration::{Daemon, tools};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn cli_json(d: &Daemon, args: &[&str]) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (code, stdout, stderr) = d.cli(args)?;
    assert_eq!(
        code,
        0,
        "ca-daemon {}: exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.first().copied().unwrap_or_default()
    );
    serde_json::from_str(&stdout).map_err(|e| {
        format!("ca-daemon {args:?} printed no JSON ({e}):\n{stdout}\n{stderr}").into()
    })
}

#[test]
fn ticket_create_redeem_and_status_through_the_cli() -> TestResult {
    let d = Daemon::start()?;
    let data_dir = d.data_dir.to_string_lossy().into_owned();

    let created = cli_json(
        &d,
        &[
            "ticket",
            "create",
            "--data-dir",
            &data_dir,
            "--facility-id",
            "F001",
            "--facility-name",
            "みよし訪問看護ステーション",
            "--person-id",
            "P001",
            "--family-name",
            "山田",
            "--given-name",
            "花子",
            "--job",
            "看護師",
            "--email",
            "hanako@example.jp",
            "--device-id",
            "D001",
            "--os",
            "ios",
            "--json",
        ],
    )?;
    let number = created["number"].as_str().unwrap_or_default().to_string();
    let password = created["password"].as_str().unwrap_or_default().to_string();
    assert!(
        number.len() == 8 && number.bytes().all(|b| b.is_ascii_digit()),
        "ticket create --json: number {created}"
    );
    assert!(
        password.len() == 8 && password.bytes().all(|b| b.is_ascii_digit()),
        "ticket create --json: no 8-digit password"
    );

    let tmp = tempfile::tempdir()?;
    let password_file = tmp.path().join("password");
    tools::write_secret(&password_file, format!("{password}\n").as_bytes())?;
    let out = tmp.path().join("bundle");
    let out_s = out.to_string_lossy().into_owned();
    let pw_s = password_file.to_string_lossy().into_owned();
    let (code, stdout, stderr) = d.cli(&[
        "ticket",
        "redeem",
        "--data-dir",
        &data_dir,
        "--number",
        &number,
        "--password-file",
        &pw_s,
        "--os",
        "ios",
        "--out",
        &out_s,
    ])?;
    assert_eq!(
        code, 0,
        "ticket redeem: exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stdout.contains(&password) && !stderr.contains(&password),
        "ticket redeem printed the password"
    );

    let names: Vec<String> = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let find = |ext: &str| {
        names
            .iter()
            .find(|n| n.ends_with(ext))
            .map(|n| out.join(n))
            .ok_or_else(|| format!("no *{ext} in {}: {names:?}\n{stdout}", out.display()))
    };
    let p12 = find(".p12")?;
    let mobileconfig = find(".mobileconfig")?;
    for name in ["certificate.pem", "chain.pem"] {
        assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
    }
    assert!(
        std::fs::metadata(&mobileconfig)?.len() > 0,
        "empty mobileconfig"
    );
    let chain = std::fs::read_to_string(out.join("chain.pem"))?;
    assert_eq!(
        chain.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "chain.pem must hold issuer and root:\n{chain}"
    );
    let root_der = tools::cert_der_from_pem_file(&d.dev_dir().join("root-ca.crt"))?;
    assert!(
        chain.contains(tools::pem("CERTIFICATE", &root_der).trim()),
        "chain.pem does not contain the device root"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&p12)?.permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "the bundle {} is mode {mode:o}",
            p12.display()
        );
    }

    if tools::require_openssl() {
        check_with_openssl(&p12, &password_file, &out.join("certificate.pem"));
    }

    let status = cli_json(&d, &["status", "--data-dir", &data_dir, "--json"])?;
    assert!(status.is_object(), "status --json: {status}");
    assert!(
        !d.log().contains(&password),
        "the daemon log {} contains the ticket password",
        d.log_path.display()
    );
    Ok(())
}

fn check_with_openssl(p12: &Path, password_file: &Path, certificate_pem: &Path) {
    let out = tools::run(
        Command::new("openssl")
            .args(["pkcs12", "-info", "-nodes", "-in"])
            .arg(p12)
            .arg("-passin")
            .arg(format!("file:{}", password_file.display())),
    );
    let text = tools::text(&out);
    assert!(out.status.success(), "openssl pkcs12 -info failed:\n{text}");
    assert!(
        text.contains("pbeWithSHA1And3-KeyTripleDES-CBC"),
        "the ios bundle should be 3DES:\n{text}"
    );
    let leaf = std::fs::read_to_string(certificate_pem).unwrap_or_default();
    assert!(
        !leaf.trim().is_empty() && text.contains(leaf.trim()),
        "certificate.pem is not the bundle's leaf:\n{leaf}\n---\n{text}"
    );
}
