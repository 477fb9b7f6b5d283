//! Load generator for the hub benchmark (BENCHMARKS.md, `hub/bench/run.sh`).
//!
//! Registers N simulated appliances (each its own key, CSR and client certificate), then has
//! each heartbeat every T over its own mTLS connection (kept alive and reused), for D
//! seconds. Prints one JSON object: registrations/min, heartbeats/s, p50/p99 latency, errors,
//! and the CPU and RSS of the processes given by `--pid` (the hubs, etcd).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Hub URL (repeat to spread appliances over several hubs).
    #[arg(long, required = true)]
    url: Vec<String>,
    /// The hub CA (PEM).
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Admin token file.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Appliances to simulate.
    #[arg(long, default_value_t = 1000)]
    appliances: usize,
    /// Heartbeat interval per appliance, milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Heartbeat phase length, seconds.
    #[arg(long, default_value_t = 20)]
    duration_s: u64,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 16)]
    register_concurrency: usize,
    /// Processes whose CPU and RSS to report, `name=pid` (repeat).
    #[arg(long = "pid", value_name = "NAME=PID")]
    pids: Vec<String>,
}

fn client(ca: &str, identity: Option<(&str, &str)>) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(cairn_hub::client::tls_config(ca, identity)?)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// utime+stime in clock ticks, and VmRSS in KiB.
fn proc_sample(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ca = std::fs::read_to_string(&args.ca).context("reading --ca")?;
    let admin = std::fs::read_to_string(&args.token_file)
        .context("reading --token-file")?
        .trim()
        .to_owned();
    let anon = client(&ca, None)?;
    let resp: Value = anon
        .post(format!("{}/v1/tokens", args.url[0]))
        .bearer_auth(&admin)
        .json(&json!({"site": "bench", "ttl_seconds": 3600, "max_uses": args.appliances}))
        .send()
        .await?
        .json()
        .await?;
    let token = resp["token"]
        .as_str()
        .context("no token in answer")?
        .to_owned();

    // Registration phase.
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.register_concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.appliances {
        let (sem, anon, token) = (sem.clone(), anon.clone(), token.clone());
        let url = args.url[i % args.url.len()].clone();
        tasks.spawn(async move {
            let _permit = sem.acquire().await?;
            let key = KeyPair::generate()?;
            let host = format!("bench-{i}");
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, host.as_str());
            params.distinguished_name = dn;
            let body = json!({
                "token": token,
                "csr_pem": params.serialize_request(&key)?.pem()?,
                "hostname": host,
                "inventory": {"serial": format!("BENCH-{i}"), "nics": [{"mac": format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)}]},
                "agent_version": "bench",
            });
            // Many registrations on one token contend on its use counter; the hub answers
            // 503 "contended" and asks for a retry, as a real appliance would do.
            let mut resp = anon.post(format!("{url}/v1/registrations")).json(&body).send().await?;
            for attempt in 1..50u64 {
                if resp.status() != 503 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(attempt * 7 + (i as u64 % 13))).await;
                resp = anon.post(format!("{url}/v1/registrations")).json(&body).send().await?;
            }
            if resp.status() != 201 {
                bail!("registration {i}: {} {}", resp.status(), resp.text().await?);
            }
            let reg: Value = resp.json().await?;
            Ok::<_, anyhow::Error>((url, reg["certificate_pem"].as_str().unwrap_or_default().to_owned(), key.serialize_pem()))
        });
    }
    let mut identities = Vec::new();
    while let Some(r) = tasks.join_next().await {
        identities.push(r??);
    }
    let reg_secs = started.elapsed().as_secs_f64();

    // Heartbeat phase: one client (one kept-alive mTLS connection) per appliance.
    let pids: Vec<(String, u32)> = args
        .pids
        .iter()
        .filter_map(|p| {
            p.split_once('=')
                .and_then(|(n, pid)| Some((n.to_owned(), pid.parse().ok()?)))
        })
        .collect();
    let before: Vec<(u64, u64)> = pids.iter().map(|(_, p)| proc_sample(*p)).collect();
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let interval = Duration::from_millis(args.interval_ms);
    let mut hb = tokio::task::JoinSet::new();
    for (n, (url, cert, key)) in identities.into_iter().enumerate() {
        let http = client(&ca, Some((&cert, &key)))?;
        let (ok, errors) = (ok.clone(), errors.clone());
        // Spread the first beats over one interval so the load is even.
        let offset = interval.mul_f64(n as f64 / args.appliances.max(1) as f64);
        hb.spawn(async move {
            let mut lat = Vec::new();
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            while Instant::now() < deadline {
                tick.tick().await;
                seq += 1;
                let body = json!({"applied_generation": 1, "status": {"agent_version": "bench", "os_version": "bench",
                    "uptime_seconds": seq, "counters": {"seq": seq}, "observed_at": "2026-01-01T00:00:00Z"}});
                let t = Instant::now();
                match http.post(format!("{url}/v1/heartbeats")).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        });
    }
    let phase = Instant::now();
    let mut latencies = Vec::new();
    while let Some(r) = hb.join_next().await {
        latencies.extend(r?);
    }
    let secs = phase.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let procs: Vec<Value> = pids
        .iter()
        .zip(before)
        .map(|((name, pid), (t0, _))| {
            let (t1, rss) = proc_sample(*pid);
            json!({"name": name, "pid": pid, "cpu_percent": ((t1 - t0) as f64 / ticks_per_s / secs * 100.0).round(), "rss_mib": rss / 1024})
        })
        .collect();
    println!(
        "{}",
        json!({
            "appliances": args.appliances,
            "interval_ms": args.interval_ms,
            "hubs": args.url.len(),
            "registrations_per_min": (args.appliances as f64 / reg_secs * 60.0).round(),
            "heartbeats_per_s": (ok.load(Ordering::Relaxed) as f64 / secs).round(),
            "target_heartbeats_per_s": (args.appliances as f64 * 1000.0 / args.interval_ms as f64).round(),
            "errors": errors.load(Ordering::Relaxed),
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "processes": procs,
        })
    );
    Ok(())
}
