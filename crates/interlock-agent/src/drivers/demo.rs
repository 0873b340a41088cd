//! [`DemoDatabase`]: a stand-in database behind a [`ReplicaDriver`],
//! for `interlockd dev`, the reference agent, the simulation and the tests.
//!
//! Its model of replication is deliberately small but honest about timing:
//! a replica that acts as primary "writes" (its position grows by one per
//! [`DemoDatabase::write_tick`]); controllers probe each other's
//! [`DemoDatabase::probe_reply`] over the network, and a probe answer both
//! proves the other region reachable (the witness report) and carries the
//! positions of its primaries, which the prober's replicas of those shards
//! catch up to (from any replica that is ahead, as cascading replication
//! would). A region that cannot be reached is not replicated from. The model
//! has no divergence: a fenced primary's unreplicated writes simply count as
//! a higher position if its region returns.
//!
//! Backups ([`DemoDatabase::with_backups`]): a backup is a small file (the
//! replica's shard and position) in a [`BackupStore`], with its SHA-256; a
//! restore test copies it to scratch space, verifies the copy's checksum,
//! reads it back (the data check answers its position as both the row count
//! and the newest sequence number), and removes the copy.
//! Transport (real TCP or simulated) is the caller's.

use super::backups::{checksum, BackupStore};
use crate::probes::{parse_probe, probe_header, Probed, Reachability};
use interlock_client::{BackupTaken, ReplicaDriver, ReplicaStatus, RestoreJob, RestoreProof, RoutingTable};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A replica started or stopped acting as primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingChange {
    pub replica: String,
    pub shard: String,
    pub epoch: u64,
    pub token: u64,
    /// true: started acting; false: stopped.
    pub acting: bool,
    pub position: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
struct DemoReplica {
    shard: String,
    position: u64,
    /// (epoch, token) while acting as primary.
    acting: Option<(u64, u64)>,
    /// The database process is down ([`DemoDatabase::fail`]).
    down: bool,
    /// What a down primary comes back as when it restarts: a primary
    /// process that dies and restarts is a primary again (crash recovery),
    /// unless it was fenced while down (as a standby.signal file would).
    restarts_as: Option<(u64, u64)>,
}

impl DemoReplica {
    /// The change to tell the observer about this replica.
    fn change(&self, replica: &str, epoch: u64, token: u64, acting: bool, reason: &str) -> ActingChange {
        ActingChange {
            replica: replica.to_string(),
            shard: self.shard.clone(),
            epoch,
            token,
            acting,
            position: self.position,
            reason: reason.to_string(),
        }
    }
}

type Observer = Box<dyn Fn(&ActingChange) + Send + Sync>;

/// A wall clock, in milliseconds since the Unix epoch.
pub type UnixClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The demo database of one controller: its replicas, keyed by id.
pub struct DemoDatabase {
    region: String,
    reachable: Reachability,
    inner: Mutex<Inner>,
    observer: Observer,
    backups: Option<(BackupStore, UnixClock)>,
}

/// The first line of a demo backup file.
const BACKUP_MAGIC: &str = "interlock-demo-backup 1";

struct Inner {
    /// Routing applied to "the load balancers": service -> (version, weights).
    routing: BTreeMap<String, (u64, BTreeMap<String, u32>)>,
    replicas: BTreeMap<String, DemoReplica>,
    /// Graceful demotes fail (see [`DemoDatabase::refuse_demotes`]).
    refuse_demotes: bool,
    /// Restore tests fail (see [`DemoDatabase::fail_restores`]).
    fail_restores: bool,
}

impl DemoDatabase {
    /// `replicas` are (replica id, SERVICE/SHARD); `observer` hears every
    /// start and stop of acting as primary (for logs and checkers).
    pub fn new(
        region: &str,
        replicas: impl IntoIterator<Item = (String, String)>,
        reachable_window: Duration,
        observer: impl Fn(&ActingChange) + Send + Sync + 'static,
    ) -> Self {
        let replicas = replicas
            .into_iter()
            .map(|(id, shard)| (id, DemoReplica { shard, position: 0, ..DemoReplica::default() }))
            .collect();
        DemoDatabase {
            region: region.to_string(),
            reachable: Reachability::new(region, reachable_window),
            inner: Mutex::new(Inner {
                routing: BTreeMap::new(),
                replicas,
                refuse_demotes: false,
                fail_restores: false,
            }),
            observer: Box::new(observer),
            backups: None,
        }
    }

    /// Takes backups into `store`, stamped by `clock`, and tests restores from it.
    pub fn with_backups(mut self, store: BackupStore, clock: UnixClock) -> Self {
        self.backups = Some((store, clock));
        self
    }

    /// From now on restore tests fail (`true`), as a corrupt or unreadable
    /// backup store would make them. For the simulation.
    pub fn fail_restores(&self, fail: bool) {
        self.lock().fail_restores = fail;
    }

    fn take_backup(&self, replica: &str) -> Result<BackupTaken, String> {
        let Some((store, clock)) = &self.backups else { return Err("no backup store configured".to_string()) };
        let (shard, position) = {
            let inner = self.lock();
            let r = inner.replicas.get(replica).ok_or_else(|| format!("replica {replica} is not run here"))?;
            if r.down {
                return Err(format!("replica {replica}: the database is down"));
            }
            (r.shard.clone(), r.position)
        };
        let taken_at_unix_ms = clock();
        let id = Some(format!("{replica}-{taken_at_unix_ms}")).filter(|id| id.len() <= 63);
        let id = id.unwrap_or_else(|| format!("b-{taken_at_unix_ms}"));
        let bytes = format!("{BACKUP_MAGIC}\nshard {shard}\nreplica {replica}\nposition {position}\n").into_bytes();
        let location = store.put(&id, &bytes)?;
        Ok(BackupTaken { id, taken_at_unix_ms, size_bytes: bytes.len() as u64, checksum: checksum(&bytes), location })
    }

    fn test_restore(&self, job: &RestoreJob) -> Result<RestoreProof, String> {
        let Some((store, _)) = &self.backups else { return Err("no backup store configured".to_string()) };
        if self.lock().fail_restores {
            return Err("the restore failed (injected)".to_string());
        }
        let original = store.get(&job.location)?;
        let scratch = format!(".restore-{}", job.job_id);
        let copy = store.put(&scratch, &original).and_then(|uri| store.get(&uri));
        store.remove(&scratch);
        let copy = copy?;
        let restored = checksum(&copy);
        if restored != job.checksum {
            return Err(format!(
                "checksum mismatch: the catalogue says {}, the restored copy is {restored}",
                job.checksum
            ));
        }
        let text = String::from_utf8(copy).map_err(|_| "the backup is not a demo backup".to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(BACKUP_MAGIC) {
            return Err("the backup is not a demo backup".to_string());
        }
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
        let shard = format!("{}/{}", job.service, job.shard);
        if field("shard ") != Some(shard.as_str()) {
            return Err(format!("the backup is of shard {:?}, not {shard}", field("shard ").unwrap_or("?")));
        }
        let position: u64 = field("position ").and_then(|p| p.parse().ok()).ok_or("the backup has no position")?;
        let data_check = (!job.check_table.is_empty()).then_some((position, position));
        Ok(RestoreProof { checksum_match: true, data_check })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One write on every replica acting as primary.
    pub fn write_tick(&self) {
        for r in self.lock().replicas.values_mut().filter(|r| r.acting.is_some()) {
            r.position += 1;
        }
    }

    /// Whether `replica` acts as primary, and under which (epoch, token).
    pub fn acting(&self, replica: &str) -> Option<(u64, u64)> {
        self.lock().replicas.get(replica).and_then(|r| r.acting)
    }

    /// The routing this controller's "load balancers" apply, by service.
    pub fn routing(&self) -> BTreeMap<String, (u64, BTreeMap<String, u32>)> {
        self.lock().routing.clone()
    }

    /// (replica, shard, position) of every replica acting as primary.
    pub fn primaries(&self) -> Vec<(String, String, u64)> {
        let inner = self.lock();
        let acting = inner.replicas.iter().filter(|(_, r)| r.acting.is_some());
        acting.map(|(id, r)| (id.clone(), r.shard.clone(), r.position)).collect()
    }

    /// The whole controller (and its databases) died: nothing acts any more,
    /// and nobody is told (the caller records it). Positions survive, like
    /// data on disk.
    pub fn crash(&self) {
        for r in self.lock().replicas.values_mut() {
            r.acting = None;
        }
    }

    /// `replica`'s database process dies (the rest of the controller lives):
    /// it is unhealthy, accepts nothing, and a primary stops acting — until
    /// [`DemoDatabase::restart`].
    pub fn fail(&self, replica: &str) {
        let was = {
            let mut inner = self.lock();
            let Some(r) = inner.replicas.get_mut(replica) else { return };
            r.down = true;
            r.restarts_as = r.acting;
            r.acting
        };
        if was.is_some() {
            self.stop(replica, "the database process died");
        }
    }

    /// `replica`'s database process starts again: as the primary it was,
    /// unless it was fenced while down.
    pub fn restart(&self, replica: &str) {
        let change = {
            let mut inner = self.lock();
            let Some(r) = inner.replicas.get_mut(replica).filter(|r| r.down) else { return };
            r.down = false;
            r.acting = r.restarts_as.take();
            r.acting.map(|(epoch, token)| {
                r.change(replica, epoch, token, true, "restarted as the primary it was (never fenced)")
            })
        };
        if let Some(change) = change {
            (self.observer)(&change);
        }
    }

    pub fn position(&self, replica: &str) -> Option<u64> {
        self.lock().replicas.get(replica).map(|r| r.position)
    }

    /// The answer to a probe from another controller.
    pub fn probe_reply(&self) -> String {
        let inner = self.lock();
        let mut out = probe_header(&self.region);
        // Every replica serves what it has: a demoted primary's last writes
        // still reach the replicas that lag behind it (as WAL would).
        for r in inner.replicas.values().filter(|r| !r.down) {
            out.push_str(&format!("{} {}\n", r.shard, r.position));
        }
        out
    }

    /// Applies a probe answer received now: its region is reachable, and
    /// our replicas of its primaries' shards catch up. Malformed answers are
    /// ignored (returns false).
    pub fn apply_probe(&self, reply: &str) -> bool {
        let Some((region, lines)) = parse_probe(reply) else { return false };
        self.reachable.saw(region);
        // One pass over the answer, one over the replicas: an agent of
        // 10 000 replicas gets thousands of lines per probe.
        let mut positions: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for line in lines {
            let Some((shard, position)) = line.split_once(' ') else { continue };
            let Ok(position) = position.trim().parse::<u64>() else { continue };
            let best = positions.entry(shard).or_default();
            *best = (*best).max(position);
        }
        let mut inner = self.lock();
        for r in inner.replicas.values_mut().filter(|r| r.acting.is_none() && !r.down) {
            if let Some(position) = positions.get(r.shard.as_str()) {
                r.position = r.position.max(*position);
            }
        }
        true
    }
}

impl Probed for DemoDatabase {
    fn probe_reply(&self) -> String {
        DemoDatabase::probe_reply(self)
    }

    fn apply_probe(&self, reply: &str) -> bool {
        DemoDatabase::apply_probe(self, reply)
    }
}

impl ReplicaDriver for DemoDatabase {
    fn status(&self) -> Vec<ReplicaStatus> {
        self.lock()
            .replicas
            .iter()
            .map(|(id, r)| ReplicaStatus { replica_id: id.clone(), position: r.position, lag: 0, healthy: !r.down })
            .collect()
    }

    fn replica_status(&self, replica: &str) -> Option<ReplicaStatus> {
        let inner = self.lock();
        let r = inner.replicas.get(replica)?;
        Some(ReplicaStatus { replica_id: replica.to_string(), position: r.position, lag: 0, healthy: !r.down })
    }

    fn reachable_regions(&self) -> Vec<String> {
        self.reachable.regions()
    }

    fn promote(&self, replica: &str, epoch: u64, token: u64) -> impl Future<Output = Result<(), String>> + Send {
        // Already primary under another epoch or token: that ends here.
        if self.acting(replica).is_some_and(|now| now != (epoch, token)) {
            self.stop(replica, &format!("promoted again at epoch {epoch}"));
        }
        let change = {
            let mut inner = self.lock();
            match inner.replicas.get_mut(replica) {
                Some(r) if r.down => Err(format!("replica {replica}: the database is down")),
                Some(r) => {
                    r.acting = Some((epoch, token));
                    Ok(r.change(replica, epoch, token, true, "promoted"))
                }
                None => Err(format!("replica {replica} is not run here")),
            }
        };
        if let Ok(change) = &change {
            (self.observer)(change);
        }
        std::future::ready(change.map(|_| ()))
    }

    fn backup(&self, replica: &str) -> impl Future<Output = Result<BackupTaken, String>> + Send {
        std::future::ready(self.take_backup(replica))
    }

    fn restore_test(&self, job: &RestoreJob) -> impl Future<Output = Result<RestoreProof, String>> + Send {
        std::future::ready(self.test_restore(job))
    }

    /// Built-in runbook hooks: `smoke-test` (every database this agent runs
    /// is up; it fails naming the one that is down) and `drill-restore`
    /// (the newest verified backups restored in scratch space). Both read
    /// only, so their drill variants are themselves.
    fn hook(&self, job: &interlock_client::HookJob) -> impl Future<Output = Result<String, String>> + Send {
        let outcome = match job.name.as_str() {
            "smoke-test" => {
                let inner = self.lock();
                match inner.replicas.iter().find(|(_, r)| r.down) {
                    Some((id, _)) => Err(format!("smoke-test: the database of {id} is down")),
                    None => Ok(format!("smoke-test: {} database(s) up", inner.replicas.len())),
                }
            }
            // The drill variant of a failover, as far as a model goes: the
            // newest verified backup of each shard restored and checked in
            // scratch space here (production untouched).
            "drill-restore" if job.restores.is_empty() => {
                Err("drill-restore: no verified backup of a shard this agent runs".to_string())
            }
            "drill-restore" => job
                .restores
                .iter()
                .map(|r| {
                    self.test_restore(r)
                        .map(|_| format!("{}/{}: backup {} restored and checked", r.service, r.shard, r.backup_id))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|done| done.join("; ")),
            other => Err(format!("the demo database has no hook {other:?} (it has: smoke-test, drill-restore)")),
        };
        std::future::ready(outcome)
    }

    fn apply_routing(&self, table: &RoutingTable) -> impl Future<Output = Result<(), String>> + Send {
        let weights = table.weights.iter().map(|(k, v)| (k.clone(), *v)).collect();
        self.lock().routing.insert(table.service.clone(), (table.version, weights));
        std::future::ready(Ok(()))
    }

    fn is_primary(&self, replica: &str) -> impl Future<Output = Result<bool, String>> + Send {
        std::future::ready(Ok(self.acting(replica).is_some()))
    }

    fn demote(&self, replica: &str, reason: &str) -> impl Future<Output = Result<(), String>> + Send {
        let result = if self.lock().refuse_demotes && self.acting(replica).is_some() {
            Err("the database refuses a graceful demote".to_string())
        } else {
            // Demoted, it comes back as a standby even if its process is dead
            // now (the PostgreSQL driver writes standby.signal either way).
            // Found by the simulation (seed 133): a demote of a dead primary
            // that left it to restart as one.
            if let Some(r) = self.lock().replicas.get_mut(replica) {
                r.restarts_as = None;
            }
            self.stop(replica, reason);
            Ok(())
        };
        std::future::ready(result)
    }

    fn fence(&self, replica: &str, reason: &str) -> impl Future<Output = Result<(), String>> + Send {
        if let Some(r) = self.lock().replicas.get_mut(replica) {
            r.restarts_as = None;
        }
        self.stop(replica, &format!("fenced: {reason}"));
        std::future::ready(Ok(()))
    }
}

impl DemoDatabase {
    /// Stops `replica` acting as primary (if it did) and tells the observer.
    fn stop(&self, replica: &str, reason: &str) {
        let change = {
            let mut inner = self.lock();
            inner
                .replicas
                .get_mut(replica)
                .and_then(|r| r.acting.take().map(|(epoch, token)| r.change(replica, epoch, token, false, reason)))
        };
        if let Some(change) = change {
            (self.observer)(&change);
        }
    }

    /// From now on graceful demotes fail while a replica acts as primary
    /// (`true`), as a database that hangs on a clean shutdown would; only a
    /// fence stops it. For the simulation.
    pub fn refuse_demotes(&self, refuse: bool) {
        self.lock().refuse_demotes = refuse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_replicate_primaries_and_prove_reachability() {
        let changes = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = changes.clone();
        let eu = DemoDatabase::new("eu", [("o-eu".into(), "orders/0".into())], Duration::from_secs(1), move |c| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(c.clone())
        });
        let us = DemoDatabase::new("us", [("o-us".into(), "orders/0".into())], Duration::from_secs(1), |_| {});
        eu.promote("o-eu", 1, 7).await.expect("promote");
        for _ in 0..5 {
            eu.write_tick();
        }
        assert!(us.apply_probe(&eu.probe_reply()));
        assert_eq!(us.position("o-us"), Some(5));
        assert_eq!(us.reachable_regions(), vec!["eu".to_string()]);
        assert!(!us.apply_probe("garbage\norders/0 99"), "malformed answers change nothing");
        assert_eq!(us.position("o-us"), Some(5));
        eu.demote("o-eu", "test").await.expect("demote");
        eu.demote("o-eu", "again: idempotent").await.expect("demote");
        let log = changes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(log.iter().map(|c| (c.acting, c.position)).collect::<Vec<_>>(), vec![(true, 0), (false, 5)]);
    }

    #[tokio::test]
    async fn a_database_that_refuses_demotes_is_stopped_only_by_a_fence() {
        let db = DemoDatabase::new("eu", [("o-eu".into(), "orders/0".into())], Duration::from_secs(1), |_| {});
        db.refuse_demotes(true);
        db.promote("o-eu", 1, 7).await.expect("promote");
        assert!(db.demote("o-eu", "switchover").await.is_err());
        assert_eq!(db.is_primary("o-eu").await, Ok(true), "a failed demote leaves it acting");
        db.fence("o-eu", "switchover").await.expect("fence");
        assert_eq!(db.is_primary("o-eu").await, Ok(false));
        assert!(db.demote("o-eu", "again").await.is_ok(), "nothing to demote: done");
    }

    #[tokio::test]
    async fn a_backup_restores_elsewhere_and_a_corrupt_one_fails_its_test() {
        let store = BackupStore::memory();
        let db = |region: &str, replica: &str| {
            DemoDatabase::new(region, [(replica.into(), "orders/0".into())], Duration::from_secs(1), |_| {})
                .with_backups(store.clone(), Arc::new(|| 1_000))
        };
        let (eu, us) = (db("eu", "o-eu"), db("us", "o-us"));
        eu.promote("o-eu", 1, 7).await.expect("promote");
        for _ in 0..3 {
            eu.write_tick();
        }
        let taken = eu.backup("o-eu").await.expect("backup");
        assert_eq!((taken.id.as_str(), taken.taken_at_unix_ms), ("o-eu-1000", 1000));
        let mut job = RestoreJob {
            job_id: 9,
            service: "orders".into(),
            shard: "0".into(),
            backup_id: taken.id.clone(),
            location: taken.location.clone(),
            checksum: taken.checksum.clone(),
            check_table: "orders".into(),
            ..RestoreJob::default()
        };
        let proof = us.restore_test(&job).await.expect("restores");
        assert_eq!(proof, RestoreProof { checksum_match: true, data_check: Some((3, 3)) });
        job.checksum = checksum(b"something else");
        assert!(us.restore_test(&job).await.expect_err("corrupt").contains("checksum mismatch"));
        job.checksum = taken.checksum;
        us.fail_restores(true);
        assert!(us.restore_test(&job).await.is_err());
    }

    #[tokio::test]
    async fn a_dead_primary_restarts_as_primary_unless_fenced_while_down() {
        let db = DemoDatabase::new("eu", [("o-eu".into(), "orders/0".into())], Duration::from_secs(1), |_| {});
        db.promote("o-eu", 1, 7).await.expect("promote");
        db.fail("o-eu");
        assert!(!db.status()[0].healthy);
        assert_eq!(db.is_primary("o-eu").await, Ok(false), "a dead process accepts nothing");
        assert!(db.promote("o-eu", 2, 8).await.is_err(), "a dead database is not promoted");
        db.restart("o-eu");
        assert_eq!(db.acting("o-eu"), Some((1, 7)), "crash recovery: the primary it was");
        db.fail("o-eu");
        db.fence("o-eu", "given up").await.expect("fence");
        db.restart("o-eu");
        assert!(db.status()[0].healthy);
        assert_eq!(db.acting("o-eu"), None, "fenced while down: it comes back as a standby");
        db.promote("o-eu", 3, 9).await.expect("promote");
        db.fail("o-eu");
        db.demote("o-eu", "epoch 4 replaces it").await.expect("demote");
        db.restart("o-eu");
        assert_eq!(db.acting("o-eu"), None, "demoted while down: it comes back as a standby");
    }
}
