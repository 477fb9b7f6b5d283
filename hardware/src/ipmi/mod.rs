//! IPMI 2.0 over LAN (RMCP+, "lanplus"), written here rather than on a published crate.
//!
//! Why our own module: CRATES.md records that the `ipmi` crate (the better transport of the
//! two tried here) offers only cipher suite 3, never sends Set Session Privilege Level (so
//! ipmi_sim refuses chassis control with 0xD4), has no boot options, SEL or SDR, and rejects
//! valid Get Device ID answers; `ipmi-rs` is blocking and read no SDRs from ipmi_sim.
//! Extending `ipmi` would mean forking it (its session type is not open for new cipher
//! suites), and the protocol core is small: RAKP (four messages, three HMACs), AES-CBC and
//! an HMAC trailer, about 600 lines with tests. Owning it lets cairn support suite 17, refuse
//! suite 0 and IPMI 1.5 by default, decode leniently and bound every exchange in time.
//!
//! Testing: suite 3 end to end against OpenIPMI's `ipmi_sim` with `ipmitool -I lanplus -C 3`
//! as the reference client in both directions (tests/ipmi_sim.rs); suite 17 with
//! known-answer vectors computed independently (crypto.rs), since ipmi_sim has no suite 17.

pub mod commands;
pub mod crypto;
pub mod packet;
pub mod session;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::address::{BmcAddress, Credentials};
use crate::bmc::{
    Bmc, BmcError, BmcResult, BootOverride, Capability, Inventory, LogEntry, PowerAction,
    PowerState, Sensor,
};
use commands::netfn;
use crypto::CipherSuite;
use session::{Session, Timing};

/// Which cipher suites to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SuiteChoice {
    /// 17, then 3 when the BMC does not offer 17.
    #[default]
    Auto,
    /// Only this suite.
    Only(u8),
}

/// Options for an IPMI BMC.
#[derive(Debug, Clone)]
pub struct IpmiOptions {
    /// Cipher suites to try.
    pub suites: SuiteChoice,
    /// Allow suite 0 (no authentication, integrity or encryption).
    pub allow_insecure: bool,
    /// Timing of each exchange.
    pub timing: Timing,
}

impl Default for IpmiOptions {
    fn default() -> Self {
        IpmiOptions {
            suites: SuiteChoice::Auto,
            allow_insecure: false,
            timing: Timing {
                retry_after: Duration::from_millis(1000),
                limit: Duration::from_secs(5),
            },
        }
    }
}

enum State {
    Closed,
    Open(Box<Session>),
    Refused { user: String, detail: String },
}

/// An IPMI BMC reached over RMCP+.
pub struct IpmiBmc {
    target: String,
    credentials: Credentials,
    options: IpmiOptions,
    state: Mutex<State>,
}

impl std::fmt::Debug for IpmiBmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpmiBmc")
            .field("target", &self.target)
            .finish()
    }
}

impl IpmiBmc {
    /// Prepares a BMC; the session opens on the first operation. Suite 0 is refused here,
    /// before any packet, unless `allow_insecure`.
    pub fn new(
        address: &BmcAddress,
        credentials: Credentials,
        options: IpmiOptions,
    ) -> BmcResult<Self> {
        if options.suites == SuiteChoice::Only(0) && !options.allow_insecure {
            return Err(BmcError::Invalid(
                "cipher suite 0 sends commands unauthenticated and in clear text; pass --allow-insecure-ipmi to use it".into(),
            ));
        }
        if let SuiteChoice::Only(id) = options.suites
            && CipherSuite::by_id(id).is_none()
        {
            return Err(BmcError::Invalid(format!(
                "cipher suite {id} is not supported (use 3 or 17)"
            )));
        }
        Ok(IpmiBmc {
            target: address.authority(),
            credentials,
            options,
            state: Mutex::new(State::Closed),
        })
    }

