//! Durability, atomicity and concurrency of the sled store, through its public API.
//!
//! A crash test in a child process comes later; here "durable" means: acknowledged data is
//! there after the store is dropped and opened again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use ca_daemon::store::{
    AuditEvent, CertFilter, CertRecord, CrlRecord, IssuerRecord, IssuerState, RECORD_VERSION,
    Revocation, RevokeTarget, SledStore, Store, StoreError, TicketRecord, TicketState,
};
use pki_policy::domain::{Device, Enrollee, Facility, Person, RevocationReason, TargetOs};
use time::OffsetDateTime;
use time::macros::datetime;

const T0: OffsetDateTime = datetime!(2026-04-01 09:00 UTC);
const MAC: [u8; 32] = [0x5a; 32];
const ISSUER: &str = "issuer-2026";

fn open(path: &Path) -> SledStore {
    SledStore::open(path).expect("open store")
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    (dir, path)
}

fn ev(action: &str, target: &str) -> AuditEvent {
    AuditEvent::new("portal:portal.test", action, target, "訪問看護 登録")
}

fn ticket(number: &str, facility: &str) -> TicketRecord {
    TicketRecord {
        version: RECORD_VERSION,
        number: number.into(),
        password_mac: MAC,
        state: TicketState::Active,
        created_at: T0,
        expires_at: T0 + time::Duration::days(14),
        failed_attempts: 0,
        enrollee: Enrollee {
            facility: Facility {
                id: facility.into(),
                name: "さくら在宅クリニック".into(),
                prefecture: "愛知県".into(),
                city: "豊田市".into(),
                kind: "診療所".into(),
            },
            person: Person {
                id: format!("person-{number}"),
                family_name: "佐藤".into(),
                given_name: "一郎".into(),
                family_name_kana: "サトウ".into(),
                given_name_kana: "イチロウ".into(),
                job: "医師".into(),
                email: "ichiro@example.jp".into(),
            },
            device: Device {
                id: format!("device-{number}"),
                os: TargetOs::Android,
                remark: "業務用スマホ".into(),
            },
        },
        cert_profile: "default".into(),
        approved_by: "network-office".into(),
        created_by: "portal:portal.test".into(),
        redeemed_serial: None,
    }
}

fn cert(serial: &str, t: &TicketRecord) -> CertRecord {
    CertRecord {
        version: RECORD_VERSION,
        serial: serial.into(),
        issuer_id: ISSUER.into(),
        der: vec![0x30, 0x82, 0x01, 0x00, 0xaa, 0xbb],
        facility_id: t.enrollee.facility.id.clone(),
        person_id: t.enrollee.person.id.clone(),
        device_id: t.enrollee.device.id.clone(),
        os: t.enrollee.device.os,
        keystore_profile: "android".into(),
        ticket_number: t.number.clone(),
        not_before: T0,
        not_after: T0 + time::Duration::days(365),
        issued_at: T0,
        revocation: None,
    }
}

