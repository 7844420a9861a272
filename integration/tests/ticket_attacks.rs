//! Issue #12 items 4 to 6 against the real `ca-daemon` binary on loopback: what an attacker
//! without credentials can do with tickets.
//!
//! - 4: a burst of concurrent guesses is counted in full and never gets past the lockout; every
//!   bad credential (unknown number, wrong password, locked, redeemed, cancelled, and the right
//!   password on any of those) gets the one answer; a redeemed ticket's password probing is
//!   counted and stops being tested at the lockout.
//! - 5: an unknown number reaches neither the audit chain nor the daemon log, only its keyed
//!   hash (`ticket-tag:…`).
//! - 6: revoking a facility cancels its live tickets in the same change (the probe:
//!   a ticket of a second person of the facility can no longer be redeemed), and says how many.

use integration::{Daemon, sample_ticket_request};
use pki_proto::v1;
use tonic::transport::Channel;
use tonic::{Code, Status};

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Enrollment = v1::enrollment_client::EnrollmentClient<Channel>;

/// The one answer to every bad credential.
const BAD: &str = "ticket number or password is incorrect";

fn redeem_req(number: &str, password: &str) -> v1::RedeemTicketRequest {
    v1::RedeemTicketRequest {
        number: number.to_string(),
        password: password.to_string(),
        os: v1::TargetOs::Android as i32,
        keystore_profile: String::new(),
    }
}

/// A different 8-digit password, `k` steps away.
fn wrong(password: &str, k: u32) -> String {
    let p: u32 = password.parse().unwrap_or(0);
    format!("{:08}", (p + k) % 100_000_000)
}

async fn create(enr: &mut Enrollment, n: u32) -> Result<v1::CreateTicketResponse, Status> {
    Ok(enr
        .create_ticket(sample_ticket_request(n, v1::TargetOs::Android))
        .await?
        .into_inner())
}

async fn ticket(enr: &mut Enrollment, number: &str) -> Result<v1::Ticket, Status> {
    Ok(enr
        .get_ticket(v1::GetTicketRequest {
            number: number.to_string(),
        })
        .await?
        .into_inner())
}

/// Redeems and expects the one bad-credential answer.
async fn assert_bad(enr: &mut Enrollment, number: &str, password: &str, what: &str) {
    match enr.redeem_ticket(redeem_req(number, password)).await {
        Ok(r) => panic!("{what}: redeemed (serial {})", r.into_inner().serial),
        Err(s) => assert_eq!(
            (s.code(), s.message()),
            (Code::Unauthenticated, BAD),
            "{what}: every bad credential must get the one answer"
        ),
    }
}

