//! `interlock-sim`: runs seeds of the deterministic simulation and reports.
//!
//! ```text
//! interlock-sim --seeds 0..100 --jobs 2
//! interlock-sim --seed 17 --trace                 # replay one seed, print its trace
//! interlock-sim --seeds 0..200 --mutation holder-no-drift --stop-at-first
//! interlock-sim --seeds 0..200 --jobs 2 --lossy     # ±50 ms jitter, 2% loss
//! ```

use clap::Parser;
use interlock_simulation::world::{run, Mutation, Report, RunConfig};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Deterministic simulation of a three-region Interlock deployment.
///
/// Each seed runs the real node code and SDK under turmoil: 60 s of faults
/// (region isolation, controller-only partitions, one-way partitions,
/// crashes, leader kills) with drifting clocks, then healing, then a
/// liveness phase; every invariant is checked against the recorded history.
#[derive(Parser)]
#[command(name = "interlock-sim", version, about)]
struct Cli {
    /// Seeds to run, as START..END (END excluded).
    #[arg(long, default_value = "0..10", value_parser = parse_range, conflicts_with = "seed")]
    seeds: Range<u64>,
    /// Run exactly this seed.
    #[arg(long)]
    seed: Option<u64>,
    /// The scenario (only "faults" so far: faults, healing, liveness).
    #[arg(long, default_value = "faults")]
    scenario: String,
    /// Switch on a deliberate bug: skip-keepalive-confirmation,
    /// no-reset-on-new-term, holder-no-drift, no-witnesses,
    /// revoke-frees-at-once, trust-failed-demote, give-up-unfenced,
    /// rerun-runbook-effects or shared-entry-token (docs/simulation.md says
    /// what each breaks).
    #[arg(long)]
    mutation: Option<String>,
    /// Pin the lease TTL (seconds) instead of drawing it from the seed
    /// (3, 5, 10 or 20). A long TTL widens the clock-drift window that the
    /// holder-no-drift mutation needs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60))]
    lease_ttl_s: Option<u64>,
    /// A lossy WAN under the faults: ±50 ms of jitter on every cross-region
    /// message and 2% segment loss, modelled as TCP's retransmission stalls
    /// (docs/simulation.md, "A lossy WAN").
    #[arg(long)]
    lossy: bool,
    /// Seeds run in parallel (one thread each).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Stop at the first seed with a violation.
    #[arg(long)]
    stop_at_first: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print the trace of every run (use with --seed).
    #[arg(long)]
    trace: bool,
    /// Internal: run the one seed given with --seed and print its report as
    /// one JSON line (the supervisor runs every seed in a fresh process).
    #[arg(long, hide = true)]
    worker: bool,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text.split_once("..").ok_or_else(|| format!("{text:?} is not START..END"))?;
    let a: u64 = a.parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: u64 = b.parse().map_err(|_| format!("{b:?} is not a number"))?;
    if a >= b {
        return Err(format!("{text:?} is empty"));
    }
    Ok(a..b)
}

/// Runs `f` on a thread with a stack big enough for a simulated cluster.
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match std::thread::Builder::new().stack_size(64 << 20).spawn_scoped(s, f) {
        Ok(handle) => handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        Err(e) => panic!("cannot start the simulation thread: {e}"),
    })
}

/// Runs one seed in a fresh child process: process-wide state (tokio's task
/// ids, for one) would otherwise carry from one run into the next and make a
/// seed's trace depend on what ran before it.
fn run_in_process(config: &RunConfig) -> Result<Report, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new(exe);
    command.args(["--worker", "--seed", &config.seed.to_string()]).args(flags(config));
    let output = command.stderr(std::process::Stdio::inherit()).output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!("exit status {}", output.status));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("bad report: {e}"))
}

/// Failover times over every run: region cut off -> every shard it held
/// has a primary acting elsewhere (cuts that healed first are counted apart).
fn failover_stats(times: impl Iterator<Item = Option<u64>>) -> serde_json::Value {
    let times: Vec<Option<u64>> = times.collect();
    let healed_first = times.iter().filter(|t| t.is_none()).count();
    let mut times: Vec<u64> = times.into_iter().flatten().collect();
    times.sort_unstable();
    let at = |q: f64| times.get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    let within_5s = times.iter().filter(|t| **t <= 5_000).count();
    serde_json::json!({
        "completed": times.len(), "healed_first": healed_first,
        "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": times.last(), "within_5s": within_5s,
    })
}

/// Region-cut failover times: all, then split by whether the region held
/// the Raft leader (an election comes first) or not.
fn region_failover_stats(reports: &[Report]) -> serde_json::Value {
    let cuts = || {
        reports.iter().flat_map(|r| {
            let leader = r.failovers_leader_lost.iter().copied().chain(std::iter::repeat(false));
            r.failovers.iter().copied().zip(leader)
        })
    };
    let mut all = failover_stats(cuts().map(|(t, _)| t));
    all["leader_region"] = failover_stats(cuts().filter(|(_, l)| *l).map(|(t, _)| t));
    all["other_region"] = failover_stats(cuts().filter(|(_, l)| !*l).map(|(t, _)| t));
    all
}

