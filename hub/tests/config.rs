//! Configuration layers on a real hub, on the embedded store and on a real etcd: layers
//! merge in order into each appliance's desired state; history, diff and rollback; a bad
//! netplan patch is refused naming its line and changes nothing; another tenant's token
//! is refused; the appliance view shows drift until the appliance reports the generation.

mod common;

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;

use common::{Device, Hub, HubClients, Operator, heartbeat, post};
use serde_json::{Value, json};

async fn apply(op: &Operator, file: &str, document: &str, dry_run: bool) -> (u16, Value) {
    op.post(
        "/v1/config/layers",
        json!({"file": file, "document": document, "dry_run": dry_run}),
    )
    .await
}

async fn applied(op: &Operator, file: &str, document: &str) -> Value {
    let (s, body) = apply(op, file, document, false).await;
    assert_eq!(s, 200, "{file}: {body}");
    body
}

/// A heartbeat reporting what the node did with config generation `generation`.
fn reporting(generation: u64) -> Value {
    let mut hb = heartbeat(1, None);
    hb["status"]["config"] = json!({"generation": generation, "outcome": {"result": "applied"},
        "last_good_generation": generation});
    hb
}

const TENANT: &str = "\
layer: tenant:acme
settings:
  dns: [192.0.2.1]
  ntp: [ntp.acme.example]
  drain_command: [/usr/bin/true]
";

const SITE: &str = "\
layer: site:berlin
settings:
  dns: [192.0.2.2]
  heartbeat_interval_seconds: 7
";

const GROUP: &str = "\
layer: group:racked
tenant: acme
selector: rack=r1
settings:
  ntp: [ntp.rack.example]
";

const NETPLAN: &str = "\
layer: appliance:{ID}
netplan:
  network:
    version: 2
    ethernets:
      eth0:
        dhcp4: true
        mtu: 9000
";

