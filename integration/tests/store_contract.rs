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
    termination_against_new_tickets(&s);
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
                // Warm up (a PostgreSQL store opens its pooled connections), so that the
                // redemptions below really overlap.
                for _ in 0..3 {
                    let _ = s.ticket(&t.number);
                    barrier.wait();
                }
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

/// A facility's termination (bulk revocation that cancels its live tickets) racing ticket
/// creations for it: every ticket whose creation the audit log records before the revocation
/// is cancelled by it, every later one stays active. On PostgreSQL a creation committed while
/// the revocation ran used to survive it (the revocation reads the tickets under READ
/// COMMITTED); the enrollee locks order the two.
fn termination_against_new_tickets(s: &Arc<dyn Store>) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    for round in 0..6u32 {
        let facility = format!("f-term{round}");
        issue(
            &**s,
            &format!("4{round}000000"),
            &format!("ee{round}0"),
            (&facility, "p-t", "d-t"),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU32::new(1));
        let done = Arc::new(AtomicU32::new(0));
        // Until `n` creations have returned (bounded: 10 s).
        let wait_for = |n: u32| {
            let t0 = Instant::now();
            while done.load(Ordering::SeqCst) < n && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (s, stop, next, done, facility) = (
                    s.clone(),
                    stop.clone(),
                    next.clone(),
                    done.clone(),
                    facility.clone(),
                );
                std::thread::spawn(move || {
                    let mut made = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        let number = format!("4{round}{n:06}");
                        let t = ticket(&number, 4, (&facility, "p-t", "d-t"));
                        s.create_ticket(&t, ev("ticket.create", &number))
                            .expect("create during the termination");
                        made.push(number);
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    made
                })
            })
            .collect();
        wait_for(8);
        let (_, cancelled) = s
            .revoke_and_cancel_tickets(
                &RevokeTarget::Facility(facility.clone()),
                &revocation(RevocationReason::CessationOfOperation),
                ev("certificate.revoke", "terminate"),
                ev("ticket.cancel", "terminate"),
                now(),
            )
            .expect("terminate");
        let at_termination = done.load(Ordering::SeqCst);
        wait_for(at_termination + 8);
        stop.store(true, Ordering::SeqCst);
        let made: Vec<String> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        let audit = s.audit_entries(1, 1_000_000).expect("audit");
        let revoked_at = audit
            .iter()
            .find(|e| {
                e.action == "revocation.tickets_cancelled"
                    && e.target == format!("facility:{facility}")
            })
            .map(|e| e.seq)
            .expect("the termination is audited");
        let (mut before, mut after) = (0, 0);
        for number in &made {
            let created = audit
                .iter()
                .find(|e| e.action == "ticket.create" && &e.target == number)
                .map(|e| e.seq)
                .expect("the creation is audited");
            let state = s.ticket(number).expect("read").map(|t| t.state);
            if created < revoked_at {
                before += 1;
                assert_eq!(
                    state,
                    Some(TicketState::Cancelled),
                    "round {round}: ticket {number} created (audit {created}) before the \
                     termination (audit {revoked_at}) survived it"
                );
                assert!(cancelled.contains(number));
            } else {
                after += 1;
                assert_eq!(state, Some(TicketState::Active), "ticket {number}");
            }
        }
        assert!(
            before > 0 && after > 0,
            "round {round}: {before} before, {after} after"
        );
    }
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

// ---- PostgreSQL only

fn populated_pg(cluster: &PgCluster) -> (PgDatabase, Arc<PgStore>) {
    let (db, s) = pg_store(cluster);
    let s = Arc::new(s);
    s.put_issuer(&issuer("iss-1"), ev("issuer.create", "iss-1"))
        .expect("issuer");
    (db, s)
}

#[test]
fn migrations_race_and_a_newer_schema_is_refused() {
    let cluster = shared_cluster();
    let db = cluster.create_database().expect("db");
    let opts = options(&db);
    let barrier = Arc::new(Barrier::new(4));
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (opts, barrier) = (opts.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PgStore::connect(&opts).map(drop)
            })
        })
        .collect();
    for r in racers {
        r.join().expect("thread").expect("every racer connects");
    }
    assert_eq!(
        cluster
            .psql(&db.name, "SELECT count(*) FROM schema_version")
            .expect("psql"),
        "1"
    );
    cluster
        .psql(&db.name, "INSERT INTO schema_version (version) VALUES (99)")
        .expect("psql");
    let err = PgStore::connect(&opts)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("schema version 99") && err.contains("schema version 1"),
        "{err}"
    );
}