/// The flags that give a run `config`, besides its seed.
fn flags(config: &RunConfig) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(m) = config.mutation {
        flags.extend(["--mutation".to_string(), m.name().to_string()]);
    }
    if let Some(ttl) = config.lease_ttl_s {
        flags.extend(["--lease-ttl-s".to_string(), ttl.to_string()]);
    }
    if config.lossy {
        flags.push("--lossy".to_string());
    }
    flags
}

fn reproduce(config: &RunConfig) -> String {
    let flags: String = flags(config).iter().map(|f| format!(" {f}")).collect();
    format!("cargo run -p interlock-simulation --bin interlock-sim -- --seed {}{flags} --trace", config.seed)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Node logs, for debugging one seed: INTERLOCK_SIM_LOG=interlock_server=debug.
    if let Ok(filter) = std::env::var("INTERLOCK_SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    if cli.scenario != "faults" {
        eprintln!("interlock-sim: unknown scenario {:?} (known: faults)", cli.scenario);
        return std::process::ExitCode::from(2);
    }
    let mutation = match cli.mutation.as_deref().map(|m| (m, Mutation::parse(m))) {
        None => None,
        Some((_, Some(m))) => Some(m),
        Some((name, None)) => {
            let known: Vec<&str> = Mutation::ALL.iter().map(|m| m.name()).collect();
            eprintln!("interlock-sim: unknown mutation {name:?} (known: {})", known.join(", "));
            return std::process::ExitCode::from(2);
        }
    };
    let seeds = match cli.seed {
        Some(s) => s..s + 1,
        None => cli.seeds.clone(),
    };
    let config = |seed: u64| RunConfig { seed, mutation, lease_ttl_s: cli.lease_ttl_s, lossy: cli.lossy };
    if cli.worker {
        // One seed in this fresh process: no state left by another run.
        let config = config(seeds.start);
        let report = on_big_stack(move || run(&config));
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return std::process::ExitCode::SUCCESS;
    }
    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let reports: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end || stop.load(Ordering::SeqCst) {
                    return;
                }
                let report = match run_in_process(&config(seed)) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("seed {seed}: the worker failed: {e}");
                        stop.store(true, Ordering::SeqCst);
                        return;
                    }
                };
                if cli.trace {
                    eprintln!("seed {seed} trace:\n{}", report.trace.join("\n"));
                }
                if !report.violations.is_empty() && cli.stop_at_first {
                    stop.store(true, Ordering::SeqCst);
                }
                if !cli.json {
                    let verdict = if report.violations.is_empty() { "ok" } else { "VIOLATION" };
                    let failovers: Vec<String> =
                        report.failovers.iter().map(|f| f.map_or("healed".to_string(), |ms| format!("{ms}ms"))).collect();
                    eprintln!(
                        "seed {seed}: {verdict} ({} terms, {} lease holdings, {} acknowledged writes, failovers [{}], digest {:016x})",
                        report.terms,
                        report.lease_handovers,
                        report.acked_writes,
                        failovers.join(" "),
                        report.digest
                    );
                    for v in &report.violations {
                        eprintln!("  {v}");
                    }
                }
                reports.lock().unwrap_or_else(|p| p.into_inner()).push(report);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(|p| p.into_inner());
    reports.sort_by_key(|r| r.seed);
    let failures: Vec<u64> = reports.iter().filter(|r| !r.violations.is_empty()).map(|r| r.seed).collect();
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let simulated_s: f64 = reports.iter().map(|r| r.simulated_ms as f64 / 1000.0).sum();
    let failover = region_failover_stats(&reports);
    let false_declarations = reports
        .iter()
        .flat_map(|r| &r.violations)
        .filter(|v| v.starts_with(interlock_simulation::invariants::FALSE_DECLARATION))
        .count();
    let dead_primary = failover_stats(reports.iter().flat_map(|r| r.dead_primary_failovers.iter().copied()));
    if cli.json {
        let value = serde_json::json!({
            "scenario": cli.scenario,
            "mutation": mutation.map(|m| m.name()),
            "lossy": cli.lossy,
            "seeds": format!("{}..{}", seeds.start, seeds.end),
            "runs": reports.len(),
            "violations": violations,
            "failures": failures,
            "simulated_seconds": simulated_s,
            "leader_terms": reports.iter().map(|r| r.terms).sum::<usize>(),
            "lease_holdings": reports.iter().map(|r| r.lease_handovers).sum::<usize>(),
            "acknowledged_writes": reports.iter().map(|r| r.acked_writes).sum::<usize>(),
            "region_loss_declarations": reports.iter().map(|r| r.lost_declared).sum::<usize>(),
            "false_declarations": false_declarations,
            "failover_ms": failover,
            "dead_primary_failover_ms": dead_primary,
            "digests": reports.iter().map(|r| format!("{:016x}", r.digest)).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        println!(
            "{} runs ({:.0} simulated seconds): {} violations in {} seeds",
            reports.len(),
            simulated_s,
            violations,
            failures.len()
        );
        println!("region cut off -> its shards' primaries acting elsewhere: {failover}");
        println!("primary's database dead, region alive -> primaries acting elsewhere: {dead_primary}");
        for seed in &failures {
            println!("  reproduce: {}", reproduce(&config(*seed)));
        }
    }
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
