//! BMC faults for the lab: the faults file `cairn-lab up --faults FILE` reads, and the pure
//! decisions of which fault applies to a request. The proxy that applies them in front of a
//! server's sushy-tools is [`crate::lab::fault_proxy`].
//!
//! ```yaml
//! servers:
//!   srv1:
//!     # Optional: what the BMC claims to be (quirk selection reads these).
//!     identity: { manufacturer: "Dell Inc.", model: "PowerEdge R650", firmware: "5.10.50.00" }
//!     faults:
//!       - kind: ignore-boot-once
//!       - kind: virtual-media-busy
//!         count: 1                 # at most once (default: every time)
//!       - kind: slow
//!         ms: 300
//!         paths: ["/redfish/v1/Systems"]   # only requests under these paths
//!       - kind: lockout-after
//!         bad_logins: 3
//!         lock_seconds: 300
//!       - kind: bmc-reset
//!         after_requests: 20       # the 20th request finds the BMC restarting
//!         seconds: 5
//! ```
//!
//! Kinds (each takes `count` and `paths`):
//! - `ignore-boot-once`: a PATCH setting `BootSourceOverrideEnabled: Once` is answered 204
//!   and never applied.
//! - `reset-boot-override-after-power-on`: after a power-on (`On`/`ForceOn`) the BMC drops
//!   the boot override before the host boots it.
//! - `virtual-media-not-connected`: InsertMedia answers 204 but the slot reads back
//!   `ConnectedVia: NotConnected`, nothing inserted.
//! - `virtual-media-busy`: InsertMedia answers 409 (`ResourceInUse`).
//! - `virtual-media-under-systems`: VirtualMedia is linked only from the ComputerSystem.
//! - `virtual-media-under-managers`: VirtualMedia is linked only from the Manager (served
//!   at `Managers/ID/VirtualMedia`, as before iDRAC 6).
//! - `lockout-after` (`bad_logins`, `lock_seconds` [300]): after that many refused logins
//!   the account is locked for that long: every request with credentials answers 401, the
//!   right password too.
//! - `slow` (`ms`): every answer is that much late.
//! - `timeout` (`seconds` [3600]): the request is held that long, then answered 504.
//! - `garbage-json`: a GET answers 200 with a body that is not JSON.
//! - `refuse-sessions`: the service root offers a SessionService whose session creation
//!   answers 503 `SessionLimitExceeded`.
//! - `bmc-reset` (`after_requests`, `seconds`): from that request on, the BMC drops every
//!   connection for that long, then answers again (once, unless `count` says more: each
//!   further one restarts it again at the next request).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What can go wrong with a BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// One-time boot overrides are accepted and not applied.
    IgnoreBootOnce,
    /// The boot override is dropped when the server powers on.
    ResetBootOverrideAfterPowerOn,
    /// Inserted media reads back NotConnected.
    VirtualMediaNotConnected,
    /// Insert fails: the slot is busy.
    VirtualMediaBusy,
    /// VirtualMedia only under the ComputerSystem.
    VirtualMediaUnderSystems,
    /// VirtualMedia only under the Manager.
    VirtualMediaUnderManagers,
    /// N refused logins lock the account.
    LockoutAfter,
    /// Answers are late.
    Slow,
    /// Requests are held until the client gives up.
    Timeout,
    /// Answers are not JSON.
    GarbageJson,
    /// No new session can be made.
    RefuseSessions,
    /// The BMC restarts and drops connections for a while.
    BmcReset,
}

impl FaultKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [FaultKind; 12] = [
        FaultKind::IgnoreBootOnce,
        FaultKind::ResetBootOverrideAfterPowerOn,
        FaultKind::VirtualMediaNotConnected,
        FaultKind::VirtualMediaBusy,
        FaultKind::VirtualMediaUnderSystems,
        FaultKind::VirtualMediaUnderManagers,
        FaultKind::LockoutAfter,
        FaultKind::Slow,
        FaultKind::Timeout,
        FaultKind::GarbageJson,
        FaultKind::RefuseSessions,
        FaultKind::BmcReset,
    ];

    /// The name used in the faults file.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::IgnoreBootOnce => "ignore-boot-once",
            FaultKind::ResetBootOverrideAfterPowerOn => "reset-boot-override-after-power-on",
            FaultKind::VirtualMediaNotConnected => "virtual-media-not-connected",
            FaultKind::VirtualMediaBusy => "virtual-media-busy",
            FaultKind::VirtualMediaUnderSystems => "virtual-media-under-systems",
            FaultKind::VirtualMediaUnderManagers => "virtual-media-under-managers",
            FaultKind::LockoutAfter => "lockout-after",
            FaultKind::Slow => "slow",
            FaultKind::Timeout => "timeout",
            FaultKind::GarbageJson => "garbage-json",
            FaultKind::RefuseSessions => "refuse-sessions",
            FaultKind::BmcReset => "bmc-reset",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: FaultKind,
    count: Option<u32>,
    #[serde(default)]
    paths: Vec<String>,
    ms: Option<u64>,
    bad_logins: Option<u32>,
    lock_seconds: Option<f64>,
    seconds: Option<f64>,
    after_requests: Option<u64>,
}

