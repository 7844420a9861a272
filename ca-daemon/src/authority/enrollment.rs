//! Enrollment: tickets (create, read, cancel; renewal tickets) and their redemption, from the
//! admission of an attempt (one answer for every bad credential) to the durable issuance.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use crate::error::CaError;
use crate::issue::{self, LeafRequest};
use crate::metrics;
use crate::ocsp::CertStatus;
use crate::pkcs12::{self, BundleInput, MobileconfigInput};
use crate::store::{AuditEvent, CertRecord, StoreError, Supersession, TicketRecord, TicketState};
use crate::tickets::{TicketPassword, random_digits};

use super::{Authority, Bundle, Caller, NewTicket, Redemption, blocking, store_err};

/// Guard that removes a ticket number from the in-flight set.
pub(super) struct Redeeming<'a> {
    set: &'a Mutex<HashSet<String>>,
    number: String,
}

impl Drop for Redeeming<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.number);
        }
    }
}

impl Authority {
    /// Creates a ticket and returns it with its password (shown once).
    pub async fn create_ticket(
        self: &Arc<Self>,
        caller: &Caller,
        req: NewTicket,
    ) -> Result<(TicketRecord, TicketPassword), CaError> {
        crate::storage::check_room()?;
        self.policy
            .limits
            .check_enrollee(&req.enrollee)
            .map_err(|e| CaError::invalid(e.field.clone(), e.problem.to_string()))?;
        let profile_name = match &req.profile {
            Some(p) => {
                self.policy
                    .cert_profile(Some(p))
                    .map_err(|e| CaError::invalid("profile", e.to_string()))?;
                p.clone()
            }
            None => self.policy.certificate.default_profile.clone(),
        };
        let max = self.policy.limits.max_string_len;
        if req.approved_by.chars().count() > max {
            return Err(CaError::invalid(
                "approved_by",
                format!("longer than {max} characters"),
            ));
        }
        let now = OffsetDateTime::now_utc();
        // A renewal: same identity as a certificate that is still valid; the profile defaults
        // to the renewed certificate's.
        let profile_name = match &req.renews_serial {
            Some(serial) => {
                let old = self.certificate(serial).await?;
                crate::renewal::check_renewable(&old, &req.enrollee, now)?;
                match &req.profile {
                    Some(_) => profile_name,
                    None => self.original_profile(&old).await.unwrap_or(profile_name),
                }
            }
            None => profile_name,
        };
        // A ticket that cannot be redeemed is never created.
        let profile = self
            .policy
            .cert_profile(Some(&profile_name))
            .map_err(|e| CaError::invalid("profile", e.to_string()))?;
        crate::renewal::check_subject(profile, &req.enrollee)?;
        let expires_at = now + Duration::days(i64::from(self.policy.tickets.lifetime_days));
        let password = TicketPassword::generate().map_err(CaError::internal)?;
        let this = self.clone();
        let actor = caller.actor();
        let mut last_err = None;
        // A number collides with a live ticket with probability (live tickets)/10^8: retry.
        for _ in 0..8 {
            let number = random_digits(8).map_err(CaError::internal)?;
            let record = TicketRecord {
                version: 1,
                number: number.clone(),
                password_mac: self.mac.mac(&number, password.expose()),
                state: TicketState::Active,
                created_at: now,
                expires_at,
                failed_attempts: 0,
                enrollee: req.enrollee.clone(),
                cert_profile: profile_name.clone(),
                approved_by: req.approved_by.clone(),
                created_by: actor.clone(),
                redeemed_serial: None,
            };
            let event = AuditEvent {
                actor: actor.clone(),
                action: "ticket.created".into(),
                target: format!("ticket:{number}"),
                detail: format!(
                    "facility={} person={} device={} approved_by={}{}",
                    record.enrollee.facility.id,
                    record.enrollee.person.id,
                    record.enrollee.device.id,
                    record.approved_by,
                    req.renews_serial
                        .as_ref()
                        .map(|s| format!(" renews={s}"))
                        .unwrap_or_default()
                ),
            };
            let this2 = this.clone();
            let rec2 = record.clone();
            let renews = req.renews_serial.clone();
            let result = blocking(move || {
                let stored = match &renews {
                    Some(serial) => this2.store.create_renewal_ticket(&rec2, serial, event),
                    None => this2.store.create_ticket(&rec2, event),
                };
                match stored {
                    Ok(()) => Ok(Ok(())),
                    Err(StoreError::Conflict { .. }) => Ok(Err(())),
                    Err(e) => Err(store_err(e)),
                }
            })
            .await?;
            match result {
                Ok(()) => {
                    metrics::metrics().tickets_created.inc();
                    tracing::info!(ticket = %number, facility = %record.enrollee.facility.id,
                        person = %record.enrollee.person.id, "ticket created");
                    return Ok((record, password));
                }
                Err(()) => last_err = Some(number),
            }
        }
        Err(CaError::internal(format!(
            "could not find a free ticket number (last tried {last_err:?})"
        )))
    }