    async fn open(&self) -> BmcResult<Session> {
        let suites: Vec<CipherSuite> = match self.options.suites {
            SuiteChoice::Auto => vec![CipherSuite::SHA256_AES, CipherSuite::SHA1_AES],
            SuiteChoice::Only(id) => CipherSuite::by_id(id).into_iter().collect(),
        };
        let mut last = None;
        for suite in suites {
            match Session::open(&self.target, &self.credentials, suite, self.options.timing).await {
                Ok(s) => {
                    tracing::debug!(bmc = %self.target, suite = suite.id, "IPMI session open");
                    return Ok(s);
                }
                // The BMC does not offer this suite: try the next one.
                Err(e @ BmcError::Status { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BmcError::Invalid("no cipher suite to try".into())))
    }

    /// Runs `f` in the session, opening it first. A refused login is remembered: the same
    /// credentials are never sent again by this value.
    async fn with<T>(
        &self,
        f: impl for<'s> FnOnce(
            &'s mut Session,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = BmcResult<T>> + Send + 's>,
        >,
    ) -> BmcResult<T> {
        let mut state = self.state.lock().await;
        if let State::Refused { user, detail } = &*state {
            return Err(BmcError::Auth {
                user: user.clone(),
                detail: detail.clone(),
            });
        }
        if matches!(*state, State::Closed) {
            match self.open().await {
                Ok(s) => *state = State::Open(Box::new(s)),
                Err(e) => {
                    if let BmcError::Auth { user, detail } = &e {
                        *state = State::Refused {
                            user: user.clone(),
                            detail: detail.clone(),
                        };
                    }
                    return Err(e);
                }
            }
        }
        let State::Open(session) = &mut *state else {
            return Err(BmcError::Invalid("IPMI session not open".into()));
        };
        let result = f(session).await;
        // A timed-out session is dropped so the next operation logs in afresh.
        if matches!(result, Err(BmcError::Timeout { .. })) {
            *state = State::Closed;
        }
        result
    }
}

#[async_trait]
impl Bmc for IpmiBmc {
    fn protocol(&self) -> &'static str {
        "ipmi"
    }

    fn capabilities(&self) -> &'static [Capability] {
        &[
            Capability::Power,
            Capability::Boot,
            Capability::Inventory,
            Capability::Logs,
            Capability::Sensors,
        ]
    }

    async fn power_state(&self) -> BmcResult<PowerState> {
        self.with(|s| {
            Box::pin(async move {
                let d = s
                    .ok("Get Chassis Status", netfn::CHASSIS, 0x01, &[])
                    .await?;
                Ok(match commands::power_on(&d) {
                    Some(true) => PowerState::On,
                    Some(false) => PowerState::Off,
                    None => PowerState::Unknown,
                })
            })
        })
        .await
    }

