//! The operator and appliance API of `cairn-hub` under `/v1`: every request body, query,
//! response view and error body, in one place. The hub serves these types, `cairn-hub-client`
//! sends and reads them; nothing else declares them again.
//!
//! Responses are **views**, never the hub's stored records: a view names each field it
//! shows, so a secret added to a record later (a bootstrap token, a token hash) does not
//! reach an operator by accident. Secrets an appliance needs reach it only in its own
//! desired state, over mTLS ([`crate::DesiredState`]).
//!
//! Requests are commands and reject unknown fields; views are reports and tolerate them
//! (see the crate docs).

mod appliances;
mod auth;
mod campaigns;
mod config;
mod control_planes;
mod error;
mod log;
mod releases;
pub mod remote;
mod selector;
mod tenants;
mod tokens;
mod vpcs;

pub use appliances::{
    ApplianceCounts, ApplianceList, ApplianceQuery, ApplianceState, ApplianceView, CountBy,
    CountQuery, DEFAULT_PAGE, DesiredView, JoinSecretView, JoinView, LabelRequest, MAX_PAGE,
    Renewal, RenewalRequest, ResumeQuery, StatusView, WatchEvent, WatchEventType, WatchQuery,
};
pub use auth::{CaInfo, InitSummary, Role, WhoAmI};
pub use campaigns::{
    BatchProgress, CampaignAction, CampaignMember, CampaignState, CampaignView, CreateCampaign,
    MemberState, Pacing, Selector,
};
pub use config::{
    ApplianceConfigView, ApplyLayer, ConfigStateView, LayerChange, LayerView, RollbackLayer,
};
pub use control_planes::{AddControlPlane, AssignRequest, AssignResult, ControlPlaneView};
pub use error::{ErrorBody, ErrorCode};
pub use log::{AuditEntryView, EventQuery, EventView, EventWatchQuery, SinceQuery};
pub use releases::{AddReleaseFromUrl, ReleaseView, UploadQuery};
pub use remote::{ExecRequest, ExecResult, LogsQuery, RebootResult};
pub use selector::{
    LabelSelector, MAX_SELECTOR_LEN, Operator, Requirement, SITE_KEY, SelectorError,
};
pub use tenants::{CreateTenant, TenantView};
pub use tokens::{
    CheckRequest, CreateEnrollmentToken, CreateOperatorToken, CreateReinstallToken,
    EnrollmentTokenView, NewToken, OperatorTokenView, TokenCheck, TokenKind, TokenRefusal,
};
pub use vpcs::{CreateVpc, MembershipRequest, VpcView};
