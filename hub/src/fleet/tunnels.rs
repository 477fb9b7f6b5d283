//! Which hub replica holds each appliance's tunnel (issue 17): written when a tunnel
//! connects, removed when it ends unless a newer connection (on this replica or another)
//! took the record over. A replica asked for an appliance whose tunnel it does not hold
//! reads it to say where the tunnel is.

use super::*;
use crate::model::{TunnelHolder, keys};

impl Fleet {
    /// Records that this replica holds `appliance`'s tunnel from now on; the other replicas
    /// reach it at its public URL, else at `reached_at` (where the appliance reached it).
    pub async fn tunnel_held(
        &self,
        appliance: &str,
        reached_at: Option<String>,
    ) -> Result<TunnelHolder, FleetError> {
        let holder = TunnelHolder {
            hub: self.settings.hub_name.clone(),
            url: self.settings.public_url.clone().or(reached_at),
            since: now(),
        };
        // Rewritten by every connection: no fsync needed for a fact the next one restates.
        self.store
            .txn_relaxed(
                vec![],
                vec![Op::put(
                    format!("{}{appliance}", keys::TUNNELS),
                    encode(&holder),
                )],
            )
            .await?;
        Ok(holder)
    }

    /// The tunnel recorded by [`Fleet::tunnel_held`] ended: its record goes, unless a newer
    /// connection replaced it meanwhile.
    pub async fn tunnel_released(
        &self,
        appliance: &str,
        held: &TunnelHolder,
    ) -> Result<(), FleetError> {
        let key = format!("{}{appliance}", keys::TUNNELS);
        if let Some((version, current)) = self.get::<TunnelHolder>(&key).await?
            && current == *held
        {
            self.store
                .txn_relaxed(vec![Check::version(&key, version)], vec![Op::delete(&key)])
                .await?;
        }
        Ok(())
    }

    /// The replica recorded as holding `appliance`'s tunnel, when it is not this one.
    pub async fn tunnel_elsewhere(
        &self,
        appliance: &str,
    ) -> Result<Option<TunnelHolder>, FleetError> {
        Ok(self
            .get::<TunnelHolder>(&format!("{}{appliance}", keys::TUNNELS))
            .await?
            .map(|(_, h)| h)
            .filter(|h| h.hub != self.settings.hub_name))
    }
}
