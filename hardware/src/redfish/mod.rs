//! Redfish BMCs: navigation by `@odata.id` from the service root, never by hard-coded member
//! paths, with behaviour adjusted by the vendor quirk table.

pub mod client;
pub mod model;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::OnceCell;

pub use client::{RedfishClient, RedfishOptions};

use crate::address::{BmcAddress, Credentials};
use crate::bmc::{
    AttributeSpec, BiosSettings, Bmc, BmcError, BmcResult, BootDevice, BootOverride, Capability,
    FirmwareComponent, FirmwareTarget, Inventory, LogEntry, MediaStatus, PowerAction, PowerState,
    Sensor,
};
use crate::quirks::{self, BootOnce, MediaLocation, Quirks};

/// Largest number of members read from one collection (logs can hold thousands).
const MAX_MEMBERS: usize = 200;

#[derive(Debug)]
struct Topology {
    system: String,
    manager: Option<String>,
    chassis: Option<String>,
    quirks: Quirks,
}

/// A Redfish BMC.
#[derive(Debug)]
pub struct RedfishBmc {
    client: RedfishClient,
    address: BmcAddress,
    topology: OnceCell<Topology>,
    /// Workarounds used since the report last took them ([`Bmc::take_notes`]).
    notes: std::sync::Mutex<Vec<String>>,
    /// Whether the virtual CD was already reported found away from where the quirks said.
    media_place_noted: std::sync::atomic::AtomicBool,
    /// The boot override cairn set for the next boot and has not seen used: checked after a
    /// power-on, since some BMCs drop it then.
    next_boot: std::sync::Mutex<Option<BootOverride>>,
}

impl RedfishBmc {
    /// Prepares a connection; nothing is sent until the first operation.
    pub fn new(
        address: &BmcAddress,
        credentials: Credentials,
        options: RedfishOptions,
    ) -> BmcResult<Self> {
        Ok(RedfishBmc {
            client: RedfishClient::new(address, credentials, options)?,
            address: address.clone(),
            topology: OnceCell::new(),
            notes: Default::default(),
            media_place_noted: Default::default(),
            next_boot: Default::default(),
        })
    }

    /// Records a workaround for the server's report.
    fn note(&self, text: String) {
        tracing::warn!(bmc = %self.address, "{text}");
        self.notes.lock().expect("notes lock").push(text);
    }

    /// The HTTP layer, for callers that need a resource cairn does not model.
    pub fn client(&self) -> &RedfishClient {
        &self.client
    }

    /// The quirks selected for this BMC (reads the system and manager once).
    pub async fn quirks(&self) -> BmcResult<&Quirks> {
        Ok(&self.topology().await?.quirks)
    }

    async fn topology(&self) -> BmcResult<&Topology> {
        self.topology
            .get_or_try_init(|| async {
                let root = self.client.get_json("/redfish/v1/").await?;
                let system = match &self.address.system {
                    Some(s) => s.clone(),
                    None => {
                        let systems = model::link(&root, "Systems").ok_or_else(|| {
                            BmcError::Malformed {
                                doing: "reading the service root".into(),
                                detail: "no Systems collection".into(),
                            }
                        })?;
                        let members = model::members(&self.client.get_json(systems).await?);
                        match members.as_slice() {
                            [one] => one.clone(),
                            [] => {
                                return Err(BmcError::Malformed {
                                    doing: format!("GET {systems}"),
                                    detail: "no systems".into(),
                                });
                            }
                            many => {
                                return Err(BmcError::Invalid(format!(
                                    "this BMC manages {} systems ({}); add the one to use to the URL, e.g. {}{}",
                                    many.len(),
                                    many.join(", "),
                                    self.address,
                                    many[0]
                                )));
                            }
                        }
                    }
                };
                let sys = self.client.get_json(&system).await?;
                let first_link = |key: &str| {
                    sys.get("Links")
                        .and_then(|l| l.get(key))
                        .and_then(Value::as_array)
                        .and_then(|a| a.first())
                        .and_then(model::odata_id)
                        .map(str::to_owned)
                };
                let first_member = |collection: &str| {
                    let collection = model::link(&root, collection).map(str::to_owned);
                    async move {
                        match collection {
                            Some(c) => Ok::<_, BmcError>(
                                model::members(&self.client.get_json(&c).await?)
                                    .into_iter()
                                    .next(),
                            ),
                            None => Ok(None),
                        }
                    }
                };
                let manager = match first_link("ManagedBy") {
                    Some(m) => Some(m),
                    None => first_member("Managers").await?,
                };
                let chassis = match first_link("Chassis") {
                    Some(c) => Some(c),
                    None => first_member("Chassis").await?,
                };
                let manager_json = match &manager {
                    Some(m) => self.client.get_json(m).await.ok(),
                    None => None,
                };
                let quirks = quirks::select(&quirks::identity(&sys, manager_json.as_ref()));
                tracing::debug!(bmc = %self.address, ?quirks, "selected quirks");
                Ok(Topology {
                    system,
                    manager,
                    chassis,
                    quirks,
                })
            })
            .await
    }