#[test]
fn audit_verify_finds_a_deleted_and_an_altered_row() {
    let cluster = shared_cluster();
    let (db, s) = populated_pg(cluster);
    for i in 0..5 {
        s.append_audit(ev("test.entry", &format!("e{i}")))
            .expect("append");
    }
    assert!(s.verify_audit().expect("verify").ok);
    cluster
        .psql(
            &db.name,
            "UPDATE audit SET detail = 'nothing happened' WHERE seq = 3",
        )
        .expect("psql");
    let v = s.verify_audit().expect("verify");
    assert!(!v.ok && v.first_bad_entry == Some(3), "{v:?}");
    assert!(v.problem.unwrap_or_default().contains("altered"));

    let (db, s) = populated_pg(cluster);
    for i in 0..5 {
        s.append_audit(ev("test.entry", &format!("e{i}")))
            .expect("append");
    }
    cluster
        .psql(&db.name, "DELETE FROM audit WHERE seq = 4")
        .expect("psql");
    let v = s.verify_audit().expect("verify");
    assert!(!v.ok && v.first_bad_entry == Some(4), "{v:?}");
    // The last row deleted: the recorded head tells.
    cluster
        .psql(&db.name, "DELETE FROM audit WHERE seq >= 4")
        .expect("psql");
    let v = s.verify_audit().expect("verify");
    assert!(!v.ok, "{v:?}");
}

#[test]
fn two_stores_on_one_database_see_each_other_and_get_notified() {
    // Its own cluster: it restarts PostgreSQL.
    let cluster = PgCluster::start_new().expect("start PostgreSQL");
    let (db, a) = populated_pg(&cluster);
    let b = PgStore::connect(&options(&db)).expect("second node");
    let mut changes = b.subscribe().expect("PostgreSQL notifies");
    let wait_for = |changes: &mut tokio::sync::broadcast::Receiver<StoreChange>,
                    want: &dyn Fn(&StoreChange) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match changes.try_recv() {
                Ok(c) if want(&c) => return true,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    };
    assert!(
        wait_for(&mut changes, &|c| *c == StoreChange::Resync),
        "first Resync"
    );

    // A redemption on A is visible on B; wrong passwords count across both.
    let c = issue(&*a, "50000001", "ab0001", ("f-m", "p-m", "d-m"));
    assert_eq!(
        b.ticket("50000001").expect("get").map(|t| t.state),
        Some(TicketState::Redeemed)
    );
    assert_eq!(b.certificate(&c.serial).expect("get"), Some(c.clone()));
    let t = ticket("50000002", 2, ("f-m", "p-m", "d-m2"));
    b.create_ticket(&t, ev("ticket.create", &t.number))
        .expect("create on B");
    for (i, s) in [&*a as &dyn Store, &b, &*a, &b, &*a]
        .into_iter()
        .enumerate()
    {
        let after = s
            .record_failed_attempt(&t.number, 5, now(), ev("ticket.locked", &t.number))
            .expect("count");
        assert_eq!(after.failed_attempts, i as u32 + 1);
    }
    assert_eq!(
        a.ticket(&t.number).expect("get").map(|t| t.state),
        Some(TicketState::Locked)
    );

    // A revocation on A is told to B, with its serial.
    a.revoke(
        &RevokeTarget::Serial(c.serial.clone()),
        &revocation(RevocationReason::KeyCompromise),
        ev("certificate.revoke", &c.serial),
    )
    .expect("revoke");
    let serial = c.serial.clone();
    assert!(
        wait_for(&mut changes, &|ch| matches!(ch,
            StoreChange::Revoked { issuer_id, serials } if issuer_id == "iss-1" && serials == std::slice::from_ref(&serial))),
        "revocation notification"
    );
    a.save_crl(
        &CrlRecord {
            version: RECORD_VERSION,
            issuer_id: "iss-1".into(),
            number: a.reserve_crl_number("iss-1").expect("reserve"),
            this_update: now(),
            next_update: now() + time::Duration::hours(1),
            der: vec![1],
        },
        ev("crl.publish", "iss-1"),
    )
    .expect("save");
    assert!(
        wait_for(&mut changes, &|ch| matches!(
            ch,
            StoreChange::Crl { number: 1, .. }
        )),
        "CRL notification"
    );
    // Both nodes append to one chain.
    let v = b.verify_audit().expect("verify");
    assert!(v.ok, "{v:?}");

    // After PostgreSQL restarts, B's listener reconnects and says Resync; both work again
    // without a new store.
    cluster.restart().expect("restart");
    assert!(
        wait_for(&mut changes, &|c| *c == StoreChange::Resync),
        "Resync after restart"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match a.append_audit(ev("test.after_restart", "a")) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("A does not recover: {e}"),
        }
    }
    assert!(b.verify_audit().expect("verify").ok);
}

