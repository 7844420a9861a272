//! The four `pki.ca.v1` services. Each handler: caller from the TLS layer, proto → domain
//! conversion (`pki_proto::convert`), one authority call, domain → proto. Nothing else.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use pki_proto::convert;
use pki_proto::v1;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::auth::caller;
use crate::authority::{Authority, CrlFigures, IssuerView, NewTicket, Redemption, StatusAnswer};
use crate::error::CaError;
use crate::store::{
    CertFilter, CertRecord, CrlRecord, IssuerState, RevokeTarget, TicketRecord, TicketState,
};

fn ts(t: OffsetDateTime) -> Option<prost_types::Timestamp> {
    // Every time we store lies in years 1..=9999, so this never drops a value in practice.
    convert::timestamp_from_time("timestamp", t).ok()
}

fn ticket_state(s: TicketState) -> v1::TicketState {
    match s {
        TicketState::Active => v1::TicketState::Active,
        TicketState::Redeemed => v1::TicketState::Redeemed,
        TicketState::Expired => v1::TicketState::Expired,
        TicketState::Locked => v1::TicketState::Locked,
        TicketState::Cancelled => v1::TicketState::Cancelled,
    }
}

fn ticket_msg(t: &TicketRecord, renews_serial: Option<String>) -> v1::Ticket {
    v1::Ticket {
        renews_serial: renews_serial.unwrap_or_default(),
        number: t.number.clone(),
        state: ticket_state(t.effective_state(OffsetDateTime::now_utc())) as i32,
        expires_at: ts(t.expires_at),
        failed_attempts: t.failed_attempts,
        facility_id: t.enrollee.facility.id.clone(),
        person_id: t.enrollee.person.id.clone(),
        device_id: t.enrollee.device.id.clone(),
    }
}

fn cert_msg(c: &CertRecord) -> v1::Certificate {
    let now = OffsetDateTime::now_utc();
    let state = if c.revocation.is_some() {
        v1::CertificateState::Revoked
    } else if c.not_after < now {
        v1::CertificateState::Expired
    } else {
        v1::CertificateState::Valid
    };
    v1::Certificate {
        serial: c.serial.clone(),
        issuer_id: c.issuer_id.clone(),
        facility_id: c.facility_id.clone(),
        person_id: c.person_id.clone(),
        device_id: c.device_id.clone(),
        os: v1::TargetOs::from(c.os) as i32,
        state: state as i32,
        not_before: ts(c.not_before),
        not_after: ts(c.not_after),
        revoked_at: c.revocation.as_ref().and_then(|r| ts(r.revoked_at)),
        reason: c
            .revocation
            .as_ref()
            .map_or(0, |r| v1::RevocationReason::from(r.reason) as i32),
        der: c.der.clone(),
    }
}

/// The published DER, shared with the record (no copy per caller).
struct SharedDer(Arc<CrlRecord>);

impl AsRef<[u8]> for SharedDer {
    fn as_ref(&self) -> &[u8] {
        &self.0.der
    }
}

fn crl_msg(c: &Arc<CrlRecord>) -> v1::Crl {
    v1::Crl {
        issuer_id: c.issuer_id.clone(),
        der: prost::bytes::Bytes::from_owner(SharedDer(c.clone())),
        number: c.number,
        this_update: ts(c.this_update),
        next_update: ts(c.next_update),
        live_issuer_ids: Vec::new(),
    }
}

fn serial_arg(field: &str, s: &str) -> Result<String, Status> {
    convert::parse_serial(s)
        .map_err(|e| Status::from(CaError::invalid(field, e.problem.to_string())))
}

/// `pki.ca.v1.Enrollment`.
pub struct EnrollmentService {
    /// The authority.
    pub authority: Arc<Authority>,
}

