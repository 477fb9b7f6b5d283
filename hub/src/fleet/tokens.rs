//! Operator and enrollment tokens: creation (shown once), listing without secrets,
//! revocation, bearer authentication and the token check registrations start with.

use super::*;

/// Splits `prefix.id.secret`.
fn split_token<'a>(token: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('.')?;
    let (id, secret) = rest.split_once('.')?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id) && ok(secret)).then_some((id, secret))
}

/// `aa:bb:cc:dd:ee:ff`, lowercase, as inventories report MACs.
fn normalize_mac(mac: &str) -> Result<String, FleetError> {
    let mac = mac.trim().to_ascii_lowercase();
    let ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(mac)
    } else {
        Err(FleetError::Invalid(format!(
            "mac {mac:?}: expected aa:bb:cc:dd:ee:ff"
        )))
    }
}

impl Fleet {
    /// Stores a token record under a key that must not exist yet (the ID is random: a clash
    /// is refused, never overwritten), with its audit entry.
    async fn store_new_token<T: Serialize>(
        &self,
        key: &str,
        record: &T,
        audit: Op,
    ) -> Result<(), FleetError> {
        if self
            .store
            .txn(
                vec![Check::version(key, 0)],
                vec![Op::put(key, encode(record)), audit],
            )
            .await?
        {
            Ok(())
        } else {
            Err(FleetError::Conflict(
                "a token with this ID exists; retry".into(),
            ))
        }
    }

