//! [`RegionController`]: the SDK side of SPEC §4 — what a region controller
//! must do so that the coordinator can fail over safely. Bring your own
//! [`ReplicaDriver`] (it knows how to promote and demote your database);
//! the controller does the rest:
//!
//! - registers, then heartbeats the leader with replica positions and a
//!   witness report (the regions it can reach);
//! - watches its assignment and, for each replica, applies it: for PRIMARY it
//!   first takes over the shard's primary lease (one confirmed keepalive),
//!   then promotes with the epoch and fencing token, then acknowledges; for
//!   any other role it stops the database acting as primary — a graceful
//!   demote, and if that fails a verified fence — and only then acknowledges
//!   with its final position (a role change that did not happen is never
//!   acknowledged);
//! - stops a database that acts as primary without this controller holding
//!   its lease at the current epoch — after a controller restart, say —
//!   before acknowledging anything for it;
//! - makes each standby follow the shard's primary when its address changes
//!   (`ReplicaDriver::follow`);
//! - follows the routing tables, applies each new version through the
//!   driver and acknowledges it;
//! - fences the database the instant the primary lease's holder deadline
//!   passes without a renewal (a guard task per lease, independent of
//!   everything else), so it stops acting before the coordinator could
//!   promote anyone else;
//! - every `backup_every`, backs up each replica it runs that is the
//!   acknowledged primary (`ReplicaDriver::backup`) and reports it;
//! - runs the restore tests the coordinator assigns it
//!   (`ReplicaDriver::restore_test`), timed, within their deadline, and
//!   reports each result (a failure with its reason).

