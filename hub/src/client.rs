//! `cairn hub ...`: the operator's client for the hub API, and the TLS set-up every hub
//! client shares (operator CLI, tests, the load generator).

use std::sync::Arc;

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Errors building a client's TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// A PEM block could not be parsed.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the settings.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// A rustls client configuration trusting only `ca_pem`, presenting `identity`
/// (certificate PEM, private key PEM) when given.
pub fn tls_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, ClientTlsError> {
    let pem = |what: &'static str| {
        move |e: rustls::pki_types::pem::Error| ClientTlsError::Pem {
            what,
            message: e.to_string(),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(pem("hub CA"))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem("client certificate"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem("client key"))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Talk to a cairn hub: tokens, appliances, control planes, VPCs, audit.
#[derive(Debug, Args)]
pub struct HubArgs {
    #[command(subcommand)]
    command: HubClientCommand,
}

#[derive(Debug, Subcommand)]
enum HubClientCommand {
    /// Save the hub URL, its CA fingerprint and your token.
    Login,
    /// Enrollment tokens.
    Token,
    /// Appliances in the fleet.
    Appliances,
}

impl HubArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn hub", "issue 5"))
    }
}
