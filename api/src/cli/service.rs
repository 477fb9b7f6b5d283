//! The systemd service protocol of the cairn daemons (`Type=notify` units under
//! `packaging/systemd/`): `READY=1` once a daemon does its job, `STATUS=` for
//! `systemctl status`, `STOPPING=1` on the way out, and `WATCHDOG=1` pings when the unit
//! sets `WatchdogSec=`.
//!
//! Each message goes to `$NOTIFY_SOCKET`; outside systemd (a shell, a test) that variable is
//! unset and every call here does nothing. Failures are logged, never fatal: a daemon that
//! cannot reach systemd's socket still serves.

use std::sync::Once;
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    // `false`: the variable stays, so the watchdog task and later calls still find the socket
    // (systemd accepts messages from the main process only; children cannot spoof them).
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "telling systemd failed");
    }
}

/// Tells systemd the service is up (`READY=1` with `status`), and on the first call starts
/// the watchdog pings the unit asked for, on the current Tokio runtime: a runtime that stops
/// polling its tasks (a blocking call on the daemon's thread, a deadlock) stops the pings,
/// and systemd restarts the service after `WatchdogSec=`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    static WATCHDOG: Once = Once::new();
    WATCHDOG.call_once(|| {
        if let Some(every) = watchdog_interval() {
            tracing::debug!(every_ms = every.as_millis() as u64, "systemd watchdog on");
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    send(&[NotifyState::Watchdog]);
                }
            });
        }
    });
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells systemd the service is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Half the watchdog timeout systemd set for this process, if any (systemd's advice).
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