use crate::{
    Client, ClientError, LeaseKeeper, LeaseOptions, ReplicaAssignment, ReplicaStatus, RestoreJob, RoutingTable,
};
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::{
    AcknowledgeRequest, HeartbeatRequest, HookJob, HookResultRequest, ReportBackupRequest, RestoreResultRequest,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How soon a replica's assignment is applied again when something is left
/// to do (a failed acknowledgement, a primary lease not held, an unhealthy
/// database), and how often an acting primary's health is looked at. Also
/// the pause before a failed watch, registration or heartbeat is retried.
const RECHECK: Duration = Duration::from_millis(500);

/// How often a settled replica (a standby that is acknowledged and follows
/// its primary) is checked without a change: only to catch a database that
/// started acting as primary by itself. Every change of its assignment is
/// applied at once; at 10 000 replicas a 500 ms recheck of each was a third
/// of an agent's CPU.
const SETTLED_RECHECK: Duration = Duration::from_secs(5);

/// The database side of a region controller.
///
/// Every call that changes a role returns whether it happened: the
/// controller acknowledges only what did, and falls back from a failed
/// [`demote`](ReplicaDriver::demote) to [`fence`](ReplicaDriver::fence).
pub trait ReplicaDriver: Send + Sync + 'static {
    /// The current status of every replica this controller runs. A replica
    /// whose database cannot be reached is reported unhealthy (and is never
    /// promoted).
    fn status(&self) -> Vec<ReplicaStatus>;
    /// The status of `replica` alone (None: not run here). The default
    /// filters [`ReplicaDriver::status`]; a driver of thousands of replicas
    /// should answer it directly, since each replica's actor asks it.
    fn replica_status(&self, replica: &str) -> Option<ReplicaStatus> {
        self.status().into_iter().find(|s| s.replica_id == replica)
    }
    /// The other regions this controller can reach right now.
    fn reachable_regions(&self) -> Vec<String>;
    /// Whether `replica`'s database accepts writes as a primary right now,
    /// whoever made it one. `Err` (cannot tell) is taken as yes.
    fn is_primary(&self, replica: &str) -> impl Future<Output = Result<bool, String>> + Send;
    /// Start acting as primary of `replica` at `epoch`; writes carry `token`
    /// where the storage can check it. Called only while the primary lease
    /// is held; a database that already is primary only records the new
    /// epoch and token. Must mark the replica as acting before it returns.
    fn promote(&self, replica: &str, epoch: u64, token: u64) -> impl Future<Output = Result<(), String>> + Send;
    /// Stop acting as primary of `replica`, gracefully: `Ok` means nothing
    /// more is written as primary. Idempotent. `Err` means it may still
    /// accept writes; the controller then fences it.
    fn demote(&self, replica: &str, reason: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Make sure, by force, that `replica` accepts no writes, and verify it
    /// (the database process is gone, or restarted in a mode no session can
    /// override — a read-only session default is not a fence). `Ok` only
    /// once verified.
    fn fence(&self, replica: &str, reason: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Make `replica`, a standby, replicate from the shard's primary
    /// `primary` whose database answers at `address`. Called when the
    /// primary's address changes while `replica` is a REPLICA, and again
    /// while `replica` is reported unhealthy (the driver can restart,
    /// rewind or clone it); an `Err` is retried. Default: nothing to do
    /// (replication is set up elsewhere).
    fn follow(&self, replica: &str, primary: &str, address: &str) -> impl Future<Output = Result<(), String>> + Send {
        let _ = (replica, primary, address);
        std::future::ready(Ok(()))
    }
    /// Take a backup of `replica` (the shard's primary) and put it where the
    /// restore tests of other regions can read it. Default: unsupported.
    fn backup(&self, replica: &str) -> impl Future<Output = Result<BackupTaken, String>> + Send {
        let _ = replica;
        std::future::ready(Err("this driver takes no backups".to_string()))
    }
    /// Restore `job`'s backup into scratch space in this region, verify its
    /// checksum, run the data check when the job names a table, and clean
    /// up. `Err` is a failed test, with the reason. Default: unsupported.
    fn restore_test(&self, job: &RestoreJob) -> impl Future<Output = Result<RestoreProof, String>> + Send {
        let _ = job;
        std::future::ready(Err("this driver cannot test restores".to_string()))
    }
    /// Run the runbook hook `job.name` in this region (its drill variant
    /// when `job.drill`: production must not change). `Ok` with what it
    /// said; `Err` fails the step, with the reason. The coordinator checks
    /// the step's success criterion itself afterwards. Default: no hooks.
    fn hook(&self, job: &HookJob) -> impl Future<Output = Result<String, String>> + Send {
        std::future::ready(Err(format!("this controller has no hook {:?}", job.name)))
    }
    /// Apply a routing table (weights per region, basis points summing to
    /// 10 000) to the region's load balancers. Called for every new version;
    /// the controller acknowledges the version once this returns Ok.
    fn apply_routing(&self, table: &RoutingTable) -> impl Future<Output = Result<(), String>> + Send {
        let _ = table;
        std::future::ready(Ok(()))
    }
}

/// A backup a driver took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTaken {
    /// An identifier (1-63 of a-z, 0-9, '-', '_', '.'), unique per shard.
    pub id: String,
    /// When the backup's data was consistent (the driver's wall clock).
    pub taken_at_unix_ms: u64,
    pub size_bytes: u64,
    /// `sha256:` and 64 lowercase hex digits, over the stored bytes.
    pub checksum: String,
    /// A URI the restorers of other regions can read (`file:///…`).
    pub location: String,
}

/// What a restore test proved (it passed: the backup restored and started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreProof {
    /// The restored bytes had the reported checksum (a driver that found a
    /// mismatch fails the test instead).
    pub checksum_match: bool,
    /// The data check's answer: rows, and the newest sequence number.
    pub data_check: Option<(u64, u64)>,
}

/// Deliberate bugs for the simulation's mutation tests, which show that its
/// invariants catch them. Leave at the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControllerMutations {
    /// Take a failed demote for a done one: no fence, and the role change is
    /// acknowledged.
    pub trust_failed_demote: bool,
    /// Give up the primary lease of a dead primary without fencing it first
    /// (a restart then brings it back as a primary).
    pub give_up_unfenced: bool,
}

/// Stops `replica` acting as primary: a graceful demote, then a fence if
/// that failed. `Err` only if both failed — it may still accept writes.
async fn stop<D: ReplicaDriver>(
    driver: &D,
    replica: &str,
    reason: &str,
    mutations: ControllerMutations,
) -> Result<(), String> {
    let demoted = driver.demote(replica, reason).await;
    let Err(e) = demoted else { return Ok(()) };
    if mutations.trust_failed_demote {
        return Ok(());
    }
    tracing::warn!(replica, "demote failed ({e}); fencing");
    driver
        .fence(replica, &format!("{reason}; demote failed: {e}"))
        .await
        .map_err(|f| format!("demote: {e}; fence: {f}"))
}