#[test]
fn publication_lock_excludes_another_node_until_released_or_its_store_dropped() {
    let cluster = shared_cluster();
    let (db, a) = populated_pg(cluster);
    let b = Arc::new(PgStore::connect(&options(&db)).expect("second node"));
    let try_on_b = |b: &Arc<PgStore>| {
        let (tx, rx) = std::sync::mpsc::channel();
        let b = b.clone();
        let h = std::thread::spawn(move || {
            let g = b.publication_lock("iss-1").expect("lock on B");
            let _ = tx.send(());
            drop(g);
        });
        (rx, h)
    };
    let held = a.publication_lock("iss-1").expect("lock on A");
    let (rx, h) = try_on_b(&b);
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "B got a held lock"
    );
    drop(held);
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "not released on drop"
    );
    h.join().expect("thread");

    // The holder's store goes away with the guard still alive: PostgreSQL ends the session
    // and with it the lock.
    let c = PgStore::connect(&options(&db)).expect("third node");
    let leaked = c.publication_lock("iss-1").expect("lock on C");
    let (rx, h) = try_on_b(&b);
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "B got a held lock"
    );
    drop(c);
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "not released with the store"
    );
    h.join().expect("thread");
    drop(leaked);
    drop(a);
}

#[test]
fn a_call_while_postgresql_is_down_is_unavailable_and_works_again_after_start() {
    let cluster = PgCluster::start_new().expect("start PostgreSQL");
    let (_db, s) = populated_pg(&cluster);
    assert!(s.ticket("00000001").expect("up").is_none());
    cluster.stop().expect("stop");
    let started = Instant::now();
    let err = s.ticket("00000001").err();
    assert!(
        matches!(err, Some(StoreError::Unavailable { .. })),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let err = s.append_audit(ev("test.down", "x")).err();
    assert!(
        matches!(err, Some(StoreError::Unavailable { .. })),
        "{err:?}"
    );
    cluster.start().expect("start");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.ticket("00000001").is_err() {
        assert!(Instant::now() < deadline, "no recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.append_audit(ev("test.up", "x"))
        .expect("append after start");
    assert!(s.verify_audit().expect("verify").ok);
}

/// Fills a store with a bit of everything.
fn populate(s: &dyn Store) {
    let c1 = issue(s, "60000001", "0a01", ("f-b", "p-b", "d-b1"));
    issue(s, "60000002", "0a02", ("f-b", "p-b", "d-b2"));
    s.revoke(
        &RevokeTarget::Serial(c1.serial.clone()),
        &revocation(RevocationReason::KeyCompromise),
        ev("certificate.revoke", &c1.serial),
    )
    .expect("revoke");
    let t = ticket("60000003", 3, ("f-b", "p-b", "d-b2"));
    s.create_renewal_ticket(&t, "0a02", ev("ticket.create", &t.number))
        .expect("renewal");
    let n = s.reserve_crl_number("iss-1").expect("reserve");
    s.save_crl(
        &CrlRecord {
            version: RECORD_VERSION,
            issuer_id: "iss-1".into(),
            number: n,
            this_update: now(),
            next_update: now() + time::Duration::hours(1),
            der: vec![3, 3],
        },
        ev("crl.publish", "iss-1"),
    )
    .expect("crl");
    s.put_key_blob(
        "issuers/iss-1.key.sealed",
        b"sealed",
        ev("key.put", "iss-1"),
    )
    .expect("blob");
    s.reinstate_revocations(
        "iss-1",
        &[RevokedEntry {
            serial: "0aff".into(),
            not_after: now() + time::Duration::days(30),
            revocation: revocation(RevocationReason::KeyCompromise),
        }],
        "cli:test",
    )
    .expect("reinstate");
}

fn same_content(a: &dyn Store, b: &dyn Store) {
    assert_eq!(
        a.audit_entries(1, 100_000).expect("a"),
        b.audit_entries(1, 100_000).expect("b")
    );
    assert_eq!(
        a.durable_audit_head().expect("a"),
        b.durable_audit_head().expect("b")
    );
    let all = CertFilter::default();
    assert_eq!(
        a.list_certificates(&all, None, 1000).expect("a"),
        b.list_certificates(&all, None, 1000).expect("b")
    );
    assert_eq!(
        a.revocation_entries("iss-1").expect("a"),
        b.revocation_entries("iss-1").expect("b")
    );
    assert_eq!(a.issuers().expect("a"), b.issuers().expect("b"));
    assert_eq!(
        a.latest_crl("iss-1").expect("a"),
        b.latest_crl("iss-1").expect("b")
    );
    assert_eq!(a.key_blobs().expect("a"), b.key_blobs().expect("b"));
    for n in ["60000001", "60000002", "60000003"] {
        assert_eq!(a.ticket(n).expect("a"), b.ticket(n).expect("b"));
        assert_eq!(
            a.ticket_renews(n).expect("a"),
            b.ticket_renews(n).expect("b")
        );
    }
    assert_eq!(
        a.reserve_crl_number("iss-1").expect("a"),
        b.reserve_crl_number("iss-1").expect("b")
    );
}

#[test]
fn backup_into_sled_and_copy_back_keep_everything_and_the_chain() {
    let cluster = shared_cluster();
    let (_db, pg) = populated_pg(cluster);
    populate(&*pg);
    let dir = tempfile::tempdir().expect("tmp");
    let backup = dir.path().join("backup");
    pg.backup_to(&backup).expect("backup");
    assert!(matches!(
        pg.backup_to(&backup),
        Err(StoreError::TargetExists { .. })
    ));
    let sled = SledStore::open(&backup).expect("open the backup");
    assert!(sled.verify_audit().expect("verify").ok);
    same_content(&*pg, &sled);

    // And back: the sled copy into a fresh database, chain intact.
    let (_db2, target) = pg_store(cluster);
    let summary = target
        .import_image(|sink| sled.export_image(sink), |_, _| {})
        .expect("import");
    assert_eq!(summary.audit_head, sled.durable_audit_head().expect("head"));
    assert!(summary.rows.get("audit").is_some_and(|n| *n > 5));
    assert!(target.verify_audit().expect("verify").ok);
    same_content(&sled, &target);
    // A non-empty target is refused, and left as it was.
    let err = target
        .import_image(|sink| sled.export_image(sink), |_, _| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("not empty"), "{err}");
    assert!(target.verify_audit().expect("verify").ok);
    // A source that fails midway imports nothing.
    let (_db3, empty) = pg_store(cluster);
    let err = empty
        .import_image(
            |sink| {
                sled.export_image(|row| {
                    if matches!(row, ImageRow::Audit(ref e) if e.seq == 3) {
                        return Err(StoreError::Invalid {
                            kind: "test",
                            detail: "source broke".into(),
                        });
                    }
                    sink(row)
                })
            },
            |_, _| {},
        )
        .err();
    assert!(matches!(err, Some(StoreError::Invalid { .. })), "{err:?}");
    assert_eq!(empty.first_nonempty_table().expect("empty"), None);
}

#[test]
fn store_copy_cli_moves_a_sled_store_and_refuses_a_non_empty_target() {
    let cluster = shared_cluster();
    let data = tempfile::tempdir().expect("tmp");
    {
        let sled = SledStore::open(&data.path().join("store")).expect("sled");
        sled.put_issuer(&issuer("iss-1"), ev("issuer.create", "iss-1"))
            .expect("issuer");
        populate(&sled);
        for i in 0..30 {
            issue(
                &sled,
                &format!("7{i:07}"),
                &format!("0b{i:02}"),
                ("f-c", "p-c", "d-c"),
            );
        }
    }
    let db = cluster.create_database().expect("db");
    let bin = integration::daemon_bin().expect("ca-daemon binary");
    let copy = || {
        std::process::Command::new(&bin)
            .args(["store", "copy", "--from"])
            .arg(data.path())
            .args(["--to", &db.url, "--store-password-file"])
            .arg(&db.password_file)
            .args(["--progress-every", "20"])
            .output()
            .expect("run ca-daemon store copy")
    };
    let out = copy();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rows copied"), "{stdout}");
    assert!(stdout.contains("audit chain intact"), "{stdout}");
    let sled = SledStore::open(&data.path().join("store")).expect("sled");
    let pg = PgStore::connect(&options(&db)).expect("connect");
    assert!(pg.verify_audit().expect("verify").ok);
    same_content(&sled, &pg);
    drop(sled);
    // Again: the target now has rows.
    let out = copy();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not empty"), "{stderr}");
    // A password inside the URL is refused and never echoed.
    let out = std::process::Command::new(&bin)
        .args(["store", "copy", "--from"])
        .arg(data.path())
        .args(["--to", "postgresql://ca:hunter2@127.0.0.1:1/x"])
        .output()
        .expect("run");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && all.contains("--store-password-file"),
        "{all}"
    );
    assert!(!all.contains("hunter2"), "{all}");
}