/// A 128-bit-looking serial, spread over the key space so that order != insertion order.
fn serial(i: u64) -> String {
    format!(
        "{:032x}",
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

/// Creates ticket `number` for `facility` and redeems it for certificate `serial`.
fn issue(s: &SledStore, number: &str, serial: &str, facility: &str) -> CertRecord {
    let t = ticket(number, facility);
    s.create_ticket(&t, ev("ticket.create", number))
        .expect("create ticket");
    let c = cert(serial, &t);
    s.redeem_ticket(number, &MAC, T0, &c, ev("ticket.redeem", number))
        .expect("redeem");
    c
}

fn revocation(at: OffsetDateTime) -> Revocation {
    Revocation {
        revoked_at: at,
        reason: RevocationReason::CessationOfOperation,
        invalidity_date: None,
    }
}

fn audit_len(s: &SledStore) -> usize {
    s.audit_entries(1, usize::MAX).expect("audit entries").len()
}

#[test]
fn acknowledged_writes_survive_reopen() {
    let (_dir, path) = temp();
    let issuer = IssuerRecord {
        version: RECORD_VERSION,
        id: ISSUER.into(),
        state: IssuerState::Active,
        cert_der: vec![1, 2, 3, 4],
        not_before: T0,
        not_after: T0 + time::Duration::days(3650),
        created_at: T0,
    };
    let crl = CrlRecord {
        version: RECORD_VERSION,
        issuer_id: ISSUER.into(),
        number: 1,
        this_update: T0,
        next_update: T0 + time::Duration::hours(24),
        der: vec![0x30, 0x00],
    };
    let (issued, pending, entries) = {
        let s = open(&path);
        s.put_issuer(&issuer, ev("issuer.create", ISSUER))
            .expect("put issuer");
        let issued = issue(&s, "20000001", &serial(1), "fac-1");
        let pending = ticket("20000002", "fac-1");
        s.create_ticket(&pending, ev("ticket.create", "20000002"))
            .expect("create");
        s.record_failed_attempt("20000002", 5, T0, ev("ticket.lock", "20000002"))
            .expect("attempt");
        assert_eq!(s.reserve_crl_number(ISSUER).expect("reserve"), 1);
        s.save_crl(&crl, ev("crl.publish", ISSUER))
            .expect("save crl");
        s.revoke(
            &RevokeTarget::Serial(serial(1)),
            &revocation(T0),
            ev("certificate.revoke", "x"),
        )
        .expect("revoke");
        (issued, pending, s.audit_entries(1, 100).expect("audit"))
    };

    let s = open(&path);
    let c = s
        .certificate(&serial(1))
        .expect("read")
        .expect("certificate survived");
    assert_eq!(c.revocation, Some(revocation(T0)));
    assert_eq!(
        CertRecord {
            revocation: None,
            ..c
        },
        issued
    );
    let t = s
        .ticket("20000001")
        .expect("read")
        .expect("ticket survived");
    assert_eq!(
        (t.state, t.redeemed_serial),
        (TicketState::Redeemed, Some(serial(1)))
    );
    let p = s
        .ticket("20000002")
        .expect("read")
        .expect("ticket survived");
    assert_eq!(
        p,
        TicketRecord {
            failed_attempts: 1,
            ..pending
        }
    );
    assert_eq!(s.issuers().expect("issuers"), [issuer]);
    assert_eq!(s.latest_crl(ISSUER).expect("crl"), Some(crl));
    assert_eq!(s.reserve_crl_number(ISSUER).expect("reserve"), 2);
    assert_eq!(
        s.revocation_entries(ISSUER).expect("revoked index").len(),
        1
    );
    assert_eq!(s.certificate_counts(ISSUER, T0).expect("counts"), (1, 1, 1));
    // put_issuer, create, redeem, create, save_crl, revoke.
    assert_eq!(entries.len(), 6);
    assert_eq!(s.audit_entries(1, 100).expect("audit"), entries);
    let v = s.verify_audit().expect("verify");
    assert!(v.ok && v.entries == 6, "{v:?}");
    // The chain continues where it left off.
    assert_eq!(
        s.append_audit(ev("test", "x")).expect("append").prev_hash,
        entries[5].hash
    );
}

#[test]
fn redeem_is_all_or_nothing() {
    let (_dir, path) = temp();
    {
        let s = open(&path);
        issue(&s, "30000001", &serial(7), "fac-1");
        let t = ticket("30000002", "fac-2");
        s.create_ticket(&t, ev("ticket.create", "30000002"))
            .expect("create");
        let before = audit_len(&s);
        // The serial is taken: nothing of the redemption may happen.
        let err = s.redeem_ticket(
            "30000002",
            &MAC,
            T0,
            &cert(&serial(7), &t),
            ev("ticket.redeem", "x"),
        );
        assert!(
            matches!(
                err,
                Err(StoreError::Conflict {
                    kind: "certificate",
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(audit_len(&s), before);
    }
    let s = open(&path);
    let t = s.ticket("30000002").expect("read").expect("exists");
    assert_eq!((t.state, &t.redeemed_serial), (TicketState::Active, &None));
    assert_eq!(audit_len(&s), 3);
    let fac2 = CertFilter {
        facility_id: Some("fac-2".into()),
        ..Default::default()
    };
    assert!(
        s.list_certificates(&fac2, None, 10)
            .expect("list")
            .is_empty()
    );
    let stored = s
        .certificate(&serial(7))
        .expect("read")
        .expect("first cert kept");
    assert_eq!(stored.ticket_number, "30000001");
    assert_eq!(s.certificate_counts(ISSUER, T0).expect("counts"), (1, 0, 1));
    // The ticket is still redeemable with a fresh serial.
    s.redeem_ticket(
        "30000002",
        &MAC,
        T0,
        &cert(&serial(8), &t),
        ev("ticket.redeem", "x"),
    )
    .expect("redeem with a new serial");
}

#[test]
fn concurrent_redemptions_of_one_ticket_yield_exactly_one() {
    const THREADS: u64 = 32;
    let (_dir, path) = temp();
    let s = open(&path);
    let t = ticket("40000001", "fac-1");
    s.create_ticket(&t, ev("ticket.create", "40000001"))
        .expect("create");
    let barrier = Barrier::new(THREADS as usize);
    let results: Vec<Result<TicketRecord, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (s, t, barrier) = (s.clone(), &t, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    s.redeem_ticket(
                        "40000001",
                        &MAC,
                        T0,
                        &cert(&serial(100 + i), t),
                        ev("ticket.redeem", "x"),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread panicked"))
            .collect()
    });
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one redemption succeeds");
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
    let all = s
        .list_certificates(&CertFilter::default(), None, 100)
        .expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(Some(&all[0].serial), winners[0].redeemed_serial.as_ref());
    assert_eq!(audit_len(&s), 2);
    drop(s);
    let s = open(&path);
    assert_eq!(
        s.ticket("40000001").expect("read").map(|t| t.state),
        Some(TicketState::Redeemed)
    );
    assert_eq!(
        s.list_certificates(&CertFilter::default(), None, 100)
            .expect("list")
            .len(),
        1
    );
}

#[test]
fn revoking_a_facility_revokes_each_of_its_certificates() {
    let (_dir, path) = temp();
    let s = open(&path);
    let mut fac1: Vec<String> = (0..5)
        .map(|i| issue(&s, &format!("5000000{i}"), &serial(200 + i), "fac-1").serial)
        .collect();
    fac1.sort();
    let other = issue(&s, "50000009", &serial(299), "fac-10");
    // One certificate of the facility was revoked earlier, for another reason.
    let early = Revocation {
        revoked_at: T0 + time::Duration::hours(1),
        reason: RevocationReason::KeyCompromise,
        invalidity_date: Some(T0),
    };
    s.revoke(
        &RevokeTarget::Serial(fac1[2].clone()),
        &early,
        ev("certificate.revoke", "x"),
    )
    .expect("revoke one");
    let before = audit_len(&s);

    let termination = revocation(T0 + time::Duration::days(30));
    let out = s
        .revoke(
            &RevokeTarget::Facility("fac-1".into()),
            &termination,
            ev("facility.terminate", "fac-1"),
        )
        .expect("revoke facility");
    assert_eq!(
        out.iter().map(|c| c.serial.clone()).collect::<Vec<_>>(),
        fac1
    );
    for c in &out {
        let want = if c.serial == fac1[2] {
            &early
        } else {
            &termination
        };
        assert_eq!(c.revocation.as_ref(), Some(want), "{}", c.serial);
    }
    // One audit entry per newly revoked certificate, naming it.
    let log = s.audit_entries(before as u64 + 1, 100).expect("audit");
    assert_eq!(log.len(), 4);
    assert!(
        log.iter()
            .all(|e| e.action == "facility.terminate" && fac1.contains(&e.target))
    );
    assert!(log[0].detail.contains("facility:fac-1"));
    // The facility "fac-10" shares a prefix but not the id.
    assert_eq!(
        s.certificate(&other.serial)
            .expect("read")
            .and_then(|c| c.revocation),
        None
    );

    // Revoking again changes nothing and keeps the original times.
    let again = s
        .revoke(
            &RevokeTarget::Facility("fac-1".into()),
            &revocation(T0 + time::Duration::days(60)),
            ev("x", "y"),
        )
        .expect("re-revoke");
    assert_eq!(again, out);
    assert_eq!(audit_len(&s), before + 4);
    assert_eq!(s.revocation_entries(ISSUER).expect("index").len(), 5);
    assert_eq!(s.certificate_counts(ISSUER, T0).expect("counts"), (6, 5, 6));

    let err = s.revoke(
        &RevokeTarget::Serial("ffff".into()),
        &termination,
        ev("x", "y"),
    );
    assert!(
        matches!(
            err,
            Err(StoreError::NotFound {
                kind: "certificate",
                ..
            })
        ),
        "{err:?}"
    );
    let none = s.revoke(
        &RevokeTarget::Device("no-such-device".into()),
        &termination,
        ev("x", "y"),
    );
    assert_eq!(none.expect("empty revoke"), []);
    // Person and device targets.
    let by_device = s
        .revoke(
            &RevokeTarget::Device(other.device_id.clone()),
            &termination,
            ev("x", "y"),
        )
        .expect("revoke device");
    assert_eq!(by_device.len(), 1);
    drop(s);
    let s = open(&path);
    assert!(
        s.certificate(&fac1[0])
            .expect("read")
            .is_some_and(|c| c.revocation == Some(termination.clone()))
    );
    assert!(s.verify_audit().expect("verify").ok);
}

#[test]
fn paging_returns_every_certificate_exactly_once() {
    let (_dir, path) = temp();
    let s = open(&path);
    let mut all = BTreeSet::new();
    let mut fac_b = BTreeSet::new();
    for i in 0..120u64 {
        let facility = ["fac-a", "fac-b", "fac-c"][(i % 3) as usize];
        let c = issue(&s, &format!("6{i:07}"), &serial(1000 + i), facility);
        if facility == "fac-b" {
            fac_b.insert(c.serial.clone());
        }
        all.insert(c.serial);
    }
    for (filter, want) in [
        (CertFilter::default(), &all),
        (
            CertFilter {
                facility_id: Some("fac-b".into()),
                ..Default::default()
            },
            &fac_b,
        ),
        (
            CertFilter {
                issuer_id: Some(ISSUER.into()),
                ..Default::default()
            },
            &all,
        ),
    ] {
        for limit in [1, 7, 40, 500] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let page = s
                    .list_certificates(&filter, cursor.as_deref(), limit)
                    .expect("page");
                assert!(page.len() <= limit);
                let Some(last) = page.last() else { break };
                cursor = Some(last.serial.clone());
                seen.extend(page.into_iter().map(|c| c.serial));
            }
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "ordered by serial, no repeats"
            );
            assert_eq!(
                seen.into_iter().collect::<BTreeSet<_>>(),
                *want,
                "{filter:?} limit {limit}"
            );
        }
    }
}

#[test]
fn crl_numbers_never_go_back_across_reopen() {
    let (_dir, path) = temp();
    {
        let s = open(&path);
        for want in 1..=3 {
            assert_eq!(s.reserve_crl_number(ISSUER).expect("reserve"), want);
        }
    }
    {
        let s = open(&path);
        assert_eq!(s.reserve_crl_number(ISSUER).expect("reserve"), 4);
        let crl = CrlRecord {
            version: RECORD_VERSION,
            issuer_id: ISSUER.into(),
            number: 4,
            this_update: T0,
            next_update: T0 + time::Duration::days(1),
            der: vec![0x30, 0x00],
        };
        s.save_crl(&crl, ev("crl.publish", ISSUER)).expect("save");
        let older = CrlRecord { number: 3, ..crl };
        assert!(matches!(
            s.save_crl(&older, ev("crl.publish", ISSUER)),
            Err(StoreError::StaleCrl { .. })
        ));
    }
    let s = open(&path);
    assert_eq!(
        s.latest_crl(ISSUER).expect("read").map(|c| c.number),
        Some(4)
    );
    assert_eq!(s.reserve_crl_number(ISSUER).expect("reserve"), 5);
    assert_eq!(s.reserve_crl_number("root").expect("reserve"), 1);
}

#[test]
fn tampering_with_any_byte_of_a_stored_audit_entry_is_detected() {
    let (_dir, path) = temp();
    {
        let s = open(&path);
        for i in 0..5 {
            s.append_audit(AuditEvent::new(
                "ops:cli",
                "test.append",
                format!("entry-{i}"),
                "監査ログ",
            ))
            .expect("append");
        }
        let v = s.verify_audit().expect("verify");
        assert!(v.ok && v.entries == 5, "{v:?}");
    }
    let s = open(&path);
    let len = s.tamper_audit_entry(3, 0, 0).expect("entry 3 exists");
    assert!(len > 64);
    for offset in 0..len {
        for mask in [0x01, 0x80] {
            s.tamper_audit_entry(3, offset, mask).expect("tamper");
            let v = s.verify_audit().expect("verify runs");
            assert!(!v.ok, "flip {mask:#x} at byte {offset} went unnoticed");
            assert_eq!(v.first_bad_entry, Some(3), "byte {offset}: {v:?}");
            assert_eq!(v.entries, 2);
            assert!(v.problem.is_some());
            s.tamper_audit_entry(3, offset, mask).expect("undo");
        }
    }
    assert!(s.verify_audit().expect("verify").ok);
}

#[test]
fn concurrent_writers_share_flushes() {
    const THREADS: usize = 32;
    const WRITES: usize = 8;
    let (_dir, path) = temp();
    let s = open(&path);
    let flushes_before = s.flush_count();
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (s, barrier) = (s.clone(), &barrier);
            scope.spawn(move || {
                barrier.wait();
                for w in 0..WRITES {
                    s.append_audit(ev("test.write", &format!("{t}/{w}")))
                        .expect("append");
                }
            });
        }
    });
    let flushes = s.flush_count() - flushes_before;
    let writes = (THREADS * WRITES) as u64;
    assert!(
        flushes < writes,
        "{flushes} flushes for {writes} concurrent writes"
    );
    eprintln!("{writes} concurrent writes made durable with {flushes} flushes");
    let v = s.verify_audit().expect("verify");
    assert!(v.ok && v.entries == writes, "{v:?}");
}

