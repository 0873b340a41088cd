//! [`ExecDriver`]: any database behind hook programs — MySQL, Redis, a
//! script around your own tooling.
//!
//! One program (with fixed leading arguments) is run per action, the action
//! appended as its last argument:
//!
//! | action | when | must |
//! |---|---|---|
//! | `status` | every `status_every_ms`, and after every demote and fence | print the status JSON below |
//! | `promote` | under the primary lease | make the replica accept writes as primary at this epoch; record the token where writers can check it |
//! | `demote` | assigned another role | stop accepting writes, gracefully |
//! | `fence` | a demote failed, or the lease's deadline passed | stop it accepting writes by force |
//! | `follow` | a standby's primary has a new address | replicate from `INTERLOCK_PRIMARY_ADDRESS` |
//! | `routing` | a new routing table | apply the weights to the load balancers |
//! | `backup` | every `backup_every_seconds`, for a replica that is the primary | take a backup; print `{"id", "taken_at_unix_ms", "size_bytes", "checksum": "sha256:…", "location": "URI"}` |
//! | `runbook_hook` | a runbook's `hook` step in this region (input `hook`: `name`, `drill`, `runbook`, `execution_id`, `params`; env `INTERLOCK_HOOK`, `INTERLOCK_DRILL` = `1` for a drill, which must leave production alone) | do it; what it prints (its last 2000 characters) is recorded; exit non-zero to fail the step |
//! | `restore_test` | the coordinator assigns a restore test (input `restore`: `job_id`, `backup_id`, `location`, `checksum`, `check_table`, `check_column`, …) | restore it into scratch space, check it, clean up; print `{"checksum_match": true, "rows": N, "newest_sequence": N}` (the last two optional); exit non-zero with the reason to fail it |
//!
//! Input: a JSON object on stdin (`action`, `replica`, `shard`, `epoch`,
//! `token`, `reason`; for `status` the `replicas`, for `routing` the table
//! as `routing`: `service`, `version`, `weights`), and the same in the environment
//! (`INTERLOCK_ACTION`, `INTERLOCK_REPLICA`, `INTERLOCK_SHARD`,
//! `INTERLOCK_EPOCH`, `INTERLOCK_TOKEN`, `INTERLOCK_REASON`; for `status`
//! `INTERLOCK_REPLICAS`, comma-separated; for `follow` `INTERLOCK_PRIMARY`
//! and `INTERLOCK_PRIMARY_ADDRESS`). `deploy/hooks/files.sh`
//! is a complete example.
//!
//! Rules: exit 0 is done, anything else failed (the last stderr line is the
//! reason); a hook still running at `timeout_ms` is killed with its whole
//! process group and has failed. Its stderr goes into the agent's log.
//! `status` prints `{"replicas": [{"id": "…", "position": N, "lag": N,
//! "healthy": true, "primary": false}]}`; an answer that does not parse is
//! an error naming the field, and every replica is then reported unhealthy
//! (never promoted). A `demote` or `fence` that exits 0 is checked with a
//! fresh `status`: if the replica still says `primary`, it failed — a role
//! change that did not happen is never acknowledged.

use crate::probes::Reachability;
use interlock_client::{BackupTaken, ReplicaDriver, ReplicaStatus, RestoreJob, RestoreProof, RoutingTable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// The `[exec]` section of the agent's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program and its leading arguments; the action is appended.
    pub command: Vec<String>,
    /// A hook still running after this is killed and has failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often `status` runs.
    #[serde(default = "default_status_every_ms")]
    pub status_every_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_status_every_ms() -> u64 {
    1_000
}

impl ExecConfig {
    /// Refuses what cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        match self.command.first() {
            None => return Err("exec.command: the hook program is missing".into()),
            Some(p) if p.trim().is_empty() => return Err("exec.command: the hook program is empty".into()),
            Some(_) => {}
        }
        if self.timeout_ms < 100 {
            return Err(format!("exec.timeout_ms: {} is below the minimum of 100", self.timeout_ms));
        }
        if self.status_every_ms < 50 {
            return Err(format!("exec.status_every_ms: {} is below the minimum of 50", self.status_every_ms));
        }
        Ok(())
    }
}

