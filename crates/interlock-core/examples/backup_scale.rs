//! The backup catalogue at scale (issue "Backups proven restorable", item 7),
//! on the core state machine alone — no network, no clock: simulated time.
//!
//! 10 000 shards in three regions, each reporting one backup a day (spread
//! over the day, taken in the region of its primary); the leader's
//! scheduler (`interlock_core::backup::schedule::plan`) runs every `step`
//! of simulated time and every restore test takes `restore` to pass. It
//! reports the longest wait from a report to its verification (fairness:
//! every shard within `verify_within`), the catalogue's size per shard and
//! the whole state's encoded size (memory stays bounded), and the time one
//! `plan` takes.
//!
//! ```text
//! cargo run --release -p interlock-core --example backup_scale -- 10000 3
//! ```

use interlock_core::model::{
    BackupReport, Command, RegionSpec, ReplicaSpec, Request, ServiceSpec, ShardSpec, Topology,
};
use interlock_core::model::{DataCheck, RestoreResult};
use interlock_core::{backup, State};
use std::collections::BTreeMap;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const DAY_MS: u64 = 86_400_000;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Scale {
    pub shards: usize,
    pub days: u64,
    pub backups_reported: u64,
    pub tests_passed: u64,
    /// Longest and 99th-percentile wait from a report to its verification, ms.
    pub max_wait_ms: u64,
    pub p99_wait_ms: u64,
    /// Backups never verified by the end (reported in the last `verify_within`).
    pub unverified_at_end: usize,
    /// Most backups any shard's catalogue held at any point.
    pub max_backups_per_shard: usize,
    /// The state's encoded size at the end, and per shard.
    pub state_bytes: usize,
    /// Wall time of `plan` calls (median, max), microseconds.
    pub plan_us: (u128, u128),
}