/// Who the controller is.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub id: String,
    pub region: String,
    pub identity: String,
    pub replicas: Vec<String>,
    pub lease: LeaseOptions,
    /// How long a primary's database may be reported unhealthy (down,
    /// unreachable) before the controller fences it and gives its primary
    /// lease back, so that the coordinator promotes a standby. The driver may
    /// restart the database within this bound.
    pub give_up_after: Duration,
    /// How often to back up the replicas this controller runs as primary
    /// (None: never; backups are taken elsewhere or not at all).
    pub backup_every: Option<Duration>,
    pub mutations: ControllerMutations,
}

impl ControllerConfig {
    /// The default [`ControllerConfig::give_up_after`].
    pub const GIVE_UP_AFTER: Duration = Duration::from_secs(3);
}

/// A running region controller.
pub struct RegionController;

impl RegionController {
    /// Registers and runs until a permanent error (refused registration).
    pub async fn run<D: ReplicaDriver>(
        client: Client,
        config: ControllerConfig,
        driver: Arc<D>,
    ) -> Result<(), ClientError> {
        config.lease.validate()?;
        register(&client, &config).await?;
        tokio::spawn(heartbeats(client.clone(), config.id.clone(), driver.clone()));
        tokio::spawn(follow_routing(client.clone(), config.id.clone(), driver.clone()));
        let mut actors: BTreeMap<String, watch::Sender<Option<ReplicaAssignment>>> = BTreeMap::new();
        for replica in &config.replicas {
            let (tx, rx) = watch::channel(None);
            actors.insert(replica.clone(), tx);
            let actor = ReplicaActor {
                client: client.clone(),
                controller_id: config.id.clone(),
                replica: replica.clone(),
                lease: config.lease.clone(),
                give_up_after: config.give_up_after,
                driver: driver.clone(),
                mutations: config.mutations,
                acting: None,
                following: None,
            };
            tokio::spawn(actor.run(rx));
        }
        // The whole assignment, per replica, kept from the watch's first
        // (full) message and the partial ones after it.
        let (latest, _) = watch::channel(BTreeMap::<String, ReplicaAssignment>::new());
        if let Some(every) = config.backup_every {
            tokio::spawn(backups(client.clone(), config.clone(), driver.clone(), latest.subscribe(), every));
        }
        let mut restores = Restores::default();
        let mut hooks = Hooks::default();
        let mut watcher = client.watch(&format!("controller/{}", config.id), 0);
        loop {
            match watcher.next().await {
                Ok(message) => {
                    let Some(assignment) = message.assignment else { continue };
                    restores.start(&client, &config.id, &driver, &assignment.restore_jobs);
                    hooks.start(&client, &config.id, &driver, &assignment.hook_jobs);
                    // Only the replicas in the message changed (all of them
                    // in a full one): the other actors are not woken.
                    for replica in &assignment.replicas {
                        if let Some(tx) = actors.get(&replica.replica_id) {
                            tx.send_replace(Some(replica.clone()));
                        }
                    }
                    latest.send_modify(|all| {
                        if !assignment.partial {
                            all.clear();
                        }
                        for r in &assignment.removed {
                            all.remove(r);
                        }
                        all.extend(assignment.replicas.into_iter().map(|r| (r.replica_id.clone(), r)));
                    });
                }
                Err(e) => {
                    tracing::debug!("assignment watch: {e}; retrying");
                    tokio::time::sleep(RECHECK).await;
                }
            }
        }
    }
}

/// Every `every`, backs up each replica this controller runs as the
/// acknowledged primary, and reports the backup.
async fn backups<D: ReplicaDriver>(
    client: Client,
    config: ControllerConfig,
    driver: Arc<D>,
    assignment: watch::Receiver<BTreeMap<String, ReplicaAssignment>>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let primaries: Vec<ReplicaAssignment> =
            assignment.borrow().values().filter(|r| r.role == "PRIMARY" && r.acknowledged).cloned().collect();
        for r in primaries {
            let taken = match driver.backup(&r.replica_id).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::warn!(replica = r.replica_id, "backup failed: {e}");
                    continue;
                }
            };
            let request = ReportBackupRequest {
                controller_id: config.id.clone(),
                service: r.service.clone(),
                shard: r.shard.clone(),
                backup_id: taken.id.clone(),
                source_region: config.region.clone(),
                taken_at_unix_ms: taken.taken_at_unix_ms,
                size_bytes: taken.size_bytes,
                checksum: taken.checksum,
                location: taken.location,
            };
            match client.report_backup(request).await {
                Ok(_) => tracing::info!(replica = r.replica_id, "backup {} reported", taken.id),
                Err(e) => tracing::warn!(replica = r.replica_id, "reporting backup {}: {e}", taken.id),
            }
        }
    }
}

