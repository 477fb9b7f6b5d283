//! Load generator for the hub benchmark (BENCHMARKS.md, `hub/bench/run.sh`).
//!
//! Registers N simulated appliances (each its own key, CSR and client certificate), then has
//! each heartbeat every T over its own mTLS connection (kept alive and reused), for D
//! seconds. Prints one JSON object: registrations/min, heartbeats/s, p50/p99 latency, errors,
//! and the CPU and RSS of the processes given by `--pid` (the hubs, etcd).
//!
//! The heartbeat phase speaks HTTP/1.1 by hand over tokio-rustls with request bytes built
//! once per appliance: on a 2-core machine the load generator shares the CPU with the hub it
//! measures, and a full HTTP client (reqwest: a pool, JSON encoding and a multi-threaded
//! runtime per request) cost more than the hub itself. It understands exactly what the hub
//! answers to a heartbeat (a status line, headers with `content-length`, a JSON body).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_hub_client::tls::{self, Trust, client_config};
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
    /// Heartbeat threads, each a single-threaded runtime driving its share of the appliances.
    /// One leaves the other core to the hub on a 2-core machine.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Processes whose CPU and RSS to report, `name=pid` (repeat).
    #[arg(long = "pid", value_name = "NAME=PID")]
    pids: Vec<String>,
}

fn client(ca: &str, pool: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(&Trust::CaBundle(ca.into()), None)?.0)
        .pool_max_idle_per_host(pool)
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
    // Registrations reuse kept-alive connections: their cost is the hub's, not handshakes'.
    let anon = client(&ca, args.register_concurrency.max(1))?;
    // One enrollment token per registration slot: every registration bumps its token's use
    // counter, and one shared token would serialize them all on that record.
    let mut tokens = Vec::new();
    let per_token = args.appliances.div_ceil(args.register_concurrency.max(1));
    for _ in 0..args.register_concurrency.max(1) {
        let resp: Value = anon
            .post(format!("{}/v1/tokens", args.url[0]))
            .bearer_auth(&admin)
            .json(&json!({"site": "bench", "ttl_seconds": 3600, "max_uses": per_token}))
            .send()
            .await?
            .json()
            .await?;
        tokens.push(
            resp["token"]
                .as_str()
                .context("no token in answer")?
                .to_owned(),
        );
    }
    // Registration phase.
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.register_concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.appliances {
        let (sem, anon) = (sem.clone(), anon.clone());
        let token = tokens[i % tokens.len()].clone();
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

    // Heartbeat phase: every appliance its own kept-alive mTLS connection, all connected
    // before the clock starts (the handshakes are registration-time cost, not steady state).
    let pids: Vec<(String, u32)> = args
        .pids
        .iter()
        .filter_map(|p| {
            p.split_once('=')
                .and_then(|(n, pid)| Some((n.to_owned(), pid.parse().ok()?)))
        })
        .collect();
    let mut shards: Vec<Vec<(usize, String, String, String)>> =
        vec![Vec::new(); args.threads.max(1)];
    for (n, (url, cert, key)) in identities.into_iter().enumerate() {
        shards[n % args.threads.max(1)].push((n, url, cert, key));
    }
    let connected = Arc::new(std::sync::Barrier::new(shards.len() + 1));
    let go = Arc::new(std::sync::Barrier::new(shards.len() + 1));
    let mut threads = Vec::new();
    for shard in shards {
        let (ca, connected, go) = (ca.clone(), connected.clone(), go.clone());
        let (interval, duration, total) = (
            Duration::from_millis(args.interval_ms),
            Duration::from_secs(args.duration_s),
            args.appliances,
        );
        threads.push(std::thread::spawn(move || {
            beat_shard(shard, &ca, total, interval, duration, &connected, &go)
        }));
    }
    connected.wait();
    let before: Vec<(u64, u64)> = pids.iter().map(|(_, p)| proc_sample(*p)).collect();
    let self_before = proc_sample(std::process::id());
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let phase = Instant::now();
    go.wait();
    let (mut latencies, mut ok, mut errors) = (Vec::new(), 0u64, 0u64);
    for t in threads {
        let (lat, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("heartbeat thread panicked"))??;
        ok += lat.len() as u64;
        errors += e;
        latencies.extend(lat);
    }
    let secs = phase.elapsed().as_secs_f64();
    let self_after = proc_sample(std::process::id());
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
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
            "heartbeats_per_s": (ok as f64 / secs).round(),
            "target_heartbeats_per_s": (args.appliances as f64 * 1000.0 / args.interval_ms as f64).round(),
            "errors": errors,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "processes": procs,
            "loadgen_cpu_percent": ((self_after.0 - self_before.0) as f64 / ticks_per_s / secs * 100.0).round(),
            "loadavg_before": load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            "loadavg_after": load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        })
    );
    Ok(())
}

