//! The lab segment: a network namespace with one bridge, a tap per server and the lab's
//! service addresses. Thin wrapper over `ip` (iproute2): the lab only needs bridge, tap and
//! addresses, which the host kernel has (LAB.md), and `ip` gives errors people recognise.
//!
//! Everything lives inside the namespace: no veth to the host, no route out, so no lab
//! traffic can leave the machine.

use std::net::Ipv4Addr;
use std::process::Command;

/// A failed `ip` invocation.
#[derive(Debug, thiserror::Error)]
#[error("`ip {args}` failed: {detail} (needs root and iproute2: scripts/setup)")]
pub struct NetError {
    args: String,
    detail: String,
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let fail = |detail: String| NetError {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Whether namespace `ns` exists.
pub fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Creates namespace `ns` with loopback up and `bridge` carrying `gateway/24`.
pub fn create(ns: &str, bridge: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
    ip(&["netns", "add", ns])?;
    let gw = format!("{gateway}/24");
    let steps: [&[&str]; 4] = [
        &["-n", ns, "link", "set", "lo", "up"],
        &["-n", ns, "link", "add", bridge, "type", "bridge"],
        &["-n", ns, "addr", "add", &gw, "dev", bridge],
        &["-n", ns, "link", "set", bridge, "up"],
    ];
    for step in steps {
        if let Err(e) = ip(step) {
            let _ = delete(ns);
            return Err(e);
        }
    }
    Ok(())
}

/// Adds tap `tap` to `bridge`, up.
pub fn add_tap(ns: &str, bridge: &str, tap: &str) -> Result<(), NetError> {
    ip(&["-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"])?;
    ip(&["-n", ns, "link", "set", tap, "master", bridge, "up"])
}

/// Adds one more address (a BMC's) to the bridge.
pub fn add_address(ns: &str, bridge: &str, addr: Ipv4Addr) -> Result<(), NetError> {
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/32"),
        "dev",
        bridge,
    ])
}

/// Deletes namespace `ns` and with it every link inside.
pub fn delete(ns: &str) -> Result<(), NetError> {
    ip(&["netns", "delete", ns])
}
