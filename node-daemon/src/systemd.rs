//! systemd through its D-Bus API (`org.freedesktop.systemd1`), never through `systemctl`.
//!
//! The connection goes to the system bus (a direct connection to `/run/systemd/private` does
//! not work with zbus 6, see CRATES.md). The address is configurable so tests can reach the
//! bus of a systemd booted in a container.

use crate::kubelet::UnitState;

/// systemd failures.
#[derive(Debug, thiserror::Error)]
#[error("systemd over D-Bus at {address}: {action}")]
pub struct SystemdError {
    /// Bus address.
    pub address: String,
    /// What was attempted.
    pub action: String,
    /// zbus's error.
    #[source]
    pub source: zbus::Error,
}

/// The unit operations the node needs.
pub trait UnitManager: Send + Sync {
    /// `Reload` (daemon-reload).
    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `StartUnit(name, "replace")`.
    fn start(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// `RestartUnit(name, "replace")`.
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// The unit's `ActiveState` and `SubState`.
    fn state(&self, unit: &str) -> impl Future<Output = Result<UnitState, SystemdError>> + Send;
}

/// [`UnitManager`] over a D-Bus connection.
#[derive(Debug, Clone)]
pub struct DbusSystemd {
    address: String,
    connection: zbus::Connection,
}

impl DbusSystemd {
    /// Connects to the bus at `address` (`unix:path=...`).
    pub async fn connect(address: &str) -> Result<Self, SystemdError> {
        let err = |action: &str| {
            let address = address.to_owned();
            let action = action.to_owned();
            move |source| SystemdError {
                address,
                action,
                source,
            }
        };
        let connection = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(err("connecting"))?;
        Ok(Self {
            address: address.to_owned(),
            connection,
        })
    }

    fn err(&self, action: String) -> impl FnOnce(zbus::Error) -> SystemdError {
        let address = self.address.clone();
        move |source| SystemdError {
            address,
            action,
            source,
        }
    }

    async fn manager(&self) -> Result<zbus_systemd::systemd1::ManagerProxy<'static>, SystemdError> {
        zbus_systemd::systemd1::ManagerProxy::new(&self.connection)
            .await
            .map_err(self.err("opening the systemd manager".into()))
    }
}

impl UnitManager for DbusSystemd {
    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .reload()
            .await
            .map_err(self.err("daemon-reload".into()))
    }

    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .start_unit(unit.to_owned(), "replace".into())
            .await
            .map(|_| ())
            .map_err(self.err(format!("starting {unit}")))
    }

    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager()
            .await?
            .restart_unit(unit.to_owned(), "replace".into())
            .await
            .map(|_| ())
            .map_err(self.err(format!("restarting {unit}")))
    }

    async fn state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        let path = self
            .manager()
            .await?
            .load_unit(unit.to_owned())
            .await
            .map_err(self.err(format!("loading {unit}")))?;
        let proxy = zbus_systemd::systemd1::UnitProxy::builder(&self.connection)
            .path(path)
            // Properties are read fresh: a cached value would hide a failure.
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(self.err(format!("opening {unit}")))?;
        Ok(UnitState {
            active: proxy
                .active_state()
                .await
                .map_err(self.err(format!("reading ActiveState of {unit}")))?,
            sub: proxy
                .sub_state()
                .await
                .map_err(self.err(format!("reading SubState of {unit}")))?,
        })
    }
}