/// Runs `days` of simulated time for `shards` shards.
pub fn run(shards: usize, days: u64, step_ms: u64, restore_ms: u64, max_restores_per_region: u32) -> Scale {
    let mut topology = Topology {
        regions: REGIONS.iter().map(|r| RegionSpec { id: r.to_string(), capacity: 100 }).collect(),
        services: vec![ServiceSpec {
            name: "orders".into(),
            shards: (0..shards)
                .map(|k| ShardSpec {
                    id: k.to_string(),
                    max_lag_on_failover: 0,
                    cooldown_seconds: 300,
                    replicas: REGIONS
                        .iter()
                        .map(|r| ReplicaSpec {
                            id: format!("o{k}-{r}"),
                            region: r.to_string(),
                            priority: 100,
                            address: String::new(),
                        })
                        .collect(),
                    backup: None,
                })
                .collect(),
        }],
        ..Topology::default()
    };
    topology.backups.max_restores_per_region = max_restores_per_region;
    let mut state = State::default();
    let mut index = 0u64;
    let mut now = 1_767_225_600_000u64; // 2026-01-01
    let mut apply = |state: &mut State, now: u64, command: Command| {
        index += 1;
        state.apply(index, &Request::system(now, command))
    };
    apply(&mut state, now, Command::ApplyTopology { topology });
    for r in REGIONS {
        let replicas = (0..shards).map(|k| format!("o{k}-{r}")).collect();
        apply(&mut state, now, Command::RegisterController { id: format!("c-{r}"), region: r.into(), replicas });
    }
    let start = now;
    let end = start + days * DAY_MS;
    let mut reported_at: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut waits = Vec::new();
    let (mut backups_reported, mut tests_passed, mut max_backups) = (0u64, 0u64, 0usize);
    let mut plan_us = Vec::new();
    let mut next_report: Vec<u64> = (0..shards as u64).map(|k| start + k * DAY_MS / shards as u64).collect();
    while now < end {
        now += step_ms;
        for (k, due) in next_report.iter_mut().enumerate() {
            if *due > now {
                continue;
            }
            let region = REGIONS[k % 3];
            let id = format!("b-{due}");
            let report = BackupReport {
                id: id.clone(),
                source_region: region.into(),
                taken_at_unix_ms: *due,
                size_bytes: 1 << 30,
                checksum: format!("sha256:{}", "ab".repeat(32)),
                location: format!("s3://backups/orders/{k}/{id}"),
            };
            let shard = format!("orders/{k}");
            apply(
                &mut state,
                now,
                Command::ReportBackup { controller: format!("c-{region}"), shard: shard.clone(), backup: report },
            );
            reported_at.insert((shard, id), now);
            backups_reported += 1;
            *due += DAY_MS;
        }
        // Tests that have run for `restore_ms` pass.
        let done: Vec<(u64, String)> = state
            .restore_jobs
            .iter()
            .filter(|(job, j)| {
                let started = state.backups[&j.shard]
                    .backups
                    .iter()
                    .find(|b| b.id == j.backup)
                    .and_then(|b| b.tests.iter().find(|t| t.job == **job))
                    .map(|t| t.started_at_unix_ms);
                started.is_some_and(|s| s + restore_ms <= now)
            })
            .map(|(job, j)| (*job, j.controller.clone()))
            .collect();
        for (job, controller) in done {
            let (shard, backup) =
                state.restore_jobs.get(&job).map(|j| (j.shard.clone(), j.backup.clone())).unwrap_or_default();
            let result = RestoreResult {
                passed: true,
                reason: String::new(),
                duration_ms: restore_ms,
                checksum_match: true,
                data_check: Some(DataCheck { rows: 1, newest_sequence: 1 }),
            };
            apply(&mut state, now, Command::FinishRestoreTest { job, controller, result });
            if let Some(at) = reported_at.remove(&(shard, backup)) {
                waits.push(now - at);
                tests_passed += 1;
            }
        }
        // The benchmark times the scheduler; the core itself reads no clock.
        #[allow(clippy::disallowed_methods)]
        let timer = std::time::Instant::now();
        let commands = backup::schedule::plan(&state, now, |_| true);
        plan_us.push(timer.elapsed().as_micros());
        for command in commands {
            apply(&mut state, now, command);
        }
        if now % (3_600_000) < step_ms {
            max_backups = max_backups.max(state.backups.values().map(|c| c.backups.len()).max().unwrap_or(0));
        }
    }
    // Backups reported within the last day may still wait; any older one is unfair.
    let verify_within_ms = state.topology.backups.policy.verify_within_seconds * 1000;
    let unverified_at_end = reported_at.values().filter(|at| end - **at > verify_within_ms).count();
    waits.sort_unstable();
    plan_us.sort_unstable();
    Scale {
        shards,
        days,
        backups_reported,
        tests_passed,
        max_wait_ms: waits.last().copied().unwrap_or(0),
        p99_wait_ms: waits.get(waits.len() * 99 / 100).copied().unwrap_or(0),
        unverified_at_end,
        max_backups_per_shard: max_backups,
        state_bytes: interlock_core::codec::encode(&state).map_or(0, |b| b.len()),
        plan_us: (plan_us.get(plan_us.len() / 2).copied().unwrap_or(0), plan_us.last().copied().unwrap_or(0)),
    }
}

#[allow(dead_code)]
fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let shards = args.first().copied().unwrap_or(10_000) as usize;
    let days = args.get(1).copied().unwrap_or(3);
    let (step_ms, restore_ms, k) = (10_000, 60_000, 4);
    let s = run(shards, days, step_ms, restore_ms, k);
    println!("shards {} days {} (step {step_ms} ms, each restore {restore_ms} ms, {k} per region)", s.shards, s.days);
    println!("backups reported {}, restore tests passed {}", s.backups_reported, s.tests_passed);
    println!(
        "wait report -> verified: p99 {:.1} min, max {:.1} min; older than verify_within and unverified: {}",
        s.p99_wait_ms as f64 / 60_000.0,
        s.max_wait_ms as f64 / 60_000.0,
        s.unverified_at_end
    );
    println!(
        "catalogue: at most {} backups per shard; state encoded {:.1} MiB ({} bytes per shard)",
        s.max_backups_per_shard,
        s.state_bytes as f64 / (1 << 20) as f64,
        s.state_bytes / s.shards.max(1)
    );
    println!("plan(): median {} us, max {} us", s.plan_us.0, s.plan_us.1);
}