    /// The certificate profile the renewed certificate was issued with, if its ticket is still
    /// stored and the policy still has the profile.
    pub(super) async fn original_profile(&self, cert: &CertRecord) -> Option<String> {
        let store = self.store.clone();
        let number = cert.ticket_number.clone();
        let t = blocking(move || store.ticket(&number).map_err(store_err))
            .await
            .ok()??;
        (t.redeemed_serial.as_deref() == Some(cert.serial.as_str())
            && self.policy.cert_profile(Some(&t.cert_profile)).is_ok())
        .then_some(t.cert_profile)
    }

    /// The serial a ticket renews (None = a new registration).
    pub async fn ticket_renews(&self, number: &str) -> Result<Option<String>, CaError> {
        let store = self.store.clone();
        let n = number.to_string();
        blocking(move || store.ticket_renews(&n).map_err(store_err)).await
    }

    /// Reads a ticket (never the password).
    pub async fn get_ticket(&self, number: &str) -> Result<TicketRecord, CaError> {
        let store = self.store.clone();
        let n = number.to_string();
        let t = blocking(move || store.ticket(&n).map_err(store_err)).await?;
        t.ok_or_else(|| CaError::NotFound {
            what: "ticket",
            id: number.to_string(),
        })
    }

    /// Cancels an active ticket.
    pub async fn cancel_ticket(
        &self,
        caller: &Caller,
        number: &str,
    ) -> Result<TicketRecord, CaError> {
        let t = self.get_ticket(number).await?;
        let now = OffsetDateTime::now_utc();
        let state = t.effective_state(now);
        if state != TicketState::Active {
            return Err(CaError::WrongState {
                what: "ticket",
                state: state.to_string(),
                expected: "active",
            });
        }
        let store = self.store.clone();
        let n = number.to_string();
        let event = AuditEvent {
            actor: caller.actor(),
            action: "ticket.cancelled".into(),
            target: format!("ticket:{number}"),
            detail: String::new(),
        };
        blocking(move || {
            store
                .set_ticket_state(&n, TicketState::Active, TicketState::Cancelled, event)
                .map_err(|e| match e {
                    StoreError::StateMismatch { actual } => CaError::WrongState {
                        what: "ticket",
                        state: actual.to_string(),
                        expected: "active",
                    },
                    e => store_err(e),
                })
        })
        .await
    }