/// One fault, checked: the parameters its kind needs are there, no others.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawFault")]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// At most this many times (`None`: every time).
    pub count: Option<u32>,
    /// Only requests whose path starts with one of these (empty: all).
    pub paths: Vec<String>,
    /// `slow`: delay in milliseconds.
    pub ms: u64,
    /// `lockout-after`: refused logins that lock the account.
    pub bad_logins: u32,
    /// `lockout-after`: how long the account stays locked; `timeout` and `bmc-reset`: how
    /// long the request is held, or the BMC is away.
    pub seconds: f64,
    /// `bmc-reset`: the request (1-based, counted per BMC) that finds the BMC restarting.
    pub after_requests: u64,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Self, String> {
        let kind = raw.kind;
        let mut allowed: Vec<&str> = Vec::new();
        let need =
            |what: &str, v: Option<u64>| v.ok_or_else(|| format!("fault {kind} needs `{what}`"));
        let (ms, bad_logins, seconds, after_requests) = match kind {
            FaultKind::Slow => {
                allowed.push("ms");
                (need("ms", raw.ms)?, 0, 0.0, 0)
            }
            FaultKind::LockoutAfter => {
                allowed.extend(["bad_logins", "lock_seconds"]);
                let n = need("bad_logins", raw.bad_logins.map(u64::from))? as u32;
                if n == 0 {
                    return Err("fault lockout-after needs `bad_logins` of at least 1".into());
                }
                (0, n, raw.lock_seconds.unwrap_or(300.0), 0)
            }
            FaultKind::Timeout => {
                allowed.push("seconds");
                (0, 0, raw.seconds.unwrap_or(3600.0), 0)
            }
            FaultKind::BmcReset => {
                allowed.extend(["after_requests", "seconds"]);
                let after = need("after_requests", raw.after_requests)?.max(1);
                let seconds = raw
                    .seconds
                    .ok_or_else(|| format!("fault {kind} needs `seconds`"))?;
                (0, 0, seconds, after)
            }
            _ => (0, 0, 0.0, 0),
        };
        let given = [
            ("ms", raw.ms.is_some()),
            ("bad_logins", raw.bad_logins.is_some()),
            ("lock_seconds", raw.lock_seconds.is_some()),
            ("seconds", raw.seconds.is_some()),
            ("after_requests", raw.after_requests.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            return Err(format!("fault {kind} takes no `{key}`"));
        }
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(format!("fault {kind}: seconds must be a positive number"));
        }
        if let Some(p) = raw.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!(
                "fault {kind}: path {p:?} must start with / (e.g. /redfish/v1/Systems)"
            ));
        }
        Ok(Fault {
            kind,
            // A restart is one event: without a count it happens once, not again and again.
            count: raw.count.or((kind == FaultKind::BmcReset).then_some(1)),
            paths: raw.paths,
            ms,
            bad_logins,
            seconds,
            after_requests,
        })
    }
}

impl Fault {
    /// Whether the fault concerns a request for `path`.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| path.starts_with(p.as_str()))
    }
}

/// What a faulty BMC claims to be, over what sushy-tools reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// ComputerSystem `Manufacturer`.
    pub manufacturer: Option<String>,
    /// ComputerSystem `Model`.
    pub model: Option<String>,
    /// Manager `FirmwareVersion`.
    pub firmware: Option<String>,
}

/// One server's faults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFaults {
    /// Vendor identity presented instead of the emulator's.
    #[serde(default)]
    pub identity: Identity,
    /// The faults, applied in this order.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// A faults file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsFile {
    /// By server name.
    pub servers: BTreeMap<String, ServerFaults>,
}