/// The restore tests this controller has started (each once), forgotten
/// once the coordinator no longer assigns them.
#[derive(Default)]
struct Restores {
    started: BTreeSet<u64>,
}

impl Restores {
    fn start<D: ReplicaDriver>(&mut self, client: &Client, controller: &str, driver: &Arc<D>, jobs: &[RestoreJob]) {
        self.started.retain(|id| jobs.iter().any(|j| j.job_id == *id));
        for job in jobs {
            if !self.started.insert(job.job_id) {
                continue;
            }
            let (client, controller, driver, job) =
                (client.clone(), controller.to_string(), driver.clone(), job.clone());
            tokio::spawn(async move {
                let request = run_restore_test(driver.as_ref(), &controller, &job).await;
                let passed = request.passed;
                match client.report_restore_result(request).await {
                    Ok(_) => {
                        tracing::info!(job = job.job_id, passed, "restore test of backup {} reported", job.backup_id)
                    }
                    Err(e) => tracing::warn!(job = job.job_id, "reporting the restore test: {e}"),
                }
            });
        }
    }
}

/// The runbook hooks started, by (execution, step, attempt): each runs once.
#[derive(Default)]
struct Hooks {
    started: BTreeSet<(u64, u32, u32)>,
}

impl Hooks {
    fn start<D: ReplicaDriver>(&mut self, client: &Client, controller: &str, driver: &Arc<D>, jobs: &[HookJob]) {
        let key = |j: &HookJob| (j.execution_id, j.step, j.attempt);
        self.started.retain(|k| jobs.iter().any(|j| key(j) == *k));
        for job in jobs {
            if !self.started.insert(key(job)) {
                continue;
            }
            let (client, controller, driver, job) =
                (client.clone(), controller.to_string(), driver.clone(), job.clone());
            tokio::spawn(async move {
                tracing::info!(execution = job.execution_id, drill = job.drill, "running hook {}", job.name);
                let (passed, output) = match driver.hook(&job).await {
                    Ok(output) => (true, output),
                    Err(reason) => {
                        (false, if reason.is_empty() { "failed without a reason".to_string() } else { reason })
                    }
                };
                let output: String = output.chars().rev().take(2_000).collect::<Vec<_>>().into_iter().rev().collect();
                let request = HookResultRequest {
                    controller_id: controller,
                    execution_id: job.execution_id,
                    step: job.step,
                    attempt: job.attempt,
                    passed,
                    output,
                };
                if let Err(e) = client.report_hook_result(request).await {
                    tracing::warn!(execution = job.execution_id, "reporting hook {}: {e}", job.name);
                }
            });
        }
    }
}

/// Runs one restore test, timed; what to report.
async fn run_restore_test<D: ReplicaDriver>(driver: &D, controller: &str, job: &RestoreJob) -> RestoreResultRequest {
    tracing::info!(job = job.job_id, "testing a restore of backup {} of {}/{}", job.backup_id, job.service, job.shard);
    let started = tokio::time::Instant::now();
    let outcome = driver.restore_test(job).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let mut request = RestoreResultRequest {
        controller_id: controller.to_string(),
        job_id: job.job_id,
        duration_ms,
        ..Default::default()
    };
    match outcome {
        Ok(proof) if proof.checksum_match => {
            request.passed = true;
            request.checksum_match = true;
            if let Some((rows, newest)) = proof.data_check {
                request.data_checked = true;
                request.row_count = rows;
                request.newest_sequence = newest;
            }
        }
        Ok(_) => request.reason = "the restored bytes do not match the checksum".to_string(),
        Err(e) => request.reason = if e.is_empty() { "failed without a reason".to_string() } else { e },
    }
    request
}

async fn register(client: &Client, config: &ControllerConfig) -> Result<(), ClientError> {
    loop {
        match client.register_controller(&config.id, &config.region, &config.identity, &config.replicas).await {
            Ok(_) => return Ok(()),
            Err(e @ (ClientError::InvalidArgument(_) | ClientError::PermissionDenied(_))) => return Err(e),
            Err(ClientError::NotFound(e)) => {
                // The topology may not be applied yet: keep trying, loudly.
                tracing::warn!("register: {e}; is the topology applied? retrying");
                tokio::time::sleep(RECHECK * 4).await;
            }
            Err(e) => {
                tracing::debug!("register: {e}; retrying");
                tokio::time::sleep(RECHECK).await;
            }
        }
    }
}