    async fn system(&self) -> BmcResult<(Value, Option<String>)> {
        let path = &self.topology().await?.system;
        let answer = self.client.get(path).await?;
        Ok((answer.body, answer.etag))
    }

    async fn collection(&self, path: &str) -> BmcResult<Vec<Value>> {
        let collection = self.client.get_json(path).await?;
        let mut out = Vec::new();
        let expanded = collection
            .get("Members")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for member in expanded.into_iter().take(MAX_MEMBERS) {
            // Expanded members carry more than their @odata.id.
            if member.as_object().is_some_and(|m| m.len() > 1) {
                out.push(member);
            } else if let Some(id) = model::odata_id(&member) {
                out.push(self.client.get_json(id).await?);
            }
        }
        Ok(out)
    }

    /// The virtual CD slot: under the System or the Manager, in the order the quirks say.
    async fn cd_slot(&self) -> BmcResult<Value> {
        let topo = self.topology().await?;
        let (system, _) = self.system().await?;
        let manager = match &topo.manager {
            Some(m) => Some(self.client.get_json(m).await?),
            None => None,
        };
        let mut places = vec![
            (
                "System",
                model::link(&system, "VirtualMedia").map(str::to_owned),
            ),
            (
                "Manager",
                manager
                    .as_ref()
                    .and_then(|m| model::link(m, "VirtualMedia"))
                    .map(str::to_owned),
            ),
        ];
        if topo.quirks.virtual_media == MediaLocation::Manager {
            places.reverse();
        }
        let expected = places[0].0;
        for (under, place) in places {
            let Some(place) = place else { continue };
            match self.collection(&place).await {
                Ok(slots) => {
                    if let Some(slot) = slots.into_iter().find(model::is_cd_slot) {
                        if under != expected
                            && !self
                                .media_place_noted
                                .swap(true, std::sync::atomic::Ordering::Relaxed)
                        {
                            let source = match topo.quirks.matched.as_slice() {
                                [] => "the default".to_owned(),
                                m => format!("quirk {}", m.join(", ")),
                            };
                            self.note(format!(
                                "the virtual CD is under the {under}, not under the {expected} \
                                 as {source} says; cairn used it there"
                            ));
                        }
                        return Ok(slot);
                    }
                }
                // A link that answers 404 is the firmware-version move the quirks describe.
                Err(BmcError::Status { status, .. }) if status.starts_with("404") => continue,
                Err(e) => return Err(e),
            }
        }
        Err(BmcError::Unsupported {
            capability: Capability::VirtualMedia,
            protocol: "redfish",
        })
    }

    async fn bios_resource(&self) -> BmcResult<(String, Value)> {
        let (system, _) = self.system().await?;
        let path = model::link(&system, "Bios")
            .ok_or(BmcError::Unsupported {
                capability: Capability::Bios,
                protocol: "redfish",
            })?
            .to_owned();
        let bios = self.client.get_json(&path).await?;
        Ok((path, bios))
    }
}