    /// Creates the first admin token if there is no operator token yet (`cairn-hub init`).
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, FleetError> {
        if !self
            .store
            .list(keys::OPERATOR_TOKENS, None, 1)
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        let caller = Caller {
            actor: "cairn-hub init".into(),
            source: "local".into(),
            ..Default::default()
        };
        let token = self
            .create_operator_token_unchecked(&caller, "admin", Role::Admin, None, None, None)
            .await?;
        Ok(Some(token.token))
    }

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, bearer: &str, source: &str) -> Result<Caller, FleetError> {
        let refuse = || FleetError::Unauthenticated("the bearer token is not valid".into());
        let (id, secret) = split_token(bearer, "cairn-op").ok_or_else(refuse)?;
        let (_, token): (_, OperatorToken) = self
            .get(&format!("{}{id}", keys::OPERATOR_TOKENS))
            .await?
            .ok_or_else(refuse)?;
        if !same_digest(&token.secret_sha256, &sha256_hex(secret)) {
            return Err(refuse());
        }
        // Past the secret check only: an unknown secret learns nothing about the token.
        if token.revoked {
            return Err(FleetError::Unauthenticated(
                "this operator token was revoked".into(),
            ));
        }
        if token.expires_at.is_some_and(|at| at <= now()) {
            return Err(FleetError::Unauthenticated(
                "this operator token has expired".into(),
            ));
        }
        Ok(Caller {
            actor: format!("operator:{}", token.name),
            source: source.into(),
            operator: Some(token),
            site_tenants: Arc::new(self.site_tenants().await?),
        })
    }

    pub(super) async fn create_operator_token_unchecked(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        site: Option<String>,
        tenant: Option<String>,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<NewToken<OperatorTokenView>, FleetError> {
        let id = random_hex(6);
        let secret = random_hex(20);
        let record = OperatorToken {
            id: id.clone(),
            name: name.into(),
            role,
            site,
            tenant,
            secret_sha256: sha256_hex(&secret),
            created_at: now(),
            created_by: caller.actor.clone(),
            expires_at,
            revoked: false,
        };
        let key = format!("{}{id}", keys::OPERATOR_TOKENS);
        let audit = Self::audit_op(
            caller,
            "operator-token.create",
            &id,
            "ok",
            record.site.as_deref(),
        );
        self.store_new_token(&key, &record, audit).await?;
        Ok(NewToken {
            token: format!("cairn-op.{id}.{secret}"),
            view: (&record).into(),
        })
    }

    /// Creates an operator token (admin) of a scope within the caller's: a site-scoped
    /// admin only for its site, a tenant-scoped one for its tenant or one of its sites.
    pub async fn create_operator_token(
        &self,
        caller: &Caller,
        req: &CreateOperatorToken,
    ) -> Result<NewToken<OperatorTokenView>, FleetError> {
        caller.operator()?;
        if req.name.trim().is_empty() {
            return Err(FleetError::Invalid("name: must not be empty".into()));
        }
        let tenant = match (&req.site, &req.tenant) {
            (Some(site), tenant) => {
                validate_name("site", site)?;
                let of_site = self.tenant_of(site).await?;
                if tenant.as_ref().is_some_and(|t| t != &of_site) {
                    return Err(FleetError::Invalid(format!(
                        "tenant: site {site:?} belongs to another tenant"
                    )));
                }
                Some(of_site)
            }
            (None, Some(t)) => {
                self.check_tenant_exists(t).await?;
                Some(t.clone())
            }
            (None, None) => None,
        };
        Self::check_covers(caller, req.site.as_deref(), tenant.as_deref())?;
        let expires_at = match req.ttl_seconds {
            None => None,
            Some(s) if s == 0 || s > 10 * 365 * 24 * 3600 => {
                return Err(FleetError::Invalid(
                    "ttl_seconds: between 1 and ten years".into(),
                ));
            }
            Some(s) => Some(now() + Duration::seconds(s as i64)),
        };
        self.create_operator_token_unchecked(
            caller,
            &req.name,
            req.role,
            req.site.clone(),
            tenant,
            expires_at,
        )
        .await
    }

    /// Refuses a caller whose scope does not contain a token's (`site`, `tenant`).
    fn check_covers(
        caller: &Caller,
        site: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<(), FleetError> {
        match (site, tenant) {
            (Some(s), _) => caller.check_site(s),
            (None, Some(t)) => caller.check_tenant_wide(t),
            (None, None) => caller.check_scope(None, "only a fleet-wide token covers the fleet"),
        }
    }

    /// Lists operator tokens in the caller's scope (admin; without secrets).
    pub async fn list_operator_tokens(
        &self,
        caller: &Caller,
    ) -> Result<Vec<OperatorToken>, FleetError> {
        let all: Vec<(u64, OperatorToken)> = self.list(keys::OPERATOR_TOKENS).await?;
        Ok(all
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| Self::check_covers(caller, t.site.as_deref(), t.tenant.as_deref()).is_ok())
            .collect())
    }

    /// An operator token in the caller's scope; out of scope answers as absent.
    pub(crate) async fn operator_token_in_scope(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(u64, OperatorToken), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::OperatorTokenUnknown,
            message: format!("no operator token {id:?}"),
        };
        let key = format!("{}{id}", keys::OPERATOR_TOKENS);
        let (version, token): (_, OperatorToken) = self.get(&key).await?.ok_or_else(not_found)?;
        Self::check_covers(caller, token.site.as_deref(), token.tenant.as_deref())
            .map_err(|_| not_found())?;
        Ok((version, token))
    }

    /// Whether `token` opens every admin route: fleet-wide, admin, not revoked or expired.
    fn is_usable_fleet_admin(token: &OperatorToken) -> bool {
        token.role == Role::Admin
            && token.site.is_none()
            && token.tenant.is_none()
            && !token.revoked
            && token.expires_at.is_none_or(|at| at > now())
    }

    /// The check that keeps one usable fleet-wide admin token when `token` goes: none when
    /// `token` is not one, else the version of another that must still hold at commit (so
    /// two admins revoking each other at once cannot both succeed); refused when there is
    /// no other.
    async fn keeps_an_admin(&self, token: &OperatorToken) -> Result<Option<Check>, FleetError> {
        if !Self::is_usable_fleet_admin(token) {
            return Ok(None);
        }
        let all: Vec<(u64, OperatorToken)> = self.list(keys::OPERATOR_TOKENS).await?;
        all.into_iter()
            .find(|(_, t)| t.id != token.id && Self::is_usable_fleet_admin(t))
            .map(|(version, t)| {
                Some(Check::version(
                    format!("{}{}", keys::OPERATOR_TOKENS, t.id),
                    version,
                ))
            })
            .ok_or_else(|| FleetError::LastAdmin(format!("operator token {:?}", token.id)))
    }

    /// Deletes an operator token (admin, in scope); not the last usable fleet-wide admin.
    pub async fn delete_operator_token(&self, caller: &Caller, id: &str) -> Result<(), FleetError> {
        let key = format!("{}{id}", keys::OPERATOR_TOKENS);
        let key = key.as_str();
        self.cas(key, move || async move {
            let (version, token) = self.operator_token_in_scope(caller, id).await?;
            let mut checks = vec![Check::version(key, version)];
            checks.extend(self.keeps_an_admin(&token).await?);
            let audit = Self::audit_op(
                caller,
                "operator-token.delete",
                id,
                "ok",
                token.site.as_deref(),
            );
            Ok(Attempt::Write {
                checks,
                ops: vec![Op::delete(key), audit],
                then: (),
            })
        })
        .await
    }

    /// Revokes an operator token (admin, in scope): refused from now on, kept in the list.
    /// Not the last usable fleet-wide admin.
    pub async fn revoke_operator_token(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<OperatorToken, FleetError> {
        let key = format!("{}{id}", keys::OPERATOR_TOKENS);
        let key = key.as_str();
        self.cas(key, move || async move {
            let (version, mut token) = self.operator_token_in_scope(caller, id).await?;
            let mut checks = vec![Check::version(key, version)];
            checks.extend(self.keeps_an_admin(&token).await?);
            token.revoked = true;
            let audit = Self::audit_op(
                caller,
                "operator-token.revoke",
                id,
                "ok",
                token.site.as_deref(),
            );
            Ok(Attempt::Write {
                checks,
                ops: vec![Op::put(key, encode(&token)), audit],
                then: token,
            })
        })
        .await
    }

    // ---- enrollment tokens -------------------------------------------------------------

    /// Creates an enrollment token (operator, in scope), bound to one server's boot MAC
    /// and serial when the request names them.
    pub async fn create_enrollment_token(
        &self,
        caller: &Caller,
        req: CreateEnrollmentToken,
    ) -> Result<NewToken<EnrollmentTokenView>, FleetError> {
        validate_name("site", &req.site)?;
        caller.check_site(&req.site)?;
        let claim = self
            .site_claim(caller, &req.site, req.tenant.as_deref())
            .await?;
        if req.max_uses == 0 {
            return Err(FleetError::Invalid("max_uses: must be at least 1".into()));
        }
        if req.ttl_seconds == 0 || req.ttl_seconds > 365 * 24 * 3600 {
            return Err(FleetError::Invalid(
                "ttl_seconds: between 1 and one year".into(),
            ));
        }
        let mac = req.mac.as_deref().map(normalize_mac).transpose()?;
        let serial = match req.serial.as_deref().map(str::trim) {
            Some("") => return Err(FleetError::Invalid("serial: must not be empty".into())),
            other => other.map(str::to_owned),
        };
        // A token for one server is used once: a second registration with it can only be
        // someone else's.
        if (mac.is_some() || serial.is_some()) && req.max_uses != 1 {
            return Err(FleetError::Invalid(
                "max_uses: a token bound to a MAC or serial is single-use".into(),
            ));
        }
        let record = EnrollmentToken {
            kind: TokenKind::Enrollment,
            mac,
            serial,
            appliance: None,
            ..self.new_enrollment_record(
                caller,
                req.site,
                req.labels,
                req.max_uses,
                req.ttl_seconds,
            )
        };
        self.store_enrollment_token(caller, "token.create", record, claim)
            .await
    }

    /// `POST /v1/appliances/{id}/reinstall-token` (operator, in scope): a single-use token
    /// with which that appliance's own hardware registers again, keeping its ID and site.
    pub async fn create_reinstall_token(
        &self,
        caller: &Caller,
        id: &str,
        ttl_seconds: u64,
    ) -> Result<NewToken<EnrollmentTokenView>, FleetError> {
        if ttl_seconds == 0 || ttl_seconds > 24 * 3600 {
            return Err(FleetError::Invalid(
                "ttl_seconds: between 1 and one day".into(),
            ));
        }
        let (_, appliance) = self.appliance_in_scope(caller, id).await?;
        let record = EnrollmentToken {
            kind: TokenKind::Reinstall,
            appliance: Some(appliance.id.clone()),
            ..self.new_enrollment_record(
                caller,
                appliance.site.clone(),
                BTreeMap::new(),
                1,
                ttl_seconds,
            )
        };
        // The appliance's site has its tenant already: nothing to claim.
        self.store_enrollment_token(caller, "token.reinstall", record, None)
            .await
    }

    fn new_enrollment_record(
        &self,
        caller: &Caller,
        site: String,
        labels: BTreeMap<String, String>,
        max_uses: u32,
        ttl_seconds: u64,
    ) -> EnrollmentToken {
        let at = now();
        EnrollmentToken {
            id: random_hex(6),
            site,
            labels,
            kind: TokenKind::Enrollment,
            mac: None,
            serial: None,
            appliance: None,
            max_uses,
            uses: 0,
            expires_at: at + Duration::seconds(ttl_seconds as i64),
            revoked: false,
            secret_sha256: String::new(),
            created_at: at,
            created_by: caller.actor.clone(),
            completed: Vec::new(),
        }
    }

    /// Gives `record` its secret and stores it with its audit entry and the site claim it
    /// makes, if any; the token is answered once, here.
    async fn store_enrollment_token(
        &self,
        caller: &Caller,
        action: &str,
        mut record: EnrollmentToken,
        claim: Option<(Check, Op)>,
    ) -> Result<NewToken<EnrollmentTokenView>, FleetError> {
        let secret = random_hex(20);
        record.secret_sha256 = sha256_hex(&secret);
        let id = record.id.clone();
        let key = format!("{}{id}", keys::ENROLLMENT_TOKENS);
        let target = record
            .appliance
            .as_ref()
            .map_or(id.as_str(), |a| a.as_str());
        let audit = Self::audit_op(caller, action, target, "ok", Some(&record.site));
        let mut checks = vec![Check::version(&key, 0)];
        let mut ops = vec![Op::put(&key, encode(&record)), audit];
        if let Some((check, op)) = claim {
            checks.push(check);
            ops.push(op);
        }
        if !self.store.txn(checks, ops).await? {
            return Err(FleetError::Conflict(
                "a token with this ID exists, or the site was claimed meanwhile; retry".into(),
            ));
        }
        tracing::info!(token = %id, site = %record.site, kind = ?record.kind, mac = ?record.mac, "enrollment token created");
        Ok(NewToken {
            token: format!("cairn-et.{id}.{secret}"),
            view: (&record).into(),
        })
    }

    /// What creating an enrollment token for `site` with `tenant` asks to claim: nothing
    /// when the site already belongs to that tenant (or no tenant is named), a claim when
    /// an unclaimed site is named with a tenant (fleet-wide tokens only: it moves the site
    /// out of the default tenant).
    async fn site_claim(
        &self,
        caller: &Caller,
        site: &str,
        tenant: Option<&str>,
    ) -> Result<Option<(Check, Op)>, FleetError> {
        let Some(tenant) = tenant else {
            return Ok(None);
        };
        let claimed = self
            .get::<Site>(&format!("{}{site}", keys::SITES))
            .await?
            .map(|(_, s)| s.tenant);
        match claimed {
            Some(owner) if owner == tenant => Ok(None),
            Some(_) => Err(FleetError::Conflict(format!(
                "site {site:?} belongs to another tenant than {tenant:?}"
            ))),
            None if tenant == DEFAULT_TENANT => Ok(None),
            None => {
                caller.check_scope(None, "only a fleet-wide token claims a site for a tenant")?;
                self.check_tenant_exists(tenant).await?;
                Ok(Some(Self::claim_site(site, tenant)))
            }
        }
    }

    /// Lists enrollment tokens in scope (viewer).
    pub async fn list_enrollment_tokens(
        &self,
        caller: &Caller,
    ) -> Result<Vec<EnrollmentToken>, FleetError> {
        let all: Vec<(u64, EnrollmentToken)> = self.list(keys::ENROLLMENT_TOKENS).await?;
        Ok(all
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| caller.sees(&t.site))
            .collect())
    }

    /// An enrollment token of a site the caller sees; others answer as absent.
    pub(crate) async fn enrollment_token_in_scope(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(u64, EnrollmentToken), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::Token(TokenRefusal::Unknown),
            message: format!("no enrollment token {id:?}"),
        };
        let (version, token): (_, EnrollmentToken) = self
            .get(&format!("{}{id}", keys::ENROLLMENT_TOKENS))
            .await?
            .ok_or_else(not_found)?;
        if !caller.sees(&token.site) {
            return Err(not_found());
        }
        Ok((version, token))
    }

    /// Revokes an enrollment token (operator, in scope).
    pub async fn revoke_enrollment_token(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<EnrollmentToken, FleetError> {
        let key = format!("{}{id}", keys::ENROLLMENT_TOKENS);
        let key = key.as_str();
        self.cas(key, move || async move {
            let (version, mut token) = self.enrollment_token_in_scope(caller, id).await?;
            token.revoked = true;
            let audit = Self::audit_op(caller, "token.revoke", id, "ok", Some(&token.site));
            Ok(Attempt::Write {
                checks: vec![Check::version(key, version)],
                ops: vec![Op::put(key, encode(&token)), audit],
                then: token,
            })
        })
        .await
    }

    /// Finds the token and says whether it would be accepted now, without using it; a
    /// refused token's record comes with its refusal (with its version: a used-up token
    /// still answers a repeated registration), except when the secret is wrong.
    pub(super) async fn lookup_enrollment_token(
        &self,
        token: &str,
    ) -> Result<
        Result<(u64, EnrollmentToken), (TokenRefusal, Option<(u64, EnrollmentToken)>)>,
        FleetError,
    > {
        let Some((id, secret)) = split_token(token.trim(), "cairn-et") else {
            return Ok(Err((TokenRefusal::Malformed, None)));
        };
        let key = format!("{}{id}", keys::ENROLLMENT_TOKENS);
        let Some((version, record)) = self.get::<EnrollmentToken>(&key).await? else {
            return Ok(Err((TokenRefusal::Unknown, None)));
        };
        let refusal = if !same_digest(&record.secret_sha256, &sha256_hex(secret)) {
            Some(TokenRefusal::Unknown)
        } else if record.revoked {
            Some(TokenRefusal::Revoked)
        } else if record.expires_at <= now() {
            Some(TokenRefusal::Expired)
        } else if record.uses >= record.max_uses {
            Some(TokenRefusal::UsedUp)
        } else {
            None
        };
        Ok(match refusal {
            None => Ok((version, record)),
            // An unknown secret must not reveal anything about the token it names.
            Some(TokenRefusal::Unknown) => Err((TokenRefusal::Unknown, None)),
            Some(r) => Err((r, Some((version, record)))),
        })
    }

    /// `POST /v1/registrations/check`: would this token be accepted? Does not use it.
    pub async fn check_enrollment_token(&self, token: &str) -> Result<TokenCheck, FleetError> {
        Ok(match self.lookup_enrollment_token(token).await? {
            Ok((_, t)) => TokenCheck {
                valid: true,
                reason: None,
                site: Some(t.site),
            },
            Err((reason, _)) => TokenCheck {
                valid: false,
                reason: Some(reason),
                site: None,
            },
        })
    }
}
