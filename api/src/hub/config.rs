use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ApplianceId, ConfigReport, DiffEntry, RenderedConfig};

/// `POST /v1/config/layers` body: one layer's YAML file, whole ([`crate::LayerDocument`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyLayer {
    /// The file's name, for error messages (`site-berlin.yaml:7:5: ...`).
    pub file: String,
    /// The file's text, YAML.
    pub document: String,
    /// Only validate and answer what would change; store nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply even a netplan patch that would cut an appliance's link to the hub.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/config/layers/{layer}/rollback` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackLayer {
    /// The generation whose document becomes the layer's again (as a new generation).
    pub to: u64,
}

/// One generation of a layer as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LayerView {
    /// `kind:name`, e.g. `site:berlin`.
    pub layer: String,
    /// The tenant whose operators may change it.
    pub tenant: String,
    /// A group's label selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Increases with every accepted change, from 1.
    pub generation: u64,
    /// Who wrote this generation (`operator:<name>`).
    pub author: String,
    /// When.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The YAML file as written.
    pub document: String,
}

/// The answer to an apply or a rollback (or their dry run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LayerChange {
    /// The layer as it is now (with `dry_run`: as it would be).
    pub layer: LayerView,
    /// Whether the document differs from the current generation; an unchanged document
    /// stores no new generation.
    pub changed: bool,
    /// What changes, by key path.
    pub diff: Vec<DiffEntry>,
    /// How many appliances' rendered configuration changes (or would).
    pub appliances: u32,
    /// Nothing was stored.
    pub dry_run: bool,
}

/// `GET /v1/appliances/{id}/config`: an appliance's rendered configuration and what it did
/// with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplianceConfigView {
    /// The appliance.
    pub appliance: ApplianceId,
    /// What its layers render to; absent when no layer applies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered: Option<RenderedConfig>,
    /// Applied, last good, drift.
    pub state: ConfigStateView,
}

/// How far an appliance's configuration is from what the hub renders for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigStateView {
    /// The rendered generation the hub sends it (0: none).
    pub desired_generation: u64,
    /// The generation its latest report names (0: none yet).
    pub applied_generation: u64,
    /// The last generation it applied and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_generation: Option<u64>,
    /// Its latest report, whole: why it refused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ConfigReport>,
    /// The desired generation is not the one it reports applied.
    pub drift: bool,
}

impl ConfigStateView {
    /// The state of an appliance sent `rendered` whose latest report is `report`.
    pub fn new(rendered: Option<&RenderedConfig>, report: Option<&ConfigReport>) -> Self {
        let desired_generation = rendered.map_or(0, |r| r.generation);
        let applied_generation = report
            .filter(|r| matches!(r.outcome, crate::ConfigOutcome::Applied))
            .map_or(0, |r| r.generation);
        Self {
            desired_generation,
            applied_generation,
            last_good_generation: report.and_then(|r| r.last_good_generation),
            report: report.cloned(),
            drift: desired_generation != applied_generation,
        }
    }
}