impl RedfishBmc {
    /// Sends the reset that performs `action`, nothing more.
    async fn reset(&self, action: PowerAction) -> BmcResult<()> {
        let (system, _) = self.system().await?;
        let (target, allowed) =
            model::action(&system, "#ComputerSystem.Reset").ok_or_else(|| BmcError::Malformed {
                doing: "reading the system".into(),
                detail: "no #ComputerSystem.Reset action".into(),
            })?;
        let wanted = reset_types(action);
        let reset = wanted
            .iter()
            .find(|t| allowed.is_empty() || allowed.iter().any(|a| a == *t))
            .ok_or_else(|| {
                BmcError::Invalid(format!(
                    "BMC allows reset types {} but {action:?} needs one of {}",
                    allowed.join(", "),
                    wanted.join(", ")
                ))
            })?;
        self.client
            .post(&target, &serde_json::json!({ "ResetType": reset }))
            .await?;
        Ok(())
    }

    /// InsertMedia (or a PATCH where there is no action) into `slot`, then a read-back.
    async fn insert_into(&self, slot: &Value, url: &str) -> BmcResult<()> {
        let path = model::media_status(slot).location;
        match model::action(slot, "#VirtualMedia.InsertMedia") {
            Some((target, _)) => {
                self.client
                    .post(
                        &target,
                        &serde_json::json!({ "Image": url, "Inserted": true, "WriteProtected": true }),
                    )
                    .await?;
            }
            None => {
                self.client
                    .patch(
                        &path,
                        &serde_json::json!({ "Image": url, "Inserted": true }),
                        None,
                    )
                    .await?;
            }
        }
        let after = model::media_status(&self.client.get_json(&path).await?);
        if after.image.as_deref() != Some(url) {
            return Err(BmcError::NotApplied {
                what: format!("virtual media {path}"),
                wanted: url.to_owned(),
                got: after.image.unwrap_or_else(|| "no image".into()),
            });
        }
        Ok(())
    }

    async fn disks(&self, system: &Value, inv: &mut Inventory) -> BmcResult<()> {
        if let Some(storage) = model::link(system, "SimpleStorage") {
            for s in self.collection(storage).await? {
                inv.disks.extend(model::disks(&s));
            }
        }
        if inv.disks.is_empty()
            && let Some(storage) = model::link(system, "Storage")
        {
            for s in self.collection(storage).await? {
                let drives = s
                    .get("Drives")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for drive in drives {
                    if let Some(id) = model::odata_id(&drive) {
                        inv.disks
                            .extend(model::disks(&self.client.get_json(id).await?));
                    }
                }
            }
        }
        Ok(())
    }

    async fn update_service(&self) -> BmcResult<Value> {
        let root = self.client.get_json("/redfish/v1/").await?;
        let update = model::link(&root, "UpdateService")
            .ok_or_else(|| self.unsupported(Capability::Firmware))?;
        self.client.get_json(update).await
    }

    /// The `Targets` of an update: the System for BIOS, the Manager for the BMC.
    async fn update_targets(&self, target: FirmwareTarget) -> BmcResult<Option<Value>> {
        let topo = self.topology().await?;
        let component = match target {
            FirmwareTarget::Bios => Some(topo.system.clone()),
            FirmwareTarget::Bmc => topo.manager.clone(),
        };
        Ok(component.map(|c| serde_json::json!([c])))
    }

    /// Waits for the task an update answer names, if any.
    async fn follow_update(&self, answer: client::Answer) -> BmcResult<()> {
        // A BMC may answer 200/204 with a Task to follow instead of a 202 monitor.
        if let Some(monitor) = model::string(&answer.body, "TaskMonitor")
            .or_else(|| {
                answer
                    .body
                    .get("TaskState")
                    .and_then(|_| model::odata_id(&answer.body))
                    .map(str::to_owned)
            })
            .or(answer.location.clone())
        {
            self.client.wait_task("firmware update", &monitor).await?;
        }
        Ok(())
    }

