//! The store contract (issue #15): the same behavioural checks against `SledStore` and
//! `PgStore` on a real PostgreSQL (started by `integration::pg`), plus what only PostgreSQL
//! has: racing migrations, a newer schema, tampering found by `verify_audit`, two stores on one
//! database (visibility, notifications, Resync after a restart, the publication lock),
//! backup into sled and `store copy` back, and calls while the database is down.

use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use ca_daemon::store::image::ImageRow;
use ca_daemon::store::{
    AuditEvent, CertFilter, CertRecord, CrlRecord, IssuerRecord, IssuerState, PgOptions, PgStore,
    RECORD_VERSION, Reinstated, Revocation, RevokeTarget, RevokedEntry, SledStore, Store,
    StoreChange, StoreError, Supersession, TicketRecord, TicketState,
};
use integration::pg::{PgCluster, PgDatabase};
use pki_policy::domain::{Device, Enrollee, Facility, Person, RevocationReason, TargetOs};
use time::OffsetDateTime;
use zeroize::Zeroizing;

// ---- fixtures

fn shared_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| PgCluster::start_new().expect("start PostgreSQL"))
}

fn options(db: &PgDatabase) -> PgOptions {
    let pw = std::fs::read_to_string(&db.password_file).expect("password file");
    let mut o = PgOptions::from_url(&db.url, Some(Zeroizing::new(pw))).expect("url");
    o.connect_timeout = Duration::from_secs(2);
    o.call_timeout = Duration::from_secs(20);
    o
}

fn pg_store(cluster: &PgCluster) -> (PgDatabase, PgStore) {
    let db = cluster.create_database().expect("create database");
    let store = PgStore::connect(&options(&db)).expect("connect");
    (db, store)
}

fn sled_store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = SledStore::open(&dir.path().join("store")).expect("open sled");
    (dir, store)
}

fn now() -> OffsetDateTime {
    // Whole microseconds: what timestamptz keeps, so records compare equal after a round trip.
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

fn ev(action: &str, target: &str) -> AuditEvent {
    AuditEvent::new("test:contract", action, target, "contract test")
}

fn enrollee(facility: &str, person: &str, device: &str) -> Enrollee {
    Enrollee {
        facility: Facility {
            id: facility.into(),
            name: "さくら訪問看護".into(),
            prefecture: "愛知県".into(),
            city: "豊田市".into(),
            kind: "clinic".into(),
        },
        person: Person {
            id: person.into(),
            family_name: "山田".into(),
            given_name: "花子".into(),
            family_name_kana: "ヤマダ".into(),
            given_name_kana: "ハナコ".into(),
            job: "看護師".into(),
            email: "h@example.jp".into(),
        },
        device: Device {
            id: device.into(),
            os: TargetOs::Ios,
            remark: "iPad".into(),
        },
    }
}

fn ticket(number: &str, mac: u8, who: (&str, &str, &str)) -> TicketRecord {
    let t = now();
    TicketRecord {
        version: RECORD_VERSION,
        number: number.into(),
        password_mac: [mac; 32],
        state: TicketState::Active,
        created_at: t,
        expires_at: t + time::Duration::days(14),
        failed_attempts: 0,
        enrollee: enrollee(who.0, who.1, who.2),
        cert_profile: "default".into(),
        approved_by: "office".into(),
        created_by: "portal:test".into(),
        redeemed_serial: None,
    }
}

fn cert(serial: &str, ticket: &TicketRecord, issuer: &str) -> CertRecord {
    let t = now();
    CertRecord {
        version: RECORD_VERSION,
        serial: serial.into(),
        issuer_id: issuer.into(),
        der: vec![0x30, 0x03, 1, 2, 3],
        facility_id: ticket.enrollee.facility.id.clone(),
        person_id: ticket.enrollee.person.id.clone(),
        device_id: ticket.enrollee.device.id.clone(),
        os: TargetOs::Ios,
        keystore_profile: "ios".into(),
        ticket_number: ticket.number.clone(),
        not_before: t,
        not_after: t + time::Duration::days(365),
        issued_at: t,
        revocation: None,
    }
}

fn issuer(id: &str) -> IssuerRecord {
    let t = now();
    IssuerRecord {
        version: RECORD_VERSION,
        id: id.into(),
        state: IssuerState::Active,
        cert_der: vec![0x30, 0x00],
        not_before: t,
        not_after: t + time::Duration::days(3650),
        created_at: t,
    }
}

fn revocation(reason: RevocationReason) -> Revocation {
    Revocation {
        revoked_at: now(),
        reason,
        invalidity_date: None,
    }
}

/// Creates and redeems a ticket for `serial`; returns the certificate.
fn issue(s: &dyn Store, number: &str, serial: &str, who: (&str, &str, &str)) -> CertRecord {
    let t = ticket(number, 7, who);
    s.create_ticket(&t, ev("ticket.create", number))
        .expect("create");
    let c = cert(serial, &t, "iss-1");
    s.redeem_ticket(
        number,
        &[7; 32],
        now(),
        &c,
        ev("certificate.issued", serial),
    )
    .expect("redeem");
    c
}

// ---- the shared contract

fn contract(s: Arc<dyn Store>) {
    s.put_issuer(&issuer("iss-1"), ev("issuer.create", "iss-1"))
        .expect("issuer");
    assert_eq!(s.issuers().expect("issuers"), vec![issuer_like(&s)]);
    redeem_once(&s);
    lock_after_five(&*s);
    serial_conflict(&*s);
    revocations(&*s);
    crl_numbers(&*s);
    renewals(&*s);
    reinstate(&*s);
    key_blobs(&*s);
    publication_lock_in_process(&s);
    queries(&*s);
    let v = s.verify_audit().expect("verify");
    assert!(v.ok, "{v:?}");
    let head = s.durable_audit_head().expect("head");
    assert_eq!(head.seq, v.entries);
    let last = s.audit_entries(head.seq, 10).expect("entries");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].hash, head.hash);
}

