//! Registration (token + CSR + inventory -> certificate, known hardware keeps its
//! identity, a repeated registration whose answer was lost gets it again), the certificate
//! an appliance presents, and renewal over mTLS.

use super::*;
use crate::model::{COMPLETED_KEPT, CompletedRegistration};

/// What a registration commits: the appliance, its certificate and the audit action.
type Registered = (ApplianceId, Appliance, Issued, &'static str);

/// A token looked up: accepted with its version, or why not (with the record and version
/// unless the secret was wrong).
type Looked = Result<(u64, EnrollmentToken), (TokenRefusal, Option<(u64, EnrollmentToken)>)>;

/// Audit action of a registration that repeated a completed one.
const RETRY_ACTION: &str = "appliance.register-retry";

impl Fleet {
    /// Registers an appliance: checks the token and CSR, keeps the identity of known
    /// hardware, signs its certificate and records everything in one transaction.
    pub async fn register(
        &self,
        caller: &Caller,
        req: RegistrationRequest,
    ) -> Result<RegistrationResponse, FleetError> {
        if req.hostname.trim().is_empty() || req.hostname.len() > 253 {
            return Err(FleetError::Invalid("hostname: 1-253 characters".into()));
        }
        let req = &req;
        let key_sha = crate::pki::csr_key_sha256(&req.csr_pem);
        let key_sha = key_sha.as_deref();
        let (id, appliance, issued, action) = self
            .cas("registration", move || async move {
                let looked = self.lookup_enrollment_token(&req.token).await?;
                if let Some(repeat) = self.repeated_registration(caller, req, key_sha, &looked).await? {
                    return Ok(repeat);
                }
                let (token_version, mut token) = match looked {
                    Ok(found) => found,
                    Err((reason, record)) => {
                        let record = record.map(|(_, t)| t);
                        let target = record.as_ref().map(|t| t.id.clone()).unwrap_or_default();
                        self.audit(
                            caller,
                            "appliance.register",
                            &target,
                            &format!("refused: token_{reason}"),
                            record.as_ref().map(|t| t.site.as_str()),
                        )
                        .await?;
                        tracing::info!(source = %caller.source, %reason, "registration refused");
                        return Err(FleetError::TokenRefused(reason));
                    }
                };
                let hw_key = hardware_key(&req.inventory);
                let known: Option<(u64, ApplianceId)> = match &hw_key {
                    Some(k) => self.get(k).await?,
                    None => None,
                };
                let existing: Option<(u64, Appliance)> = match &known {
                    Some((_, id)) => self.get(&format!("{}{id}", keys::APPLIANCES)).await?,
                    None => None,
                };
                if let Some((_, known)) = &existing
                    && !may_rekey(&token, known)
                {
                    self.refuse_known_hardware(caller, &token, known).await?;
                    return Err(FleetError::HardwareKnown);
                }
                if let Some(why) = binding_mismatch(&token, &req.inventory, existing.as_ref().map(|(_, a)| a)) {
                    self.audit(
                        caller,
                        "appliance.register",
                        &token.id,
                        &format!("refused: {}: {why}", TokenRefusal::Mismatch.code()),
                        Some(&token.site),
                    )
                    .await?;
                    tracing::warn!(source = %caller.source, token = %token.id, why, "registration refused: token bound elsewhere");
                    return Err(FleetError::TokenRefused(TokenRefusal::Mismatch));
                }
                let id = match &existing {
                    Some((_, a)) => a.id.clone(),
                    None => ApplianceId::new(format!("ap-{}", random_hex(6)))
                        .expect("generated IDs are valid"),
                };
                let issued = match self.ca.sign_client(
                    &req.csr_pem,
                    req.hostname.trim(),
                    &id,
                    self.settings.cert_ttl,
                ) {
                    Ok(issued) => issued,
                    Err(e) => {
                        self.audit(
                            caller,
                            "appliance.register",
                            id.as_str(),
                            &format!("refused: {}", e.code()),
                            Some(&token.site),
                        )
                        .await?;
                        return Err(e.into());
                    }
                };
                let at = now();
                let (appliance, action) = match &existing {
                    Some((_, old)) => {
                        let mut a = old.clone();
                        // Site and labels stay: only the appliance's own re-install token
                        // gets here, and an appliance never changes site by registering.
                        a.hostname = req.hostname.trim().into();
                        a.inventory = req.inventory.clone();
                        a.agent_version = req.agent_version.clone();
                        // A re-install has a new key: the old certificate must stop working.
                        a.previous_cert_sha256 = None;
                        a.cert_sha256 = issued.sha256.clone();
                        a.cert_not_after = issued.not_after;
                        a.rekeys += 1;
                        (a, "appliance.rekey")
                    }
                    None => (
                        Appliance {
                            id: id.clone(),
                            site: token.site.clone(),
                            hostname: req.hostname.trim().into(),
                            labels: token.labels.clone(),
                            inventory: req.inventory.clone(),
                            agent_version: req.agent_version.clone(),
                            cert_sha256: issued.sha256.clone(),
                            previous_cert_sha256: None,
                            cert_not_after: issued.not_after,
                            registered_at: at,
                            rekeys: 0,
                            vtep_address: None,
                            vtep_refused: None,
                            vpcs: Default::default(),
                            control_plane: None,
                            join: None,
                            desired: DesiredState {
                                generation: 1,
                                heartbeat_interval_seconds: self
                                    .settings
                                    .heartbeat_interval_seconds,
                                ..Default::default()
                            },
                            quarantined: BTreeMap::new(),
                            upgrade_flag: None,
                        },
                        "appliance.register",
                    ),
                };
                token.uses += 1;
                if let Some(key_sha) = key_sha {
                    token.completed.push(CompletedRegistration {
                        key_sha256: key_sha.to_owned(),
                        appliance: id.clone(),
                        cert_sha256: issued.sha256.clone(),
                    });
                    let over = token.completed.len().saturating_sub(COMPLETED_KEPT);
                    token.completed.drain(..over);
                }
                let token_key = format!("{}{}", keys::ENROLLMENT_TOKENS, token.id);
                let app_key = format!("{}{id}", keys::APPLIANCES);
                let mut checks = vec![
                    Check::version(&token_key, token_version),
                    Check::version(&app_key, existing.as_ref().map_or(0, |(v, _)| *v)),
                ];
                let mut ops = vec![
                    Op::put(&token_key, encode(&token)),
                    Op::put(&app_key, encode(&appliance)),
                    Self::audit_op(caller, action, id.as_str(), "ok", Some(&appliance.site)),
                    self.event_op(
                        &appliance,
                        if existing.is_some() {
                            "rekeyed"
                        } else {
                            "registered"
                        },
                        format!("{} registered with token {}", appliance.hostname, token.id),
                    ),
                ];
                if let Some(k) = &hw_key {
                    checks.push(Check::version(k, known.as_ref().map_or(0, |(v, _)| *v)));
                    if known.as_ref().map(|(_, known_id)| known_id) != Some(&id) {
                        ops.push(Op::put(k, encode(&id)));
                    }
                }
                Ok(Attempt::Write {
                    checks,
                    ops,
                    then: (id, appliance, issued, action),
                })
            })
            .await?;
        tracing::info!(appliance = %id, site = %appliance.site, action, "appliance registered");
        let desired = match self.join_matching_control_plane(caller, &appliance).await {
            Ok(Some(joined)) => joined.desired,
            Ok(None) => appliance.desired,
            Err(e) => {
                // Registration stands; the operator sees the failure and can re-assign.
                tracing::warn!(appliance = %id, error = %e, "joining a control plane failed");
                appliance.desired
            }
        };
        Ok(RegistrationResponse {
            appliance_id: id,
            site: appliance.site,
            certificate_pem: issued.pem,
            ca_bundle_pem: self.ca.cert_pem.clone(),
            desired,
        })
    }

    /// A registration that repeats one `looked` completed with the same key, because its
    /// answer was lost on the way: it gets the same appliance and a fresh certificate for
    /// that key, and the token is not used again (a used-up token still answers it). Only
    /// while the token is neither revoked nor expired (its TTL bounds the window), and the
    /// appliance still has the certificate issued then: once it renewed, was re-keyed or
    /// deleted, the repeat is an ordinary registration and meets the ordinary refusals.
    /// `None`: not a repeat.
    async fn repeated_registration(
        &self,
        caller: &Caller,
        req: &RegistrationRequest,
        key_sha: Option<&str>,
        looked: &Looked,
    ) -> Result<Option<Attempt<Registered>>, FleetError> {
        let (token_version, token) = match looked {
            Ok((version, token)) | Err((TokenRefusal::UsedUp, Some((version, token)))) => {
                (*version, token)
            }
            Err(_) => return Ok(None),
        };
        let Some(key_sha) = key_sha else {
            return Ok(None);
        };
        let Some(index) = token
            .completed
            .iter()
            .position(|c| same_digest(&c.key_sha256, key_sha))
        else {
            return Ok(None);
        };
        let done = &token.completed[index];
        let app_key = format!("{}{}", keys::APPLIANCES, done.appliance);
        let Some((app_version, mut appliance)) = self.get::<Appliance>(&app_key).await? else {
            return Ok(None);
        };
        if !same_digest(&appliance.cert_sha256, &done.cert_sha256) {
            return Ok(None);
        }
        // The CSR is checked again (signature, subject): the key is proven, not only named.
        let issued = match self.ca.sign_client(
            &req.csr_pem,
            req.hostname.trim(),
            &appliance.id,
            self.settings.cert_ttl,
        ) {
            Ok(issued) => issued,
            Err(e) => {
                self.audit(
                    caller,
                    RETRY_ACTION,
                    appliance.id.as_str(),
                    &format!("refused: {}", e.code()),
                    Some(&appliance.site),
                )
                .await?;
                return Err(e.into());
            }
        };
        // The certificate of the lost answer never reached the appliance: the new one
        // replaces it.
        appliance.cert_sha256 = issued.sha256.clone();
        appliance.cert_not_after = issued.not_after;
        let mut token = token.clone();
        token.completed[index].cert_sha256 = issued.sha256.clone();
        let token_key = format!("{}{}", keys::ENROLLMENT_TOKENS, token.id);
        tracing::info!(
            appliance = %appliance.id,
            source = %caller.source,
            token = %token.id,
            "registration repeated with the same key (its answer was lost): same appliance, new certificate, no second use"
        );
        let audit = Self::audit_op(
            caller,
            RETRY_ACTION,
            appliance.id.as_str(),
            &format!(
                "ok: repeat of the registration with token {} and the same key; the token was not used again",
                token.id
            ),
            Some(&appliance.site),
        );
        Ok(Some(Attempt::Write {
            checks: vec![
                Check::version(&token_key, token_version),
                Check::version(&app_key, app_version),
            ],
            ops: vec![
                Op::put(&token_key, encode(&token)),
                Op::put(&app_key, encode(&appliance)),
                audit,
            ],
            then: (appliance.id.clone(), appliance, issued, RETRY_ACTION),
        }))
    }

    /// A registration presented `known`'s hardware without the right to re-key it: the
    /// appliance keeps its identity and certificate, and its operators see the attempt in
    /// the audit log and as a `registration_refused` event.
    async fn refuse_known_hardware(
        &self,
        caller: &Caller,
        token: &EnrollmentToken,
        known: &Appliance,
    ) -> Result<(), FleetError> {
        tracing::warn!(
            appliance = %known.id,
            site = %known.site,
            source = %caller.source,
            token = %token.id,
            token_site = %token.site,
            "registration refused: the hardware of a registered appliance"
        );
        let message = format!(
            "a registration from {} presented this appliance's hardware with {} token {} of \
             site {}; refused, the appliance keeps its identity",
            caller.source,
            match token.kind {
                TokenKind::Enrollment => "enrollment",
                TokenKind::Reinstall => "another appliance's re-install",
            },
            token.id,
            token.site
        );
        self.store
            .txn(
                vec![],
                vec![
                    Self::audit_op(
                        caller,
                        "appliance.register",
                        known.id.as_str(),
                        &format!("refused: {}", cairn_api::hub::ErrorCode::HardwareKnown),
                        Some(&known.site),
                    ),
                    self.event_op(known, "registration_refused", message),
                ],
            )
            .await?;
        Ok(())
    }

    /// The appliance a verified client certificate belongs to, if it is still current.
    pub(super) async fn appliance_for(
        &self,
        peer: Option<&PeerCert>,
    ) -> Result<(u64, Appliance), FleetError> {
        let peer = peer.ok_or_else(|| {
            FleetError::Unauthenticated("a client certificate is required".into())
        })?;
        let id = peer.appliance.as_ref().ok_or_else(|| {
            FleetError::Unauthenticated("the client certificate does not name an appliance".into())
        })?;
        let key = format!("{}{id}", keys::APPLIANCES);
        for _ in 0..MAX_RETRIES {
            let (version, mut appliance): (_, Appliance) =
                self.get(&key).await?.ok_or_else(|| FleetError::NotFound {
                    code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                    message: format!("appliance {id} is not registered (deleted?); register again"),
                })?;
            if !same_digest(&appliance.cert_sha256, &peer.sha256) {
                // The certificate a renewal replaced stays valid only until the new one is
                // first seen (its answer may have been lost on the way).
                if appliance
                    .previous_cert_sha256
                    .as_deref()
                    .is_some_and(|p| same_digest(p, &peer.sha256))
                {
                    return Ok((version, appliance));
                }
                return Err(FleetError::CertificateSuperseded);
            }
            if appliance.previous_cert_sha256.is_none() {
                return Ok((version, appliance));
            }
            // First use of the renewed certificate: the previous one is retired.
            appliance.previous_cert_sha256 = None;
            let event = self.event_op(
                &appliance,
                "previous-certificate-retired",
                "the renewed client certificate was used; the one it replaced is refused from now on"
                    .into(),
            );
            self.store
                .txn(
                    vec![Check::version(&key, version)],
                    vec![Op::put(&key, encode(&appliance)), event],
                )
                .await?;
            // Read again either way: the version after the write, or what changed it.
        }
        Err(FleetError::Contended(key))
    }

    /// The appliance a verified client certificate belongs to, if it is still current.
    pub async fn appliance_for_cert(&self, cert: &PeerCert) -> Result<Appliance, FleetError> {
        Ok(self.appliance_for(Some(cert)).await?.1)
    }

    /// `POST /v1/renewals`: a new certificate for the same identity, over mTLS.
    pub async fn renew(
        &self,
        caller: &Caller,
        peer: Option<&PeerCert>,
        csr_pem: &str,
    ) -> Result<Renewal, FleetError> {
        self.cas("renewal", move || async move {
            let (version, mut appliance) = self.appliance_for(peer).await?;
            let issued: Issued = self.ca.sign_client(
                csr_pem,
                appliance.id.as_str(),
                &appliance.id,
                self.settings.cert_ttl,
            )?;
            let presented = peer.map(|p| p.sha256.clone());
            appliance.previous_cert_sha256 = presented;
            appliance.cert_sha256 = issued.sha256.clone();
            appliance.cert_not_after = issued.not_after;
            let key = format!("{}{}", keys::APPLIANCES, appliance.id);
            let audit = Self::audit_op(
                caller,
                "appliance.renew",
                appliance.id.as_str(),
                "ok",
                Some(&appliance.site),
            );
            Ok(Attempt::Write {
                checks: vec![Check::version(&key, version)],
                ops: vec![Op::put(&key, encode(&appliance)), audit],
                then: Renewal {
                    certificate_pem: issued.pem,
                    ca_bundle_pem: self.ca.cert_pem.clone(),
                    not_after: issued.not_after,
                },
            })
        })
        .await
    }
}

/// Whether a registration with `token` may re-key `known`, whose hardware it presents. Only
/// the re-install token an operator minted for that appliance may (renewal over mTLS does
/// not come through here). The TPM binding will be the other way in: a registration proving
/// the hardware's sealed key.
fn may_rekey(token: &EnrollmentToken, known: &Appliance) -> bool {
    token.kind == TokenKind::Reinstall && token.appliance.as_ref() == Some(&known.id)
}

/// Why `token` does not belong to the registering hardware, if it does not: a bound MAC the
/// inventory lacks, a bound serial it does not report, or a re-install token presented by
/// hardware that is not its appliance's (`existing`: the appliance the hardware is, which
/// [`may_rekey`] already accepted).
fn binding_mismatch(
    token: &EnrollmentToken,
    inventory: &cairn_api::HardwareInventory,
    existing: Option<&Appliance>,
) -> Option<&'static str> {
    if let Some(mac) = &token.mac
        && !inventory.normalized_macs().contains(mac)
    {
        return Some("the token is bound to another boot MAC");
    }
    if let Some(serial) = &token.serial
        && inventory.serial.trim() != serial
    {
        return Some("the token is bound to another serial number");
    }
    if token.kind == TokenKind::Reinstall && existing.map(|a| &a.id) != token.appliance.as_ref() {
        return Some("the re-install token is for another appliance's hardware");
    }
    None
}