    /// BIOS and BMC versions from the System and Manager, for BMCs whose UpdateService
    /// lists no (or a broken) FirmwareInventory.
    async fn firmware_from_resources(&self) -> BmcResult<Vec<FirmwareComponent>> {
        let topo = self.topology().await?;
        let (system, _) = self.system().await?;
        let mut out = vec![FirmwareComponent {
            id: "BIOS".into(),
            name: "BIOS".into(),
            version: model::string(&system, "BiosVersion"),
            updateable: false,
        }];
        if let Some(m) = &topo.manager {
            out.push(FirmwareComponent {
                id: "BMC".into(),
                name: "BMC".into(),
                version: model::string(&self.client.get_json(m).await?, "FirmwareVersion"),
                updateable: false,
            });
        }
        Ok(out)
    }
}

fn reset_types(action: PowerAction) -> &'static [&'static str] {
    match action {
        PowerAction::On => &["On", "ForceOn"],
        PowerAction::Off => &["ForceOff"],
        PowerAction::SoftOff => &["GracefulShutdown"],
        PowerAction::Cycle => &["PowerCycle", "ForceRestart"],
        PowerAction::Reset => &["ForceRestart", "GracefulRestart"],
    }
}

#[async_trait]
impl Bmc for RedfishBmc {
    fn protocol(&self) -> &'static str {
        "redfish"
    }

    fn capabilities(&self) -> &'static [Capability] {
        &[
            Capability::Power,
            Capability::Boot,
            Capability::Inventory,
            Capability::VirtualMedia,
            Capability::Logs,
            Capability::Sensors,
            Capability::Bios,
            Capability::Firmware,
        ]
    }

    async fn power_state(&self) -> BmcResult<PowerState> {
        Ok(model::power_state(&self.system().await?.0))
    }

    async fn power(&self, action: PowerAction) -> BmcResult<()> {
        self.reset(action).await?;
        let next = self.next_boot.lock().expect("boot lock").take();
        let Some(next) = next.filter(|_| action == PowerAction::On) else {
            return Ok(());
        };
        // Firmware consumes a one-time override during POST, seconds after this: an override
        // already gone now was dropped by the BMC at power-on, so the server is about to boot
        // something else. Set it again and restart into it.
        if self.boot_override().await?.device != next.device {
            self.note(format!(
                "the BMC dropped the boot override to {} when the server powered on; cairn \
                 set it again and restarted the server",
                next.device
            ));
            self.set_boot_override(next).await?;
            self.next_boot.lock().expect("boot lock").take();
            self.reset(PowerAction::Reset).await?;
        }
        Ok(())
    }

    async fn boot_override(&self) -> BmcResult<BootOverride> {
        let (system, _) = self.system().await?;
        model::boot_override(&system).ok_or_else(|| BmcError::Malformed {
            doing: "reading the boot override".into(),
            detail: "no Boot.BootSourceOverrideTarget".into(),
        })
    }

    async fn set_boot_override(&self, boot: BootOverride) -> BmcResult<()> {
        let quirks = self.topology().await?.quirks.clone();
        let path = self.topology().await?.system.clone();
        let (system, etag) = self.system().await?;
        let allowed = model::allowed_boot_targets(&system);
        let target = model::boot_target(boot.device);
        if boot.device != BootDevice::None
            && !allowed.is_empty()
            && !allowed.iter().any(|a| a == target)
        {
            return Err(BmcError::Invalid(format!(
                "boot device {} ({target}) is not offered by this BMC (allowed: {})",
                boot.device,
                allowed.join(", ")
            )));
        }
        self.client
            .patch(&path, &model::boot_patch(&boot), etag.as_deref())
            .await?;
        *self.next_boot.lock().expect("boot lock") = (!boot.persistent).then_some(boot);
        if quirks.boot_once == BootOnce::Trust {
            return Ok(());
        }
        let got = self.boot_override().await?;
        let mode_ok = boot.mode.is_none() || got.mode.is_none() || got.mode == boot.mode;
        // A one-time override kept as persistent still boots the device asked for, as the
        // persistent fallback below would; rack provisioning sets the disk back once the
        // installer runs. Worth a note unless the quirks expect it.
        let kept_persistent = !boot.persistent && got.persistent;
        if got.device == boot.device
            && mode_ok
            && (got.persistent == boot.persistent || kept_persistent)
        {
            if kept_persistent && quirks.boot_once != BootOnce::ReadsBackContinuous {
                self.note(format!(
                    "the BMC reads a one-time boot override to {} back as persistent; \
                     cairn went on with it",
                    boot.device
                ));
            }
            return Ok(());
        }
        // Verified (not trusted): a one-time override that did not take is set persistent;
        // rack provisioning sets the disk back once the installer runs.
        if !boot.persistent && got.device != boot.device {
            self.note(format!(
                "the BMC did not apply a one-time boot override to {}; cairn set a \
                 persistent one instead",
                boot.device
            ));
            let persistent = BootOverride {
                persistent: true,
                ..boot
            };
            let (_, etag) = self.system().await?;
            self.client
                .patch(&path, &model::boot_patch(&persistent), etag.as_deref())
                .await?;
            let got2 = self.boot_override().await?;
            if got2.device == boot.device {
                *self.next_boot.lock().expect("boot lock") = Some(boot);
                return Ok(());
            }
        }
        Err(BmcError::NotApplied {
            what: "boot override".into(),
            wanted: format!("{boot:?}"),
            got: format!("{got:?}"),
        })
    }

    async fn inventory(&self) -> BmcResult<Inventory> {
        let topo = self.topology().await?;
        let (system, _) = self.system().await?;
        let mut inv = Inventory {
            manufacturer: model::string(&system, "Manufacturer"),
            model: model::string(&system, "Model"),
            serial: model::string(&system, "SerialNumber"),
            bios_version: model::string(&system, "BiosVersion"),
            ..Default::default()
        };
        if let Some(summary) = system.get("ProcessorSummary") {
            inv.cpus = summary
                .get("Count")
                .and_then(Value::as_u64)
                .map(|c| c as u32);
            inv.cpu_model = model::string(summary, "Model");
        }
        inv.memory_gib = system
            .get("MemorySummary")
            .and_then(|m| m.get("TotalSystemMemoryGiB"))
            .and_then(Value::as_f64);
        if let Some(m) = &topo.manager {
            inv.bmc_version = model::string(&self.client.get_json(m).await?, "FirmwareVersion");
        }
        // NICs and disks are optional sub-resources that some BMCs list and then fail to
        // serve (sushy's fake driver answers 500 for Storage): a failure there is logged and
        // leaves that part empty instead of losing the whole inventory.
        if let Some(nics) = model::link(&system, "EthernetInterfaces") {
            match self.collection(nics).await {
                Ok(list) => inv.nics = list.iter().map(model::nic).collect(),
                Err(e) => tracing::warn!(bmc = %self.address, error = %e, "reading NICs"),
            }
        }
        if let Err(e) = self.disks(&system, &mut inv).await {
            tracing::warn!(bmc = %self.address, error = %e, "reading storage");
        }
        Ok(inv)
    }

    async fn media_status(&self) -> BmcResult<MediaStatus> {
        Ok(model::media_status(&self.cd_slot().await?))
    }

    async fn media_insert(&self, url: &str) -> BmcResult<()> {
        let quirks = self.topology().await?.quirks.clone();
        let slot = self.cd_slot().await?;
        if model::media_status(&slot).inserted && quirks.eject_before_insert {
            self.media_eject().await?;
        }
        match self.insert_into(&slot, url).await {
            Err(e @ (BmcError::Status { .. } | BmcError::NotApplied { .. })) => {
                // A busy slot or one that did not connect the image: eject, then once more.
                // The URL leads to an enrollment token, so the note leaves it out.
                let why = match &e {
                    BmcError::Status {
                        status, message, ..
                    } => format!(
                        "the BMC answered {status}: {}",
                        message.as_deref().unwrap_or("")
                    ),
                    _ => "the slot read back without the image".into(),
                };
                // A BMC's message may quote the URL, which leads to an enrollment token.
                let why = why.replace(url, "<the image URL>");
                self.note(format!(
                    "inserting the installer ISO into the virtual CD failed ({}); cairn \
                     ejected it and inserted again",
                    why.trim_end_matches([' ', ':'])
                ));
                self.media_eject().await?;
                let slot = self.cd_slot().await?;
                self.insert_into(&slot, url).await
            }
            other => other,
        }
    }

    async fn media_eject(&self) -> BmcResult<()> {
        let slot = self.cd_slot().await?;
        let path = model::media_status(&slot).location;
        match model::action(&slot, "#VirtualMedia.EjectMedia") {
            Some((target, _)) => {
                self.client.post(&target, &serde_json::json!({})).await?;
            }
            None => {
                self.client
                    .patch(
                        &path,
                        &serde_json::json!({ "Image": null, "Inserted": false }),
                        None,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn logs(&self) -> BmcResult<Vec<LogEntry>> {
        let topo = self.topology().await?;
        let (system, _) = self.system().await?;
        let mut places = vec![model::link(&system, "LogServices").map(str::to_owned)];
        if let Some(m) = &topo.manager {
            places.push(
                model::link(&self.client.get_json(m).await?, "LogServices").map(str::to_owned),
            );
        }
        let places: Vec<String> = places.into_iter().flatten().collect();
        if places.is_empty() {
            return Err(self.unsupported(Capability::Logs));
        }
        let mut entries = Vec::new();
        for place in places {
            for service in self.collection(&place).await? {
                if let Some(e) = model::link(&service, "Entries") {
                    entries.extend(self.collection(e).await?.iter().map(model::log_entry));
                }
            }
        }
        Ok(entries)
    }

    async fn sensors(&self) -> BmcResult<Vec<Sensor>> {
        let chassis = self
            .topology()
            .await?
            .chassis
            .clone()
            .ok_or_else(|| self.unsupported(Capability::Sensors))?;
        let chassis = self.client.get_json(&chassis).await?;
        let mut out = Vec::new();
        for key in ["Thermal", "Power"] {
            if let Some(p) = model::link(&chassis, key) {
                out.extend(model::sensors(&self.client.get_json(p).await?));
            }
        }
        Ok(out)
    }

    async fn bios(&self) -> BmcResult<BiosSettings> {
        let (_, bios) = self.bios_resource().await?;
        let current = model::attributes(&bios);
        let mut pending = BTreeMap::new();
        if let Some((object, _)) = model::settings_object(&bios) {
            for (k, v) in model::attributes(&self.client.get_json(&object).await?) {
                if current.get(&k) != Some(&v) {
                    pending.insert(k, v);
                }
            }
        }
        Ok(BiosSettings { current, pending })
    }

    async fn bios_registry(&self) -> BmcResult<Option<Vec<AttributeSpec>>> {
        let (_, bios) = self.bios_resource().await?;
        let Some(name) = model::string(&bios, "AttributeRegistry") else {
            return Ok(None);
        };
        let root = self.client.get_json("/redfish/v1/").await?;
        let Some(registries) = model::link(&root, "Registries") else {
            return Ok(None);
        };
        for file in self.collection(registries).await? {
            let id = model::string(&file, "Id").unwrap_or_default();
            let registry = model::string(&file, "Registry").unwrap_or_default();
            let named = id == name || registry == name;
            if !(named || id.contains("Bios") || registry.contains("Bios")) {
                continue;
            }
            let uris: Vec<String> = file
                .get("Location")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(|l| model::string(l, "Uri")).collect())
                .unwrap_or_default();
            for uri in uris {
                let reg = self.client.get_json(&uri).await?;
                // Some BMCs name the file differently from the registry it holds.
                if named || model::string(&reg, "Id").as_deref() == Some(name.as_str()) {
                    return Ok(Some(model::registry(&reg)));
                }
            }
        }
        Ok(None)
    }

    async fn stage_bios(&self, changes: &BTreeMap<String, Value>) -> BmcResult<bool> {
        let quirks = self.topology().await?.quirks.clone();
        let (path, bios) = self.bios_resource().await?;
        let mut body = serde_json::json!({ "Attributes": changes });
        match model::settings_object(&bios) {
            Some((object, times)) => {
                if quirks.bios_apply_time
                    && (times.is_empty() || times.iter().any(|t| t == "OnReset"))
                {
                    body["@Redfish.SettingsApplyTime"] =
                        serde_json::json!({ "ApplyTime": "OnReset" });
                }
                let etag = self.client.get(&object).await?.etag;
                self.client.patch(&object, &body, etag.as_deref()).await?;
                Ok(true)
            }
            None => {
                self.client.patch(&path, &body, None).await?;
                Ok(true)
            }
        }
    }

    async fn firmware(&self) -> BmcResult<Vec<FirmwareComponent>> {
        let update = self.update_service().await?;
        let Some(inventory) = model::link(&update, "FirmwareInventory") else {
            return self.firmware_from_resources().await;
        };
        match self.collection(inventory).await {
            Ok(list) => Ok(list.iter().map(model::firmware_component).collect()),
            Err(BmcError::Status { status, .. }) if status.starts_with("404") => {
                self.firmware_from_resources().await
            }
            Err(e) => Err(e),
        }
    }

    async fn update_firmware(&self, image_url: &str, target: FirmwareTarget) -> BmcResult<()> {
        let update = self.update_service().await?;
        let (action_target, protocols) = model::action(&update, "#UpdateService.SimpleUpdate")
            .ok_or_else(|| self.unsupported(Capability::Firmware))?;
        let scheme = image_url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_uppercase())
            .unwrap_or_default();
        let mut body = serde_json::json!({ "ImageURI": image_url });
        if protocols.is_empty() || protocols.contains(&scheme) {
            body["TransferProtocol"] = scheme.into();
        }
        if let Some(targets) = self.update_targets(target).await? {
            body["Targets"] = targets;
        }
        let answer = self.client.post(&action_target, &body).await?;
        self.follow_update(answer).await
    }

    async fn accepts_firmware_push(&self) -> BmcResult<bool> {
        Ok(model::multipart_push_uri(&self.update_service().await?).is_some())
    }

    async fn push_firmware(
        &self,
        image: &std::path::Path,
        target: FirmwareTarget,
    ) -> BmcResult<()> {
        let update = self.update_service().await?;
        let uri = model::multipart_push_uri(&update)
            .ok_or_else(|| self.unsupported(Capability::Firmware))?;
        let size = std::fs::metadata(image)
            .map_err(|e| BmcError::Invalid(format!("reading {}: {e}", image.display())))?
            .len();
        if let Some(max) = update.get("MaxImageSizeBytes").and_then(Value::as_u64)
            && size > max
        {
            return Err(BmcError::Invalid(format!(
                "the image is {size} bytes and this BMC takes at most {max} (MaxImageSizeBytes); nothing was sent"
            )));
        }
        let mut parameters = serde_json::json!({});
        if let Some(targets) = self.update_targets(target).await? {
            parameters["Targets"] = targets;
        }
        let upload = client::Upload {
            parameters_name: "UpdateParameters",
            parameters: &parameters,
            file_name: "UpdateFile",
            file: image,
        };
        let answer = self.client.post_upload(&uri, &upload).await?;
        self.follow_update(answer).await
    }

    async fn close(&self) {
        self.client.logout().await;
    }

    fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().expect("notes lock"))
    }
}