fn issuer_like(s: &Arc<dyn Store>) -> IssuerRecord {
    // The stored one, checked field by field against what was put.
    let got = s.issuers().expect("issuers").remove(0);
    assert_eq!((got.id.as_str(), got.state), ("iss-1", IssuerState::Active));
    got
}

fn redeem_once(s: &Arc<dyn Store>) {
    let t = ticket("10000001", 1, ("f-1", "p-1", "d-1"));
    s.create_ticket(&t, ev("ticket.create", &t.number))
        .expect("create");
    assert!(matches!(
        s.create_ticket(&t, ev("ticket.create", &t.number)),
        Err(StoreError::Conflict { .. })
    ));
    let barrier = Arc::new(Barrier::new(32));
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let (s, t, barrier) = (s.clone(), t.clone(), barrier.clone());
            std::thread::spawn(move || {
                let c = cert(&format!("aa{i:04}"), &t, "iss-1");
                barrier.wait();
                s.redeem_ticket(
                    &t.number,
                    &[1; 32],
                    now(),
                    &c,
                    ev("certificate.issued", "x"),
                )
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let won: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    StoreError::StateMismatch {
                        actual: TicketState::Redeemed
                    }
                ),
                "{e:?}"
            );
        }
    }
    let stored = s.ticket(&t.number).expect("get").expect("ticket");
    assert_eq!(stored.state, TicketState::Redeemed);
    let serial = stored.redeemed_serial.expect("serial");
    let certs = s
        .list_certificates(
            &CertFilter {
                device_id: Some("d-1".into()),
                ..CertFilter::default()
            },
            None,
            100,
        )
        .expect("list");
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial, serial);
    assert_eq!(
        s.certificate(&serial).expect("get").as_ref(),
        Some(&certs[0])
    );
}

fn lock_after_five(s: &dyn Store) {
    let t = ticket("10000002", 2, ("f-2", "p-2", "d-2"));
    s.create_ticket(&t, ev("ticket.create", &t.number))
        .expect("create");
    let c = cert("bb0001", &t, "iss-1");
    for i in 1..=5u32 {
        assert!(matches!(
            s.redeem_ticket(
                &t.number,
                &[9; 32],
                now(),
                &c,
                ev("certificate.issued", "x")
            ),
            Err(StoreError::PasswordMismatch { .. })
        ));
        let after = s
            .record_failed_attempt(&t.number, 5, now(), ev("ticket.locked", &t.number))
            .expect("count");
        assert_eq!(after.failed_attempts, i);
        let want = if i < 5 {
            TicketState::Active
        } else {
            TicketState::Locked
        };
        assert_eq!(after.state, want);
    }
    assert!(matches!(
        s.redeem_ticket(
            &t.number,
            &[2; 32],
            now(),
            &c,
            ev("certificate.issued", "x")
        ),
        Err(StoreError::StateMismatch {
            actual: TicketState::Locked
        })
    ));
    assert!(matches!(
        s.record_failed_attempt("99999999", 5, now(), ev("ticket.locked", "x")),
        Err(StoreError::NotFound { .. })
    ));
}

