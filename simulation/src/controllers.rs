//! Region controllers in the simulation: the SDK's real [`RegionController`]
//! driving a [`DemoDatabase`] per region, probing the other regions'
//! controllers over simulated TCP (witness reports and replication), plus
//! the topology they serve, an operator that asks for switchovers, and an
//! observer of the event log.

use crate::clock::true_ms;
use crate::history::{Acting, Shared};
use crate::world::REGIONS;
use interlock_agent::drivers::backups::BackupStore;
use interlock_agent::drivers::demo::{ActingChange, DemoDatabase};
use interlock_client::{Client, ControllerConfig, ControllerMutations, LeaseOptions, RegionController};
use interlock_core::model::{
    BackupPolicy, BackupSettings, FailoverPolicy, RegionSpec, ReplicaSpec, ServiceSpec, ShardSpec, Topology,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Shards of the simulated service, each with a replica in every region.
pub const SHARDS: usize = 4;
/// Where controllers answer probes.
pub const PROBE_PORT: u16 = 7301;
/// How often a controller probes the others.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A region not answered within this is reported unreachable.
pub const REACHABLE_WINDOW: Duration = Duration::from_millis(1000);
/// One demo write per this on every acting primary.
pub const WRITE_EVERY: Duration = Duration::from_millis(50);
/// The RPO bound of every shard, in demo writes (one second of writes).
pub const MAX_LAG: u64 = 20;
/// Shards' cooldown after an automatic failover.
pub const COOLDOWN_S: u64 = 5;

pub fn controller_name(r: usize) -> String {
    format!("c-{}", REGIONS[r])
}

pub fn replica_name(shard: usize, r: usize) -> String {
    format!("orders-{shard}-{}", REGIONS[r])
}

pub fn shard_name(shard: usize) -> String {
    format!("orders/{shard}")
}

/// Shard k prefers region k % 3, then the next ones: primaries spread out.
/// `no_witnesses` is a mutation: regions declared lost on suspicion alone.
pub fn topology(no_witnesses: bool) -> Topology {
    let shards = (0..SHARDS)
        .map(|k| ShardSpec {
            id: k.to_string(),
            max_lag_on_failover: MAX_LAG,
            cooldown_seconds: COOLDOWN_S,
            replicas: (0..REGIONS.len())
                .map(|r| {
                    let rank = (r + REGIONS.len() - k % REGIONS.len()) % REGIONS.len();
                    ReplicaSpec {
                        id: replica_name(k, r),
                        region: REGIONS[r].to_string(),
                        priority: [100, 90, 50][rank],
                        address: String::new(),
                    }
                })
                .collect(),
            backup: None,
        })
        .collect();
    Topology {
        regions: REGIONS.iter().map(|r| RegionSpec { id: r.to_string(), capacity: 100 }).collect(),
        services: vec![ServiceSpec { name: "orders".into(), shards }],
        failover: FailoverPolicy { witness_quorum: if no_witnesses { 0 } else { 1 }, ..FailoverPolicy::default() },
        routing: Default::default(),
        // Restore tests must keep up with a backup every 5 s.
        backups: BackupSettings {
            policy: BackupPolicy {
                verify_within_seconds: 20,
                rpo_target_seconds: 60,
                rto_target_seconds: 10,
                check_table: "orders".into(),
                ..BackupPolicy::default()
            },
            ..BackupSettings::default()
        },
    }
}

/// The wall clock the demo databases stamp their backups with: the
/// simulation epoch (as `SimClock` counts from) plus true time.
pub const BACKUP_CLOCK_BASE_MS: u64 = 1_767_225_600_000;

/// How often the controllers back up the primaries they run.
pub const BACKUP_EVERY: Duration = Duration::from_secs(5);

/// The demo database of region `r`, recording every start and stop of
/// acting as primary into the history (in true time); its backups go into
/// `store`, which every region shares.
pub fn database(r: usize, shared: Shared, store: BackupStore) -> Arc<DemoDatabase> {
    let replicas = (0..SHARDS).map(|k| (replica_name(k, r), shard_name(k)));
    let db = DemoDatabase::new(REGIONS[r], replicas, REACHABLE_WINDOW, move |change: &ActingChange| {
        record(&shared, r, change, true_ms());
    });
    Arc::new(db.with_backups(store, Arc::new(|| BACKUP_CLOCK_BASE_MS + true_ms())))
}

fn record(shared: &Shared, region: usize, change: &ActingChange, now: u64) {
    let mut h = shared.lock();
    if change.acting {
        h.acting.push(Acting {
            shard: change.shard.clone(),
            replica: change.replica.clone(),
            region,
            epoch: change.epoch,
            token: change.token,
            position: change.position,
            from_ms: now,
            until_ms: None,
        });
    } else if let Some(a) = h
        .acting
        .iter_mut()
        .rev()
        .find(|a| a.replica == change.replica && a.token == change.token && a.until_ms.is_none())
    {
        a.until_ms = Some(now);
    }
    let verb = if change.acting { "acts as primary" } else { "stops acting" };
    h.note(
        now,
        format!(
            "{} {verb} for {} (epoch {}, token {}, position {}): {}",
            change.replica, change.shard, change.epoch, change.token, change.position, change.reason
        ),
    );
}

/// A controller host: probe server, prober, demo writes, and the SDK's
/// region controller.
pub async fn controller(
    r: usize,
    client: Client,
    db: Arc<DemoDatabase>,
    mutations: ControllerMutations,
) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PROBE_PORT)).await?;
    let server_db = db.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let reply = server_db.probe_reply();
            tokio::spawn(async move {
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let prober_db = db.clone();
    tokio::spawn(async move {
        let peers: Vec<String> =
            (0..REGIONS.len()).filter(|o| *o != r).map(|o| format!("{}:{PROBE_PORT}", controller_name(o))).collect();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            for peer in &peers {
                let db = prober_db.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    let read = async {
                        let mut stream = turmoil::net::TcpStream::connect(peer.as_str()).await.ok()?;
                        let mut text = String::new();
                        stream.read_to_string(&mut text).await.ok()?;
                        Some(text)
                    };
                    if let Ok(Some(text)) = tokio::time::timeout(PROBE_EVERY * 2, read).await {
                        db.apply_probe(&text);
                    }
                });
            }
        }
    });
    let writer_db = db.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WRITE_EVERY);
        loop {
            tick.tick().await;
            writer_db.write_tick();
        }
    });
    let config = ControllerConfig {
        id: controller_name(r),
        region: REGIONS[r].to_string(),
        identity: format!("controller:{}", REGIONS[r]),
        replicas: (0..SHARDS).map(|k| replica_name(k, r)).collect(),
        lease: LeaseOptions::default(),
        give_up_after: ControllerConfig::GIVE_UP_AFTER,
        backup_every: Some(BACKUP_EVERY),
        mutations,
    };
    RegionController::run(client, config, db).await?;
    Ok(())
}

