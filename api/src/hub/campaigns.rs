use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::selector::{LabelSelector, Operator, Requirement, SITE_KEY};
use crate::{ApplianceId, MaintenanceWindow, UpgradePhase};

/// Which appliances a campaign covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Selector {
    /// Only this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Only appliances carrying all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// And only those this label selector matches (`kubectl -l` syntax; the key `site` is
    /// the appliance's site).
    #[serde(default, skip_serializing_if = "LabelSelector::is_empty")]
    pub expression: LabelSelector,
}

impl Selector {
    /// The whole selector as one label selector: `site` and `labels` are equality
    /// requirements ANDed with the expression, so campaigns and lists match alike.
    pub fn to_label_selector(&self) -> LabelSelector {
        let equal = |key: &str, value: &str| Requirement {
            key: key.to_owned(),
            op: Operator::Equals(value.to_owned()),
        };
        let mut requirements: Vec<Requirement> =
            self.site.iter().map(|s| equal(SITE_KEY, s)).collect();
        requirements.extend(self.labels.iter().map(|(k, v)| equal(k, v)));
        LabelSelector::from_requirements(requirements).and(&self.expression)
    }
}

/// Where a campaign is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CampaignState {
    /// Made, not started: members listed, nothing ordered.
    Created,
    /// Ordering batch after batch.
    Running,
    /// Orders no new appliance (by an operator, or by itself on too many failures); those
    /// already ordered carry on and are recorded.
    Paused,
    /// Every member finished.
    Completed,
    /// Stopped for good; orders not yet acted on were withdrawn.
    Aborted,
}

impl CampaignState {
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
        }
    }
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one appliance is within a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MemberState {
    /// Its batch has not started.
    Pending,
    /// Its desired state carries the order; `phase` says what the node last reported.
    Ordered,
    /// The node reported `committed` on the release version.
    Committed,
    /// It failed (rolled back, interrupted, refused, failed, deadline, unexpected version).
    Failed,
    /// Never ordered: quarantined, flagged, already on the version, or the campaign was
    /// aborted first.
    Skipped,
}

impl MemberState {
    /// Whether nothing more will happen to this member.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Committed | Self::Failed | Self::Skipped)
    }
    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ordered => "ordered",
            Self::Committed => "committed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One appliance of a campaign: a value both the hub's campaign record and its view carry
/// (it holds nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CampaignMember {
    /// The appliance.
    pub appliance: ApplianceId,
    /// Batch index; batch 0 holds the canaries when there are any.
    pub batch: u32,
    /// Where it is.
    pub state: MemberState,
    /// The node's last reported phase for this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<UpgradePhase>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The OS version it ran when ordered: coming back on it after a failure is expected,
    /// on anything else but the release is not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_version: String,
    /// When it was ordered.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ordered_at: Option<OffsetDateTime>,
    /// When it finished.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<OffsetDateTime>,
}

/// How a campaign paces itself after the canaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "n")]
pub enum Pacing {
    /// Fixed batches of N: the next starts when every member of the current one finished.
    BatchSize(u32),
    /// A rolling window: at most N appliances in progress at any time.
    MaxConcurrency(u32),
}

/// `POST /v1/campaigns` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaign {
    /// Unique name (1-63 of a-z, 0-9, '-').
    pub name: String,
    /// Release version to roll out.
    pub release: String,
    /// Which appliances.
    #[serde(default)]
    pub selector: Selector,
    /// Canaries first (batch 0).
    #[serde(default)]
    pub canaries: u32,
    /// Fixed batches of this size (default 1 when neither is given).
    #[serde(default)]
    pub batch_size: Option<u32>,
    /// Or a rolling window of at most this many in progress.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Pause when more than this many members failed (default 0).
    #[serde(default)]
    pub max_failures: u32,
    /// Daily window `HH:MM`-`HH:MM` in the appliance's local time.
    #[serde(default)]
    pub window: Option<MaintenanceWindow>,
    /// Download and verify ahead of the window.
    #[serde(default)]
    pub prestage: bool,
    /// Allow installing an older version.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Fail a member with no final report this many seconds after its order (default: never).
    #[serde(default)]
    pub deadline_seconds: Option<u64>,
}

/// `POST /v1/campaigns/{name}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CampaignAction {
    /// Start ordering: canaries first.
    Start,
    /// Order no new appliance; those upgrading finish.
    Pause,
    /// Continue a paused campaign.
    Resume,
    /// Stop for good: withdraw orders nodes have not acted on.
    Abort,
}

impl CampaignAction {
    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

/// One batch of a campaign, for `show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BatchProgress {
    /// Index (0 is the canaries when there are any).
    pub index: u32,
    /// `canary`, `batch` or `rolling`.
    pub kind: String,
    /// Members by state.
    pub counts: BTreeMap<String, usize>,
}

/// A campaign with its progress per batch and per appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CampaignView {
    /// Unique name.
    pub name: String,
    /// The release version.
    pub release: String,
    /// Which appliances (evaluated at creation).
    pub selector: Selector,
    /// Canaries: batch 0, which must finish before anything else starts.
    pub canaries: u32,
    /// Batches or rolling window.
    pub pacing: Pacing,
    /// The campaign pauses itself when more members than this failed.
    pub max_failures: u32,
    /// Maintenance window handed to nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
    /// Nodes download and verify ahead of the window.
    pub prestage: bool,
    /// Nodes may install an older version than they run.
    pub allow_downgrade: bool,
    /// A member with no final report this long after its order counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<u64>,
    /// Where it is.
    pub state: CampaignState,
    /// Why it is paused or aborted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_reason: String,
    /// The appliances, in batch order.
    pub members: Vec<CampaignMember>,
    /// When it was made.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
    /// The site its members are in, when they all share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Progress per batch.
    pub batches: Vec<BatchProgress>,
    /// Failed members.
    pub failures: usize,
}