fn serial_conflict(s: &dyn Store) {
    let existing = s
        .list_certificates(&CertFilter::default(), None, 1)
        .expect("list")
        .remove(0);
    let t = ticket("10000003", 3, ("f-3", "p-3", "d-3"));
    s.create_ticket(&t, ev("ticket.create", &t.number))
        .expect("create");
    let c = cert(&existing.serial, &t, "iss-1");
    assert!(matches!(
        s.redeem_ticket(
            &t.number,
            &[3; 32],
            now(),
            &c,
            ev("certificate.issued", "x")
        ),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        s.ticket(&t.number).expect("get").map(|t| t.state),
        Some(TicketState::Active)
    );
    let mut wrong = cert("cc0001", &t, "iss-1");
    wrong.ticket_number = "00000000".into();
    assert!(matches!(
        s.redeem_ticket(
            &t.number,
            &[3; 32],
            now(),
            &wrong,
            ev("certificate.issued", "x")
        ),
        Err(StoreError::Invalid { .. })
    ));
}

fn revocations(s: &dyn Store) {
    let a = issue(s, "20000001", "dd0001", ("f-r", "p-r1", "d-r1"));
    let b = issue(s, "20000002", "dd0002", ("f-r", "p-r1", "d-r2"));
    let c = issue(s, "20000003", "dd0003", ("f-r", "p-r2", "d-r3"));
    let d = issue(s, "20000004", "dd0004", ("f-r", "p-r3", "d-r4"));
    let kc = revocation(RevocationReason::KeyCompromise);
    let out = s
        .revoke(
            &RevokeTarget::Serial(a.serial.clone()),
            &kc,
            ev("certificate.revoke", "x"),
        )
        .expect("revoke");
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].revocation.as_ref().map(|r| r.reason),
        Some(RevocationReason::KeyCompromise)
    );
    assert!(matches!(
        s.revoke(
            &RevokeTarget::Serial("ffff".into()),
            &kc,
            ev("certificate.revoke", "x")
        ),
        Err(StoreError::NotFound { .. })
    ));
    // Device: already revoked keeps its revocation.
    let again = s
        .revoke(
            &RevokeTarget::Device("d-r1".into()),
            &revocation(RevocationReason::CessationOfOperation),
            ev("certificate.revoke", "x"),
        )
        .expect("revoke device");
    assert_eq!(
        again[0].revocation.as_ref().map(|r| r.reason),
        Some(RevocationReason::KeyCompromise)
    );
    let by_person = s
        .revoke(
            &RevokeTarget::Person("p-r1".into()),
            &kc,
            ev("certificate.revoke", "x"),
        )
        .expect("revoke person");
    assert_eq!(by_person.len(), 2);
    // Facility, with a live ticket of it cancelled in the same change.
    let live = ticket("20000009", 9, ("f-r", "p-r9", "d-r9"));
    s.create_ticket(&live, ev("ticket.create", &live.number))
        .expect("create");
    let (certs, cancelled) = s
        .revoke_and_cancel_tickets(
            &RevokeTarget::Facility("f-r".into()),
            &revocation(RevocationReason::CessationOfOperation),
            ev("certificate.revoke", "x"),
            ev("ticket.cancel", "x"),
            now(),
        )
        .expect("revoke facility");
    assert_eq!(certs.len(), 4);
    assert_eq!(cancelled, vec![live.number.clone()]);
    assert_eq!(
        s.ticket(&live.number).expect("get").map(|t| t.state),
        Some(TicketState::Cancelled)
    );
    let entries = s.revocation_entries("iss-1").expect("entries");
    let serials: Vec<_> = entries.iter().map(|e| e.serial.as_str()).collect();
    for x in [&a, &b, &c, &d] {
        assert!(serials.contains(&x.serial.as_str()), "{serials:?}");
    }
    let revoked = s.revoked_certificates("iss-1").expect("revoked");
    assert!(revoked.iter().all(|c| c.is_revoked()));
    assert_eq!(revoked.len(), entries.len());
    let audit = s.audit_entries(1, 100_000).expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e.action == "revocation.tickets_cancelled" && e.detail.starts_with("1 active"))
    );
}