/// Applies the topology (retrying until a leader takes it).
pub async fn apply_topology(client: &Client, topology: &Topology, shared: &Shared) {
    loop {
        match client.apply_topology(topology, false).await {
            Ok(_) => {
                shared.lock().note(true_ms(), "topology applied".to_string());
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Records every event of the log as it is seen (region declarations in
/// particular), in true time. Polls with unary calls rather than holding a
/// watch open: a watch on a node that crashed can hang until it returns,
/// and the checker needs the delay between a decision and its sighting to
/// stay small (a few seconds: the client's retry budget).
pub async fn observe_events(client: Client, shared: Shared, until_ms: u64) -> turmoil::Result {
    let mut after = 0;
    let mut polls = 0u64;
    // The catalogue is read once, shortly before the end.
    let catalogue_at = until_ms.saturating_sub(2_000);
    while true_ms() < until_ms {
        if true_ms() >= catalogue_at && shared.lock().backups_final.is_none() {
            if let Ok(backups) = client.backups("", "").await {
                let all = backups.iter().flat_map(|s| &s.backups);
                let tests: Vec<&str> = all.clone().flat_map(|b| &b.restore_tests).map(|t| t.state.as_str()).collect();
                let count = |state: &str| tests.iter().filter(|t| **t == state).count();
                let mut h = shared.lock();
                h.note(
                    true_ms(),
                    format!(
                        "catalogue read: {} backups, {} verified; restore tests {} passed, {} failed, {} abandoned",
                        all.clone().count(),
                        all.filter(|b| b.verified).count(),
                        count("PASSED"),
                        count("FAILED"),
                        count("ABANDONED")
                    ),
                );
                h.backups_final = Some((true_ms(), backups));
            }
            if let Ok(executions) = client.executions(0).await {
                let mut h = shared.lock();
                let finals = executions.iter().filter(|e| e.r#final).count();
                h.note(true_ms(), format!("executions read: {}, {finals} final", executions.len()));
                h.executions_final = Some((true_ms(), executions));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        polls += 1;
        if polls.is_multiple_of(4) {
            check_routing(&client, &shared).await;
        }
        let Ok(events) = client.events(after, 0).await else { continue };
        let now = true_ms();
        let mut h = shared.lock();
        for e in events {
            after = after.max(e.version);
            if e.kind.starts_with("region.") || e.kind.starts_with("shard.") || e.kind == "replica.fenced" {
                h.note(now, format!("event {} {}: {}", e.kind, e.subject, e.message));
            }
            if e.kind.starts_with("runbook.")
                || e.kind == "maintenance"
                || e.kind.starts_with("region.drain")
                || e.kind.starts_with("region.undrain")
                || e.kind == "shard.promoted"
                || e.kind == "shard.demoted"
            {
                h.runbook_events.push((now, e.kind.clone(), e.subject.clone(), e.message.clone()));
            }
            if e.kind == "region.lost" {
                if let Some(r) = REGIONS.iter().position(|x| *x == e.subject) {
                    h.lost_declared.push((now, r));
                }
            }
        }
    }
    Ok(())
}

/// Reads every routing table and checks what must hold at every instant:
/// weights sum to 10 000 (or nobody can serve), a LOST region has none.
async fn check_routing(client: &Client, shared: &Shared) {
    let Ok(statuses) = client.routing("").await else { return };
    let now = true_ms();
    let mut h = shared.lock();
    for s in statuses {
        let Some(table) = s.table else { continue };
        let sum: u32 = table.weights.values().sum();
        if sum != 10_000 && sum != 0 {
            h.routing_violations.push(format!("at {now} ms {} version {} sums to {sum}", table.service, table.version));
        }
        for (region, weight) in &table.weights {
            if *weight > 0 && s.region_states.get(region).map(String::as_str) == Some("LOST") {
                h.routing_violations.push(format!(
                    "at {now} ms {} version {} gives {weight} bps to LOST {region}",
                    table.service, table.version
                ));
            }
        }
        h.routing_versions.insert(table.service.clone(), table.version);
    }
}

/// Two operators at work whatever the network is doing: now and then a
/// planned switchover to a random replica; sometimes a drain of a region
/// undrained a few seconds later; and sometimes the first revokes a shard's
/// primary lease (the second approves it) and then asks for an operator
/// failover to a random replica, again and again for a few seconds — which
/// must wait until the old primary's lease has run out.
pub async fn operator(
    (first, second): (Client, Client),
    shared: Shared,
    seed: u64,
    from_ms: u64,
    until_ms: u64,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed);
    let note = |line: String| shared.lock().note(true_ms(), line);
    tokio::time::sleep(Duration::from_millis(from_ms)).await;
    while true_ms() < until_ms {
        let shard = rng.gen_range(0..SHARDS);
        let to = replica_name(shard, rng.gen_range(0..REGIONS.len()));
        match rng.gen_range(0..3) {
            0 => {
                let outcome = first.switchover(&shard_name(shard), &to, Duration::ZERO).await;
                note(match outcome {
                    Ok(r) => format!("operator: switchover {} to {to}: {}", shard_name(shard), r.message),
                    Err(e) => format!("operator: switchover {} to {to} refused or failed: {e}", shard_name(shard)),
                });
            }
            1 => revoke_and_fail_over(&first, &second, shard, &mut rng, &note).await,
            _ => {
                let region = REGIONS[rng.gen_range(0..REGIONS.len())];
                let step = Duration::from_millis(1_000);
                for undrain in [false, true] {
                    let outcome = first.drain(region, undrain, 2_500, step, "simulated operator").await;
                    let verb = if undrain { "undrain" } else { "drain" };
                    note(match outcome {
                        Ok(r) => format!("operator: {verb} {region}: {}", r.message),
                        Err(e) => format!("operator: {verb} {region} refused or failed: {e}"),
                    });
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(3_000..6_000))).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(6_000..12_000))).await;
    }
    Ok(())
}

/// The first operator revokes `shard`'s primary lease (the second approves
/// the revoke of another identity's lease), then asks for a failover to a
/// random replica every half second for four seconds.
async fn revoke_and_fail_over(first: &Client, second: &Client, shard: usize, rng: &mut StdRng, note: &impl Fn(String)) {
    let key = format!("shard/{}/primary", shard_name(shard));
    match first.lease_revoke(&key, 0).await {
        Ok(r) if r.approval_id != 0 => match second.approve(r.approval_id).await {
            Ok(a) => note(format!("operator: revoke {key} approved: {}", a.message)),
            Err(e) => note(format!("operator: approving the revoke of {key} failed: {e}")),
        },
        Ok(r) => note(format!("operator: revoke {key}: {}", r.message)),
        Err(e) => note(format!("operator: revoke {key} refused or failed: {e}")),
    }
    for _ in 0..8 {
        let to = replica_name(shard, rng.gen_range(0..REGIONS.len()));
        match first.failover(&shard_name(shard), &to, false, Duration::ZERO).await {
            Ok(r) => {
                note(format!("operator: failover {} to {to}: {}", shard_name(shard), r.message));
                return;
            }
            Err(e) => note(format!("operator: failover {} to {to} refused or failed: {e}", shard_name(shard))),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Closes the acting intervals of region `r`'s replicas at `now`: its
/// controller crashed (a crashed process stops acting when it dies).
pub fn crashed(shared: &Shared, db: &DemoDatabase, r: usize, now: u64) {
    db.crash();
    let mut h = shared.lock();
    for a in h.acting.iter_mut().filter(|a| a.region == r && a.until_ms.is_none()) {
        a.until_ms = Some(now);
    }
}