/// Applies every new routing table version and acknowledges it.
async fn follow_routing<D: ReplicaDriver>(client: Client, id: String, driver: Arc<D>) {
    let mut watcher = client.watch("routing", 0);
    let mut applied: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let message = match watcher.next().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("routing watch: {e}; retrying");
                tokio::time::sleep(RECHECK).await;
                continue;
            }
        };
        for table in message.routing {
            if applied.get(&table.service) >= Some(&table.version) {
                continue;
            }
            if let Err(e) = driver.apply_routing(&table).await {
                tracing::warn!(service = table.service, "applying routing version {}: {e}", table.version);
                continue;
            }
            applied.insert(table.service.clone(), table.version);
            if let Err(e) = client.ack_routing(&id, &table.service, table.version).await {
                tracing::debug!(service = table.service, "acknowledging routing: {e}");
            }
        }
    }
}

/// One heartbeat stream at a time to the leader, re-opened on failure.
async fn heartbeats<D: ReplicaDriver>(client: Client, id: String, driver: Arc<D>) {
    let mut index = client.preferred_index();
    let mut every = Duration::from_millis(500);
    loop {
        let (tx, rx) = mpsc::channel(4);
        let beat = || HeartbeatRequest {
            controller_id: id.clone(),
            replicas: driver.status(),
            reachable_regions: driver.reachable_regions(),
        };
        let _ = tx.try_send(beat());
        let opened = tokio::time::timeout(
            every * 4,
            ControllerClient::new(client.channel(index)).heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut inbound = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                index = client.next_endpoint(index, &status);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => {
                index = (index + 1) % client.endpoints().len();
                continue;
            }
        };
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        let mut answered = tokio::time::Instant::now();
        loop {
            if answered.elapsed() > every * 3 {
                // The leader stopped answering (cut off, or no longer leader
                // and not saying so): find the current one.
                index = (index + 1) % client.endpoints().len();
                break;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    if tx.try_send(beat()).is_err() {
                        break;
                    }
                }
                answer = inbound.message() => match answer {
                    Ok(Some(a)) => {
                        answered = tokio::time::Instant::now();
                        let asked = Duration::from_millis(u64::from(a.interval_ms).max(50));
                        if asked != every {
                            every = asked;
                            ticker = tokio::time::interval(every);
                            ticker.tick().await;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let next = client.next_endpoint(index, &status);
                        index = if next == index { (index + 1) % client.endpoints().len() } else { next };
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The replica is acting as primary under this lease.
struct Acting {
    epoch: u64,
    token: u64,
    /// false: the promotion failed, and the replica is being stopped.
    promoted: bool,
    /// Since when the database has been reported unhealthy.
    down_since: Option<tokio::time::Instant>,
    /// Tells the guard to fence and give the lease back (with the reason).
    give_up: Option<tokio::sync::oneshot::Sender<String>>,
    /// Fences at the holder deadline or when told to give up; owns the
    /// lease keeper.
    guard: tokio::task::JoinHandle<()>,
}

struct ReplicaActor<D> {
    client: Client,
    controller_id: String,
    replica: String,
    lease: LeaseOptions,
    give_up_after: Duration,
    driver: Arc<D>,
    mutations: ControllerMutations,
    acting: Option<Acting>,
    /// The primary address this standby was last made to follow.
    following: Option<String>,
}

/// What a replica's actor does next, when its assignment has not changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Something is left to do: apply the assignment again after [`RECHECK`].
    Retry,
    /// It acts as primary under its lease: look at the database's health
    /// every [`RECHECK`]; apply the assignment again only once the lease's
    /// guard has ended.
    Acting,
    /// Nothing to do: look again after [`SETTLED_RECHECK`].
    Settled,
}

impl<D: ReplicaDriver> ReplicaActor<D> {
    async fn run(mut self, mut desired: watch::Receiver<Option<ReplicaAssignment>>) {
        let mut assignment: Option<ReplicaAssignment> = None;
        let mut next = Next::Retry;
        loop {
            if let Some(a) = &assignment {
                next = if next == Next::Acting && self.promoted_under_lease().is_some() {
                    self.watch_health();
                    Next::Acting
                } else {
                    self.reconcile(a).await
                };
            }
            let wait = if next == Next::Settled { SETTLED_RECHECK } else { RECHECK };
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    assignment = desired.borrow_and_update().clone();
                    next = Next::Retry;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Makes sure the database does not act as primary: the one this
    /// controller promoted, or one that acts as primary without it (after a
    /// restart). `false` if it could not be stopped: then nothing is
    /// acknowledged and it is tried again. The coordinator frees a demoted
    /// primary's lease on the acknowledgement or at the lease's deadline,
    /// when the guard fences again; a database that even a fence cannot stop
    /// by then is past what a coordinator can do (writers that check the
    /// fencing token are the last line).
    async fn stop_acting(&mut self, reason: &str) -> bool {
        let acting = self.acting.as_ref().is_some_and(|a| !a.guard.is_finished());
        let stray = !acting && self.driver.is_primary(&self.replica).await.unwrap_or(true);
        if !acting && !stray {
            self.acting = None;
            return true;
        }
        let reason =
            if stray { format!("{reason}; it acts as primary without a lease held here") } else { reason.into() };
        match stop(self.driver.as_ref(), &self.replica, &reason, self.mutations).await {
            Ok(()) => {
                if let Some(acting) = self.acting.take() {
                    acting.guard.abort();
                }
                true
            }
            Err(e) => {
                tracing::error!(replica = self.replica, "cannot stop acting as primary: {e}; retrying");
                false
            }
        }
    }

    /// What acts as primary here, promoted, while its lease's guard runs.
    fn promoted_under_lease(&self) -> Option<&Acting> {
        self.acting.as_ref().filter(|x| x.promoted && !x.guard.is_finished())
    }

    fn position(&self) -> u64 {
        self.driver.replica_status(&self.replica).map_or(0, |s| s.position)
    }

    fn healthy(&self) -> bool {
        self.driver.replica_status(&self.replica).is_some_and(|s| s.healthy)
    }

    /// A primary whose database stays unhealthy past `give_up_after` is
    /// fenced and its lease given back (by the guard), so that the
    /// coordinator can promote a standby: a dead primary in a live region.
    fn watch_health(&mut self) {
        let healthy = self.healthy();
        let Some(acting) = self.acting.as_mut() else { return };
        if healthy {
            acting.down_since = None;
            return;
        }
        let since = *acting.down_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() >= self.give_up_after {
            if let Some(give_up) = acting.give_up.take() {
                let reason = format!("the database has been unhealthy for {} ms", since.elapsed().as_millis());
                tracing::warn!(replica = self.replica, "{reason}: fencing it and giving up the primary lease");
                let _ = give_up.send(reason);
            }
        }
    }

    /// Whether the coordinator took the acknowledgement.
    async fn acknowledge(&self, a: &ReplicaAssignment) -> bool {
        let request = AcknowledgeRequest {
            controller_id: self.controller_id.clone(),
            replica_id: self.replica.clone(),
            epoch: a.epoch,
            role: a.role.clone(),
            position: self.position(),
        };
        match self.client.acknowledge(request).await {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(replica = self.replica, "acknowledge {} at epoch {}: {e}", a.role, a.epoch);
                false
            }
        }
    }

    /// A REPLICA follows the shard's primary, once per new primary address.
    /// `false` if the driver failed (it is tried again).
    async fn follow(&mut self, a: &ReplicaAssignment) -> bool {
        let address = &a.primary_address;
        if a.role != "REPLICA" || address.is_empty() || a.primary == self.replica {
            return true;
        }
        if self.following.as_ref() == Some(address) {
            return true;
        }
        match self.driver.follow(&self.replica, &a.primary, address).await {
            Ok(()) => {
                self.following = Some(address.clone());
                true
            }
            Err(e) => {
                tracing::warn!(replica = self.replica, "following {} at {address}: {e}; retrying", a.primary);
                false
            }
        }
    }

    /// Applies `a`; what is left to do.
    async fn reconcile(&mut self, a: &ReplicaAssignment) -> Next {
        if a.role != "PRIMARY" {
            // Before the shard's first election (epoch 0) no primary lease was
            // ever granted: a database that already acts as primary is left
            // alone — the election picks it (best position) and adopts it.
            // (Nor is anything acknowledged for it.)
            if a.epoch == 0 && self.acting.is_none() && self.driver.is_primary(&self.replica).await.unwrap_or(true) {
                return Next::Settled;
            }
            if !self.stop_acting(&format!("assigned {} at epoch {}", a.role, a.epoch)).await {
                return Next::Retry;
            }
            // A standby that is down follows again (its driver restarts,
            // rewinds or clones it), until it is healthy.
            let healthy = self.healthy();
            if !healthy {
                self.following = None;
            }
            let acknowledged = a.acknowledged || self.acknowledge(a).await;
            let following = self.follow(a).await;
            return if healthy && acknowledged && following { Next::Settled } else { Next::Retry };
        }
        self.following = None;
        let current = self.promoted_under_lease();
        let same = current.is_some_and(|x| x.epoch == a.epoch && (a.lease_token == 0 || x.token == a.lease_token));
        if !same {
            // What acted under another lease or epoch (or failed to promote)
            // stops first.
            if self.acting.is_some() && !self.stop_acting(&format!("epoch {} replaces it", a.epoch)).await {
                return Next::Retry;
            }
            // An unhealthy database is not made primary (and a primary that
            // was given up is not taken back) until it is healthy again.
            if !self.healthy() {
                return Next::Retry;
            }
            // A primary lease is renewed every eighth of its TTL (not the
            // keeper's default quarter): a deadline then has more of the TTL
            // left when the Raft leader dies, for the election (about 1.3 s
            // with `wan`) and a renewal through the new leader. At the
            // default 2 s that is still not always enough: docs/simulation.md
            // ("a leader's loss still fences most primaries").
            let ttl = Duration::from_millis(a.lease_ttl_ms.max(interlock_core::lease::TTL_MIN_MS));
            let mut options = self.lease.clone();
            options.keepalive_every = options.keepalive_every.or(Some((ttl / 8).max(Duration::from_millis(50))));
            let keeper = if a.lease_token != 0 {
                LeaseKeeper::adopt(&self.client, &a.primary_lease_key, a.lease_token, options).await
            } else {
                // The lease ran out while we were away; as the primary we may take it again.
                LeaseKeeper::acquire(&self.client, &a.primary_lease_key, &self.replica, ttl, options).await
            };
            let mut keeper = match keeper {
                Ok(k) if k.is_held() => k,
                other => {
                    if let Err(e) = other {
                        tracing::debug!(replica = self.replica, "primary lease: {e}");
                    }
                    // Not under the lease: a database acting as primary anyway
                    // (left so by a controller that restarted) must stop.
                    self.stop_acting("the primary lease is not held here").await;
                    return Next::Retry;
                }
            };
            let token = keeper.token();
            // The guard runs before promotion starts, so that a deadline that
            // passes during the promotion stops it too. At the deadline there
            // is no time for a graceful demote: it fences.
            let (driver, replica) = (self.driver.clone(), self.replica.clone());
            let (give_up, given_up) = tokio::sync::oneshot::channel::<String>();
            let unfenced = self.mutations.give_up_unfenced;
            let guard = tokio::spawn(async move {
                let (reason, giving_up) = tokio::select! {
                    lost = keeper.lost() => (format!("primary lease lost: {lost}"), false),
                    Ok(why) = given_up => (why, true),
                };
                if !(giving_up && unfenced) {
                    while let Err(e) = driver.fence(&replica, &reason).await {
                        tracing::error!(replica, "{reason}, and the fence failed: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                // Fenced: the lease can go back at once instead of at its TTL.
                if giving_up {
                    if let Err(e) = keeper.release().await {
                        tracing::warn!(replica, "giving the primary lease back: {e}; it expires at its TTL");
                    }
                }
            });
            let promoted = self.driver.promote(&self.replica, a.epoch, token).await;
            self.acting = Some(Acting {
                epoch: a.epoch,
                token,
                promoted: promoted.is_ok(),
                down_since: None,
                give_up: Some(give_up),
                guard,
            });
            if let Err(e) = promoted {
                tracing::warn!(replica = self.replica, "promote failed: {e}");
                self.stop_acting("promote failed").await;
                return Next::Retry;
            }
        }
        self.watch_health();
        if a.acknowledged || self.acknowledge(a).await {
            Next::Acting
        } else {
            Next::Retry
        }
    }
}
