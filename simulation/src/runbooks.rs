//! The simulation's runbook operator (SPEC §7): from the start of the
//! faults it keeps a drill of a region's loss (to near the end) and a live
//! drain-and-undrain of it (until 10 s before the faults end) running back
//! to back, retrying every STUCK step, so that executions live through partitions, crashes and leader
//! changes. The observer records the events and the executions it reads
//! last; `invariants/runbooks.rs` checks them.

use crate::clock::true_ms;
use crate::history::Shared;
use crate::world::REGIONS;
use interlock_client::{Client, ControlExecutionRequest, ExecutionOp, RunMode, RunRunbookRequest};
use std::time::Duration;

/// A drill of losing `region`: every primary failed over out of it and its
/// traffic drained, in the drill copy.
pub const DRILL: &str = "name: sim-region-loss
params:
  region: {type: region}
groups:
  - name: lose
    steps:
      - name: fail-over
        failover: {away_from_region: '${region}'}
        timeout_seconds: 15
      - name: drain
        drain: {region: '${region}', step_bps: 5000, interval_seconds: 1}
        timeout_seconds: 15
  - name: check
    steps:
      - name: empty
        wait_for: {no_primaries_in: {region: '${region}'}}
        timeout_seconds: 10
";

/// A live drain of `region` and its undrain (the operator drains too: a
/// refused step fails the run, whose compensation undrains).
pub const LIVE: &str = "name: sim-drain
params:
  region: {type: region}
groups:
  - name: drain
    steps:
      - name: drain
        drain: {region: '${region}', step_bps: 5000, interval_seconds: 1}
        timeout_seconds: 10
  - name: drained
    steps:
      - name: drained
        wait_for: {region_state: {region: '${region}', state: drained}}
        timeout_seconds: 5
  - name: undrain
    steps:
      - name: undrain
        undrain: {region: '${region}', step_bps: 5000, interval_seconds: 1}
        timeout_seconds: 10
on_abort:
  - name: undrain-after-abort
    undrain: {region: '${region}', step_bps: 5000, interval_seconds: 1}
    timeout_seconds: 10
";

/// Runs until `until_ms` (true time) against region `seed % 3`; starts live
/// runs only until `live_until_ms` (a drained region's replicas cannot be
/// promoted, and routing must settle before the end: the liveness and
/// convergence checks after healing are the system's, not the runbook's).
pub async fn operator(
    client: Client,
    shared: Shared,
    seed: u64,
    from_ms: u64,
    live_until_ms: u64,
    until_ms: u64,
) -> turmoil::Result {
    let note = |line: String| shared.lock().note(true_ms(), line);
    tokio::time::sleep(Duration::from_millis(from_ms)).await;
    let region = REGIONS[(seed % REGIONS.len() as u64) as usize];
    let mut applied = [false, false];
    while true_ms() < until_ms {
        for (i, yaml) in [DRILL, LIVE].iter().enumerate() {
            if !applied[i] {
                applied[i] = client.apply_runbook(yaml).await.is_ok();
            }
        }
        if applied != [true, true] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let Ok(executions) = client.executions(0).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        for e in executions.iter().filter(|e| !e.r#final) {
            for s in e.steps.iter().filter(|s| s.state == "STUCK") {
                let request = ControlExecutionRequest {
                    id: e.id,
                    step: s.name.clone(),
                    op: ExecutionOp::Retry as i32,
                    reason: String::new(),
                };
                let outcome = client.control_execution(request).await;
                note(format!(
                    "runbooks: retry {}/{}: {}",
                    e.id,
                    s.name,
                    outcome.map_or_else(|e| e.to_string(), |r| r.message)
                ));
            }
        }
        for (name, mode) in [("sim-region-loss", RunMode::Drill), ("sim-drain", RunMode::Live)] {
            let late = mode == RunMode::Live && true_ms() >= live_until_ms;
            if late || executions.iter().any(|e| e.runbook == name && !e.r#final) {
                continue;
            }
            // A live drain only while every region serves (as a careful
            // operator would): two drained regions leave a shard no
            // candidate, and the rules may then hold the undrain back.
            if mode == RunMode::Live && !all_active(&client).await {
                continue;
            }
            let params = [("region".to_string(), region.to_string())].into();
            let request = RunRunbookRequest { name: name.into(), params, mode: mode as i32 };
            match client.run_runbook(request).await {
                Ok(r) => note(format!("runbooks: started {name} as execution {}", r.execution_id)),
                Err(e) => note(format!("runbooks: {name} not started: {e}")),
            }
        }
        if true_ms() >= live_until_ms && !executions.iter().any(|e| e.mode == "live" && !e.r#final) {
            undrain_if_needed(&client, region, &note).await;
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    Ok(())
}

async fn all_active(client: &Client) -> bool {
    client.regions().await.is_ok_and(|regions| regions.iter().all(|r| r.state == "ACTIVE"))
}

/// After the live runs, as an operator would: a region a failed run (or
/// its failed compensation) left drained is undrained.
async fn undrain_if_needed(client: &Client, region: &str, note: &impl Fn(String)) {
    let Ok(regions) = client.regions().await else { return };
    let Some(r) = regions.iter().find(|r| r.id == region) else { return };
    if r.state == "DRAINED" || r.state == "DRAINING" {
        let outcome = client.drain(region, true, 5_000, Duration::from_millis(1_000), "runbooks: clean-up").await;
        note(format!(
            "runbooks: undrain {region} ({}): {}",
            r.state,
            outcome.map_or_else(|e| e.to_string(), |o| o.message)
        ));
    }
}