#[tonic::async_trait]
impl v1::enrollment_server::Enrollment for EnrollmentService {
    async fn create_ticket(
        &self,
        request: Request<v1::CreateTicketRequest>,
    ) -> Result<Response<v1::CreateTicketResponse>, Status> {
        let who = caller(&request)?;
        let req = convert::CreateTicket::try_from(request.into_inner()).map_err(CaError::from)?;
        let (record, password) = self
            .authority
            .create_ticket(
                &who,
                NewTicket {
                    enrollee: req.enrollee,
                    profile: req.profile,
                    approved_by: req.approved_by,
                    renews_serial: req.renews_serial.clone(),
                },
            )
            .await?;
        Ok(Response::new(v1::CreateTicketResponse {
            number: record.number.clone(),
            password: password.expose().to_string(),
            expires_at: ts(record.expires_at),
            ticket: Some(ticket_msg(&record, req.renews_serial)),
        }))
    }

    async fn redeem_ticket(
        &self,
        request: Request<v1::RedeemTicketRequest>,
    ) -> Result<Response<v1::RedeemTicketResponse>, Status> {
        let who = caller(&request)?;
        let req = convert::RedeemTicket::try_from(request.into_inner()).map_err(CaError::from)?;
        let bundle = self
            .authority
            .redeem_ticket(
                &who,
                Redemption {
                    number: req.number,
                    password: req.password,
                    os: req.os,
                    keystore_profile: req.keystore_profile,
                },
            )
            .await?;
        Ok(Response::new(v1::RedeemTicketResponse {
            pkcs12: bundle.pkcs12.to_vec(),
            file_name: bundle.file_name,
            media_type: bundle.media_type,
            mobileconfig: bundle.mobileconfig,
            serial: bundle.serial,
            certificate_der: bundle.certificate_der,
            chain_der: bundle.chain_der,
            not_after: ts(bundle.not_after),
            mobileconfig_file_name: bundle.mobileconfig_file_name,
            bundle_password: bundle
                .bundle_password
                .as_deref()
                .map(String::from)
                .unwrap_or_default(),
        }))
    }

    async fn get_ticket(
        &self,
        request: Request<v1::GetTicketRequest>,
    ) -> Result<Response<v1::Ticket>, Status> {
        let number =
            convert::parse_ticket_number(&request.get_ref().number).map_err(CaError::from)?;
        let t = self.authority.get_ticket(&number).await?;
        let renews = self.authority.ticket_renews(&number).await?;
        Ok(Response::new(ticket_msg(&t, renews)))
    }

    async fn cancel_ticket(
        &self,
        request: Request<v1::CancelTicketRequest>,
    ) -> Result<Response<v1::Ticket>, Status> {
        let who = caller(&request)?;
        let number =
            convert::parse_ticket_number(&request.get_ref().number).map_err(CaError::from)?;
        let t = self.authority.cancel_ticket(&who, &number).await?;
        let renews = self.authority.ticket_renews(&number).await?;
        Ok(Response::new(ticket_msg(&t, renews)))
    }
}

/// `pki.ca.v1.Certificates`.
pub struct CertificatesService {
    /// The authority.
    pub authority: Arc<Authority>,
}

fn optional_id(field: &str, s: &str) -> Result<Option<String>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    convert::parse_id(field, s)
        .map(Some)
        .map_err(|e| Status::from(CaError::from(e)))
}

#[tonic::async_trait]
impl v1::certificates_server::Certificates for CertificatesService {
    async fn get_certificate(
        &self,
        request: Request<v1::GetCertificateRequest>,
    ) -> Result<Response<v1::Certificate>, Status> {
        let serial = serial_arg("serial", &request.get_ref().serial)?;
        let c = self.authority.certificate(&serial).await?;
        Ok(Response::new(cert_msg(&c)))
    }

