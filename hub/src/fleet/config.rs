//! Configuration layers (docs/hub.md "Configuration layers"): tenant, site, label-group and
//! appliance patches of node settings and netplan, each versioned with its history, merged
//! per appliance into its desired state ([`render`], used by [`super::desired`]).
//!
//! A change is validated before anything is written, with the node's own parsers: the
//! settings with the node-config schema ([`cairn_api::node_config::FleetConfig`]), the
//! netplan patch with the `netplan` crate, merged as each affected appliance would merge
//! it, so an error names the layer file and line that set the bad key. A refused change
//! writes nothing.

use std::path::Path;

use cairn_api::hub::{ApplianceConfigView, ConfigStateView, LabelSelector, LayerChange, LayerView};
use cairn_api::node_config::FleetConfig;
use cairn_api::{LayerDocument, LayerRef, RenderedConfig};
use cairn_netplan::yaml;
use serde_json::Value;

use super::*;
use crate::model::ConfigLayer;

mod guard;

/// Generations of one layer kept in its history.
const HISTORY_LIMIT: usize = 1000;

/// A layer file, parsed and checked on its own.
struct Parsed {
    layer: LayerRef,
    doc: LayerDocument,
    value: Value,
}

/// Parses a layer file: YAML syntax and unknown keys with their line, then the settings'
/// values. `file` names the file in messages.
fn parse(file: &str, text: &str) -> Result<Parsed, FleetError> {
    // The netplan crate's parser first: its syntax errors name file, line and column.
    yaml::parse(Path::new(file), text).map_err(|e| FleetError::Invalid(e.to_string()))?;
    let doc: LayerDocument =
        serde_yaml_ng::from_str(text).map_err(|e| FleetError::Invalid(format!("{file}: {e}")))?;
    let layer: LayerRef = doc.layer.parse().map_err(FleetError::Invalid)?;
    match (&layer, &doc.selector) {
        (LayerRef::Group(_), None) => {
            return Err(FleetError::Invalid(format!(
                "{file}: a group layer needs `selector:` (kubectl -l syntax, e.g. role=gpu)"
            )));
        }
        (LayerRef::Group(_), Some(s)) => {
            s.parse::<LabelSelector>()
                .map_err(|e| FleetError::Invalid(format!("{file}: selector: {e}")))?;
        }
        (_, Some(_)) => {
            return Err(FleetError::Invalid(format!(
                "{file}: only group layers have a `selector:`"
            )));
        }
        (_, None) => {}
    }
    if doc.tenant.is_some() && !matches!(layer, LayerRef::Group(_) | LayerRef::Tenant(_)) {
        return Err(FleetError::Invalid(format!(
            "{file}: `tenant:` is for group layers; a {} layer belongs to its {}'s tenant",
            layer.kind(),
            layer.kind()
        )));
    }
    if let Some(settings) = &doc.settings {
        settings
            .validate()
            .map_err(|e| FleetError::Invalid(format!("{file}: {e}")))?;
    }
    if let Some(n) = &doc.netplan
        && !n.is_object()
    {
        return Err(FleetError::Invalid(format!(
            "{file}: netplan: give a netplan document (`network:` ...)"
        )));
    }
    let value = layer_value(&doc);
    Ok(Parsed { layer, doc, value })
}

/// What a layer sets, as one JSON mapping the merge works on.
fn layer_value(doc: &LayerDocument) -> Value {
    let mut value = serde_json::Map::new();
    if let Some(s) = &doc.settings {
        value.insert(
            "settings".into(),
            serde_json::to_value(s).expect("settings serialize"),
        );
    }
    if let Some(n) = &doc.netplan {
        value.insert("netplan".into(), n.clone());
    }
    Value::Object(value)
}

/// The netplan patch of a layer's file as the netplan crate's marked tree, so that a
/// validation error names that file and line.
fn netplan_tree(file: &str, text: &str) -> Option<yaml::Node> {
    let root = yaml::parse(Path::new(file), text).ok()?;
    let yaml::Value::Map(entries) = root.value else {
        return None;
    };
    entries
        .into_iter()
        .find(|(k, _, _)| k == "netplan")
        .map(|(_, _, node)| node)
}

