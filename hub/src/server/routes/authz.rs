//! The authorization matrix: every route of [`routes`] called by every kind of caller —
//! each role scoped to the same site, another site of the same tenant, a site of another
//! tenant, the same and another tenant, the whole fleet, and callers with no, an expired
//! or a revoked token — asserting the status and that no answer holds another scope's
//! names or any secret. The matrix iterates the route table itself, so a route added
//! without an entry here fails.
//!
//! Every resource a route names belongs to site `acme-east` of tenant `acme`; the other
//! site of `acme` is `acme-west`, the other tenant `globex` with site `globex-main`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use cairn_api::hub::{CampaignMember, CampaignState, Pacing, Role, Selector};
use cairn_api::{ApplianceId, DesiredState, JoinBundle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tower::ServiceExt;

use super::{Auth, router, routes};
use crate::fleet::{Fleet, FleetSettings};
use crate::metrics::Metrics;
use crate::model::{
    Appliance, Campaign, ConfigLayer, ControlPlane, EnrollmentToken, Event, OperatorToken, Release,
    Site, Tenant, TokenKind, Vpc, keys,
};
use crate::pki::Ca;
use crate::ratelimit::RateLimiter;
use crate::server::AppState;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Op, Store};

const SITES: [(&str, &str); 3] = [
    ("acme-east", "acme"),
    ("acme-west", "acme"),
    ("globex-main", "globex"),
];

/// Where a token's scope is, relative to the resources the routes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Where {
    /// Site `acme-east`: the resources' own site.
    SameSite,
    /// Site `acme-west`: another site of the same tenant.
    OtherSite,
    /// Site `globex-main`: a site of another tenant.
    OtherTenantSite,
    /// Tenant `acme`.
    SameTenant,
    /// Tenant `globex`.
    OtherTenant,
    /// The whole fleet.
    Fleet,
}

const WHERES: [Where; 6] = [
    Where::SameSite,
    Where::OtherSite,
    Where::OtherTenantSite,
    Where::SameTenant,
    Where::OtherTenant,
    Where::Fleet,
];

impl Where {
    /// `(site, tenant)` of a token scoped here.
    fn scope(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Where::SameSite => (Some("acme-east"), Some("acme")),
            Where::OtherSite => (Some("acme-west"), Some("acme")),
            Where::OtherTenantSite => (Some("globex-main"), Some("globex")),
            Where::SameTenant => (None, Some("acme")),
            Where::OtherTenant => (None, Some("globex")),
            Where::Fleet => (None, None),
        }
    }

    /// Names no answer to a token scoped here may hold.
    fn foreign(self) -> &'static [&'static str] {
        match self {
            Where::SameSite => &["acme-west", "globex"],
            Where::OtherSite => &["acme-east", "globex"],
            Where::OtherTenantSite | Where::OtherTenant => &["acme"],
            Where::SameTenant => &["globex"],
            Where::Fleet => &[],
        }
    }
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Token(Role, Where),
    NoToken,
    Expired,
    Revoked,
}

fn callers() -> Vec<Who> {
    let mut out = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        for w in WHERES {
            out.push(Who::Token(role, w));
        }
    }
    out.extend([Who::NoToken, Who::Expired, Who::Revoked]);
    out
}

/// Which scoped tokens a route admits (given the role), for a resource of `acme-east`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Every token with the role.
    All,
    /// Tokens that see site `acme-east`: that site's, tenant `acme`'s, fleet-wide.
    Site,
    /// Tokens that may change tenant `acme`'s tenant-wide things: its own, fleet-wide.
    Tenant,
    /// Fleet-wide tokens only.
    Fleet,
}

impl Reach {
    fn admits(self, w: Where) -> bool {
        match self {
            Reach::All => true,
            Reach::Site => matches!(w, Where::SameSite | Where::SameTenant | Where::Fleet),
            Reach::Tenant => matches!(w, Where::SameTenant | Where::Fleet),
            Reach::Fleet => w == Where::Fleet,
        }
    }
}