    async fn list_certificates(
        &self,
        request: Request<v1::ListCertificatesRequest>,
    ) -> Result<Response<v1::ListCertificatesResponse>, Status> {
        let r = request.into_inner();
        let revoked = match v1::CertificateState::try_from(r.status) {
            Ok(v1::CertificateState::Unspecified) => None,
            Ok(v1::CertificateState::Revoked) => Some(true),
            Ok(v1::CertificateState::Valid) | Ok(v1::CertificateState::Expired) => Some(false),
            Err(_) => {
                return Err(
                    CaError::invalid("status", format!("unknown value {}", r.status)).into(),
                );
            }
        };
        let filter = CertFilter {
            facility_id: optional_id("facility_id", &r.facility_id)?,
            person_id: optional_id("person_id", &r.person_id)?,
            device_id: optional_id("device_id", &r.device_id)?,
            issuer_id: None,
            revoked,
            expiring_before: r
                .expiring_before
                .as_ref()
                .map(|t| convert::time_from_timestamp("expiring_before", t))
                .transpose()
                .map_err(CaError::from)?,
        };
        let want_expired = r.status == v1::CertificateState::Expired as i32;
        let want_valid = r.status == v1::CertificateState::Valid as i32;
        let (page, next) = self
            .authority
            .list_certificates(filter, r.page_size, &r.page_token)
            .await?;
        let now = OffsetDateTime::now_utc();
        let certificates = page
            .iter()
            .filter(|c| !want_expired || c.not_after < now)
            .filter(|c| !want_valid || c.not_after >= now)
            .map(cert_msg)
            .collect();
        Ok(Response::new(v1::ListCertificatesResponse {
            certificates,
            next_page_token: next,
        }))
    }

    async fn revoke(
        &self,
        request: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let who = caller(&request)?;
        let req = convert::Revoke::try_from(request.into_inner()).map_err(CaError::from)?;
        let target = match req.target {
            convert::RevokeTarget::Serial(s) => RevokeTarget::Serial(s),
            convert::RevokeTarget::Device(d) => RevokeTarget::Device(d),
            convert::RevokeTarget::Person(p) => RevokeTarget::Person(p),
            convert::RevokeTarget::Facility(f) => RevokeTarget::Facility(f),
            _ => return Err(CaError::invalid("target", "unsupported revocation target").into()),
        };
        let (certs, cancelled) = self
            .authority
            .revoke(&who, target, req.reason, req.invalidity_date)
            .await?;
        Ok(Response::new(v1::RevokeResponse {
            revoked_serials: certs.into_iter().map(|c| c.serial).collect(),
            cancelled_tickets: u32::try_from(cancelled).unwrap_or(u32::MAX),
        }))
    }
}