/// Whether `layer` applies to appliance `a` of tenant `tenant`.
fn applies(layer: &ConfigLayer, a: &Appliance, tenant: &str) -> bool {
    match layer.layer.parse::<LayerRef>() {
        Ok(LayerRef::Tenant(t)) => t == tenant,
        Ok(LayerRef::Site(s)) => s == a.site,
        Ok(LayerRef::Appliance(id)) => id == a.id.as_str(),
        Ok(LayerRef::Group(_)) => {
            layer.tenant == tenant
                && layer
                    .selector
                    .as_deref()
                    .and_then(|s| s.parse::<LabelSelector>().ok())
                    .is_some_and(|sel| sel.matches(crate::model::selector_lookup(a)))
        }
        Err(_) => false,
    }
}

/// The layers that apply to `a`, in merge order.
fn layers_for<'l>(layers: &'l [ConfigLayer], a: &Appliance, tenant: &str) -> Vec<&'l ConfigLayer> {
    let mut mine: Vec<(LayerRef, &ConfigLayer)> = layers
        .iter()
        .filter(|l| applies(l, a, tenant))
        .filter_map(|l| Some((l.layer.parse().ok()?, l)))
        .collect();
    mine.sort_by(|x, y| x.0.cmp(&y.0));
    mine.into_iter().map(|(_, l)| l).collect()
}

/// The configuration `a` (of `tenant`) renders to under `layers`, with generation 0 (the
/// desired state numbers it); `None` when no layer applies.
pub(crate) fn render(
    layers: &[ConfigLayer],
    a: &Appliance,
    tenant: &str,
) -> Option<RenderedConfig> {
    let mine = layers_for(layers, a, tenant);
    if mine.is_empty() {
        return None;
    }
    let mut merged = Value::Object(Default::default());
    for l in &mine {
        cairn_api::merge(&mut merged, &l.value);
    }
    // Each layer's settings were valid alone, and merging valid mappings key by key keeps
    // them valid; a record that no longer parses (written by a newer hub) is skipped.
    let settings = merged
        .get("settings")
        .cloned()
        .and_then(|s| serde_json::from_value::<FleetConfig>(s).ok())
        .unwrap_or_default();
    Some(RenderedConfig {
        generation: 0,
        settings,
        netplan: merged.get("netplan").cloned(),
        layers: mine
            .iter()
            .map(|l| format!("{}@{}", l.layer, l.generation))
            .collect(),
    })
}

/// The netplan patch `a` gets under `layers`, merged as the node merges netplan files,
/// each layer's patch keeping its own file and lines; `None` when no layer has one.
fn merged_netplan(layers: &[ConfigLayer], a: &Appliance, tenant: &str) -> Option<yaml::Node> {
    let mut merged: Option<yaml::Node> = None;
    for l in layers_for(layers, a, tenant) {
        let Some(tree) = netplan_tree(&l.file, &l.document) else {
            continue;
        };
        merged = Some(match merged {
            Some(base) => yaml::merge(base, tree),
            None => tree,
        });
    }
    merged
}

/// Checks the merged netplan patch of appliance `a` with the node's parser.
fn check_netplan(merged: Option<&yaml::Node>, a: &Appliance) -> Result<(), FleetError> {
    let Some(tree) = merged else { return Ok(()) };
    cairn_netplan::schema::from_tree(tree)
        .map(drop)
        .map_err(|e| FleetError::Invalid(format!("netplan for appliance {}: {e}", a.id)))
}

fn view(l: &ConfigLayer) -> LayerView {
    LayerView {
        layer: l.layer.clone(),
        tenant: l.tenant.clone(),
        selector: l.selector.clone(),
        generation: l.generation,
        author: l.author.clone(),
        at: l.at,
        document: l.document.clone(),
    }
}

fn layer_key(layer: &str) -> String {
    format!("{}{layer}", keys::CONFIG_LAYERS)
}

fn history_key(layer: &str, generation: u64) -> String {
    format!("{}{layer}/{generation:020}", keys::CONFIG_HISTORY)
}

fn unknown(layer: &str) -> FleetError {
    FleetError::NotFound {
        code: cairn_api::hub::ErrorCode::ConfigLayerUnknown,
        message: format!("no configuration layer {layer:?}"),
    }
}

