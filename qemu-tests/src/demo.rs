//! `cairn-lab demo`: the whole rehearsal in one command. Builds the lab with its hub and
//! boot server (and the minimal image), runs `cairn rack provision` over every server's BMC
//! inside the lab namespace, shows the fleet as the hub sees it, prints a summary with
//! timings, and keeps supervising the lab until `cairn-lab down` (or tears it down at once
//! with `--down-after`).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_api::cli::Exit;

use crate::lab::services::{self, Services};
use crate::lab::supervisor::{Lab, UpOptions};

/// Runs the demo; the exit status is the provisioning's.
pub async fn run(opts: UpOptions, down_after: bool) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let servers = opts.servers;
    say(&format!(
        "cairn-lab up --servers {servers}: lab network, {servers} QEMU servers with ipmi_sim BMCs, the minimal image, a hub and a boot server"
    ));
    let lab = tokio::task::spawn_blocking(move || Lab::build(&opts)).await??;
    let up_seconds = started.elapsed().as_secs_f64();
    print!("{}", lab.describe());
    let layout = lab.layout().clone();
    let manifest = lab.manifest().clone();
    let info = manifest
        .services
        .clone()
        .context("the demo lab runs no services")?;
    let serving = tokio::spawn(lab.serve());

    say("the generated inventory");
    print!(
        "{}",
        std::fs::read_to_string(layout.rack_yaml()).context("reading rack.yaml")?
    );

    say(&format!(
        "cairn rack provision --parallel {servers} (inside the lab namespace, where the BMCs are)"
    ));
    let provision_started = Instant::now();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &manifest.netns])
        .arg(services::binary("cairn"))
        .args(["rack", "provision"])
        .arg(layout.rack_yaml())
        .arg("--artifacts")
        .arg(&info.artifacts)
        .args([
            "--hub",
            &info.hub_url,
            "--boot-server",
            &info.boot_server_url,
        ])
        .arg("--token-file")
        .arg(&info.admin_token)
        .arg("--hub-ca")
        .arg(&info.hub_ca)
        .args(["--parallel", &servers.to_string()])
        .args(["--install-timeout", "300", "--register-timeout", "600"])
        // The lab's Redfish BMCs (sushy-tools) speak plain HTTP.
        .arg("--allow-insecure-redfish");
    // Redfish servers boot their own seeded ISOs, with tokens minted for the lab's site.
    cmd.args(["--site", "lab", "--allow-wipe"]);
    let status = tokio::task::spawn_blocking(move || cmd.status())
        .await?
        .context("running cairn rack provision")?;
    let provision_seconds = provision_started.elapsed().as_secs_f64();

    // Registration comes before the first heartbeat: give each appliance a moment to report
    // its version and slot so the fleet view shows them; then show the fleet.
    let netns = manifest.netns.clone();
    let hub = info.clone();
    let view = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let reported = services::hub_view(&netns, &hub)
                .is_ok_and(|view| view.values().all(|a| a.status.is_some()));
            if reported {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        say("the fleet, as the hub sees it (cairn hub appliances list)");
        let _ = Services::hub_cli(&netns, &hub)
            .args(["appliances", "list"])
            .status();
        services::hub_view(&netns, &hub)
    })
    .await?;
    let registered = manifest
        .servers
        .iter()
        .filter(|s| view.as_ref().is_ok_and(|v| v.contains_key(&s.name)))
        .count();

    say("summary");
    if let Some(build) = info.image_build_seconds {
        println!(
            "{:<46} {build:>7.1} s",
            "image build (cairn image build, minimal)"
        );
    }
    println!(
        "{:<46} {:>7.1} s",
        "hub + boot server", info.services_seconds
    );
    println!(
        "{:<46} {up_seconds:>7.1} s",
        "lab up in all (incl. the above)"
    );
    println!(
        "{:<46} {provision_seconds:>7.1} s",
        format!("provision {servers} servers in parallel")
    );
    println!(
        "{:<46} {:>7.1} s",
        "demo wall time",
        started.elapsed().as_secs_f64()
    );
    println!(
        "provisioned: {} ({registered}/{servers} registered with the hub)",
        if status.success() {
            "all"
        } else {
            "NOT all (see the table above)"
        },
    );
    let exit = if status.success() && registered == servers {
        Exit::Success
    } else {
        Exit::Failed
    };
    let dir = layout.dir().display().to_string();
    if down_after {
        say("cairn-lab down");
        let socket = layout.socket();
        tokio::task::spawn_blocking(move || {
            crate::lab::control::call(
                &socket,
                &crate::lab::control::Request::Down,
                Duration::from_secs(120),
            )
        })
        .await??;
    } else {
        say("the lab keeps running for exploration");
        println!("  cairn-lab status --dir {dir}");
        println!(
            "  cairn-lab exec --dir {dir} -- cairn hub --config {} appliances list",
            info.hub_login.display()
        );
        println!("  cairn-lab down --dir {dir}      (or Ctrl-C here)");
    }
    serving.await??;
    Ok(exit)
}

fn say(text: &str) {
    println!("\n== {text}");
}
