//! Hosted Kubernetes control planes: minting kubelet bootstrap tokens in them.
//!
//! For each appliance assigned to a control plane the hub creates the standard
//! `bootstrap-token-<id>` Secret in `kube-system` (type `bootstrap.kubernetes.io/token`,
//! authentication and signing usages, the kubeadm node group, an expiry) through the `kube`
//! crate, and hands the appliance a join bundle. The API server call sits behind
//! [`BootstrapTokens`] so the fleet logic does not know about HTTP.

use std::time::Duration;

use async_trait::async_trait;
use cairn_api::ApplianceId;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use rand::Rng;
use time::OffsetDateTime;

use crate::model::ControlPlane;

/// Group kubeadm's RBAC lets bootstrap tokens create CSRs and auto-approve node certs.
pub const NODE_BOOTSTRAP_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// A bootstrap token minted in a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// `[a-z0-9]{6}`.
    pub id: String,
    /// `[a-z0-9]{16}`.
    pub secret: String,
    /// When the API server deletes it.
    pub expires_at: OffsetDateTime,
}

impl BootstrapToken {
    /// A fresh random token valid for `ttl`.
    pub fn generate(ttl: Duration) -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = pick(6);
        let secret = pick(16);
        let expires_at = (OffsetDateTime::now_utc() + ttl)
            .replace_nanosecond(0)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        Self {
            id,
            secret,
            expires_at,
        }
    }

    /// `<id>.<secret>`, what the kubelet is given.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret the API server expects for this token.
    pub fn secret_object(&self, appliance: &ApplianceId) -> Secret {
        let expiration = self
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let data = [
            ("token-id", self.id.clone()),
            ("token-secret", self.secret.clone()),
            ("expiration", expiration),
            ("usage-bootstrap-authentication", "true".into()),
            ("usage-bootstrap-signing", "true".into()),
            ("auth-extra-groups", NODE_BOOTSTRAP_GROUP.into()),
            (
                "description",
                format!("cairn: kubelet bootstrap for appliance {appliance}"),
            ),
        ];
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("bootstrap-token-{}", self.id)),
                namespace: Some("kube-system".into()),
                labels: Some([("cairn.io/appliance".to_string(), appliance.to_string())].into()),
                ..Default::default()
            },
            type_: Some("bootstrap.kubernetes.io/token".into()),
            string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            ..Default::default()
        }
    }
}

/// Failures talking to a control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The credentials file named by `credentials_ref` could not be read.
    #[error("reading credentials {path}")]
    Credentials {
        /// File.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Invalid URL or CA bundle.
    #[error("client configuration: {0}")]
    Config(String),
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Creates bootstrap tokens in a control plane.
#[async_trait]
pub trait BootstrapTokens: Send + Sync {
    /// Creates `token`'s Secret for `appliance` in `cp`.
    async fn create(
        &self,
        cp: &ControlPlane,
        appliance: &ApplianceId,
        token: &BootstrapToken,
    ) -> Result<(), ControlPlaneError>;

    /// Deletes the Secret of the token with ID `token_id` from `cp`: the API server
    /// refuses the token from then on. A token that is not there is not an error.
    async fn delete(&self, cp: &ControlPlane, token_id: &str) -> Result<(), ControlPlaneError>;
}

/// The real adapter: `kube` over HTTPS, trusting only the control plane's CA bundle and
/// authenticating with the bearer token in the `credentials_ref` file.
pub struct KubeBootstrapTokens;

impl KubeBootstrapTokens {
    fn client(cp: &ControlPlane) -> Result<kube::Client, ControlPlaneError> {
        let token = std::fs::read_to_string(&cp.credentials_ref).map_err(|source| {
            ControlPlaneError::Credentials {
                path: cp.credentials_ref.clone(),
                source,
            }
        })?;
        let url: axum::http::Uri = cp
            .api_server_url
            .parse()
            .map_err(|e| ControlPlaneError::Config(format!("api_server_url: {e}")))?;
        let roots = rustls::pki_types::CertificateDer::pem_slice_iter(cp.ca_bundle_pem.as_bytes())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ControlPlaneError::Config(format!("ca_bundle_pem: {e}")))?;
        let mut config = kube::Config::new(url);
        config.root_cert = Some(roots);
        config.default_namespace = "kube-system".into();
        config.auth_info.token = Some(token.trim().to_owned().into());
        config.read_timeout = Some(Duration::from_secs(15));
        Ok(kube::Client::try_from(config)?)
    }
}