/// `pki.ca.v1.Revocation`.
pub struct RevocationService {
    /// The authority.
    pub authority: Arc<Authority>,
    /// Becomes `true` at shutdown: open `WatchCrl` streams end so the server can drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

type CrlStream = Pin<Box<dyn Stream<Item = Result<v1::Crl, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl v1::revocation_server::Revocation for RevocationService {
    async fn get_ca_chain(
        &self,
        _request: Request<v1::GetCaChainRequest>,
    ) -> Result<Response<v1::CaChain>, Status> {
        let issuers = self
            .authority
            .ca_chain_issuers()
            .await?
            .into_iter()
            .map(|r| v1::ChainIssuer {
                issuer_id: r.id,
                state: match r.state {
                    IssuerState::Active => v1::ChainIssuerState::Active,
                    _ => v1::ChainIssuerState::Retiring,
                } as i32,
                not_after: ts(r.not_after),
                certificate_der: r.cert_der,
            })
            .collect::<Vec<_>>();
        let mut certificates_der = vec![self.authority.issuer_cert("root").unwrap_or_default()];
        certificates_der.extend(issuers.iter().map(|i| i.certificate_der.clone()));
        Ok(Response::new(v1::CaChain {
            certificates_der,
            issuers,
        }))
    }

    async fn get_crl(
        &self,
        request: Request<v1::GetCrlRequest>,
    ) -> Result<Response<v1::Crl>, Status> {
        let crl = self.authority.crl(&request.get_ref().issuer_id).await?;
        Ok(Response::new(crl_msg(&crl)))
    }

    type WatchCrlStream = CrlStream;

    async fn watch_crl(
        &self,
        request: Request<v1::WatchCrlRequest>,
    ) -> Result<Response<Self::WatchCrlStream>, Status> {
        let req = request.get_ref();
        if req.all_issuers {
            if !req.issuer_id.is_empty() {
                return Err(
                    CaError::invalid("issuer_id", "must be empty when all_issuers is set").into(),
                );
            }
            let rx = self.authority.watch_all_crls().await?;
            let mut stopping = self.stopping.clone();
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| {
                m.map(|m| v1::Crl {
                    live_issuer_ids: m.live_issuer_ids.to_vec(),
                    ..crl_msg(&m.crl)
                })
                .map_err(Status::from)
            });
            // Ends at shutdown, so the server can drain.
            let stream = futures::StreamExt::take_until(stream, async move {
                let _ = stopping.wait_for(|s| *s).await;
            });
            return Ok(Response::new(Box::pin(stream)));
        }
        let rx = self.authority.watch_crl(&req.issuer_id).await?;
        let stream =
            tokio_stream::wrappers::WatchStream::new(rx).filter_map(|c| c.map(|c| Ok(crl_msg(&c))));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn check_status(
        &self,
        request: Request<v1::CheckStatusRequest>,
    ) -> Result<Response<v1::CertificateStatus>, Status> {
        let serial = serial_arg("serial", &request.get_ref().serial)?;
        use v1::certificate_status::Status as S;
        let msg = match self.authority.check_status(&serial).await? {
            StatusAnswer::Good => v1::CertificateStatus {
                status: S::Good as i32,
                revoked_at: None,
                reason: 0,
            },
            StatusAnswer::Unknown => v1::CertificateStatus {
                status: S::Unknown as i32,
                revoked_at: None,
                reason: 0,
            },
            StatusAnswer::Revoked(r) => v1::CertificateStatus {
                status: S::Revoked as i32,
                revoked_at: ts(r.revoked_at),
                reason: v1::RevocationReason::from(r.reason) as i32,
            },
        };
        Ok(Response::new(msg))
    }

    async fn ocsp(
        &self,
        request: Request<v1::OcspRequest>,
    ) -> Result<Response<v1::OcspResponse>, Status> {
        let source = request
            .extensions()
            .get::<super::auth::PeerInfo>()
            .and_then(|p| p.remote)
            .map(|r| r.ip());
        let answer = self.authority.ocsp(&request.get_ref().der, source).await;
        Ok(Response::new(v1::OcspResponse {
            der: answer.der.to_vec(),
        }))
    }
}

use tokio_stream::StreamExt as _;

/// `pki.ca.v1.Admin`.
pub struct AdminService {
    /// The authority.
    pub authority: Arc<Authority>,
}

fn issuer_state(s: IssuerState) -> v1::IssuerState {
    match s {
        IssuerState::Active => v1::IssuerState::Active,
        IssuerState::Retiring => v1::IssuerState::Retiring,
        IssuerState::Retired => v1::IssuerState::Retired,
    }
}

fn issuer_msg(v: IssuerView) -> v1::Issuer {
    v1::Issuer {
        id: v.record.id,
        state: issuer_state(v.record.state) as i32,
        certificate_der: v.record.cert_der,
        not_before: ts(v.record.not_before),
        not_after: ts(v.record.not_after),
        certificate_count: v.certificate_count,
        crl_number: v.crl_number,
    }
}

fn crl_info(c: CrlFigures, now: OffsetDateTime) -> v1::CrlInfo {
    v1::CrlInfo {
        age_seconds: u64::try_from((now - c.this_update).whole_seconds()).unwrap_or(0),
        issuer_id: c.issuer_id,
        number: c.number,
        this_update: ts(c.this_update),
        next_update: ts(c.next_update),
    }
}

impl AdminService {
    async fn issuers(&self) -> Result<Vec<v1::Issuer>, Status> {
        Ok(self
            .authority
            .list_issuers()
            .await?
            .into_iter()
            .map(issuer_msg)
            .collect())
    }
}

type BackupStream = Pin<Box<dyn Stream<Item = Result<v1::BackupChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn list_issuers(
        &self,
        _request: Request<v1::ListIssuersRequest>,
    ) -> Result<Response<v1::ListIssuersResponse>, Status> {
        Ok(Response::new(v1::ListIssuersResponse {
            issuers: self.issuers().await?,
        }))
    }