/// What a hook gets on stdin.
#[derive(Debug, Clone, Default, Serialize)]
struct HookInput<'a> {
    action: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    replica: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    shard: &'a str,
    epoch: u64,
    token: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    replicas: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<RoutingInput>,
    /// For `follow`: the primary and its database address.
    #[serde(skip_serializing_if = "str::is_empty")]
    primary: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    primary_address: &'a str,
    /// For `restore_test`: the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    restore: Option<RestoreInput>,
    /// For `runbook_hook`: the hook.
    #[serde(skip_serializing_if = "Option::is_none")]
    hook: Option<HookInputJob>,
}

/// A runbook hook, as the `runbook_hook` action gets it.
#[derive(Debug, Clone, Serialize)]
struct HookInputJob {
    name: String,
    drill: bool,
    runbook: String,
    execution_id: u64,
    params: BTreeMap<String, String>,
}

/// A restore job, as the `restore_test` hook gets it.
#[derive(Debug, Clone, Serialize)]
struct RestoreInput {
    job_id: u64,
    service: String,
    shard: String,
    backup_id: String,
    source_region: String,
    location: String,
    checksum: String,
    size_bytes: u64,
    check_table: String,
    check_column: String,
}

/// The `backup` hook's answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupAnswer {
    id: String,
    taken_at_unix_ms: u64,
    size_bytes: u64,
    checksum: String,
    location: String,
}

/// The `restore_test` hook's answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreAnswer {
    checksum_match: bool,
    #[serde(default)]
    rows: Option<u64>,
    #[serde(default)]
    newest_sequence: Option<u64>,
}

/// A routing table, as the `routing` hook gets it.
#[derive(Debug, Clone, Serialize)]
struct RoutingInput {
    service: String,
    version: u64,
    /// Region -> basis points (they sum to 10 000).
    weights: BTreeMap<String, u32>,
}

/// The `status` hook's answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusAnswer {
    replicas: Vec<ReplicaAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaAnswer {
    id: String,
    position: u64,
    #[serde(default)]
    lag: u64,
    healthy: bool,
    primary: bool,
}

/// The last `status` answer, and when it came.
#[derive(Default)]
struct Known {
    at: Option<Instant>,
    replicas: BTreeMap<String, ReplicaAnswer>,
}

/// A [`ReplicaDriver`] that runs hook programs.
pub struct ExecDriver {
    config: ExecConfig,
    /// Replica id -> SERVICE/SHARD.
    replicas: BTreeMap<String, String>,
    reachable: Arc<Reachability>,
    known: Mutex<Known>,
}