    /// Decides a redemption attempt, inside the number's turn: the ticket if it is `Active`,
    /// has attempts left and the password is right; else one answer for every bad credential
    /// (unknown number, wrong password, locked, redeemed, expired, cancelled: issue #12 item 4),
    /// each after the same work, a MAC and a durable write that counts the failure whatever
    /// the ticket's state. Once a ticket's attempts are used up its password is no longer
    /// tested at all, so a redeemed ticket's password (also its bundle's password, in the
    /// default mode) cannot be probed past the lockout either.
    pub(super) async fn admit(
        &self,
        caller: &Caller,
        req: &Redemption,
        ticket: Option<TicketRecord>,
        now: OffsetDateTime,
    ) -> Result<TicketRecord, CaError> {
        let store = self.store.clone();
        let Some(ticket) = ticket else {
            let _ = self.mac.verify(&req.number, &req.password, &[0u8; 32]);
            // A keyed hash, never the number: it may be a password typed into the wrong field
            // (issue #12 item 5).
            let tag = self.mac.unknown_number_tag(&req.number);
            let event = AuditEvent {
                actor: caller.actor(),
                action: "ticket.unknown_number".into(),
                target: tag.clone(),
                detail: String::new(),
            };
            let _ =
                blocking(move || store.append_audit(event).map(|_| ()).map_err(store_err)).await;
            tracing::info!(ticket = %tag, outcome = "unknown_number", "redemption refused");
            return Err(CaError::BadTicketCredentials);
        };
        let max = self.policy.tickets.max_attempts;
        let state = ticket.effective_state(now);
        let exhausted = ticket.failed_attempts >= max || state == TicketState::Locked;
        let right = if exhausted {
            // Never test a password once the attempts are used up: no oracle after the lockout.
            let _ = self.mac.verify(&req.number, &req.password, &[0u8; 32]);
            false
        } else {
            self.mac
                .verify(&req.number, &req.password, &ticket.password_mac)
        };
        if right && state == TicketState::Active {
            return Ok(ticket);
        }
        let n = req.number.clone();
        let event = AuditEvent {
            actor: caller.actor(),
            action: "ticket.locked".into(),
            target: format!("ticket:{}", req.number),
            detail: format!("{max} wrong passwords"),
        };
        let counted = blocking(move || {
            store
                .record_failed_attempt(&n, max, now, event)
                .map_err(store_err)
        })
        .await;
        // A failure that could not be counted is not answered as one: the count is the lockout.
        let t = counted?;
        tracing::info!(ticket = %req.number, state = %state, failed_attempts = t.failed_attempts,
            locked = (t.state == TicketState::Locked), "redemption refused");
        Err(CaError::BadTicketCredentials)
    }

    /// Redeems a ticket once: key, certificate, PKCS#12 (and .mobileconfig), durably recorded
    /// before this returns.
    pub async fn redeem_ticket(
        self: &Arc<Self>,
        caller: &Caller,
        req: Redemption,
    ) -> Result<Bundle, CaError> {
        let result = self.redeem_inner(caller, req).await;
        let m = metrics::metrics();
        let outcome = match &result {
            Ok(_) => {
                m.issuances.inc();
                "ok"
            }
            Err(CaError::BadTicketCredentials) => "bad_credentials",
            Err(CaError::TicketNotRedeemable { .. }) => "not_redeemable",
            Err(CaError::RedemptionInProgress) => "in_progress",
            Err(CaError::InvalidArgument { .. }) => "invalid_argument",
            Err(CaError::ResourceExhausted(m)) if m.starts_with(crate::storage::NEARLY_FULL) => {
                "storage_full"
            }
            Err(CaError::ResourceExhausted(_)) => "rate_limited",
            Err(_) => "error",
        };
        metrics::inc(&m.redemptions, outcome);
        result
    }