    async fn power(&self, action: PowerAction) -> BmcResult<()> {
        let byte = commands::chassis_control(action);
        self.with(|s| {
            Box::pin(async move {
                s.ok("Chassis Control", netfn::CHASSIS, 0x02, &[byte])
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn boot_override(&self) -> BmcResult<BootOverride> {
        self.with(|s| {
            Box::pin(async move {
                let d = s
                    .ok(
                        "Get System Boot Options",
                        netfn::CHASSIS,
                        0x09,
                        &commands::GET_BOOT_FLAGS,
                    )
                    .await?;
                commands::boot_flags(&d).ok_or_else(|| BmcError::Malformed {
                    doing: "Get System Boot Options".into(),
                    detail: format!("{d:02x?}"),
                })
            })
        })
        .await
    }

    async fn set_boot_override(&self, boot: BootOverride) -> BmcResult<()> {
        if boot.device == crate::bmc::BootDevice::Http {
            return Err(BmcError::Invalid(
                "IPMI has no UEFI HTTP boot device; use pxe with --uefi (the firmware's network boot order decides HTTP vs PXE)".into(),
            ));
        }
        let req = commands::boot_flags_request(&boot);
        self.with(|s| {
            Box::pin(async move {
                s.ok("Set System Boot Options", netfn::CHASSIS, 0x08, &req)
                    .await?;
                Ok(())
            })
        })
        .await?;
        // Read back: the device must stick (the EFI and persistent bits are not kept by
        // every BMC, ipmi_sim included, so only a warning for those).
        let got = self.boot_override().await?;
        if got.device != boot.device {
            return Err(BmcError::NotApplied {
                what: "boot device".into(),
                wanted: boot.device.to_string(),
                got: got.device.to_string(),
            });
        }
        if got.persistent != boot.persistent || (boot.mode.is_some() && got.mode != boot.mode) {
            tracing::warn!(bmc = %self.target, ?boot, ?got, "BMC did not keep the persistent/EFI boot flags");
        }
        Ok(())
    }

    async fn inventory(&self) -> BmcResult<Inventory> {
        self.with(|s| {
            Box::pin(async move {
                let d = s.ok("Get Device ID", netfn::APP, 0x01, &[]).await?;
                let id = commands::device_id(&d).ok_or_else(|| BmcError::Malformed {
                    doing: "Get Device ID".into(),
                    detail: format!("{} bytes", d.len()),
                })?;
                Ok(Inventory {
                    manufacturer: Some(format!("IANA {}", id.manufacturer_id)),
                    model: Some(format!("product {:#06x}", id.product_id)),
                    bmc_version: Some(id.firmware),
                    ..Default::default()
                })
            })
        })
        .await
    }

    async fn logs(&self) -> BmcResult<Vec<LogEntry>> {
        self.with(|s| {
            Box::pin(async move {
                let res = s.ok("Reserve SEL", netfn::STORAGE, 0x42, &[]).await?;
                let reservation = u16::from_le_bytes([
                    res.first().copied().unwrap_or(0),
                    res.get(1).copied().unwrap_or(0),
                ]);
                let mut out = Vec::new();
                let mut record = 0u16;
                for _ in 0..4096 {
                    let r = s
                        .command(
                            netfn::STORAGE,
                            0x43,
                            &commands::sel_entry_request(reservation, record),
                        )
                        .await?;
                    // 0xCB on the first read: the SEL is empty.
                    if r.completion == 0xcb && record == 0 {
                        break;
                    }
                    if r.completion != 0 {
                        return Err(BmcError::Status {
                            doing: "Get SEL Entry".into(),
                            status: format!("completion code {:#04x}", r.completion),
                            message: Some(packet::completion_text(r.completion).into()),
                        });
                    }
                    let (next, entry) =
                        commands::sel_entry(&r.data).ok_or_else(|| BmcError::Malformed {
                            doing: "Get SEL Entry".into(),
                            detail: format!("{} bytes", r.data.len()),
                        })?;
                    out.push(entry);
                    if next == 0xffff {
                        break;
                    }
                    record = next;
                }
                Ok(out)
            })
        })
        .await
    }

    async fn sensors(&self) -> BmcResult<Vec<Sensor>> {
        self.with(|s| {
            Box::pin(async move {
                let res = s
                    .ok("Reserve SDR Repository", netfn::STORAGE, 0x22, &[])
                    .await?;
                let reservation = u16::from_le_bytes([
                    res.first().copied().unwrap_or(0),
                    res.get(1).copied().unwrap_or(0),
                ]);
                let mut out = Vec::new();
                let mut id = 0u16;
                for _ in 0..1024 {
                    // Header first, then the body in small pieces (BMCs limit a read).
                    let h = s
                        .ok(
                            "Get SDR",
                            netfn::STORAGE,
                            0x23,
                            &commands::sdr_request(reservation, id, 0, 5),
                        )
                        .await?;
                    if h.len() < 7 {
                        return Err(BmcError::Malformed {
                            doing: "Get SDR".into(),
                            detail: format!("{} bytes", h.len()),
                        });
                    }
                    let next = u16::from_le_bytes([h[0], h[1]]);
                    let mut record = h[2..7].to_vec();
                    let total = 5 + h[6] as usize;
                    while record.len() < total {
                        let n = (total - record.len()).min(16) as u8;
                        let part = s
                            .ok(
                                "Get SDR",
                                netfn::STORAGE,
                                0x23,
                                &commands::sdr_request(reservation, id, record.len() as u8, n),
                            )
                            .await?;
                        if part.len() <= 2 {
                            return Err(BmcError::Malformed {
                                doing: "Get SDR".into(),
                                detail: "empty partial read".into(),
                            });
                        }
                        record.extend_from_slice(&part[2..]);
                    }
                    if let Some(rec) = commands::sensor_record(&record) {
                        let r = s.command(netfn::SENSOR, 0x2d, &[rec.number]).await?;
                        let reading = if r.completion == 0 {
                            r.data
                        } else {
                            Vec::new()
                        };
                        out.push(commands::sensor(&rec, &reading));
                    }
                    if next == 0xffff {
                        break;
                    }
                    id = next;
                }
                Ok(out)
            })
        })
        .await
    }

    async fn close(&self) {
        let mut state = self.state.lock().await;
        if let State::Open(session) = std::mem::replace(&mut *state, State::Closed) {
            session.close().await;
        }
    }
}
