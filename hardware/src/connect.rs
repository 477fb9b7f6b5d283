//! Opens the right [`Bmc`] implementation for an address.

use std::time::Duration;

use crate::address::{BmcAddress, Credentials, Scheme};
use crate::bmc::{Bmc, BmcError, BmcResult};
use crate::ipmi::session::Timing;
use crate::ipmi::{IpmiBmc, IpmiOptions, SuiteChoice};
use crate::redfish::{RedfishBmc, RedfishOptions};
use crate::tls::Trust;

/// How to reach BMCs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TLS trust for Redfish over HTTPS.
    pub trust: Trust,
    /// Limit for one request (HTTP) or one exchange (IPMI, before retries).
    pub request_timeout: Duration,
    /// Allow IPMI cipher suite 0 (no authentication, integrity or encryption).
    pub allow_insecure_ipmi: bool,
    /// IPMI cipher suites to try.
    pub ipmi_suites: SuiteChoice,
    /// Allow `redfish+http://` (plain HTTP: the BMC password crosses the network in clear).
    pub allow_insecure_redfish: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: Trust::System,
            request_timeout: Duration::from_secs(20),
            allow_insecure_ipmi: false,
            ipmi_suites: SuiteChoice::Auto,
            allow_insecure_redfish: false,
        }
    }
}

/// Opens a BMC. Nothing is sent until the first operation. A `redfish+http://` address is
/// refused unless [`ConnectOptions::allow_insecure_redfish`], and warned about when allowed:
/// Basic auth over plain HTTP hands the password to anyone on the path.
pub fn connect(
    address: &BmcAddress,
    credentials: Credentials,
    options: &ConnectOptions,
) -> BmcResult<Box<dyn Bmc>> {
    if address.scheme == Scheme::RedfishHttp {
        if !options.allow_insecure_redfish {
            return Err(BmcError::Invalid(format!(
                "{address} is plain-HTTP Redfish, which sends the BMC password in clear: use \
                 redfish:// (HTTPS), or pass --allow-insecure-redfish to accept it (emulators, labs)"
            )));
        }
        // One connection per BMC and command: this is the warning once per BMC.
        tracing::warn!(
            bmc = %address,
            user = %credentials.username,
            "plain-HTTP Redfish allowed by --allow-insecure-redfish: the BMC password crosses \
             the network in clear"
        );
    }
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
        Scheme::Ipmi => {
            let defaults = IpmiOptions::default();
            Ok(Box::new(IpmiBmc::new(
                address,
                credentials,
                IpmiOptions {
                    suites: options.ipmi_suites,
                    allow_insecure: options.allow_insecure_ipmi,
                    timing: Timing {
                        retry_after: defaults.timing.retry_after.min(options.request_timeout),
                        limit: options.request_timeout,
                    },
                },
            )?))
        }
    }
}
