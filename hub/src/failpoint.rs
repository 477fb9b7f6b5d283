//! Failpoints: named places where a test makes a real `cairn-hub` crash or pause, so the
//! crash and pause tests hit the one instant that matters instead of racing for it.
//!
//! `CAIRN_HUB_FAILPOINTS=NAME=ACTION[,NAME=ACTION...]`, read once at the first hit; the
//! actions are `kill` (the process sends itself SIGKILL: `kill -9` right there) and `stop`
//! (it sends itself SIGSTOP, every time the point is reached, until a SIGCONT). Unset, as
//! in production, a hit costs one look-up in an empty map.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rustix::process::{Signal, getpid, kill_process};

/// The environment variable naming the armed failpoints.
pub const ENV: &str = "CAIRN_HUB_FAILPOINTS";

/// Between a VPC membership change's commit and the rewrite of its members' desired
/// states (a separate transaction each).
pub const MEMBERSHIP_COMMITTED: &str = "vpc-membership-committed";

/// Before each commit of a singleton job's pass (the write the leader fence guards).
pub const LEADER_COMMIT: &str = "leader-commit";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Stop,
}

/// Parses `NAME=ACTION,...`; unknown actions are ignored with a warning.
fn parse(spec: &str) -> BTreeMap<String, Action> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .filter_map(|item| {
            let (name, action) = item.split_once('=')?;
            let action = match action.trim() {
                "kill" => Action::Kill,
                "stop" => Action::Stop,
                other => {
                    tracing::warn!(
                        failpoint = name,
                        action = other,
                        "unknown failpoint action ignored (kill, stop)"
                    );
                    return None;
                }
            };
            Some((name.trim().to_owned(), action))
        })
        .collect()
}

/// Reached the failpoint `name`: carries out its action when armed.
pub fn hit(name: &str) {
    // Read once: the environment is the process's, fixed at its start.
    static ARMED: OnceLock<BTreeMap<String, Action>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()));
    let Some(action) = armed.get(name) else {
        return;
    };
    let signal = match action {
        Action::Kill => Signal::KILL,
        Action::Stop => Signal::STOP,
    };
    tracing::warn!(failpoint = name, ?action, "failpoint reached");
    if let Err(e) = kill_process(getpid(), signal) {
        tracing::warn!(failpoint = name, error = %e, "failpoint: signalling this process failed");
    }
    // The signal stops the whole process at its threads' next signal check, not inside
    // `kill`: on a loaded machine the caller could still send the write it guards first.
    // Waiting here puts the stop before the write; after SIGCONT the wait ends.
    std::thread::sleep(std::time::Duration::from_millis(200));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_points_and_actions() {
        let armed = parse("vpc-membership-committed=kill, leader-commit=stop,x=explode,,");
        assert_eq!(armed.get(MEMBERSHIP_COMMITTED), Some(&Action::Kill));
        assert_eq!(armed.get(LEADER_COMMIT), Some(&Action::Stop));
        assert_eq!(armed.len(), 2, "{armed:?}");
        assert!(parse("").is_empty());
    }
}