    async fn publish_crl(
        &self,
        request: Request<v1::PublishCrlRequest>,
    ) -> Result<Response<v1::Crl>, Status> {
        let who = caller(&request)?;
        let id = &request.get_ref().issuer_id;
        let crl = if id.is_empty() {
            // All issuers; answer with the active one's.
            self.authority.publish_all_crls(&who.actor()).await?
        } else {
            self.authority.publish_crl(id, &who.actor()).await?
        };
        Ok(Response::new(crl_msg(&crl)))
    }

    async fn verify_audit(
        &self,
        request: Request<v1::VerifyAuditRequest>,
    ) -> Result<Response<v1::VerifyAuditResponse>, Status> {
        let checkpoint = request.into_inner().checkpoint;
        let v = if checkpoint.is_empty() {
            self.authority.verify_audit().await?
        } else {
            self.authority
                .verify_audit_against_checkpoint(&checkpoint)
                .await?
        };
        Ok(Response::new(v1::VerifyAuditResponse {
            ok: v.ok,
            entries: v.entries,
            first_bad_entry: v.first_bad_entry.unwrap_or(0),
            problem: v.problem.unwrap_or_default(),
        }))
    }

    async fn reload_issuers(
        &self,
        _request: Request<v1::ReloadIssuersRequest>,
    ) -> Result<Response<v1::ListIssuersResponse>, Status> {
        self.authority.reload().await?;
        Ok(Response::new(v1::ListIssuersResponse {
            issuers: self.issuers().await?,
        }))
    }

    async fn get_status(
        &self,
        _request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let f = self.authority.status_figures().await?;
        let now = OffsetDateTime::now_utc();
        Ok(Response::new(v1::StatusResponse {
            certificates_expiring_within_30_days: f.certificates_expiring_within_30_days,
            issuers: f.issuers.into_iter().map(issuer_msg).collect(),
            tickets_by_state: f
                .tickets_by_state
                .into_iter()
                .map(|(s, n)| (s.to_string(), n))
                .collect(),
            certificates_total: f.certificates_total,
            certificates_revoked: f.certificates_revoked,
            crls: f.crls.into_iter().map(|c| crl_info(c, now)).collect(),
            root_crl: f.root_crl.map(|c| crl_info(c, now)),
        }))
    }

    type BackupStream = BackupStream;

    async fn backup(
        &self,
        request: Request<v1::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let who = caller(&request)?;
        // The snapshot of a large store takes longer than the server's request timeout, which
        // covers the time until the response starts: answer at once and stream as it comes.
        let authority = self.authority.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let (dir, archive) = match authority.backup_archive(&who).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            // Read from disk in 1 MiB chunks, at most a few in flight: memory stays flat whatever
            // the store's size. The archive is removed once sent (or the client has gone).
            tokio::task::spawn_blocking(move || {
                use std::io::Read as _;
                let sent = std::fs::File::open(&archive).and_then(|mut f| {
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        let chunk = v1::BackupChunk {
                            data: buf[..n].to_vec(),
                        };
                        if tx.blocking_send(Ok(chunk)).is_err() {
                            return Ok(());
                        }
                    }
                });
                if let Err(e) = sent {
                    let _ = tx.blocking_send(Err(Status::from(CaError::internal(format!(
                        "reading the backup archive: {e}"
                    )))));
                }
                let _ = std::fs::remove_dir_all(&dir);
            });
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
