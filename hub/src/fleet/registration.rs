//! Registration (token + CSR + inventory -> certificate, known hardware keeps its
//! identity), the certificate an appliance presents, and renewal over mTLS.

use super::*;

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
        let (id, appliance, issued, action) = self
            .cas("registration", move || async move {
                let (token_version, mut token) = match self
                    .lookup_enrollment_token(&req.token)
                    .await?
                {
                    Ok(found) => found,
                    Err((reason, record)) => {
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
                        a.hostname = req.hostname.trim().into();
                        a.site = token.site.clone();
                        a.labels.extend(token.labels.clone());
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
        let (version, appliance): (_, Appliance) = self
            .get(&format!("{}{id}", keys::APPLIANCES))
            .await?
            .ok_or_else(|| FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                message: format!("appliance {id} is not registered (deleted?); register again"),
            })?;
        let current = same_digest(&appliance.cert_sha256, &peer.sha256)
            || appliance
                .previous_cert_sha256
                .as_deref()
                .is_some_and(|p| same_digest(p, &peer.sha256));
        if !current {
            return Err(FleetError::CertificateSuperseded);
        }
        Ok((version, appliance))
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