#[test]
fn backup_while_serving_is_consistent() {
    let (dir, path) = temp();
    let s = open(&path);
    for i in 0..20 {
        issue(&s, &format!("7{i:07}"), &serial(3000 + i), "fac-1");
    }
    let backup = dir.path().join("backup");
    std::thread::scope(|scope| {
        let writer = s.clone();
        let handle = scope.spawn(move || {
            for i in 20..60 {
                issue(&writer, &format!("7{i:07}"), &serial(3000 + i), "fac-1");
            }
        });
        s.backup_to(&backup).expect("backup");
        handle.join().expect("writer panicked");
    });
    let restored = dir.path().join("restored");
    SledStore::restore_from(&backup, &restored).expect("restore verifies the chain");
    let r = open(&restored);
    // Every certificate in the backup has its ticket and its two audit entries (a ticket
    // created just before the snapshot may be unredeemed, with one entry), and no more.
    let certs = r
        .list_certificates(&CertFilter::default(), None, 1000)
        .expect("list");
    assert!(certs.len() >= 20);
    let counts = r.ticket_counts(T0).expect("ticket counts");
    let count = |state| counts.iter().find(|(s, _)| *s == state).map_or(0, |c| c.1);
    assert_eq!(count(TicketState::Redeemed), certs.len() as u64);
    assert!(count(TicketState::Active) <= 1);
    assert_eq!(
        audit_len(&r) as u64,
        2 * count(TicketState::Redeemed) + count(TicketState::Active)
    );
    for c in &certs {
        let t = r
            .ticket(&c.ticket_number)
            .expect("read")
            .expect("ticket in backup");
        assert_eq!(t.redeemed_serial.as_ref(), Some(&c.serial));
    }
    assert_eq!(
        r.certificate_counts(ISSUER, T0).expect("counts").0,
        certs.len() as u64
    );
    assert!(matches!(
        SledStore::restore_from(&backup, &restored),
        Err(StoreError::TargetExists { .. })
    ));
}