use rustls::pki_types::pem::PemObject;

#[async_trait]
impl BootstrapTokens for KubeBootstrapTokens {
    async fn create(
        &self,
        cp: &ControlPlane,
        appliance: &ApplianceId,
        token: &BootstrapToken,
    ) -> Result<(), ControlPlaneError> {
        let secrets: Api<Secret> = Api::namespaced(Self::client(cp)?, "kube-system");
        secrets
            .create(&PostParams::default(), &token.secret_object(appliance))
            .await?;
        Ok(())
    }

    async fn delete(&self, cp: &ControlPlane, token_id: &str) -> Result<(), ControlPlaneError> {
        let secrets: Api<Secret> = Api::namespaced(Self::client(cp)?, "kube-system");
        match secrets
            .delete(
                &format!("bootstrap-token-{token_id}"),
                &DeleteParams::default(),
            )
            .await
        {
            // Never created (a crash or a refusal after its record was written) or expired.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The adapter against a scripted API server: no kube-apiserver can run here (README
    //! limits), so an HTTPS server with its own CA answers a fixed script and records every
    //! request; the tests assert method, path, headers and body in order. The real `kube`
    //! client, TLS and bearer authentication are exercised unchanged.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use serde_json::{Value, json};

    use super::*;
    use crate::fleet::{Caller, Fleet, FleetError, FleetSettings};
    use crate::model::Role;
    use crate::store::embedded::EmbeddedStore;
    use cairn_api::hub::CreateEnrollmentToken;

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        path: String,
        authorization: String,
        body: Value,
    }

    /// Answers: `Echo` returns the request body as the created object.
    enum Answer {
        Echo,
        Status(u16, Value),
    }

    struct ScriptedApiServer {
        url: String,
        ca_pem: String,
        recorded: Arc<Mutex<Vec<Recorded>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for ScriptedApiServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn scripted(script: Vec<Answer>) -> ScriptedApiServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let rec = recorded.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let (rec, script) = (rec.clone(), script.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (rec, script) = (rec.clone(), script.clone());
                            async move {
                                use http_body_util::BodyExt;
                                let method = req.method().to_string();
                                let path = req.uri().to_string();
                                let authorization = req
                                    .headers()
                                    .get("authorization")
                                    .and_then(|h| h.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned();
                                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                                let body: Value =
                                    serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                                rec.lock().unwrap().push(Recorded {
                                    method,
                                    path,
                                    authorization,
                                    body: body.clone(),
                                });
                                let (status, answer) = match script.lock().unwrap().pop_front() {
                                    Some(Answer::Echo) => (201, body),
                                    Some(Answer::Status(code, v)) => (code, v),
                                    None => (
                                        500,
                                        json!({"kind": "Status", "message": "script exhausted", "code": 500}),
                                    ),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .body(http_body_util::Full::new(bytes::Bytes::from(
                                            answer.to_string(),
                                        )))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        ScriptedApiServer {
            url,
            ca_pem: ca_cert.pem(),
            recorded,
            task,
        }
    }

    struct World {
        fleet: Fleet,
        admin: Caller,
        dir: tempfile::TempDir,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::init(dir.path(), &["localhost".into()], None).unwrap();
        let store = EmbeddedStore::open(&dir.path().join("hub.redb")).unwrap();
        let fleet = Fleet::new(Arc::new(store), Arc::new(ca), FleetSettings::default());
        let token = fleet.bootstrap_admin().await.unwrap().unwrap();
        let admin = fleet.authenticate(&token, "127.0.0.1").await.unwrap();
        World { fleet, admin, dir }
    }

    async fn register(w: &World, site: &str, serial: &str) -> cairn_api::RegistrationResponse {
        let t = w
            .fleet
            .create_enrollment_token(
                &w.admin,
                CreateEnrollmentToken {
                    site: site.into(),
                    ttl_seconds: 60,
                    max_uses: 1,
                    labels: Default::default(),
                    tenant: None,
                    mac: None,
                    serial: None,
                },
            )
            .await
            .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge");
        let req = cairn_api::RegistrationRequest {
            token: t.token,
            csr_pem: params.serialize_request(&key).unwrap().pem().unwrap(),
            hostname: "edge".into(),
            inventory: cairn_api::HardwareInventory {
                serial: serial.into(),
                ..Default::default()
            },
            agent_version: "0.1.0".into(),
        };
        w.fleet
            .register(&Caller::anonymous("127.0.0.1"), req)
            .await
            .unwrap()
    }

    async fn add_cp(w: &World, api: &ScriptedApiServer) {
        add_named_cp(w, api, "cp1").await;
    }

    async fn add_named_cp(w: &World, api: &ScriptedApiServer, name: &str) {
        let cred = w.dir.path().join("cp.token");
        std::fs::write(&cred, "s3cr3t-bearer\n").unwrap();
        w.fleet
            .add_control_plane(
                &w.admin,
                ControlPlane {
                    name: name.into(),
                    api_server_url: api.url.clone(),
                    ca_bundle_pem: api.ca_pem.clone(),
                    credentials_ref: cred.display().to_string(),
                    tenant: crate::model::DEFAULT_TENANT.into(),
                    site: None,
                    labels: Default::default(),
                },
            )
            .await
            .unwrap();
    }

    fn assert_bootstrap_secret(r: &Recorded, appliance: &str, bundle_token: &str) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v1/namespaces/kube-system/secrets?");
        assert_eq!(r.authorization, "Bearer s3cr3t-bearer");
        let (id, secret) = bundle_token.split_once('.').unwrap();
        let data = &r.body["stringData"];
        assert_eq!(r.body["apiVersion"], "v1");
        assert_eq!(r.body["kind"], "Secret");
        assert_eq!(r.body["type"], "bootstrap.kubernetes.io/token");
        assert_eq!(r.body["metadata"]["name"], format!("bootstrap-token-{id}"));
        assert_eq!(r.body["metadata"]["namespace"], "kube-system");
        assert_eq!(
            r.body["metadata"]["labels"]["cairn.io/appliance"],
            appliance
        );
        assert_eq!(data["token-id"], id);
        assert_eq!(data["token-secret"], secret);
        assert_eq!(data["usage-bootstrap-authentication"], "true");
        assert_eq!(data["usage-bootstrap-signing"], "true");
        assert_eq!(data["auth-extra-groups"], NODE_BOOTSTRAP_GROUP);
        let expiry = OffsetDateTime::parse(
            data["expiration"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let left = expiry - OffsetDateTime::now_utc();
        assert!(
            left > time::Duration::hours(23) && left <= time::Duration::hours(24),
            "{left}"
        );
        assert!(id.len() == 6 && secret.len() == 16);
    }

    #[tokio::test]
    async fn assigning_a_site_mints_a_bootstrap_token_per_appliance_and_a_join_bundle() {
        let api = scripted(vec![Answer::Echo, Answer::Echo]).await;
        let w = world().await;
        let a = register(&w, "north", "N-1").await;
        let _other_site = register(&w, "south", "S-1").await;
        add_cp(&w, &api).await;
        let result = w
            .fleet
            .assign(&w.admin, "cp1", Some("north".into()), Default::default())
            .await
            .unwrap();
        assert_eq!(result.assigned, std::slice::from_ref(&a.appliance_id));
        assert!(result.failed.is_empty());

        let view = w
            .fleet
            .show_appliance(&w.admin, a.appliance_id.as_str())
            .await
            .unwrap();
        let shown = view.desired.join.clone().unwrap();
        assert_eq!(shown.api_server_url, api.url);
        assert_eq!(shown.revision, 1);
        assert!(view.desired.generation > a.desired.generation);
        // The bootstrap token is the appliance's alone: in its record, not in the view.
        let record = w.fleet.record(&a.appliance_id).await.unwrap();
        let join = record.desired.join.clone().unwrap();
        assert_eq!(join.api_server_url, api.url);
        assert_eq!(join.ca_bundle_pem, api.ca_pem);
        assert_eq!(join.revision, 1);
        assert!(
            !serde_json::to_string(&view)
                .unwrap()
                .contains(&join.bootstrap_token),
            "the operator view holds the bootstrap token"
        );
        // An admin who asks explicitly gets it, audited; an operator does not.
        let secret = w
            .fleet
            .join_bundle_for_admin(&w.admin, a.appliance_id.as_str())
            .await
            .unwrap();
        assert_eq!(secret.bundle.bootstrap_token, join.bootstrap_token);
        let audit = w
            .fleet
            .audit_since(&w.admin, time::OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.action == "appliance.join-bundle.read"
                    && e.target == a.appliance_id.as_str()),
            "{audit:?}"
        );
        let operator = w
            .fleet
            .create_operator_token(
                &w.admin,
                &cairn_api::hub::CreateOperatorToken {
                    name: "ops".into(),
                    role: Role::Operator,
                    site: None,
                    tenant: None,
                    ttl_seconds: None,
                },
            )
            .await
            .unwrap();
        let operator = w
            .fleet
            .authenticate(&operator.token, "127.0.0.1")
            .await
            .unwrap();
        let err = w
            .fleet
            .join_bundle_for_admin(&operator, a.appliance_id.as_str())
            .await
            .unwrap_err();
        assert!(matches!(err, FleetError::Forbidden(_)), "{err}");

        // A later registration in the site joins at registration, in its first desired state.
        let b = register(&w, "north", "N-2").await;
        let join_b = b.desired.join.clone().expect("joined at registration");

        let recorded = api.recorded.lock().unwrap().clone();
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        assert_bootstrap_secret(&recorded[0], a.appliance_id.as_str(), &join.bootstrap_token);
        assert_bootstrap_secret(
            &recorded[1],
            b.appliance_id.as_str(),
            &join_b.bootstrap_token,
        );
    }

    #[tokio::test]
    async fn an_api_server_refusal_is_reported_per_appliance_and_audited() {
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "secrets is forbidden: User \"cairn\" cannot create resource \"secrets\"", "reason": "Forbidden", "code": 403});
        let api = scripted(vec![Answer::Status(403, forbidden)]).await;
        let w = world().await;
        let a = register(&w, "north", "N-1").await;
        add_cp(&w, &api).await;
        let result = w
            .fleet
            .assign(&w.admin, "cp1", Some("north".into()), Default::default())
            .await
            .unwrap();
        assert!(result.assigned.is_empty());
        assert_eq!(result.failed.len(), 1);
        assert!(
            result.failed[0].1.contains("forbidden"),
            "{:?}",
            result.failed
        );
        let view = w
            .fleet
            .show_appliance(&w.admin, a.appliance_id.as_str())
            .await
            .unwrap();
        assert_eq!(view.desired.join, None);
        let audit = w
            .fleet
            .audit_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|e| e.action == "control-plane.join" && e.result.starts_with("failed"))
        );
        assert_eq!(api.recorded.lock().unwrap().len(), 1);
    }

    /// What the API server answers a DELETE of a Secret.
    fn deleted() -> Answer {
        Answer::Status(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
        )
    }

    fn assert_deletes(r: &Recorded, token: &str) {
        let id = token.split_once('.').map_or(token, |(id, _)| id);
        assert_eq!(r.method, "DELETE", "{r:?}");
        assert!(
            r.path.starts_with(&format!(
                "/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}"
            )),
            "{r:?}"
        );
        assert_eq!(r.authorization, "Bearer s3cr3t-bearer");
    }

    #[tokio::test]
    async fn reassigning_or_deleting_an_appliance_revokes_its_bootstrap_tokens() {
        let api1 = scripted(vec![Answer::Echo, deleted()]).await;
        let api2 = scripted(vec![Answer::Echo, deleted()]).await;
        let w = world().await;
        let a = register(&w, "north", "N-1").await;
        let id = a.appliance_id.as_str();
        add_named_cp(&w, &api1, "cp1").await;
        add_named_cp(&w, &api2, "cp2").await;
        let bundle = || async {
            w.fleet
                .join_bundle_for_admin(&w.admin, id)
                .await
                .map(|s| s.bundle.bootstrap_token)
        };
        let assigned = w
            .fleet
            .assign(&w.admin, "cp1", Some("north".into()), Default::default())
            .await
            .unwrap();
        assert_eq!(assigned.assigned.len(), 1, "{assigned:?}");
        let first = bundle().await.unwrap();

        // Re-assigned to cp2: a new token there, the old one deleted from cp1.
        let assigned = w
            .fleet
            .assign(&w.admin, "cp2", Some("north".into()), Default::default())
            .await
            .unwrap();
        assert_eq!(assigned.assigned.len(), 1, "{assigned:?}");
        let second = bundle().await.unwrap();
        assert_ne!(first, second);
        let one = api1.recorded.lock().unwrap().clone();
        assert_eq!(one.len(), 2, "{one:?}");
        assert_bootstrap_secret(&one[0], id, &first);
        assert_deletes(&one[1], &first);
        assert_eq!(api2.recorded.lock().unwrap().len(), 1);

        // Deleted: cp2's token goes too, and the hub has no bundle for it any more.
        w.fleet.delete_appliance(&w.admin, id).await.unwrap();
        let two = api2.recorded.lock().unwrap().clone();
        assert_eq!(two.len(), 2, "{two:?}");
        assert_bootstrap_secret(&two[0], id, &second);
        assert_deletes(&two[1], &second);
        assert!(matches!(bundle().await, Err(FleetError::NotFound { .. })));
        let audit = w
            .fleet
            .audit_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        let revoked: Vec<_> = audit
            .iter()
            .filter(|e| e.action == "control-plane.revoke-bootstrap-token" && e.result == "ok")
            .map(|e| e.target.clone())
            .collect();
        assert_eq!(revoked, [format!("cp1/{id}"), format!("cp2/{id}")]);
    }

    #[tokio::test]
    async fn a_token_whose_mint_failed_is_tracked_and_revoked_on_delete() {
        // The API server may have created the Secret before the error reached the hub (a
        // timeout): the record written before the call is what finds it again.
        let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
        let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404});
        let api = scripted(vec![
            Answer::Status(500, unavailable),
            Answer::Status(404, gone),
        ])
        .await;
        let w = world().await;
        let a = register(&w, "north", "N-1").await;
        add_cp(&w, &api).await;
        let result = w
            .fleet
            .assign(&w.admin, "cp1", Some("north".into()), Default::default())
            .await
            .unwrap();
        assert_eq!(result.failed.len(), 1, "{result:?}");
        w.fleet
            .delete_appliance(&w.admin, a.appliance_id.as_str())
            .await
            .unwrap();
        let recorded = api.recorded.lock().unwrap().clone();
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        let minted = recorded[0].body["stringData"]["token-id"].as_str().unwrap();
        assert_deletes(&recorded[1], minted);
    }

    #[tokio::test]
    async fn a_revocation_refused_at_delete_is_retried_by_the_sweep() {
        let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "secrets is forbidden", "reason": "Forbidden", "code": 403});
        let api = scripted(vec![
            Answer::Echo,
            Answer::Status(403, forbidden),
            deleted(),
        ])
        .await;
        let w = world().await;
        let a = register(&w, "north", "N-1").await;
        add_cp(&w, &api).await;
        w.fleet
            .assign(&w.admin, "cp1", Some("north".into()), Default::default())
            .await
            .unwrap();
        let token = w
            .fleet
            .join_bundle_for_admin(&w.admin, a.appliance_id.as_str())
            .await
            .unwrap()
            .bundle
            .bootstrap_token;
        // The delete stands though the control plane refused; the token stays tracked.
        w.fleet
            .delete_appliance(&w.admin, a.appliance_id.as_str())
            .await
            .unwrap();
        assert_eq!(api.recorded.lock().unwrap().len(), 2);
        assert_eq!(w.fleet.sweep_bootstrap_tokens().await.unwrap(), 1);
        let recorded = api.recorded.lock().unwrap().clone();
        assert_eq!(recorded.len(), 3, "{recorded:?}");
        assert_deletes(&recorded[1], &token);
        assert_deletes(&recorded[2], &token);
        // Nothing left to retry.
        assert_eq!(w.fleet.sweep_bootstrap_tokens().await.unwrap(), 0);
        assert_eq!(api.recorded.lock().unwrap().len(), 3);
        let audit = w
            .fleet
            .audit_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 100)
            .await
            .unwrap();
        let results: Vec<&str> = audit
            .iter()
            .filter(|e| e.action == "control-plane.revoke-bootstrap-token")
            .map(|e| e.result.split(':').next().unwrap())
            .collect();
        assert_eq!(results, ["failed", "ok"]);
    }
}