async fn layers_merge_validate_and_roll_back(hub: &Hub) {
    let admin = hub.admin();
    for (tenant, site) in [("acme", "berlin"), ("globex", "tokyo")] {
        let (s, body) = admin
            .post("/v1/tenants", json!({"name": tenant, "sites": [site]}))
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let berlin = Device::new("edge-b1", "CFG-B1", &["52:54:00:20:00:01"]);
    let token = admin.enrollment_token("berlin", 1).await;
    let reg = berlin.register(hub, &token).await;
    let id = reg.appliance_id.to_string();
    let tokyo = Device::new("edge-t1", "CFG-T1", &["52:54:00:20:00:02"]);
    let token = admin.enrollment_token("tokyo", 1).await;
    let tokyo_reg = tokyo.register(hub, &token).await;
    let beat = |device: &Device, reg, body: Value| {
        let http = device.client(hub, reg);
        let url = format!("{}/v1/heartbeats", hub.url);
        async move {
            let (s, answer) = post(&http, url, &body).await;
            assert_eq!(s, 200, "{answer}");
            answer["desired"].clone()
        }
    };

    // Four layers, applied out of order: they merge tenant, site, group, appliance.
    let netplan = NETPLAN.replace("{ID}", &id);
    for (file, doc) in [
        ("appliance.yaml", netplan.as_str()),
        ("group.yaml", GROUP),
        ("site.yaml", SITE),
        ("tenant.yaml", TENANT),
    ] {
        let change = applied(&admin, file, doc).await;
        assert_eq!(change["layer"]["generation"], 1, "{change}");
        assert_eq!(change["appliances"], 1, "{file} touches edge-b1: {change}");
    }
    let desired = beat(&berlin, &reg, heartbeat(1, None)).await;
    let config = &desired["config"];
    assert_eq!(
        config["layers"],
        json!([
            "tenant:acme@1",
            "site:berlin@1",
            "group:racked@1",
            &format!("appliance:{id}@1")
        ])
    );
    assert_eq!(
        config["settings"]["dns"],
        json!(["192.0.2.2"]),
        "site over tenant"
    );
    assert_eq!(
        config["settings"]["ntp"],
        json!(["ntp.rack.example"]),
        "group over tenant"
    );
    assert_eq!(
        config["settings"]["drain_command"],
        json!(["/usr/bin/true"])
    );
    assert_eq!(
        config["netplan"]["network"]["ethernets"]["eth0"]["mtu"],
        9000
    );
    assert_eq!(
        desired["heartbeat_interval_seconds"], 7,
        "the site's interval"
    );
    let generation = config["generation"].as_u64().unwrap();
    let other = beat(&tokyo, &tokyo_reg, heartbeat(1, None)).await;
    assert!(other.get("config").is_none(), "no layer of globex: {other}");

    // Drift until the appliance reports the generation applied.
    let (_, view) = admin.get(&format!("/v1/appliances/{id}")).await;
    assert_eq!(view["config"]["drift"], true, "{view}");
    beat(&berlin, &reg, reporting(generation)).await;
    let (_, shown) = admin.get(&format!("/v1/appliances/{id}/config")).await;
    assert_eq!(shown["state"]["drift"], false, "{shown}");
    assert_eq!(shown["state"]["applied_generation"], generation);
    assert_eq!(shown["state"]["last_good_generation"], generation);

    // A diff stores nothing; the apply stores generation 2 with its author.
    let faster = SITE.replace(
        "heartbeat_interval_seconds: 7",
        "heartbeat_interval_seconds: 3",
    );
    let (s, diff) = apply(&admin, "site.yaml", &faster, true).await;
    assert_eq!(s, 200, "{diff}");
    assert_eq!(
        diff["diff"],
        json!([{"path": "settings.heartbeat_interval_seconds", "old": 7, "new": 3}])
    );
    assert_eq!(
        (diff["dry_run"].clone(), diff["changed"].clone()),
        (json!(true), json!(true))
    );
    let (_, history) = admin.get("/v1/config/layers/site:berlin/history").await;
    assert_eq!(
        history.as_array().unwrap().len(),
        1,
        "a dry run stores nothing"
    );
    applied(&admin, "site.yaml", &faster).await;
    let desired = beat(&berlin, &reg, reporting(generation)).await;
    assert_eq!(desired["heartbeat_interval_seconds"], 3);
    assert_eq!(desired["config"]["generation"], generation + 1);
    let (_, view) = admin.get(&format!("/v1/appliances/{id}")).await;
    assert_eq!(
        view["config"]["drift"],
        true,
        "generation {} not reported yet",
        generation + 1
    );

    // Rollback: generation 1's document as generation 3.
    let (s, rolled) = admin
        .post("/v1/config/layers/site:berlin/rollback", json!({"to": 1}))
        .await;
    assert_eq!(s, 200, "{rolled}");
    assert_eq!(rolled["layer"]["generation"], 3);
    assert_eq!(rolled["layer"]["document"], SITE);
    let (_, history) = admin.get("/v1/config/layers/site:berlin/history").await;
    let gens: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["generation"].as_u64().unwrap())
        .collect();
    assert_eq!(gens, [1, 2, 3]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["author"] == "operator:admin"),
        "{history}"
    );
    let desired = beat(&berlin, &reg, reporting(generation)).await;
    assert_eq!(desired["heartbeat_interval_seconds"], 7);

    // Refused with file and line, by the netplan parser and the settings schema; nothing
    // changes.
    let broken = netplan.replace("        mtu: 9000", "        mtu: 9000\n       bad: [");
    let (s, body) = apply(&admin, "broken.yaml", &broken, false).await;
    assert_eq!(s, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("broken.yaml:"),
        "names the file: {message}"
    );
    let unknown = netplan.replace("mtu: 9000", "mtu: 9000\n        speed: 10");
    let (s, body) = apply(&admin, "unknown.yaml", &unknown, false).await;
    assert_eq!(s, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("unknown.yaml:9:") && message.contains("speed"),
        "the key and its line: {message}"
    );
    let typo = SITE.replace("dns:", "dnss:");
    let (s, body) = apply(&admin, "typo.yaml", &typo, false).await;
    assert_eq!(s, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("dnss") && message.contains("line 3"),
        "{message}"
    );
    let (_, layer) = admin
        .get(&format!("/v1/config/layers/appliance:{id}"))
        .await;
    assert_eq!(layer["generation"], 1, "refusals change nothing: {layer}");
    let (_, layer) = admin.get("/v1/config/layers/site:berlin").await;
    assert_eq!(layer["generation"], 3);

    // Another tenant's operators neither read nor write acme's layers.
    let (s, body) = admin
        .post(
            "/v1/operator-tokens",
            json!({"name": "globex-ops", "role": "operator", "tenant": "globex"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let globex = hub.operator(body["token"].as_str().unwrap());
    let (s, _) = globex.get("/v1/config/layers/site:berlin").await;
    assert_eq!(s, 404);
    let (s, _) = globex.get("/v1/config/layers/site:berlin/history").await;
    assert_eq!(s, 404);
    let (s, _) = apply(&globex, "site.yaml", &faster, false).await;
    assert_eq!(s, 403);
    let (s, _) = apply(&globex, "tenant.yaml", TENANT, false).await;
    assert_eq!(s, 403);
    let (s, _) = globex
        .post("/v1/config/layers/site:berlin/rollback", json!({"to": 2}))
        .await;
    assert_eq!(s, 404);
    let (s, _) = globex.get(&format!("/v1/appliances/{id}/config")).await;
    assert_eq!(s, 404);
    let (_, list) = globex.get("/v1/config/layers").await;
    assert_eq!(list, json!([]), "globex sees none of acme's layers");
    let own = applied(
        &globex,
        "tokyo.yaml",
        "layer: site:tokyo\nsettings:\n  ntp: [ntp.globex.example]\n",
    )
    .await;
    assert_eq!(own["appliances"], 1, "{own}");
    let (_, layer) = admin.get("/v1/config/layers/site:berlin").await;
    assert_eq!(layer["generation"], 3, "acme's layer untouched");
}

#[tokio::test]
async fn layers_on_the_embedded_store() {
    let hub = common::start_hub(&[]);
    layers_merge_validate_and_roll_back(&hub).await;
}

#[tokio::test]
async fn layers_on_etcd() {
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let hub = Hub::builder(common::hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&["--etcd-endpoints", &endpoints])
        .start();
    layers_merge_validate_and_roll_back(&hub).await;
}

/// A heartbeat reporting the hub link `eth0`, 192.0.2.10 via 192.0.2.1.
fn linked() -> Value {
    let mut hb = heartbeat(1, None);
    hb["status"]["hub_link"] =
        json!({"interface": "eth0", "address": "192.0.2.10", "gateway": "192.0.2.1"});
    hb
}

const UPLINK: &str = "\
layer: site:guarded
netplan:
  network:
    version: 2
    ethernets:
      eth0:
        addresses: [192.0.2.10/24]
        routes:
          - {to: default, via: 192.0.2.1}
";

/// Guard rail: a patch that drops the address or the route an appliance reported for its
/// hub link is refused naming the appliance, what it would lose and the layer line, and
/// stores nothing; `force` applies it; a change that keeps the link passes.
#[tokio::test]
async fn a_change_cutting_the_hub_link_is_refused_unless_forced() {
    let hub = common::start_hub(&[]);
    let admin = hub.admin();
    let token = admin.enrollment_token("guarded", 2).await;
    let edge = Device::new("edge-g1", "CFG-G1", &["52:54:00:20:00:04"]);
    let reg = edge.register(&hub, &token).await;
    let id = reg.appliance_id.to_string();
    let http = edge.client(&hub, &reg);
    let (s, body) = post(&http, format!("{}/v1/heartbeats", hub.url), &linked()).await;
    assert_eq!(s, 200, "{body}");
    // One that reported no link is not judged.
    let quiet = Device::new("edge-g2", "CFG-G2", &["52:54:00:20:00:05"]);
    quiet.register(&hub, &token).await;
    applied(&admin, "uplink.yaml", UPLINK).await;

    let readdressed = UPLINK.replace("192.0.2.10/24", "192.0.2.77/24");
    let (s, body) = apply(&admin, "readdress.yaml", &readdressed, false).await;
    assert_eq!(s, 409, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("appliance {id}"))
            && message.contains("address 192.0.2.10 of eth0")
            && message.contains("readdress.yaml:7:")
            && message.contains("layer site:guarded")
            && message.contains("--force"),
        "names the appliance, the address, the line and the way out: {message}"
    );
    let rerouted = UPLINK.replace("via: 192.0.2.1", "via: 192.0.2.254");
    let (s, body) = apply(&admin, "reroute.yaml", &rerouted, true).await;
    assert_eq!(s, 409, "a diff shows the refusal too: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the route via 192.0.2.1 on eth0 (reroute.yaml:9:"),
        "{body}"
    );
    let (_, layer) = admin.get("/v1/config/layers/site:guarded").await;
    assert_eq!(layer["generation"], 1, "refusals store nothing: {layer}");

    // A change that keeps the link passes; a forced cut is stored and rendered.
    let wider = UPLINK.replace("eth0:\n", "eth0:\n        mtu: 9000\n");
    assert_eq!(
        applied(&admin, "uplink.yaml", &wider).await["appliances"],
        2
    );
    let (s, body) = admin
        .post(
            "/v1/config/layers",
            json!({"file": "readdress.yaml", "document": readdressed, "force": true}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["layer"]["generation"], 3);
    let (_, shown) = admin.get(&format!("/v1/appliances/{id}/config")).await;
    assert_eq!(
        shown["rendered"]["netplan"]["network"]["ethernets"]["eth0"]["addresses"],
        json!(["192.0.2.77/24"]),
        "{shown}"
    );
    let (_, audit) = admin.get("/v1/audit?since=2000-01-01T00:00:00Z").await;
    let results: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.apply")
        .filter_map(|e| e["result"].as_str())
        .collect();
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("refused: this change would cut") && r.contains(&id)),
        "the refusal is audited: {results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("ok, forced past the guard rail") && r.contains(&id)),
        "the forced cut is audited with what it cut: {results:?}"
    );
}

