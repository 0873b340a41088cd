//! The simulation's runbook operator (SPEC §7): from the start of the
//! faults to near the end it keeps a drill of a region's loss and a live
//! drain-and-undrain of it running back to back, retrying every STUCK
//! step, so that executions live through partitions, crashes and leader
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

/// Runs until `until_ms` (true time) against region `seed % 3`.
pub async fn operator(client: Client, shared: Shared, seed: u64, from_ms: u64, until_ms: u64) -> turmoil::Result {
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
            if executions.iter().any(|e| e.runbook == name && !e.r#final) {
                continue;
            }
            let params = [("region".to_string(), region.to_string())].into();
            let request = RunRunbookRequest { name: name.into(), params, mode: mode as i32 };
            match client.run_runbook(request).await {
                Ok(r) => note(format!("runbooks: started {name} as execution {}", r.execution_id)),
                Err(e) => note(format!("runbooks: {name} not started: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    Ok(())
}