type Identity = (usize, String, String, String);

/// Runs one thread's appliances: connects them all, waits at `connected`, then at `go`,
/// then heartbeats for `duration`. Returns the latencies (µs) and the error count.
fn beat_shard(
    shard: Vec<Identity>,
    ca: &str,
    total: usize,
    interval: Duration,
    duration: Duration,
    connected: &std::sync::Barrier,
    go: &std::sync::Barrier,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let conns = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let mut set = tokio::task::JoinSet::new();
        for (n, url, cert, key) in shard {
            let identity = tls::Identity {
                certificate_pem: cert,
                key: tls::ClientKey::Pem(key),
            };
            let config = Arc::new(client_config(&Trust::CaBundle(ca.into()), Some(&identity))?.0);
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire().await?;
                let authority = url
                    .strip_prefix("https://")
                    .context("--url must be https://HOST:PORT")?
                    .trim_end_matches('/')
                    .to_owned();
                let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
                let tcp = tokio::net::TcpStream::connect(&authority).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                let body = br#"{"applied_generation":1,"status":{"agent_version":"bench","os_version":"bench","uptime_seconds":1,"counters":{"seq":1},"observed_at":"2026-01-01T00:00:00Z"}}"#;
                let mut request = format!(
                    "POST /v1/heartbeats HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                request.extend_from_slice(body);
                Ok::<_, anyhow::Error>((n, tls, request))
            });
        }
        let mut conns = Vec::new();
        while let Some(r) = set.join_next().await {
            conns.push(r??);
        }
        Ok::<_, anyhow::Error>(conns)
    });
    // Reach the barriers even on failure, or the other threads wait forever.
    connected.wait();
    go.wait();
    let conns = conns?;
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        let deadline = start + duration;
        let mut set = tokio::task::JoinSet::new();
        for (n, mut tls, request) in conns {
            // Spread the first beats over one interval so the load is even.
            let first = start + interval.mul_f64(n as f64 / total.max(1) as f64);
            set.spawn(async move {
                let mut lat = Vec::new();
                let mut buf = Vec::with_capacity(2048);
                let mut tick = tokio::time::interval_at(first, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    // Stop at the deadline, not at the first tick after it: waiting up to
                    // one more interval would stretch the measured window and understate
                    // the rate.
                    if tokio::time::timeout_at(deadline, tick.tick())
                        .await
                        .is_err()
                    {
                        return (lat, 0u64);
                    }
                    let t = Instant::now();
                    match exchange(&mut tls, &request, &mut buf).await {
                        Ok(200) => {
                            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32)
                        }
                        // An error answer or a broken connection ends this appliance.
                        Ok(_) | Err(_) => return (lat, 1),
                    }
                }
            });
        }
        let (mut lat, mut errors) = (Vec::new(), 0);
        while let Some(r) = set.join_next().await {
            let (l, e) = r?;
            lat.extend(l);
            errors += e;
        }
        Ok((lat, errors))
    })
}

/// Writes one request and reads one response; returns its status code.
async fn exchange(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(request).await?;
    tls.flush().await?;
    buf.clear();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head.split(' ').nth(1).context("no status line")?.parse()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .context("no content-length")?;
            while buf.len() < end + 4 + length {
                if tls.read_buf(buf).await? == 0 {
                    bail!("connection closed in the body");
                }
            }
            return Ok(status);
        }
        if tls.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}
