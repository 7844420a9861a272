//! Issue #12 item 10 against the real `ca-daemon` binary: with policy
//! `[tickets] bundle_password = "random"` each bundle gets its own 80-bit password, returned
//! once in `RedeemTicketResponse.bundle_password`; openssl and keytool open the bundle with it
//! (and not with the ticket password), and the KDFs run the raised iteration count (100,000).

use std::path::Path;
use std::process::Command;

use integration::{Daemon, DaemonOptions, sample_ticket_request, tools};
use pki_proto::v1;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn run_text(cmd: &mut Command) -> (bool, String) {
    let out = tools::run(cmd);
    (out.status.success(), tools::text(&out))
}

fn openssl_info(p12: &Path, password_file: &Path) -> (bool, String) {
    run_text(
        Command::new("openssl")
            .args(["pkcs12", "-info", "-nodes", "-in"])
            .arg(p12)
            .arg("-passin")
            .arg(format!("file:{}", password_file.display())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bundle_password_opens_the_bundle_in_openssl_and_keytool() -> TestResult {
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[tickets]\nbundle_password = \"random\"\n")?;
    let d = tokio::task::block_in_place(|| {
        Daemon::start_with(DaemonOptions {
            policy: Some(policy),
            ..Default::default()
        })
    })?;
    let mut enr = d.enrollment("portal").await?;
    let alphabet = ca_daemon::tickets::BUNDLE_PASSWORD_ALPHABET;
    let mut seen = Vec::new();
    // PBES2/AES (windows) and PBE-SHA1-3DES (android): the two encryptions importers read.
    for (n, os, aes) in [
        (1u32, v1::TargetOs::Windows, true),
        (2, v1::TargetOs::Android, false),
    ] {
        let t = enr
            .create_ticket(sample_ticket_request(n, os))
            .await?
            .into_inner();
        let r = enr
            .redeem_ticket(v1::RedeemTicketRequest {
                number: t.number.clone(),
                password: t.password.clone(),
                os: os as i32,
                keystore_profile: String::new(),
            })
            .await?
            .into_inner();
        let pw = r.bundle_password.clone();
        let groups: Vec<&str> = pw.split('-').collect();
        assert!(
            groups.len() == 4
                && groups
                    .iter()
                    .all(|g| g.len() == 4 && g.bytes().all(|c| alphabet.contains(&c))),
            "bundle password is not 4 groups of 4 symbols of the alphabet ({} chars)",
            pw.len()
        );
        assert!(!pw.contains(&t.password));
        seen.push(pw.clone());

        let case = dir.path().join(format!("case-{n}"));
        std::fs::create_dir_all(&case)?;
        let p12 = case.join(&r.file_name);
        std::fs::write(&p12, &r.pkcs12)?;
        let good = case.join("bundle-password");
        tools::write_secret(&good, pw.as_bytes())?;
        let ticket_pw = case.join("ticket-password");
        tools::write_secret(&ticket_pw, t.password.as_bytes())?;

        if tools::require_openssl() {
            let (ok, text) = openssl_info(&p12, &good);
            assert!(ok, "{os:?}: openssl with the bundle password:\n{text}");
            let want = if aes {
                "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 100000, PRF hmacWithSHA256"
            } else {
                "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 100000"
            };
            assert!(text.contains(want), "{os:?}: lacks {want:?}:\n{text}");
            let mac = if aes {
                "MAC: sha256, Iteration 100000"
            } else {
                "MAC: sha1, Iteration 100000"
            };
            assert!(text.contains(mac), "{os:?}: lacks {mac:?}:\n{text}");
            assert!(text.contains("BEGIN PRIVATE KEY"), "{os:?}:\n{text}");
            let (ok, text) = openssl_info(&p12, &ticket_pw);
            assert!(
                !ok,
                "{os:?}: the ticket password must not open a random-password bundle:\n{text}"
            );
        }
        if tools::require_keytool() {
            let (ok, text) = run_text(
                Command::new("keytool")
                    .args(["-list", "-v", "-storetype", "PKCS12", "-keystore"])
                    .arg(&p12)
                    .arg("-storepass:file")
                    .arg(&good),
            );
            assert!(
                ok,
                "{os:?}: keytool -list with the bundle password:\n{text}"
            );
            assert_eq!(
                text.matches("Entry type: PrivateKeyEntry").count(),
                1,
                "{os:?}: keytool:\n{text}"
            );
            let (ok, text) = run_text(
                Command::new("keytool")
                    .args(["-list", "-storetype", "PKCS12", "-keystore"])
                    .arg(&p12)
                    .arg("-storepass:file")
                    .arg(&ticket_pw),
            );
            assert!(
                !ok,
                "{os:?}: keytool opened it with the ticket password:\n{text}"
            );
        }
    }
    assert_ne!(seen[0], seen[1], "one password per bundle");
    let log = d.log();
    for pw in &seen {
        assert!(
            !log.contains(pw.as_str()),
            "a bundle password is in the daemon log"
        );
    }
    Ok(())
}