impl FaultsFile {
    /// Parses a faults file; errors name the key and the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses `path`; errors name the file, key and line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading faults file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("faults file {}: {e}", path.display()))
    }

    /// Refuses servers the lab does not have (a misspelt name would inject nothing).
    pub fn check_servers<'a>(
        &self,
        known: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), String> {
        for name in self.servers.keys() {
            if !known.clone().any(|k| k == name) {
                let all: Vec<&str> = known.collect();
                return Err(format!(
                    "faults file names server {name:?}, which this lab does not have (it has {})",
                    all.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// A fault's remaining uses: one counter per fault of a server, in file order.
#[derive(Debug, Clone)]
pub struct Budget {
    left: Vec<Option<u32>>,
}

impl Budget {
    /// Full budgets for `faults`.
    pub fn new(faults: &[Fault]) -> Self {
        Budget {
            left: faults.iter().map(|f| f.count).collect(),
        }
    }

    /// The first fault of `kind` that covers `path` and has uses left; spends one use.
    pub fn take<'a>(
        &mut self,
        faults: &'a [Fault],
        kind: FaultKind,
        path: &str,
    ) -> Option<&'a Fault> {
        let (i, fault) = faults
            .iter()
            .enumerate()
            .find(|(i, f)| f.kind == kind && f.covers(path) && self.left[*i] != Some(0))?;
        if let Some(n) = self.left[i].as_mut() {
            *n -= 1;
        }
        Some(fault)
    }

    /// The first fault of `kind` covering `path` with uses left, without spending one.
    pub fn peek<'a>(&self, faults: &'a [Fault], kind: FaultKind, path: &str) -> Option<&'a Fault> {
        faults
            .iter()
            .enumerate()
            .find(|(i, f)| f.kind == kind && f.covers(path) && self.left[*i] != Some(0))
            .map(|(_, f)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "servers:
  srv1:
    identity: { manufacturer: \"Dell Inc.\", firmware: \"5.10.50.00\" }
    faults:
      - kind: ignore-boot-once
      - kind: virtual-media-busy
        count: 1
      - kind: slow
        ms: 300
        paths: [\"/redfish/v1/Systems\"]
  srv2:
    faults:
      - kind: lockout-after
        bad_logins: 3
      - kind: bmc-reset
        after_requests: 20
        seconds: 5
";

    #[test]
    fn the_documented_example_parses() {
        let f = FaultsFile::parse(EXAMPLE).unwrap();
        let s1 = &f.servers["srv1"];
        assert_eq!(s1.identity.manufacturer.as_deref(), Some("Dell Inc."));
        assert_eq!(s1.faults[1].count, Some(1));
        assert_eq!(s1.faults[2].ms, 300);
        let s2 = &f.servers["srv2"];
        assert_eq!((s2.faults[0].bad_logins, s2.faults[0].seconds), (3, 300.0));
        assert_eq!(
            (s2.faults[1].after_requests, s2.faults[1].seconds),
            (20, 5.0)
        );
        // The module documentation shows the same shape.
        assert!(
            f.check_servers(["srv1", "srv2", "srv3"].into_iter())
                .is_ok()
        );
        let e = f.check_servers(["srv1"].into_iter()).unwrap_err();
        assert!(e.contains("srv2") && e.contains("it has srv1"), "{e}");
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let cases = [
            (
                "servers:\n  srv1:\n    faults:\n      - kind: slow\n",
                "line 4",
                "needs `ms`",
            ),
            (
                "servers:\n  srv1:\n    faults:\n      - kind: ignore-boot-once\n        ms: 3\n",
                "line 4",
                "takes no `ms`",
            ),
            (
                "servers:\n  srv1:\n    faults:\n      - kind: sometimes\n",
                "line 4",
                "unknown variant `sometimes`",
            ),
            (
                "servers:\n  srv1:\n    faults:\n      - kind: slow\n        ms: 3\n        cout: 2\n",
                "line 6",
                "unknown field `cout`",
            ),
            (
                "servers:\n  srv1:\n    fault: []\n",
                "line 3",
                "unknown field `fault`",
            ),
            (
                "servers:\n  srv1:\n    faults:\n      - kind: timeout\n        paths: [redfish]\n",
                "line 4",
                "must start with /",
            ),
        ];
        for (text, line, what) in cases {
            let e = FaultsFile::parse(text).unwrap_err();
            assert!(e.contains(line) && e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn budgets_count_down_per_fault_and_paths_limit_them() {
        let f = FaultsFile::parse(
            "servers:\n  s:\n    faults:\n      - kind: garbage-json\n        count: 2\n        paths: [/redfish/v1/Systems]\n      - kind: garbage-json\n",
        )
        .unwrap();
        let faults = &f.servers["s"].faults;
        let mut b = Budget::new(faults);
        let first = |b: &mut Budget, path| {
            b.take(faults, FaultKind::GarbageJson, path)
                .map(|f| f.count)
        };
        assert_eq!(first(&mut b, "/redfish/v1/Systems/1"), Some(Some(2)));
        assert_eq!(first(&mut b, "/redfish/v1/Systems/1"), Some(Some(2)));
        // The limited one is spent; the unlimited one now applies, everywhere.
        assert_eq!(first(&mut b, "/redfish/v1/Systems/1"), Some(None));
        assert_eq!(first(&mut b, "/redfish/v1/Managers"), Some(None));
        assert!(b.peek(faults, FaultKind::Slow, "/").is_none());
    }

    #[test]
    fn every_kind_has_its_file_name() {
        for kind in FaultKind::ALL {
            let parsed: FaultKind = serde_yaml_ng::from_str(kind.as_str()).unwrap();
            assert_eq!(parsed, kind);
        }
    }
}