#[tokio::test]
async fn ticket_probes_get_one_answer_are_counted_and_stop_at_the_lockout() -> TestResult {
    let d = Daemon::start()?;
    let mut enr = d.enrollment("portal").await?;
    let max = 5; // the dev policy's tickets.max_attempts

    // --- bursts of 10 concurrent guesses (9 wrong + the right one) on fresh tickets
    for n in 0..3u32 {
        let t = create(&mut enr, 100 + n).await?;
        let mut tasks = Vec::new();
        for k in 0..10u32 {
            let mut c = enr.clone();
            // The right password in a different place of each burst.
            let pw = if k == 3 * n {
                t.password.clone()
            } else {
                wrong(&t.password, k + 1)
            };
            let req = redeem_req(&t.number, &pw);
            tasks.push(tokio::spawn(async move { c.redeem_ticket(req).await }));
        }
        let mut ok = 0u32;
        let mut refused = 0u32;
        for task in tasks {
            match task.await? {
                Ok(_) => ok += 1,
                Err(s) => {
                    assert_eq!(
                        (s.code(), s.message()),
                        (Code::Unauthenticated, BAD),
                        "burst {n}: a refusal in a burst must be the one answer (the right \
                         password must never come back as 'locked')"
                    );
                    refused += 1;
                }
            }
        }
        assert!(ok <= 1, "burst {n}: {ok} redemptions of one ticket");
        let after = ticket(&mut enr, &t.number).await?;
        // Every refusal is counted, past the lockout and after the redemption too.
        assert_eq!(
            after.failed_attempts, refused,
            "burst {n}: {refused} refusals but {} counted: {after:?}",
            after.failed_attempts
        );
        if ok == 0 {
            assert_eq!(
                after.state(),
                v1::TicketState::Locked,
                "burst {n}: {after:?}"
            );
        } else {
            assert_eq!(
                after.state(),
                v1::TicketState::Redeemed,
                "burst {n}: {after:?}"
            );
        }
    }

    // --- the right password after the lockout answers like any bad credential
    let t = create(&mut enr, 110).await?;
    for k in 1..=max {
        assert_bad(
            &mut enr,
            &t.number,
            &wrong(&t.password, k),
            "wrong password",
        )
        .await;
    }
    assert_bad(
        &mut enr,
        &t.number,
        &t.password,
        "right password after lockout",
    )
    .await;
    let locked = ticket(&mut enr, &t.number).await?;
    assert_eq!(locked.state(), v1::TicketState::Locked);
    assert_eq!(locked.failed_attempts, max + 1, "{locked:?}");

    // --- a redeemed ticket: its password (the bundle's) can be probed only up to the lockout
    let t = create(&mut enr, 111).await?;
    enr.redeem_ticket(redeem_req(&t.number, &t.password))
        .await?;
    assert_bad(&mut enr, &t.number, &t.password, "right password, redeemed").await;
    for k in 1..max {
        assert_bad(
            &mut enr,
            &t.number,
            &wrong(&t.password, k),
            "wrong, redeemed",
        )
        .await;
    }
    let probed = ticket(&mut enr, &t.number).await?;
    assert_eq!(probed.state(), v1::TicketState::Redeemed);
    assert_eq!(
        probed.failed_attempts, max,
        "probing a redeemed ticket's password is counted: {probed:?}"
    );
    assert_bad(
        &mut enr,
        &t.number,
        &t.password,
        "right, redeemed, after the lockout",
    )
    .await;

    // --- cancelled: the right password gets the one answer, and is counted
    let t = create(&mut enr, 112).await?;
    enr.cancel_ticket(v1::CancelTicketRequest {
        number: t.number.clone(),
    })
    .await?;
    assert_bad(
        &mut enr,
        &t.number,
        &t.password,
        "right password, cancelled",
    )
    .await;
    assert_eq!(ticket(&mut enr, &t.number).await?.failed_attempts, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_number_is_audited_and_logged_only_as_a_keyed_hash() -> TestResult {
    use ca_daemon::store::Store as _;

    let mut d = Daemon::start()?;
    let mut enr = d.enrollment("portal").await?;
    let t = create(&mut enr, 120).await?;
    // A user who typed the password into the number field.
    let mut swapped = t.password.clone();
    if swapped == t.number {
        swapped = wrong(&swapped, 1);
    }
    assert_bad(
        &mut enr,
        &swapped,
        &t.number,
        "password in the number field",
    )
    .await;
    assert_bad(&mut enr, &swapped, &t.number, "the same again").await;
    drop(enr);
    let stopped = tokio::task::block_in_place(|| d.stop());
    assert!(stopped, "daemon stops cleanly:\n{}", d.log());

    let log = d.log();
    assert!(
        log.contains("unknown_number"),
        "the refusal is logged:\n{log}"
    );
    assert!(
        !log.contains(&swapped),
        "the daemon log {} contains the unknown number (a password)",
        d.log_path.display()
    );
    let store_dir = ca_daemon::pki::Layout::new(&d.data_dir).store_dir();
    let store = ca_daemon::store::SledStore::open(&store_dir)?;
    let entries = store.audit_entries(1, 10_000)?;
    let unknown: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "ticket.unknown_number")
        .collect();
    assert_eq!(unknown.len(), 2, "{entries:?}");
    for e in &unknown {
        assert!(e.target.starts_with("ticket-tag:"), "{e:?}");
    }
    assert_eq!(
        unknown[0].target, unknown[1].target,
        "one value, one tag: repeated probes stay visible"
    );
    for e in &entries {
        assert!(
            !format!("{} {} {}", e.actor, e.target, e.detail).contains(&swapped),
            "the audit chain holds the unknown number: {e:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn revoking_a_facility_cancels_its_live_tickets() -> TestResult {
    let d = Daemon::start()?;
    let mut enr = d.enrollment("portal").await?;
    // sample_ticket_request(n) puts person n in facility F{n % 7}: 7 and 14 share F000.
    let first = create(&mut enr, 7).await?;
    let issued = enr
        .redeem_ticket(redeem_req(&first.number, &first.password))
        .await?
        .into_inner();
    assert!(
        issued.bundle_password.is_empty(),
        "default mode: the ticket password protects the bundle"
    );
    let second = create(&mut enr, 14).await?;
    let elsewhere = create(&mut enr, 15).await?; // F001

    let r = d
        .certificates("ops")
        .await?
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::FacilityId("F000".into())),
            reason: v1::RevocationReason::CessationOfOperation as i32,
            invalidity_date: None,
        })
        .await?
        .into_inner();
    assert_eq!(r.revoked_serials, vec![issued.serial.clone()]);
    assert_eq!(r.cancelled_tickets, 1, "{r:?}");

    // The probe: the second person's ticket must not yield a certificate.
    assert_bad(
        &mut enr,
        &second.number,
        &second.password,
        "ticket of a revoked facility",
    )
    .await;
    assert_eq!(
        ticket(&mut enr, &second.number).await?.state(),
        v1::TicketState::Cancelled
    );
    let list = d
        .certificates("ops")
        .await?
        .list_certificates(v1::ListCertificatesRequest {
            facility_id: "F000".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(list.certificates.len(), 1, "no new certificate for F000");
    // Another facility's ticket is untouched.
    assert_eq!(
        ticket(&mut enr, &elsewhere.number).await?.state(),
        v1::TicketState::Active
    );
    // A serial target cancels nothing.
    let again = d
        .certificates("ops")
        .await?
        .revoke(v1::RevokeRequest {
            target: Some(v1::revoke_request::Target::Serial(issued.serial.clone())),
            reason: v1::RevocationReason::CessationOfOperation as i32,
            invalidity_date: None,
        })
        .await?
        .into_inner();
    assert_eq!(again.cancelled_tickets, 0);
    Ok(())
}