/// `cairn hub config apply/diff/history/rollback/show` against a real hub.
#[tokio::test]
async fn the_operator_cli_applies_diffs_and_rolls_back_layers() {
    use cairn_api::cli::Exit;
    let hub = common::start_hub(&[]);
    let admin = hub.admin();
    let device = Device::new("edge-c1", "CFG-C1", &["52:54:00:20:00:03"]);
    let reg = device
        .register(&hub, &admin.enrollment_token("lab", 1).await)
        .await;
    let id = reg.appliance_id.to_string();
    let cli = common::OperatorCli::login(&hub).await;

    let file = cli.dir().join("lab.yaml");
    let file = file.to_str().unwrap();
    let layer_gen = || async {
        let (s, l) = admin.get("/v1/config/layers/site:lab").await;
        (s, l["generation"].clone())
    };
    for interval in [5, 9] {
        std::fs::write(
            file,
            format!("layer: site:lab\nsettings:\n  heartbeat_interval_seconds: {interval}\n"),
        )
        .unwrap();
        assert_eq!(
            cli.run(&["config", "diff", "-f", file]).await.unwrap(),
            Exit::Success
        );
        assert_eq!(
            cli.run(&["config", "apply", "-f", file]).await.unwrap(),
            Exit::Success
        );
    }
    assert_eq!(layer_gen().await, (200, json!(2)), "diff stores nothing");
    assert_eq!(
        cli.run(&["config", "history", "site:lab"]).await.unwrap(),
        Exit::Success
    );
    assert_eq!(
        cli.run(&["config", "rollback", "site:lab", "--to", "1"])
            .await
            .unwrap(),
        Exit::Success
    );
    assert_eq!(layer_gen().await, (200, json!(3)));
    assert_eq!(
        cli.run(&["config", "show", "--appliance", &id])
            .await
            .unwrap(),
        Exit::Success
    );
    let (_, shown) = admin.get(&format!("/v1/appliances/{id}/config")).await;
    assert_eq!(
        shown["rendered"]["settings"]["heartbeat_interval_seconds"], 5,
        "{shown}"
    );

    // A malformed file is the hub's refusal: the command fails, nothing changes.
    std::fs::write(
        file,
        "layer: site:lab\nsettings:\n  heartbeat_interval_seconds: [\n",
    )
    .unwrap();
    assert_eq!(
        cli.run(&["config", "apply", "-f", file]).await.unwrap(),
        Exit::Failed
    );
    assert_eq!(layer_gen().await, (200, json!(3)));
    assert_eq!(
        cli.run(&["config", "rollback", "site:lab", "--to", "7"])
            .await
            .unwrap(),
        Exit::Failed,
        "no generation 7"
    );

    // A patch cutting the link the appliance reported fails without --force, passes with.
    let http = device.client(&hub, &reg);
    let (s, body) = post(&http, format!("{}/v1/heartbeats", hub.url), &linked()).await;
    assert_eq!(s, 200, "{body}");
    std::fs::write(
        file,
        "layer: site:lab\nnetplan:\n  network:\n    ethernets:\n      eth0:\n        addresses: [192.0.2.99/24]\n",
    )
    .unwrap();
    assert_eq!(
        cli.run(&["config", "apply", "-f", file]).await.unwrap(),
        Exit::Failed
    );
    assert_eq!(layer_gen().await, (200, json!(3)));
    assert_eq!(
        cli.run(&["config", "apply", "-f", file, "--force"])
            .await
            .unwrap(),
        Exit::Success
    );
    assert_eq!(layer_gen().await, (200, json!(4)));
}