fn crl_numbers(s: &dyn Store) {
    assert_eq!(s.reserve_crl_number("iss-1").expect("reserve"), 1);
    assert_eq!(s.reserve_crl_number("iss-1").expect("reserve"), 2);
    let crl = |number: u64, der: Vec<u8>| CrlRecord {
        version: RECORD_VERSION,
        issuer_id: "iss-1".into(),
        number,
        this_update: now(),
        next_update: now() + time::Duration::hours(24),
        der,
    };
    let c2 = crl(2, vec![2, 2]);
    s.save_crl(&c2, ev("crl.publish", "iss-1")).expect("save");
    s.save_crl(&c2, ev("crl.publish", "iss-1"))
        .expect("identical save is a no-op");
    assert!(matches!(
        s.save_crl(&crl(1, vec![1]), ev("crl.publish", "iss-1")),
        Err(StoreError::StaleCrl { saved: 2, .. })
    ));
    assert!(matches!(
        s.save_crl(&crl(2, vec![9]), ev("crl.publish", "iss-1")),
        Err(StoreError::StaleCrl { .. })
    ));
    assert_eq!(s.reserve_crl_number("iss-1").expect("reserve"), 3);
    s.save_crl(&crl(5, vec![5]), ev("crl.publish", "iss-1"))
        .expect("save 5");
    assert_eq!(s.reserve_crl_number("iss-1").expect("reserve"), 6);
    assert_eq!(
        s.latest_crl("iss-1").expect("latest").map(|c| c.number),
        Some(5)
    );
    assert_eq!(s.latest_crl("nobody").expect("latest"), None);
    assert_eq!(s.reserve_crl_number("root").expect("root"), 1);
}

fn renewals(s: &dyn Store) {
    let old = issue(s, "30000001", "ee0001", ("f-n", "p-n", "d-n"));
    let t = ticket("30000002", 4, ("f-n", "p-n", "d-n"));
    s.create_renewal_ticket(&t, &old.serial, ev("ticket.create", &t.number))
        .expect("renewal ticket");
    assert_eq!(
        s.ticket_renews(&t.number).expect("renews"),
        Some(old.serial.clone())
    );
    assert_eq!(s.ticket_renews("30000001").expect("renews"), None);
    let new = cert("ee0002", &t, "iss-1");
    let due = OffsetDateTime::from_unix_timestamp(now().unix_timestamp() + 3600).expect("due");
    let sup = Supersession {
        serial: old.serial.clone(),
        renewed_by: new.serial.clone(),
        due,
    };
    s.redeem_renewal(
        &t.number,
        &[4; 32],
        now(),
        &new,
        &sup,
        ev("certificate.renewed", "x"),
    )
    .expect("redeem renewal");
    assert_eq!(
        s.renewed_by(&old.serial).expect("by"),
        Some(new.serial.clone())
    );
    assert_eq!(s.next_supersession().expect("next"), Some(sup.clone()));
    let superseded = revocation(RevocationReason::Superseded);
    assert!(
        s.apply_due_supersessions(now(), 10, &superseded, ev("certificate.superseded", "x"))
            .expect("not due")
            .is_empty()
    );
    let done = s
        .apply_due_supersessions(due, 10, &superseded, ev("certificate.superseded", "x"))
        .expect("due");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].serial, old.serial);
    assert_eq!(s.next_supersession().expect("next"), None);
    // A renewal of a revoked certificate is refused inside the change.
    let t3 = ticket("30000003", 5, ("f-n", "p-n", "d-n"));
    s.create_renewal_ticket(&t3, &old.serial, ev("ticket.create", &t3.number))
        .expect("renewal ticket");
    let c3 = cert("ee0003", &t3, "iss-1");
    let sup3 = Supersession {
        serial: old.serial.clone(),
        renewed_by: c3.serial.clone(),
        due,
    };
    assert!(matches!(
        s.redeem_renewal(
            &t3.number,
            &[5; 32],
            now(),
            &c3,
            &sup3,
            ev("certificate.renewed", "x")
        ),
        Err(StoreError::Revoked { .. })
    ));
}

fn reinstate(s: &dyn Store) {
    let known = issue(s, "40000001", "ff0001", ("f-x", "p-x", "d-x"));
    let r = revocation(RevocationReason::KeyCompromise);
    let entry = |serial: &str| RevokedEntry {
        serial: serial.into(),
        not_after: known.not_after,
        revocation: r.clone(),
    };
    let out = s
        .reinstate_revocations(
            "iss-1",
            &[entry(&known.serial), entry("ff9999"), entry("dd0001")],
            "cli:test",
        )
        .expect("reinstate");
    assert_eq!(
        out,
        vec![
            Reinstated::Revoked(known.serial.clone()),
            Reinstated::Unknown("ff9999".into()),
            Reinstated::Present("dd0001".into()),
        ]
    );
    assert!(
        s.certificate(&known.serial)
            .expect("get")
            .is_some_and(|c| c.is_revoked())
    );
    let serials: Vec<_> = s
        .revocation_entries("iss-1")
        .expect("entries")
        .into_iter()
        .map(|e| e.serial)
        .collect();
    assert!(serials.contains(&"ff9999".to_owned()));
    // Unknown serials have no certificate to return.
    assert!(
        s.revoked_certificates("iss-1")
            .expect("revoked")
            .iter()
            .all(|c| c.serial != "ff9999")
    );
}