/// What a route must do: who may call it and what they get.
struct Case {
    /// The request path, parameters filled in, with its query.
    uri: &'static str,
    /// The request body.
    body: Option<Value>,
    /// `None`: no operator token needed; else the least role.
    role: Option<Role>,
    /// Only over mTLS: every operator caller gets 401.
    mtls_only: bool,
    reach: Reach,
    /// Status for an admitted caller.
    ok: u16,
    /// Status for a caller with the role whose scope is out of reach.
    denied: u16,
    /// An admitted caller is answered `acme-east`'s bootstrap token: the route exists to
    /// give it to an admin who asks. Every other secret stays out.
    reveals_bootstrap: bool,
}

fn case(uri: &'static str, role: Option<Role>, reach: Reach, ok: u16, denied: u16) -> Case {
    Case {
        uri,
        body: None,
        role,
        mtls_only: false,
        reach,
        ok,
        denied,
        reveals_bootstrap: false,
    }
}

/// `acme-east`'s kubelet bootstrap token in the world below.
fn bootstrap_of(site: &str) -> String {
    format!("{}.{}", &sha256_hex(site)[..6], &sha256_hex(site)[6..22])
}

fn with(mut c: Case, body: Value) -> Case {
    c.body = Some(body);
    c
}

/// The matrix's entries, by route as the table names it.
fn cases() -> BTreeMap<(Method, &'static str), Case> {
    use Reach::{All, Fleet, Site, Tenant};
    use Role::{Admin, Operator as Op, Viewer};
    let v = Some(Viewer);
    let o = Some(Op);
    let a = Some(Admin);
    let m = |mtls: Case| Case {
        mtls_only: true,
        ..mtls
    };
    let entries: Vec<(Method, &'static str, Case)> = vec![
        (Method::GET, "/healthz", case("/healthz", None, All, 200, 0)),
        (
            Method::GET,
            "/metrics",
            case("/metrics", v, Fleet, 200, 403),
        ),
        (
            Method::GET,
            "/v1/openapi.json",
            case("/v1/openapi.json", None, All, 200, 0),
        ),
        (Method::GET, "/v1/ca", case("/v1/ca", None, All, 200, 0)),
        (
            Method::POST,
            "/v1/registrations/check",
            with(
                case("/v1/registrations/check", None, All, 200, 0),
                json!({"token": "cairn-et.00.00"}),
            ),
        ),
        (
            Method::POST,
            "/v1/registrations",
            with(
                case("/v1/registrations", None, All, 403, 0),
                json!({"token": "cairn-et.00.00", "csr_pem": "x", "hostname": "h",
                    "inventory": {}, "agent_version": "0"}),
            ),
        ),
        (
            Method::POST,
            "/v1/renewals",
            m(with(
                case("/v1/renewals", None, All, 401, 0),
                json!({"csr_pem": "x"}),
            )),
        ),
        (
            Method::POST,
            "/v1/heartbeats",
            m(with(
                case("/v1/heartbeats", None, All, 401, 0),
                json!({"applied_generation": 0, "status": {}}),
            )),
        ),
        (
            Method::GET,
            "/v1/tunnel",
            m(case("/v1/tunnel", None, All, 401, 0)),
        ),
        (
            Method::GET,
            "/v1/whoami",
            case("/v1/whoami", v, All, 200, 0),
        ),
        (
            Method::POST,
            "/v1/tokens",
            with(
                case("/v1/tokens", o, Site, 201, 403),
                json!({"site": "acme-east"}),
            ),
        ),
        (
            Method::GET,
            "/v1/tokens",
            case("/v1/tokens", v, All, 200, 0),
        ),
        (
            Method::DELETE,
            "/v1/tokens/{id}",
            case("/v1/tokens/e1acme0east", o, Site, 200, 404),
        ),
        (
            Method::POST,
            "/v1/operator-tokens",
            with(
                case("/v1/operator-tokens", a, Site, 201, 403),
                json!({"name": "new", "role": "viewer", "site": "acme-east"}),
            ),
        ),
        (
            Method::GET,
            "/v1/operator-tokens",
            case("/v1/operator-tokens", a, All, 200, 0),
        ),
        (
            Method::DELETE,
            "/v1/operator-tokens/{id}",
            case("/v1/operator-tokens/0000aaaa", a, Site, 204, 404),
        ),
        (
            Method::POST,
            "/v1/operator-tokens/{id}/revoke",
            case("/v1/operator-tokens/0000aaaa/revoke", a, Site, 200, 404),
        ),
        (
            Method::GET,
            "/v1/appliances",
            case("/v1/appliances", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/appliance-counts",
            case("/v1/appliance-counts?by=state", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/watch/appliances",
            case("/v1/watch/appliances?timeoutSeconds=0", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/watch/appliances/{id}",
            case(
                "/v1/watch/appliances/ap-acme-east?timeoutSeconds=0",
                v,
                Site,
                200,
                404,
            ),
        ),
        (
            Method::GET,
            "/v1/appliances/{id}",
            case("/v1/appliances/ap-acme-east", v, Site, 200, 404),
        ),
        (
            Method::DELETE,
            "/v1/appliances/{id}",
            case("/v1/appliances/ap-acme-east", o, Site, 204, 404),
        ),
        (
            Method::PUT,
            "/v1/appliances/{id}/labels",
            with(
                case("/v1/appliances/ap-acme-east/labels", o, Site, 200, 404),
                json!({"labels": {"rack": "r2"}}),
            ),
        ),
        (
            Method::POST,
            "/v1/appliances/{id}/reinstall-token",
            with(
                case(
                    "/v1/appliances/ap-acme-east/reinstall-token",
                    o,
                    Site,
                    201,
                    404,
                ),
                json!({}),
            ),
        ),
        // Allowed callers reach the tunnel registry, which holds no tunnel here (503).
        (
            Method::GET,
            "/v1/appliances/{id}/logs",
            case("/v1/appliances/ap-acme-east/logs", o, Site, 503, 404),
        ),
        (
            Method::POST,
            "/v1/appliances/{id}/exec",
            with(
                case("/v1/appliances/ap-acme-east/exec", a, Site, 503, 404),
                json!({"argv": ["true"]}),
            ),
        ),
        (
            Method::POST,
            "/v1/appliances/{id}/reboot",
            case("/v1/appliances/ap-acme-east/reboot", a, Site, 503, 404),
        ),
        // No tunnel here, so nothing scraped: every operator gets an empty exposition.
        (
            Method::GET,
            "/v1/metrics/appliances",
            case("/v1/metrics/appliances", o, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/appliances/{id}/support-bundle",
            case(
                "/v1/appliances/ap-acme-east/support-bundle",
                o,
                Site,
                503,
                404,
            ),
        ),
        (
            Method::POST,
            "/v1/appliances/{id}/rollback",
            case("/v1/appliances/ap-acme-east/rollback", a, Site, 503, 404),
        ),
        (
            Method::GET,
            "/v1/appliances/{id}/join-bundle",
            Case {
                reveals_bootstrap: true,
                ..case("/v1/appliances/ap-acme-east/join-bundle", a, Site, 200, 404)
            },
        ),
        (
            Method::POST,
            "/v1/control-planes",
            with(
                case("/v1/control-planes", a, Fleet, 201, 403),
                json!({"name": "cp-new", "api_server_url": "https://127.0.0.1:1",
                    "ca_bundle_pem": CA_PEM.get().expect("set"), "credentials_ref": "/nonexistent",
                    "tenant": "acme"}),
            ),
        ),
        (
            Method::GET,
            "/v1/control-planes",
            case("/v1/control-planes", v, All, 200, 0),
        ),
        (
            Method::POST,
            "/v1/control-planes/{name}/assign",
            with(
                case("/v1/control-planes/cp-acme/assign", o, Site, 200, 404),
                json!({"site": "acme-east"}),
            ),
        ),
        (
            Method::POST,
            "/v1/vpcs",
            with(
                case("/v1/vpcs", o, Tenant, 201, 403),
                json!({"name": "net-new", "subnet": "10.9.0.0/24", "tenant": "acme"}),
            ),
        ),
        (Method::GET, "/v1/vpcs", case("/v1/vpcs", v, All, 200, 0)),
        (
            Method::POST,
            "/v1/vpcs/{name}/attach",
            with(
                case("/v1/vpcs/net-acme/attach", o, Site, 200, 404),
                json!({"appliance_id": "ap-acme-east"}),
            ),
        ),
        (
            Method::POST,
            "/v1/vpcs/{name}/detach",
            with(
                case("/v1/vpcs/net-acme/detach", o, Site, 200, 404),
                json!({"appliance_id": "ap-acme-east"}),
            ),
        ),
        // The hub under test keeps no release directory: an admitted caller gets the
        // refusal that says so, past authorization.
        (
            Method::POST,
            "/v1/releases",
            with(
                case("/v1/releases", a, Fleet, 400, 403),
                json!({"url": "https://127.0.0.1:1/b", "sha256": "00"}),
            ),
        ),
        (
            Method::POST,
            "/v1/releases/upload",
            case("/v1/releases/upload?sha256=00", a, Fleet, 400, 403),
        ),
        (
            Method::GET,
            "/v1/releases",
            case("/v1/releases", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/releases/{version}",
            case("/v1/releases/1.0", v, All, 200, 0),
        ),
        // Refused while a campaign uses it: admitted, then 409.
        (
            Method::DELETE,
            "/v1/releases/{version}",
            case("/v1/releases/1.0", a, Fleet, 409, 403),
        ),
        (
            Method::GET,
            "/v1/releases/{version}/bundle",
            case("/v1/releases/1.0/bundle", v, All, 400, 0),
        ),
        (
            Method::POST,
            "/v1/campaigns",
            with(
                case("/v1/campaigns", o, Site, 201, 403),
                json!({"name": "c-new", "release": "1.0", "selector": {"site": "acme-east"}}),
            ),
        ),
        (
            Method::GET,
            "/v1/campaigns",
            case("/v1/campaigns", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/campaigns/{name}",
            case("/v1/campaigns/camp-acme-east", v, Site, 200, 404),
        ),
        (
            Method::POST,
            "/v1/campaigns/{name}/{action}",
            case("/v1/campaigns/camp-acme-east/start", o, Site, 200, 404),
        ),
        (
            Method::DELETE,
            "/v1/appliances/{id}/quarantine/{version}",
            case(
                "/v1/appliances/ap-acme-east/quarantine/1.0",
                o,
                Site,
                200,
                404,
            ),
        ),
        (
            Method::DELETE,
            "/v1/appliances/{id}/upgrade-flag",
            case(
                "/v1/appliances/ap-acme-east/upgrade-flag",
                o,
                Site,
                200,
                404,
            ),
        ),
        (
            Method::GET,
            "/v1/audit",
            case("/v1/audit?since=2000-01-01T00:00:00Z", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/events",
            case("/v1/events?since=2000-01-01T00:00:00Z", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/watch/events",
            // From the first event, every site's, then end: each token is streamed its
            // scope's events only (the foreign-name check below).
            case("/v1/watch/events?after=0&timeoutSeconds=0", v, All, 200, 0),
        ),
        (
            Method::POST,
            "/v1/tenants",
            with(
                case("/v1/tenants", a, Fleet, 201, 403),
                json!({"name": "initech", "sites": ["initech-1"]}),
            ),
        ),
        (
            Method::GET,
            "/v1/tenants",
            case("/v1/tenants", v, All, 200, 0),
        ),
        (
            Method::POST,
            "/v1/config/layers",
            with(
                case("/v1/config/layers", o, Site, 200, 403),
                json!({"file": "l.yaml",
                    "document": "layer: site:acme-east\nsettings:\n  ntp: [ntp.example]\n"}),
            ),
        ),
        (
            Method::GET,
            "/v1/config/layers",
            case("/v1/config/layers", v, All, 200, 0),
        ),
        (
            Method::GET,
            "/v1/config/layers/{layer}",
            case("/v1/config/layers/site:acme-east", v, Site, 200, 404),
        ),
        (
            Method::GET,
            "/v1/config/layers/{layer}/history",
            case(
                "/v1/config/layers/site:acme-east/history",
                v,
                Site,
                200,
                404,
            ),
        ),
        (
            Method::POST,
            "/v1/config/layers/{layer}/rollback",
            with(
                case(
                    "/v1/config/layers/site:acme-east/rollback",
                    o,
                    Site,
                    200,
                    404,
                ),
                json!({"to": 1}),
            ),
        ),
        (
            Method::GET,
            "/v1/appliances/{id}/config",
            case("/v1/appliances/ap-acme-east/config", v, Site, 200, 404),
        ),
    ];
    let mut out = BTreeMap::new();
    for (method, path, c) in entries {
        assert!(
            out.insert((method.clone(), path), c).is_none(),
            "{method} {path} has two matrix entries"
        );
    }
    out
}

static CA_PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A hub with the same records before every call that may change them.
struct World {
    state: AppState,
    /// The bearer token of each caller that has one.
    tokens: BTreeMap<Who, String>,
    /// What no answer may hold.
    secrets: Vec<String>,
    _dir: tempfile::TempDir,
}

fn token_record(id: &str, name: &str, role: Role, w: Where, secret: &str) -> OperatorToken {
    let (site, tenant) = w.scope();
    OperatorToken {
        id: id.into(),
        name: name.into(),
        role,
        site: site.map(str::to_owned),
        tenant: tenant.map(str::to_owned),
        secret_sha256: sha256_hex(secret),
        created_at: OffsetDateTime::now_utc(),
        created_by: "operator:setup".into(),
        expires_at: None,
        revoked: false,
    }
}

fn put<T: serde::Serialize>(ops: &mut Vec<Op>, key: String, record: &T) {
    ops.push(Op::put(key, serde_json::to_vec(record).unwrap()));
}

async fn world(ca: Arc<Ca>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
    let now = OffsetDateTime::now_utc();
    let mut ops = Vec::new();
    let mut tokens = BTreeMap::new();
    let mut secrets = Vec::new();
    let mut n = 0u32;
    let mut token =
        |ops: &mut Vec<Op>, who: Who, role: Role, w: Where, edit: &dyn Fn(&mut OperatorToken)| {
            n += 1;
            let id = format!("{n:08x}");
            let secret = format!("5ec7e7{n:034x}");
            let mut record = token_record(&id, &format!("{role}-{n}"), role, w, &secret);
            edit(&mut record);
            secrets.push(secret.clone());
            secrets.push(record.secret_sha256.clone());
            put(ops, format!("{}{id}", keys::OPERATOR_TOKENS), &record);
            tokens.insert(who, format!("cairn-op.{id}.{secret}"));
        };
    for who in callers() {
        match who {
            Who::Token(role, w) => token(&mut ops, who, role, w, &|_| {}),
            Who::NoToken => {}
            Who::Expired => token(&mut ops, who, Role::Admin, Where::Fleet, &|t| {
                t.expires_at = Some(now - time::Duration::seconds(1));
            }),
            Who::Revoked => token(&mut ops, who, Role::Admin, Where::Fleet, &|t| {
                t.revoked = true
            }),
        }
    }
    // The operator token the token routes name.
    let target = token_record("0000aaaa", "target", Role::Viewer, Where::SameSite, "aaaa");
    secrets.push(target.secret_sha256.clone());
    put(
        &mut ops,
        format!("{}0000aaaa", keys::OPERATOR_TOKENS),
        &target,
    );

    for tenant in ["acme", "globex"] {
        let t = Tenant {
            name: tenant.into(),
            created_at: now,
            created_by: "operator:setup".into(),
        };
        put(&mut ops, format!("{}{tenant}", keys::TENANTS), &t);
    }
    for (i, (site, tenant)) in SITES.into_iter().enumerate() {
        let s = Site {
            name: site.into(),
            tenant: tenant.into(),
        };
        put(&mut ops, format!("{}{site}", keys::SITES), &s);
        let et_id = match site {
            "acme-east" => "e1acme0east".to_owned(),
            _ => format!("e1{}", sha256_hex(site)[..8].to_owned()),
        };
        let et_secret = sha256_hex(&format!("enroll {site}"))[..40].to_owned();
        secrets.push(et_secret.clone());
        let et = EnrollmentToken {
            id: et_id.clone(),
            site: site.into(),
            labels: BTreeMap::new(),
            kind: TokenKind::Enrollment,
            mac: None,
            serial: None,
            appliance: None,
            max_uses: 1,
            uses: 0,
            expires_at: now + time::Duration::hours(1),
            revoked: false,
            secret_sha256: sha256_hex(&et_secret),
            created_at: now,
            created_by: "operator:setup".into(),
            completed: Vec::new(),
        };
        secrets.push(et.secret_sha256.clone());
        put(&mut ops, format!("{}{et_id}", keys::ENROLLMENT_TOKENS), &et);

        let id = ApplianceId::new(format!("ap-{site}")).unwrap();
        let bootstrap = bootstrap_of(site);
        secrets.push(bootstrap.clone());
        let cp = if tenant == "acme" {
            "cp-acme"
        } else {
            "cp-globex"
        };
        let join = JoinBundle {
            control_plane: cp.into(),
            api_server_url: "https://127.0.0.1:1".into(),
            ca_bundle_pem: String::new(),
            bootstrap_token: bootstrap,
            revision: 1,
        };
        let vpc = if tenant == "acme" {
            "net-acme"
        } else {
            "net-globex"
        };
        let a = Appliance {
            id: id.clone(),
            site: site.into(),
            hostname: format!("host-{site}"),
            labels: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
            inventory: Default::default(),
            agent_version: "0.1.0".into(),
            cert_sha256: sha256_hex(&format!("cert {site}")),
            previous_cert_sha256: None,
            cert_not_after: now + time::Duration::days(1),
            registered_at: now,
            rekeys: 0,
            vtep_address: Some(format!("192.0.2.{}", i + 1)),
            vtep_refused: None,
            vpcs: BTreeSet::from([vpc.to_owned()]),
            control_plane: Some(cp.into()),
            join: Some(join.clone()),
            desired: DesiredState {
                generation: 1,
                heartbeat_interval_seconds: 30,
                join: Some(join),
                ..Default::default()
            },
            quarantined: BTreeMap::from([("1.0".to_owned(), "rolled back".to_owned())]),
            upgrade_flag: Some(format!("came back on 0.9 at {site}")),
        };
        put(&mut ops, format!("{}{id}", keys::APPLIANCES), &a);
        let event = Event {
            at: now,
            appliance: id.clone(),
            site: site.into(),
            kind: "registered".into(),
            message: format!("{} registered", a.hostname),
            hub: "hub-test".into(),
        };
        put(
            &mut ops,
            format!("{}{:020}-{site}", keys::EVENTS, now.unix_timestamp_nanos()),
            &event,
        );
        let member: CampaignMember =
            serde_json::from_value(json!({"appliance": id, "batch": 0, "state": "pending"}))
                .unwrap();
        let campaign = Campaign {
            name: format!("camp-{site}"),
            release: "1.0".into(),
            selector: Selector {
                site: Some(site.into()),
                ..Default::default()
            },
            canaries: 0,
            pacing: Pacing::BatchSize(1),
            max_failures: 0,
            window: None,
            prestage: false,
            allow_downgrade: false,
            deadline_seconds: None,
            state: CampaignState::Created,
            state_reason: String::new(),
            members: vec![member],
            created_at: now,
            created_by: "operator:setup".into(),
            site: Some(site.into()),
        };
        put(
            &mut ops,
            format!("{}camp-{site}", keys::CAMPAIGNS),
            &campaign,
        );
    }
    for (name, tenant, members, vni) in [
        (
            "net-acme",
            "acme",
            vec!["ap-acme-east", "ap-acme-west"],
            4096,
        ),
        ("net-globex", "globex", vec!["ap-globex-main"], 4097),
    ] {
        let vpc = Vpc {
            name: name.into(),
            subnet: "10.1.0.0/24".into(),
            vni,
            members: members
                .into_iter()
                .map(|m| ApplianceId::new(m).unwrap())
                .collect(),
            tenant: tenant.into(),
        };
        put(&mut ops, format!("{}{name}", keys::VPCS), &vpc);
    }
    for (name, tenant, site) in [
        ("cp-acme", "acme", "acme-east"),
        ("cp-acme-west", "acme", "acme-west"),
        ("cp-globex", "globex", "globex-main"),
    ] {
        let cp = ControlPlane {
            name: name.into(),
            api_server_url: "https://127.0.0.1:1".into(),
            ca_bundle_pem: ca.cert_pem.clone(),
            credentials_ref: "/nonexistent".into(),
            site: Some(site.into()),
            labels: BTreeMap::new(),
            tenant: tenant.into(),
        };
        put(&mut ops, format!("{}{name}", keys::CONTROL_PLANES), &cp);
    }
    let release = Release {
        version: "1.0".into(),
        architecture: "x86_64".into(),
        compatible_from: vec![],
        size_bytes: 1,
        sha256: "00".into(),
        signing_key: "key".into(),
        build_time: "2026-01-01T00:00:00Z".into(),
        source_url: None,
        added_at: now,
        added_by: "operator:setup".into(),
    };
    put(&mut ops, format!("{}1.0", keys::RELEASES), &release);
    let layer = ConfigLayer {
        layer: "site:acme-east".into(),
        tenant: "acme".into(),
        selector: None,
        generation: 1,
        author: "operator:setup".into(),
        at: now,
        document: "layer: site:acme-east\nsettings:\n  heartbeat_interval_seconds: 10\n".into(),
        file: "layer.yaml".into(),
        value: json!({"settings": {"heartbeat_interval_seconds": 10}}),
    };
    put(
        &mut ops,
        format!("{}site:acme-east", keys::CONFIG_LAYERS),
        &layer,
    );
    put(
        &mut ops,
        format!("{}site:acme-east/{:020}", keys::CONFIG_HISTORY, 1),
        &layer,
    );
    assert!(store.txn(vec![], ops).await.unwrap());

    let fleet = Fleet::new(store, ca, FleetSettings::default());
    let state = AppState {
        fleet: Arc::new(fleet),
        metrics: Arc::new(Metrics::default()),
        limiter: Arc::new(RateLimiter::new(1_000_000)),
        renewals: Arc::new(RateLimiter::new(1_000_000)),
        refusals: Arc::new(crate::ratelimit::RefusalLog::default()),
        request_timeout: std::time::Duration::from_secs(60),
        tunnels: Arc::new(crate::tunnel::Tunnels::new(Default::default())),
    };
    World {
        state,
        tokens,
        secrets,
        _dir: dir,
    }
}

/// Strings a request carries: an answer may echo them (an error naming the ID asked for).
fn request_words(uri: &str, body: &Option<Value>) -> Vec<String> {
    let mut words: Vec<String> = uri
        .split(['/', '?', '&', '='])
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect();
    fn strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    if let Some(b) = body {
        strings(b, &mut words);
    }
    // Longest first, so a word inside another is not stripped first.
    words.sort_by_key(|w| std::cmp::Reverse(w.len()));
    words
}

#[tokio::test]
async fn every_route_answers_every_caller_as_its_scope_allows() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(crate::pki::init(dir.path(), &["localhost".into()], None).unwrap());
    CA_PEM.get_or_init(|| ca.cert_pem.clone());
    let mut cases = cases();
    let callers = callers();
    let mut w = world(ca.clone()).await;
    // Set when a call may have changed records: the next one gets a fresh world.
    let mut dirty = false;
    let mut checked = 0usize;
    let mut failures = Vec::new();
    for route in routes() {
        let key = (route.method.clone(), route.path);
        let case = cases.remove(&key).unwrap_or_else(|| {
            panic!(
                "{} {} has no entry in the authorization matrix",
                key.0, key.1
            )
        });
        // The matrix states who may call; the table must agree.
        let table_role = match route.auth {
            Auth::None | Auth::RateLimited | Auth::Mtls | Auth::MtlsRateLimited => None,
            Auth::Bearer(r) | Auth::MtlsOrBearer(r) => Some(r),
        };
        assert_eq!(table_role, case.role, "{} {}: least role", key.0, key.1);
        assert_eq!(
            case.mtls_only,
            matches!(route.auth, Auth::Mtls | Auth::MtlsRateLimited),
            "{} {}",
            key.0,
            key.1
        );
        let words = request_words(case.uri, &case.body);
        for &who in &callers {
            let expected = match (who, case.role) {
                _ if case.mtls_only => 401,
                (_, None) => case.ok,
                (Who::NoToken | Who::Expired | Who::Revoked, Some(_)) => 401,
                (Who::Token(role, _), Some(least)) if role < least => 403,
                (Who::Token(_, w), Some(_)) if case.reach.admits(w) => case.ok,
                (Who::Token(..), Some(_)) => case.denied,
            };
            if dirty {
                w = world(ca.clone()).await;
            }
            let mut req = Request::builder().method(key.0.clone()).uri(case.uri);
            if let Some(t) = w.tokens.get(&who) {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let req = req.extension(super::ConnInfo {
                remote: ([127, 0, 0, 1], 40000).into(),
                cert: None,
            });
            let req = match &case.body {
                Some(b) => req
                    .header("content-type", "application/json")
                    .body(Body::from(b.to_string())),
                None => req.body(Body::empty()),
            }
            .unwrap();
            let response = router(w.state.clone()).oneshot(req).await.unwrap();
            let status = response.status().as_u16();
            dirty = key.0 != Method::GET && status < 300;
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            checked += 1;
            if status != expected {
                failures.push(format!(
                    "{} {} as {who:?}: {status}, expected {expected}: {}",
                    key.0,
                    case.uri,
                    text.chars().take(200).collect::<String>()
                ));
            }
            let revealed =
                (case.reveals_bootstrap && status < 300).then(|| bootstrap_of("acme-east"));
            for secret in &w.secrets {
                if revealed.as_ref() == Some(secret) {
                    assert!(
                        text.contains(secret.as_str()),
                        "{} {} as {who:?}: no bootstrap token: {text}",
                        key.0,
                        case.uri
                    );
                    continue;
                }
                assert!(
                    !text.contains(secret.as_str()),
                    "{} {} as {who:?} answered a secret: {text}",
                    key.0,
                    case.uri
                );
            }
            let mut stripped = text.clone();
            for word in &words {
                stripped = stripped.replace(word.as_str(), "");
            }
            let foreign: &[&str] = match who {
                Who::Token(_, w) => w.foreign(),
                _ => &["acme", "globex"],
            };
            for name in foreign {
                assert!(
                    !stripped.contains(name),
                    "{} {} as {who:?} answered another scope's {name:?}: {text}",
                    key.0,
                    case.uri
                );
            }
        }
    }
    assert!(
        cases.is_empty(),
        "matrix entries for routes the table does not have: {:?}",
        cases.keys().collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} calls wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("authorization matrix: {checked} calls (routes x callers) checked");
}