impl ExecDriver {
    pub fn new(
        config: ExecConfig,
        replicas: impl IntoIterator<Item = (String, String)>,
        reachable: Arc<Reachability>,
    ) -> Result<ExecDriver, String> {
        config.validate()?;
        Ok(ExecDriver { config, replicas: replicas.into_iter().collect(), reachable, known: Mutex::default() })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `status` every `status_every_ms`, for [`ReplicaDriver::status`].
    pub async fn poll_status(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.status_every_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::warn!("status hook: {e}");
            }
        }
    }

    /// Runs `status` now and keeps its answer; on an error every replica
    /// counts as unhealthy until the next good answer.
    async fn refresh(&self) -> Result<(), String> {
        let input = HookInput {
            action: "status",
            replicas: self.replicas.keys().map(String::as_str).collect(),
            ..Default::default()
        };
        let answer = self.run(&input).await.and_then(|out| parse_status(&out));
        let mut known = self.known();
        match answer {
            Ok(answer) => {
                known.replicas = answer.replicas.into_iter().map(|r| (r.id.clone(), r)).collect();
                known.at = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                known.at = None;
                Err(e)
            }
        }
    }

    /// Whether `status` says `replica` is primary: the last answer if it is
    /// younger than `status_every_ms` and `fresh` is not asked for, else a
    /// new one.
    async fn says_primary(&self, replica: &str, fresh: bool) -> Result<bool, String> {
        let every = Duration::from_millis(self.config.status_every_ms);
        if fresh || self.known().at.is_none_or(|at| at.elapsed() > every) {
            self.refresh().await?;
        }
        let known = self.known();
        let answer =
            known.replicas.get(replica).ok_or_else(|| format!("status: replica {replica} is not in the answer"))?;
        Ok(answer.primary)
    }

    /// Runs a role change and, for demote and fence, checks it happened.
    async fn change(&self, action: &str, replica: &str, epoch: u64, token: u64, reason: &str) -> Result<(), String> {
        let shard = self.replicas.get(replica).ok_or_else(|| format!("replica {replica} is not run here"))?;
        let input = HookInput { action, replica, shard, epoch, token, reason, ..Default::default() };
        self.run(&input).await?;
        if action != "promote" && self.says_primary(replica, true).await? {
            return Err(format!("the {action} hook exited 0 but status still says {replica} is primary"));
        }
        Ok(())
    }

    /// Runs the hook for `input.action`; its stdout on exit 0.
    async fn run(&self, input: &HookInput<'_>) -> Result<String, String> {
        let action = input.action;
        let stdin = serde_json::to_vec(input).map_err(|e| format!("{action}: encoding the input: {e}"))?;
        let (program, args) = self.config.command.split_first().ok_or("exec.command: empty")?;
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .arg(action)
            .env("INTERLOCK_ACTION", action)
            .env("INTERLOCK_REPLICA", input.replica)
            .env("INTERLOCK_SHARD", input.shard)
            .env("INTERLOCK_EPOCH", input.epoch.to_string())
            .env("INTERLOCK_TOKEN", input.token.to_string())
            .env("INTERLOCK_REASON", input.reason)
            .env("INTERLOCK_REPLICAS", input.replicas.join(","))
            .env("INTERLOCK_PRIMARY", input.primary)
            .env("INTERLOCK_PRIMARY_ADDRESS", input.primary_address)
            .env("INTERLOCK_HOOK", input.hook.as_ref().map_or("", |h| h.name.as_str()))
            .env("INTERLOCK_DRILL", if input.hook.as_ref().is_some_and(|h| h.drill) { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a timeout kills what it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| format!("{action}: cannot run {program}: {e}"))?;
        let pid = child.id();
        let pipe = child.stdin.take();
        let finished = async move {
            if let Some(mut pipe) = pipe {
                // A hook that does not read its input is fine; closing the
                // pipe tells one that does where the input ends.
                let _ = pipe.write_all(&stdin).await;
            }
            child.wait_with_output().await
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let output = match tokio::time::timeout(timeout, finished).await {
            Ok(output) => output.map_err(|e| format!("{action}: {e}"))?,
            Err(_) => {
                if let Some(pid) = pid {
                    kill_group(pid);
                }
                return Err(format!("{action}: killed after the {} ms timeout", self.config.timeout_ms));
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(hook = action, replica = input.replica, "{line}");
        }
        if !output.status.success() {
            let reason = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            return Err(format!("{action}: exited with {}: {reason}", output.status));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// SIGKILL to the hook's process group.
fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn parse_status(out: &str) -> Result<StatusAnswer, String> {
    serde_json::from_str(out.trim()).map_err(|e| format!("status answer: {e}"))
}

/// The `backup` hook's answer, its checksum and location checked as the
/// coordinator will check them.
fn parse_backup(out: &str) -> Result<BackupTaken, String> {
    let a: BackupAnswer = serde_json::from_str(out.trim()).map_err(|e| format!("backup answer: {e}"))?;
    interlock_core::vocab::validate_id(&a.id, "backup answer: id").map_err(|e| e.to_string())?;
    interlock_core::backup::validate_checksum(&a.checksum, "backup answer: checksum").map_err(|e| e.to_string())?;
    interlock_core::backup::validate_location(&a.location, "backup answer: location").map_err(|e| e.to_string())?;
    Ok(BackupTaken {
        id: a.id,
        taken_at_unix_ms: a.taken_at_unix_ms,
        size_bytes: a.size_bytes,
        checksum: a.checksum,
        location: a.location,
    })
}

fn parse_restore(out: &str) -> Result<RestoreProof, String> {
    let a: RestoreAnswer = serde_json::from_str(out.trim()).map_err(|e| format!("restore_test answer: {e}"))?;
    let data_check = match (a.rows, a.newest_sequence) {
        (Some(rows), newest) => Some((rows, newest.unwrap_or(0))),
        (None, None) => None,
        (None, Some(_)) => return Err("restore_test answer: newest_sequence without rows".to_string()),
    };
    Ok(RestoreProof { checksum_match: a.checksum_match, data_check })
}

impl ReplicaDriver for ExecDriver {
    fn status(&self) -> Vec<ReplicaStatus> {
        let known = self.known();
        let stale = known.at.is_none_or(|at| at.elapsed() > Duration::from_millis(self.config.status_every_ms * 3));
        self.replicas
            .keys()
            .map(|id| {
                let answer = known.replicas.get(id);
                ReplicaStatus {
                    replica_id: id.clone(),
                    position: answer.map_or(0, |a| a.position),
                    lag: answer.map_or(0, |a| a.lag),
                    healthy: !stale && answer.is_some_and(|a| a.healthy),
                }
            })
            .collect()
    }

    fn reachable_regions(&self) -> Vec<String> {
        self.reachable.regions()
    }

    fn is_primary(&self, replica: &str) -> impl Future<Output = Result<bool, String>> + Send {
        self.says_primary(replica, false)
    }

    fn promote(&self, replica: &str, epoch: u64, token: u64) -> impl Future<Output = Result<(), String>> + Send {
        self.change("promote", replica, epoch, token, "promoted under the primary lease")
    }

    fn demote(&self, replica: &str, reason: &str) -> impl Future<Output = Result<(), String>> + Send {
        self.change("demote", replica, 0, 0, reason)
    }

    fn fence(&self, replica: &str, reason: &str) -> impl Future<Output = Result<(), String>> + Send {
        self.change("fence", replica, 0, 0, reason)
    }

    async fn follow(&self, replica: &str, primary: &str, address: &str) -> Result<(), String> {
        let shard = self.replicas.get(replica).ok_or_else(|| format!("replica {replica} is not run here"))?;
        let input =
            HookInput { action: "follow", replica, shard, primary, primary_address: address, ..Default::default() };
        self.run(&input).await.map(|_| ())
    }

    async fn backup(&self, replica: &str) -> Result<BackupTaken, String> {
        let shard = self.replicas.get(replica).ok_or_else(|| format!("replica {replica} is not run here"))?;
        let input = HookInput { action: "backup", replica, shard, ..Default::default() };
        parse_backup(&self.run(&input).await?)
    }

    async fn restore_test(&self, job: &RestoreJob) -> Result<RestoreProof, String> {
        let shard = format!("{}/{}", job.service, job.shard);
        let restore = RestoreInput {
            job_id: job.job_id,
            service: job.service.clone(),
            shard: job.shard.clone(),
            backup_id: job.backup_id.clone(),
            source_region: job.source_region.clone(),
            location: job.location.clone(),
            checksum: job.checksum.clone(),
            size_bytes: job.size_bytes,
            check_table: job.check_table.clone(),
            check_column: job.check_column.clone(),
        };
        let input = HookInput { action: "restore_test", shard: &shard, restore: Some(restore), ..Default::default() };
        parse_restore(&self.run(&input).await?)
    }

    async fn hook(&self, job: &interlock_client::HookJob) -> Result<String, String> {
        let hook = HookInputJob {
            name: job.name.clone(),
            drill: job.drill,
            runbook: job.runbook.clone(),
            execution_id: job.execution_id,
            params: job.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let input = HookInput { action: "runbook_hook", hook: Some(hook), ..Default::default() };
        self.run(&input).await
    }

    fn apply_routing(&self, table: &RoutingTable) -> impl Future<Output = Result<(), String>> + Send {
        let routing = RoutingInput {
            service: table.service.clone(),
            version: table.version,
            weights: table.weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        };
        async move {
            let input = HookInput { action: "routing", routing: Some(routing), ..Default::default() };
            self.run(&input).await.map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_status_answer_names_the_field() {
        let err =
            parse_status(r#"{"replicas": [{"id": "a", "healthy": true, "primary": false}]}"#).expect_err("refused");
        assert!(err.contains("position"), "{err}");
        let err = parse_status(r#"{"replicas": [{"id": "a", "position": "x", "healthy": true, "primary": false}]}"#)
            .expect_err("refused");
        assert!(err.contains("invalid type"), "{err}");
        assert!(parse_status("not json").is_err());
        let ok = parse_status(r#"{"replicas": [{"id": "a", "position": 3, "healthy": true, "primary": true}]}"#);
        assert!(ok.is_ok_and(|a| a.replicas[0].primary && a.replicas[0].lag == 0));
    }

    fn driver(script: &str, timeout_ms: u64) -> ExecDriver {
        let config = ExecConfig {
            command: vec!["/bin/sh".into(), "-c".into(), script.into(), "hook".into()],
            timeout_ms,
            status_every_ms: 1000,
        };
        let reachable = Arc::new(Reachability::new("eu-west", Duration::from_secs(1)));
        ExecDriver::new(config, [("o-eu".to_string(), "orders/0".to_string())], reachable).expect("driver")
    }

    #[tokio::test]
    async fn a_garbled_or_hung_hook_is_a_failure_and_the_replica_unhealthy() {
        let garbled = driver("echo '{\"replicas\": 3}'", 1000);
        let err = garbled.refresh().await.expect_err("garbled");
        assert!(err.contains("status answer") && err.contains("invalid type"), "{err}");
        assert!(garbled.status().iter().all(|s| !s.healthy), "never promoted");
        assert!(garbled.is_primary("o-eu").await.is_err(), "cannot tell: taken as primary by the controller");

        let hung = driver("sleep 30", 100);
        let err = hung.fence("o-eu", "test").await.expect_err("hung");
        assert!(err.contains("killed after the 100 ms timeout"), "{err}");

        let failing = driver("echo first >&2; echo 'the last line says why' >&2; exit 3", 1000);
        let err = failing.demote("o-eu", "test").await.expect_err("exit 3");
        assert!(err.contains("the last line says why"), "{err}");

        // A fence that exits 0 while status still says primary did not happen.
        let liar = driver(
            r#"[ "$1" = status ] && echo '{"replicas": [{"id": "o-eu", "position": 1, "healthy": true, "primary": true}]}'; exit 0"#,
            1000,
        );
        let err = liar.fence("o-eu", "test").await.expect_err("still primary");
        assert!(err.contains("still says o-eu is primary"), "{err}");
    }

    #[tokio::test]
    async fn a_runbook_hook_gets_its_name_drill_flag_and_params() {
        let script = r#"[ "$1" = runbook_hook ] && grep -q '"region":"us"' && echo "ran $INTERLOCK_HOOK drill=$INTERLOCK_DRILL""#;
        let hooks = driver(script, 1000);
        let job = interlock_client::HookJob {
            name: "smoke-test".into(),
            drill: true,
            params: [("region".to_string(), "us".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(hooks.hook(&job).await, Ok("ran smoke-test drill=1\n".to_string()));
        let failing = driver("echo 'smoke failed: no answer' >&2; exit 1", 1000);
        let err = failing.hook(&job).await.expect_err("exit 1");
        assert!(err.contains("smoke failed: no answer"), "{err}");
    }

    #[tokio::test]
    async fn backup_and_restore_hooks_answer_json_checked_by_field() {
        let sum = format!("sha256:{}", "a".repeat(64));
        let script = format!(
            r#"case "$1" in
              backup) echo '{{"id": "b1", "taken_at_unix_ms": 5, "size_bytes": 9, "checksum": "{sum}", "location": "file:///b/b1"}}';;
              restore_test) grep -q '"job_id":7' && echo '{{"checksum_match": true, "rows": 3, "newest_sequence": 3}}';;
            esac"#
        );
        let hooks = driver(&script, 1000);
        let taken = hooks.backup("o-eu").await.expect("backup");
        assert_eq!((taken.id.as_str(), taken.location.as_str()), ("b1", "file:///b/b1"));
        let job = RestoreJob { job_id: 7, service: "orders".into(), shard: "0".into(), ..RestoreJob::default() };
        assert_eq!(hooks.restore_test(&job).await, Ok(RestoreProof { checksum_match: true, data_check: Some((3, 3)) }));
        let bad = driver(
            r#"echo '{"id": "b1", "taken_at_unix_ms": 5, "size_bytes": 9, "checksum": "md5:x", "location": "file:///b"}'"#,
            1000,
        );
        assert!(bad.backup("o-eu").await.expect_err("refused").contains("checksum"));
        assert!(parse_restore(r#"{"checksum_match": true, "newest_sequence": 3}"#).is_err());
    }

    #[test]
    fn bad_exec_settings_are_refused_by_key() {
        let config = |command: &[&str], timeout_ms, status_every_ms| ExecConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout_ms,
            status_every_ms,
        };
        assert!(config(&[], 1000, 1000).validate().expect_err("refused").contains("exec.command"));
        assert!(config(&["/bin/true"], 10, 1000).validate().expect_err("refused").contains("exec.timeout_ms"));
        assert!(config(&["/bin/true"], 1000, 1).validate().expect_err("refused").contains("exec.status_every_ms"));
        assert!(config(&["/bin/true"], 1000, 1000).validate().is_ok());
    }
}
