//! The authority on a real dev PKI and a real sled store, without the gRPC and HTTP edges:
//! what the handlers now ask of it in one call.

use std::sync::Arc;

use pki_policy::domain::{Device, Enrollee, Facility, Person, RevocationReason, TargetOs};
use zeroize::Zeroizing;

use super::*;
use crate::keys::Passphrase;
use crate::pki;
use crate::store::{RevokeTarget, SledStore, TicketState};

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    authority: Arc<Authority>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("var");
    let mut opts = pki::InitOptions::dev(&data, "http://127.0.0.1:8080").expect("dev opts");
    opts.kdf = crate::keys::sealed::KdfParams::DEV_FLOOR;
    pki::init(&opts).expect("init");
    let pass =
        Arc::new(Passphrase::from_file(&pki::dev_passphrase_path(&data)).expect("passphrase"));
    let loaded = pki::load(&data, &pass).expect("load");
    let store = SledStore::open(&dir.path().join("store")).expect("store");
    let (authority, _rx) = Authority::new(
        loaded,
        Arc::new(store),
        Arc::new(Policy::default_policy()),
        data.clone(),
        pass,
    )
    .expect("authority");
    Fixture {
        _dir: dir,
        data,
        authority,
    }
}

fn enrollee() -> Enrollee {
    Enrollee {
        facility: Facility {
            id: "F001".into(),
            name: "豊田みよしケアネット訪問看護".into(),
            prefecture: "愛知県".into(),
            city: "豊田市".into(),
            kind: "訪問看護".into(),
        },
        person: Person {
            id: "P001".into(),
            family_name: "山田".into(),
            given_name: "花子".into(),
            family_name_kana: "ヤマダ".into(),
            given_name_kana: "ハナコ".into(),
            job: "看護師".into(),
            email: "h@example.jp".into(),
        },
        device: Device {
            id: "D001".into(),
            os: TargetOs::Windows,
            remark: String::new(),
        },
    }
}

fn ops() -> Caller {
    Caller {
        role: "ops".into(),
        name: "test".into(),
    }
}

/// One redeemed ticket (certificate revoked) and one still active.
async fn issue_and_revoke(a: &Arc<Authority>) -> String {
    let portal = Caller {
        role: "portal".into(),
        name: "test".into(),
    };
    let new = || NewTicket {
        enrollee: enrollee(),
        profile: None,
        approved_by: "承認者".into(),
        renews_serial: None,
    };
    let (t, password) = a.create_ticket(&portal, new()).await.expect("ticket");
    a.create_ticket(&portal, new())
        .await
        .expect("second ticket");
    let bundle = a
        .redeem_ticket(
            &portal,
            Redemption {
                number: t.number,
                password: Zeroizing::new(password.expose().to_string()),
                os: None,
                keystore_profile: None,
            },
        )
        .await
        .expect("redeem");
    a.revoke(
        &ops(),
        RevokeTarget::Serial(bundle.serial.clone()),
        RevocationReason::KeyCompromise,
        None,
    )
    .await
    .expect("revoke");
    bundle.serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_figures_count_tickets_certificates_and_crls() {
    let f = fixture();
    let a = &f.authority;
    issue_and_revoke(a).await;
    let published = a.publish_all_crls("ops:test").await.expect("publish");
    let s = a.status_figures().await.expect("figures");
    assert_eq!(s.issuers.len(), 1);
    assert_eq!(s.issuers[0].record.id, a.active_issuer_id());
    assert_eq!(s.issuers[0].certificate_count, 1);
    assert_eq!(s.issuers[0].crl_number, published.number);
    assert_eq!((s.certificates_total, s.certificates_revoked), (1, 1));
    let count = |state| {
        s.tickets_by_state
            .iter()
            .find(|(st, _)| *st == state)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(count(TicketState::Redeemed), 1);
    assert_eq!(count(TicketState::Active), 1);
    assert_eq!(
        s.crls,
        [CrlFigures {
            issuer_id: published.issuer_id.clone(),
            number: published.number,
            this_update: published.this_update,
            next_update: published.next_update,
        }]
    );
    let root = s.root_crl.expect("the dev PKI has a root CRL");
    assert_eq!(root.issuer_id, ROOT_CRL_ID);
    assert!(root.next_update > root.this_update);
    // Revoked certificates are not on the reminder list (and this one is far from expiry).
    assert_eq!(s.certificates_expiring_within_30_days, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_all_crls_answers_with_the_active_issuers_newest_crl() {
    let f = fixture();
    let a = &f.authority;
    let serial = issue_and_revoke(a).await;
    let first = a.publish_all_crls("ops:test").await.expect("publish");
    let second = a.publish_all_crls("ops:test").await.expect("publish again");
    assert_eq!(first.issuer_id, a.active_issuer_id());
    assert!(
        second.number > first.number,
        "{} {}",
        second.number,
        first.number
    );
    let (_, crl) = x509_parser::parse_x509_crl(&second.der).expect("CRL parses");
    let listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(listed, [serial]);
    assert_eq!(
        a.latest_crl(&first.issuer_id).await.expect("latest"),
        Some((*second).clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_crl_info_and_warning_follow_the_root_crl_file() {
    let f = fixture();
    let a = &f.authority;
    let info = a.root_crl_info().await.expect("root CRL");
    assert!(info.next_update > time::OffsetDateTime::now_utc() + Duration::days(30));
    assert_eq!(a.root_crl_warning().await, None);
    let path = pki::Layout::new(&f.data).root_crl();
    std::fs::write(&path, b"not a CRL").expect("overwrite");
    assert_eq!(a.root_crl_info().await, None);
    let w = a.root_crl_warning().await.expect("warning");
    assert!(w.contains("does not parse"), "{w}");
    std::fs::remove_file(&path).expect("remove");
    let w = a.root_crl_warning().await.expect("warning");
    assert!(w.contains("no root CRL"), "{w}");
}