    pub(super) async fn redeem_inner(
        self: &Arc<Self>,
        caller: &Caller,
        req: Redemption,
    ) -> Result<Bundle, CaError> {
        crate::storage::check_room()?;
        if !self.limits.allow_ticket(&req.number) {
            tracing::warn!(ticket = %self.mac.unknown_number_tag(&req.number),
                "ticket redemption rate limit hit");
            return Err(CaError::ResourceExhausted(
                "too many attempts for this ticket; wait a minute".into(),
            ));
        }
        // One attempt at a time per number, up to its durable outcome (issue #12 item 4).
        let _turn = self.ticket_gate.turn(&req.number).await;
        let now = OffsetDateTime::now_utc();
        let ticket = {
            let store = self.store.clone();
            let n = req.number.clone();
            blocking(move || store.ticket(&n).map_err(store_err)).await?
        };
        let ticket = self.admit(caller, &req, ticket, now).await?;
        // A renewal ticket: the renewed certificate must still be valid (revoked or expired
        // since the ticket was created: refused, a new registration is needed).
        let supersede = match self.ticket_renews(&req.number).await? {
            Some(old_serial) => {
                let old = self.certificate(&old_serial).await?;
                crate::renewal::check_renewable(&old, &ticket.enrollee, now)?;
                Some(old_serial)
            }
            None => None,
        };
        let grace = Duration::seconds(i64::from(self.policy.renewal.supersede_after_secs));
        let renewing = supersede.is_some();

        let _guard = {
            let mut set = self
                .redeeming
                .lock()
                .map_err(|_| CaError::internal("redeeming set poisoned"))?;
            if !set.insert(req.number.clone()) {
                return Err(CaError::RedemptionInProgress);
            }
            Redeeming {
                set: &self.redeeming,
                number: req.number.clone(),
            }
        };

        let os = req.os.unwrap_or(ticket.enrollee.device.os);
        let keystore = self
            .policy
            .keystore_for(os, req.keystore_profile.as_deref())
            .map_err(|e| CaError::invalid("keystore_profile", e.to_string()))?
            .clone();
        let cert_profile = self
            .policy
            .cert_profile(Some(&ticket.cert_profile))
            .map_err(|e| CaError::internal(format!("ticket profile vanished: {e}")))?
            .clone();
        let set = self.issuer_set();
        let issuer = set
            .by_id
            .get(&set.active)
            .cloned()
            .ok_or_else(|| CaError::Unavailable("no active issuer".into()))?;
        let urls = self.urls_for(&issuer.id);
        let root = self.root_cert_der.clone();

        // One hand-off to the blocking pool for the whole build → commit → pre-sign: each
        // hand-off costs task switches, and redemption is the hot path (docs/benchmarks.md).
        // The CPU permit bounds the key generation, signing and KDFs to the core count and is
        // released before the (group-committed) durable write.
        let permit = self
            .cpu
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CaError::Unavailable("shutting down".into()))?;
        let this = self.clone();
        let actor = caller.actor();
        // Issue #12 item 10: the bundle's own random password (80 bits) if the policy says so,
        // else the ticket password (the manual's flow).
        let bundle_password = match self.policy.tickets.bundle_password {
            pki_policy::BundlePassword::Ticket => None,
            pki_policy::BundlePassword::Random => {
                Some(crate::tickets::random_bundle_password().map_err(CaError::internal)?)
            }
        };
        let password = bundle_password
            .clone()
            .unwrap_or_else(|| req.password.clone());
        let issuer2 = issuer.clone();
        let built = blocking(move || {
            let enrollee = &ticket.enrollee;
            let leaf = issue::issue_leaf(&LeafRequest {
                enrollee,
                profile: &cert_profile,
                issuer_cert_der: &issuer2.cert_der,
                issuer_key: &issuer2.key,
                issuer_not_after: issuer2.not_after,
                urls: &urls,
                now,
            })
            .map_err(CaError::internal)?;
            let chain = vec![issuer2.cert_der.clone(), root.clone()];
            let friendly = format!(
                "{} ({})",
                enrollee.person.display_name(),
                enrollee.facility.name
            );
            let pfx = pkcs12::build_pfx(
                &keystore,
                &BundleInput {
                    key_pkcs8: &leaf.key_pkcs8,
                    leaf_der: &leaf.der,
                    chain_der: &chain,
                    friendly_name: &friendly,
                    password: &password,
                },
            )
            .map_err(CaError::internal)?;
            let base = format!("{}-{}", enrollee.device.id, &leaf.serial_hex[..8]);
            let file_name = format!("{base}.{}", keystore.file_extension);
            let (mobileconfig, mc_name) = if keystore.mobileconfig {
                let identity = crate::renewal::device_identity(enrollee);
                let mc = pkcs12::build_mobileconfig(&MobileconfigInput {
                    device_identity: &identity,
                    pfx: &pfx,
                    pfx_file_name: &file_name,
                    profile: &keystore,
                    issuer_der: &issuer2.cert_der,
                    root_der: &root,
                    root_name: "ケアネット 端末ルートCA",
                    display_name: &enrollee.person.display_name(),
                    organization: &enrollee.facility.name,
                    serial_hex: &leaf.serial_hex,
                })
                .map_err(CaError::internal)?;
                (mc, format!("{base}.mobileconfig"))
            } else {
                (Vec::new(), String::new())
            };
            drop(permit);

            let record = CertRecord {
                version: 1,
                serial: leaf.serial_hex.clone(),
                issuer_id: issuer2.id.clone(),
                der: leaf.der.clone(),
                facility_id: enrollee.facility.id.clone(),
                person_id: enrollee.person.id.clone(),
                device_id: enrollee.device.id.clone(),
                os,
                keystore_profile: keystore.name.clone(),
                ticket_number: ticket.number.clone(),
                not_before: leaf.not_before,
                not_after: leaf.not_after,
                issued_at: now,
                revocation: None,
            };
            let event = AuditEvent {
                actor,
                action: "certificate.issued".into(),
                target: format!("serial:{}", leaf.serial_hex),
                detail: format!(
                    "ticket={} issuer={} facility={} person={} device={} os={} keystore={}",
                    ticket.number,
                    issuer2.id,
                    record.facility_id,
                    record.person_id,
                    record.device_id,
                    os,
                    keystore.name
                ),
            };
            let stored = match &supersede {
                None => this.store.redeem_ticket(
                    &ticket.number,
                    &ticket.password_mac,
                    now,
                    &record,
                    event,
                ),
                Some(old) => this.store.redeem_renewal(
                    &ticket.number,
                    &ticket.password_mac,
                    now,
                    &record,
                    &Supersession {
                        serial: old.clone(),
                        renewed_by: record.serial.clone(),
                        due: now + grace,
                    },
                    event,
                ),
            };
            stored.map_err(|e| match e {
                // Cancelled (or revoked) while this attempt was building: answered like
                // every other bad credential (issue #12 item 4).
                StoreError::StateMismatch { .. } => CaError::BadTicketCredentials,
                StoreError::Revoked { serial } => CaError::WrongState {
                    what: "the certificate to renew",
                    state: format!(
                        "revoked ({serial}); a revoked certificate cannot be renewed, register the device anew"
                    ),
                    expected: "valid",
                },
                e => store_err(e),
            })?;
            tracing::info!(ticket = %ticket.number, serial = %leaf.serial_hex, issuer = %issuer2.id,
                os = %os, keystore = %keystore.name, "ticket redeemed, certificate issued");
            // Warm the OCSP cache so the first status request costs a lookup.
            if let Err(e) = this.ocsp.presign(
                &issuer2.id,
                &leaf.serial_hex,
                CertStatus::Good,
                OffsetDateTime::now_utc(),
            ) {
                tracing::warn!(serial = %leaf.serial_hex, error = %e, "OCSP pre-signing failed");
            }
            Ok((leaf, chain, pfx, file_name, mobileconfig, mc_name))
        })
        .await?;
        let (leaf, chain, pfx, file_name, mobileconfig, mobileconfig_file_name) = built;
        if renewing {
            // Grace period 0: superseded before the answer; otherwise at its deadline.
            if grace.is_zero() {
                self.apply_due_supersessions().await;
            } else {
                self.supersede_wake.notify_one();
            }
        }

        Ok(Bundle {
            pkcs12: pfx,
            file_name,
            media_type: "application/x-pkcs12".into(),
            mobileconfig,
            mobileconfig_file_name,
            serial: leaf.serial_hex,
            certificate_der: leaf.der,
            chain_der: chain,
            not_after: leaf.not_after,
            bundle_password,
        })
    }
}
