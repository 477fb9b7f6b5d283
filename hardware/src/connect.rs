//! Opens the right [`Bmc`] implementation for an address.

use std::time::Duration;

use crate::address::{BmcAddress, Credentials, Scheme};
use crate::bmc::{Bmc, BmcResult};
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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: Trust::System,
            request_timeout: Duration::from_secs(20),
            allow_insecure_ipmi: false,
            ipmi_suites: SuiteChoice::Auto,
        }
    }
}

/// Opens a BMC. Nothing is sent until the first operation.
pub fn connect(
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