fn key_blobs(s: &dyn Store) {
    s.put_key_blob(
        "issuers/iss-2.key.sealed",
        b"sealed-1",
        ev("key.put", "iss-2"),
    )
    .expect("put");
    s.put_key_blob(
        "issuers/iss-2.key.sealed",
        b"sealed-1",
        ev("key.put", "iss-2"),
    )
    .expect("identical is a no-op");
    assert!(matches!(
        s.put_key_blob("issuers/iss-2.key.sealed", b"other", ev("key.put", "iss-2")),
        Err(StoreError::Conflict { .. })
    ));
    for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "a b", ""] {
        assert!(
            matches!(
                s.put_key_blob(bad, b"x", ev("key.put", "x")),
                Err(StoreError::Invalid { .. })
            ),
            "{bad:?}"
        );
    }
    s.put_key_blob("issuers/iss-2.crt", b"cert", ev("key.put", "iss-2"))
        .expect("put");
    assert_eq!(
        s.key_blobs().expect("blobs"),
        vec![
            ("issuers/iss-2.crt".to_owned(), b"cert".to_vec()),
            ("issuers/iss-2.key.sealed".to_owned(), b"sealed-1".to_vec()),
        ]
    );
}

fn publication_lock_in_process(s: &Arc<dyn Store>) {
    let held = s.publication_lock("iss-1").expect("lock");
    assert_eq!(held.issuer_id(), "iss-1");
    // Another issuer is independent.
    drop(s.publication_lock("iss-other").expect("other issuer"));
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    let waiter = std::thread::spawn(move || {
        let g = s2.publication_lock("iss-1");
        let _ = tx.send(());
        drop(g);
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "lock not exclusive"
    );
    drop(held);
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "lock not released"
    );
    waiter.join().expect("thread");
}

fn queries(s: &dyn Store) {
    let all = s
        .list_certificates(&CertFilter::default(), None, 1000)
        .expect("all");
    let mut sorted: Vec<_> = all.iter().map(|c| c.serial.clone()).collect();
    sorted.sort();
    assert_eq!(
        all.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(),
        sorted
    );
    let page1 = s
        .list_certificates(&CertFilter::default(), None, 3)
        .expect("p1");
    let page2 = s
        .list_certificates(&CertFilter::default(), Some(&page1[2].serial), 3)
        .expect("p2");
    assert_eq!(page2[0].serial, all[3].serial);
    let revoked = s
        .list_certificates(
            &CertFilter {
                issuer_id: Some("iss-1".into()),
                revoked: Some(true),
                ..CertFilter::default()
            },
            None,
            1000,
        )
        .expect("revoked");
    assert!(!revoked.is_empty() && revoked.iter().all(|c| c.is_revoked()));
    let (total, nrevoked, unexpired) = s.certificate_counts("iss-1", now()).expect("counts");
    assert_eq!(total, all.len() as u64);
    assert_eq!(
        nrevoked,
        all.iter().filter(|c| c.is_revoked()).count() as u64
    );
    assert_eq!(unexpired, total);
    let expiring = s
        .count_expiring(now(), now() + time::Duration::days(400))
        .expect("expiring");
    assert_eq!(
        expiring,
        all.iter().filter(|c| !c.is_revoked()).count() as u64
    );
    let counts = s.ticket_counts(now()).expect("ticket counts");
    assert_eq!(counts.len(), TicketState::ALL.len());
    let get = |st| counts.iter().find(|(s, _)| *s == st).map(|c| c.1);
    assert_eq!(get(TicketState::Locked), Some(1));
    assert!(get(TicketState::Redeemed).is_some_and(|n| n >= 5));
}

#[test]
fn sled_store_keeps_the_contract() {
    let (_dir, s) = sled_store();
    assert_eq!(s.kind(), "sled");
    assert!(s.subscribe().is_none());
    contract(Arc::new(s));
}

#[test]
fn pg_store_keeps_the_contract() {
    let (_db, s) = pg_store(shared_cluster());
    assert_eq!(s.kind(), "postgresql");
    contract(Arc::new(s));
}
