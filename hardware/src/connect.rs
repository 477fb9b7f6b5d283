//! Opens the right [`Bmc`] implementation for an address.

use std::time::Duration;

use crate::address::{BmcAddress, Credentials, Scheme};
use crate::bmc::{Bmc, BmcResult};
use crate::redfish::{RedfishBmc, RedfishOptions};
use crate::tls::Trust;

/// How to reach BMCs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TLS trust for Redfish over HTTPS.
    pub trust: Trust,
    /// Limit for one request (HTTP) or one exchange (IPMI, before retries).
    pub request_timeout: Duration,
    /// Allow IPMI cipher suite 0 / IPMI 1.5 (no integrity, no encryption).
    pub allow_insecure_ipmi: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: Trust::System,
            request_timeout: Duration::from_secs(20),
            allow_insecure_ipmi: false,
        }
    }
}

/// Opens a BMC. Redfish sends nothing until the first operation.
pub async fn connect(
    address: &BmcAddress,
    credentials: Credentials,
    options: &ConnectOptions,
) -> BmcResult<Box<dyn Bmc>> {
    match address.scheme {
        Scheme::Redfish | Scheme::RedfishHttp => Ok(Box::new(RedfishBmc::new(
            address,
            credentials,
            RedfishOptions {
                trust: options.trust.clone(),
                request_timeout: options.request_timeout,
                ..Default::default()
            },
        )?)),
        Scheme::Ipmi => Err(crate::bmc::BmcError::Invalid(
            "IPMI is not built yet".into(),
        )),
    }
}