impl Fleet {
    /// Every layer, current generations.
    pub(crate) async fn config_layers(&self) -> Result<Vec<ConfigLayer>, FleetError> {
        Ok(self
            .list::<ConfigLayer>(keys::CONFIG_LAYERS)
            .await?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// The tenant a layer belongs to and whether `caller` may see and change it: a tenant
    /// or group layer needs a token of that tenant (or the fleet); a site layer one that
    /// sees the site; an appliance layer one that sees the appliance.
    async fn layer_scope(
        &self,
        caller: &Caller,
        layer: &LayerRef,
        group_tenant: Option<&str>,
    ) -> Result<(String, bool), FleetError> {
        Ok(match layer {
            LayerRef::Tenant(t) => (t.clone(), caller.sees_tenant(t)),
            LayerRef::Group(_) => {
                let t = group_tenant
                    .or(caller.tenant())
                    .unwrap_or(DEFAULT_TENANT)
                    .to_owned();
                let ok = caller.sees_tenant(&t);
                (t, ok)
            }
            LayerRef::Site(s) => (self.tenant_of(s).await?, caller.sees(s)),
            LayerRef::Appliance(id) => {
                match self
                    .get::<Appliance>(&format!("{}{id}", keys::APPLIANCES))
                    .await?
                {
                    Some((_, a)) => (self.tenant_of(&a.site).await?, caller.sees(&a.site)),
                    None => {
                        return Err(FleetError::NotFound {
                            code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                            message: format!("no appliance {id:?}"),
                        });
                    }
                }
            }
        })
    }

    /// A layer in `caller`'s scope; another's answers as absent.
    pub(crate) async fn config_layer_in_scope(
        &self,
        caller: &Caller,
        layer: &str,
    ) -> Result<(u64, ConfigLayer), FleetError> {
        let parsed: LayerRef = layer.parse().map_err(|_| unknown(layer))?;
        let (version, record): (_, ConfigLayer) = self
            .get(&layer_key(layer))
            .await?
            .ok_or_else(|| unknown(layer))?;
        let (_, ok) = self
            .layer_scope(caller, &parsed, Some(&record.tenant))
            .await
            .map_err(|_| unknown(layer))?;
        if !ok {
            return Err(unknown(layer));
        }
        Ok((version, record))
    }

    /// The layers `caller` sees (viewer).
    pub async fn list_config_layers(&self, caller: &Caller) -> Result<Vec<LayerView>, FleetError> {
        let mut out = Vec::new();
        for l in self.config_layers().await? {
            let Ok(parsed) = l.layer.parse::<LayerRef>() else {
                continue;
            };
            if let Ok((_, true)) = self.layer_scope(caller, &parsed, Some(&l.tenant)).await {
                out.push(view(&l));
            }
        }
        Ok(out)
    }

    /// One layer's current generation (viewer, in scope).
    pub async fn show_config_layer(
        &self,
        caller: &Caller,
        layer: &str,
    ) -> Result<LayerView, FleetError> {
        Ok(view(&self.config_layer_in_scope(caller, layer).await?.1))
    }

    /// Every kept generation of a layer, oldest first (viewer, in scope).
    pub async fn config_layer_history(
        &self,
        caller: &Caller,
        layer: &str,
    ) -> Result<Vec<LayerView>, FleetError> {
        self.config_layer_in_scope(caller, layer).await?;
        Ok(self
            .list::<ConfigLayer>(&format!("{}{layer}/", keys::CONFIG_HISTORY))
            .await?
            .iter()
            .map(|(_, l)| view(l))
            .collect())
    }

    /// Applies a layer file (operator, in scope): validates it, and unless `dry_run` stores
    /// it as the layer's next generation and re-renders every appliance it touches. An
    /// unchanged document stores nothing. A netplan patch that would cut an appliance's
    /// link to the hub is refused unless `force` ([`guard`]).
    pub async fn apply_config_layer(
        &self,
        caller: &Caller,
        file: &str,
        text: &str,
        dry_run: bool,
        force: bool,
    ) -> Result<LayerChange, FleetError> {
        caller.operator()?;
        let parsed = match parse(file, text) {
            Ok(p) => p,
            Err(e) => {
                self.audit(caller, "config.apply", file, &format!("refused: {e}"), None)
                    .await?;
                return Err(e);
            }
        };
        let (tenant, ok) = self
            .layer_scope(caller, &parsed.layer, parsed.doc.tenant.as_deref())
            .await?;
        if !ok {
            // The layer's name is not echoed: it may be another tenant's site.
            return Err(FleetError::Forbidden(
                "this token may not change that layer: it belongs to another tenant or site".into(),
            ));
        }
        if matches!(parsed.layer, LayerRef::Tenant(_) | LayerRef::Group(_)) {
            caller.check_tenant_wide(&tenant)?;
            self.check_tenant_exists(&tenant).await?;
        }
        let name = parsed.layer.to_string();
        let record = ConfigLayer {
            layer: name.clone(),
            tenant,
            selector: parsed.doc.selector.clone(),
            generation: 0,
            author: caller.actor.clone(),
            at: now(),
            document: text.to_owned(),
            file: file.to_owned(),
            value: parsed.value,
        };
        self.write_layer(caller, record, dry_run, force, "config.apply")
            .await
    }

    /// Makes generation `to` of a layer its current one again, as a new generation
    /// (operator, in scope), validated as an apply is.
    pub async fn rollback_config_layer(
        &self,
        caller: &Caller,
        layer: &str,
        to: u64,
    ) -> Result<LayerChange, FleetError> {
        caller.operator()?;
        self.config_layer_in_scope(caller, layer).await?;
        let (_, old): (_, ConfigLayer) =
            self.get(&history_key(layer, to)).await?.ok_or_else(|| {
                FleetError::Invalid(format!(
                    "layer {layer} has no generation {to}; see `cairn hub config history {layer}`"
                ))
            })?;
        let record = ConfigLayer {
            author: caller.actor.clone(),
            at: now(),
            generation: 0,
            ..old
        };
        // Not guarded: it restores what the operator ran before, and is the way back when a
        // forced change went wrong.
        self.write_layer(caller, record, false, true, "config.rollback")
            .await
    }

    /// Validates `record` against every appliance it touches and, unless `dry_run`, stores
    /// it with the next generation and re-renders those appliances.
    async fn write_layer(
        &self,
        caller: &Caller,
        mut record: ConfigLayer,
        dry_run: bool,
        force: bool,
        action: &str,
    ) -> Result<LayerChange, FleetError> {
        let key = layer_key(&record.layer);
        let current: Option<(u64, ConfigLayer)> = self.get(&key).await?;
        let old_value = current.as_ref().map_or_else(
            || Value::Object(Default::default()),
            |(_, l)| l.value.clone(),
        );
        let diff = cairn_api::diff(&old_value, &record.value);
        let changed = current.as_ref().is_none_or(|(_, l)| {
            l.value != record.value || l.selector != record.selector || l.tenant != record.tenant
        });
        record.generation = current.as_ref().map_or(0, |(_, l)| l.generation) + u64::from(changed);
        let touched = self
            .check_layer_change(current.as_ref().map(|(_, l)| l), &record, force)
            .await;
        let (touched, forced) = match touched {
            Ok(n) => n,
            Err(e) => {
                self.audit(
                    caller,
                    action,
                    &record.layer,
                    &format!("refused: {e}"),
                    None,
                )
                .await?;
                return Err(e);
            }
        };
        let mut answer = LayerChange {
            layer: view(&record),
            changed,
            diff,
            appliances: touched.len() as u32,
            dry_run,
        };
        if dry_run || !changed {
            if let Some((_, l)) = current.filter(|_| !changed) {
                answer.layer = view(&l);
            }
            return Ok(answer);
        }
        let mut ops = vec![
            Op::put(&key, encode(&record)),
            Op::put(
                history_key(&record.layer, record.generation),
                encode(&record),
            ),
            Self::tenant_audit_op(
                caller,
                action,
                &format!("{}@{}", record.layer, record.generation),
                &forced.map_or_else(
                    || "ok".to_owned(),
                    |cuts| format!("ok, forced past the guard rail: {cuts}"),
                ),
                &record.tenant,
            ),
        ];
        if record.generation as usize > HISTORY_LIMIT {
            ops.push(Op::delete(history_key(
                &record.layer,
                record.generation - HISTORY_LIMIT as u64,
            )));
        }
        let version = current.as_ref().map_or(0, |(v, _)| *v);
        if !self
            .store
            .txn(vec![Check::version(&key, version)], ops)
            .await?
        {
            return Err(FleetError::Contended(format!(
                "layer {}: changed by someone else meanwhile; diff and apply again",
                record.layer
            )));
        }
        tracing::info!(layer = %record.layer, generation = record.generation, actor = %caller.actor, "configuration layer changed");
        for id in &touched {
            self.refresh_desired(id).await?;
        }
        Ok(answer)
    }

    /// The appliances whose rendered configuration changes when `old` becomes `new`, once
    /// each one's merged netplan was checked with the node's parser and against the hub
    /// link it last reported, with the cuts `force` let through; or why not.
    async fn check_layer_change(
        &self,
        old: Option<&ConfigLayer>,
        new: &ConfigLayer,
        force: bool,
    ) -> Result<(Vec<ApplianceId>, Option<String>), FleetError> {
        let before = self.config_layers().await?;
        let mut after: Vec<ConfigLayer> = before
            .iter()
            .filter(|l| l.layer != new.layer)
            .cloned()
            .collect();
        after.push(new.clone());
        let site_tenants = self.site_tenants().await?;
        let mut touched = Vec::new();
        let mut any = false;
        let mut cuts = Vec::new();
        for (_, a) in self.list::<Appliance>(keys::APPLIANCES).await? {
            let tenant = tenant_in(&site_tenants, &a.site);
            if !applies(new, &a, tenant) && !old.is_some_and(|o| applies(o, &a, tenant)) {
                continue;
            }
            any |= applies(new, &a, tenant);
            let merged = merged_netplan(&after, &a, tenant);
            check_netplan(merged.as_ref(), &a)?;
            let was = merged_netplan(&before, &a, tenant);
            // Only a netplan patch can cut a link: a settings-only change of a large tenant
            // reads no status records.
            let netplan_changed = was != merged;
            if netplan_changed && let Some(link) = self.hub_link(&a.id).await? {
                for cut in guard::new_cuts(&link, was.as_ref(), merged.as_ref()) {
                    let layer = after
                        .iter()
                        .chain(&before)
                        .find(|l| *l.file == *cut.mark.file)
                        .map_or("", |l| l.layer.as_str());
                    cuts.push(format!(
                        "appliance {}: it would lose {} ({}, layer {layer})",
                        a.id, cut.what, cut.mark
                    ));
                }
            }
            if render(&before, &a, tenant) != render(&after, &a, tenant) {
                touched.push(a.id.clone());
            }
        }
        let cuts = (!cuts.is_empty()).then(|| cuts.join("; "));
        if let Some(cuts) = &cuts
            && !force
        {
            return Err(FleetError::Conflict(format!(
                "this change would cut appliances off the hub (the link each one \
                 last reported): {}; fix the patch, or apply it with --force if the \
                 appliances reach the hub another way",
                cuts
            )));
        }
        // Nothing to merge with yet: the patch must be valid netplan on its own.
        if !any && let Some(tree) = netplan_tree(&new.file, &new.document) {
            cairn_netplan::schema::from_tree(&tree)
                .map_err(|e| FleetError::Invalid(e.to_string()))?;
        }
        if let Some(cuts) = &cuts {
            tracing::warn!(layer = %new.layer, %cuts, "netplan change forced past the guard rail");
        }
        Ok((touched, cuts))
    }

    /// The hub link appliance `id` reported in its latest heartbeat.
    async fn hub_link(&self, id: &ApplianceId) -> Result<Option<cairn_api::HubLink>, FleetError> {
        let status: Option<(u64, Status)> = self.get(&format!("{}{id}", keys::STATUS)).await?;
        Ok(status.and_then(|(_, s)| s.status.hub_link))
    }

    /// `GET /v1/appliances/{id}/config`: what its layers render to and what it did with it.
    pub async fn appliance_config(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ApplianceConfigView, FleetError> {
        let (_, a) = self.appliance_in_scope(caller, id).await?;
        let status: Option<(u64, Status)> = self.get(&format!("{}{}", keys::STATUS, a.id)).await?;
        let report = status.as_ref().and_then(|(_, s)| s.status.config.as_ref());
        Ok(ApplianceConfigView {
            appliance: a.id.clone(),
            state: ConfigStateView::new(a.desired.config.as_ref(), report),
            rendered: a.desired.config,
        })
    }
}
