//! Commands of the coordinator API: apply, get, lease, events.

use crate::output::{table, Printer};
use crate::Failure;
use clap::{Args, Subcommand, ValueEnum};
use interlock_client::{Client, ClientError, Event, LeaseInfo, LeaseKeeper, LeaseOptions, LeaseState, Topology};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ApplyArgs {
    /// The topology file (YAML).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Print the changes it would make; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Regions,
    Shards,
    Replicas,
    Controllers,
    Leases,
    /// Routing tables: version, weights, and which controllers applied them.
    Routing,
    /// Two-person approval requests: pending, expired, approved.
    Approvals,
    /// The backup catalogue: each backup, where it was taken, its restore
    /// tests (where they ran, passed or why not), and each shard against its
    /// RPO and RTO targets. NAME: a SERVICE or SERVICE/SHARD.
    Backups,
    /// Readiness to fail over, per shard and per region: one score (0-100)
    /// with its parts (lag, restore, capacity, drill).
    Readiness,
}

#[derive(Args)]
pub struct GetArgs {
    /// What to show.
    #[arg(value_enum)]
    kind: Kind,
    /// For routing: only this service; for backups: SERVICE or SERVICE/SHARD.
    pub name: Option<String>,
}

#[derive(Subcommand)]
pub enum LeaseCmd {
    /// Grant KEY (fails if another holder has it). Prints the fencing token.
    Grant {
        key: String,
        /// Time to live, e.g. 5s (500ms to 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who holds it [default: interlockctl].
        #[arg(long, default_value = "interlockctl")]
        holder: String,
    },
    /// Keep KEY alive until Ctrl-C, printing the holder's deadline.
    ///
    /// Uses the lease's current holder and token; the deadline printed is the
    /// holder's (send time of the last acknowledged keepalive + TTL × 0.98 − margin).
    Keepalive { key: String },
    /// End the lease on KEY.
    ///
    /// Without --release: a revoke. The lease stops being renewable and the
    /// key is freed when the leader's deadline for it passes (as by expiry),
    /// so a holder cut off from the cluster stops before anyone else starts.
    /// Revoking another identity's lease waits for a second operator
    /// (prints the approval id; `interlockctl approve ID`).
    /// With --release: you hold it (your identity took it) and have stopped
    /// acting; the key is freed at once.
    Revoke {
        key: String,
        /// Only if the lease still has this token.
        #[arg(long)]
        token: Option<u64>,
        /// You are the holder and have stopped acting: free the key now.
        #[arg(long)]
        release: bool,
    },
    /// Show KEY: holder, token, TTL and the time the leader still gives it.
    ///
    /// JSON shape: {"key","holder","token","ttl_ms","remaining_ms"}.
    Get { key: String },
}

#[derive(Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
    /// Only events after this version.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Only events of this kind (repeat for several; "shard." is every
    /// shard.* kind). With --follow the coordinator filters, so a burst of
    /// other events costs this watch nothing.
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Only events whose subject starts with this (a shard "orders/", a
    /// region "eu-west", a lease key "lock/").
    #[arg(long, value_name = "PREFIX", default_value = "")]
    subject_prefix: String,
}

impl EventsArgs {
    fn filter(&self) -> interlock_client::WatchFilter {
        interlock_client::WatchFilter { key_prefix: self.subject_prefix.clone(), kinds: self.kinds.clone() }
    }

    /// The same test as the coordinator's, for the events read without --follow.
    fn wants(&self, e: &Event) -> bool {
        e.subject.starts_with(&self.subject_prefix) && interlock_core::vocab::kind_selected(&self.kinds, &e.kind)
    }
}

/// Reads and parses a topology file, naming the file and the position on error.
fn read_topology(path: &PathBuf) -> Result<Topology, Failure> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure { code: 2, message: format!("{}: {e}", path.display()) })?;
    serde_saphyr::from_str::<Topology>(&text)
        .map_err(|e| Failure { code: 2, message: format!("{}: {e}", path.display()) })
}

pub async fn apply(client: &Client, out: &Printer, args: &ApplyArgs) -> Result<(), Failure> {
    let topology = read_topology(&args.file)?;
    let problems = interlock_core::topology::validate(&topology);
    if !problems.is_empty() {
        let listed: Vec<String> = problems.iter().map(|p| format!("  {}: {}", p.field, p.reason)).collect();
        return Err(Failure {
            code: 2,
            message: format!("{} is refused, nothing was changed:\n{}", args.file.display(), listed.join("\n")),
        });
    }
    let reply = client.apply_topology(&topology, args.dry_run).await?;
    let value = json!({"dry_run": args.dry_run, "changes": reply.changes, "revision": reply.revision});
    out.record(&value, || {
        let mut text = if reply.changes.is_empty() { "no changes".to_string() } else { reply.changes.join("\n") };
        if args.dry_run {
            text.push_str("\n(dry run: nothing was changed)");
        } else if reply.changes.is_empty() {
            text.push_str(" (already applied)");
        } else {
            text.push_str(&format!("\napplied at revision {}", reply.revision));
        }
        text
    })
}

pub fn lease_json(l: &LeaseInfo) -> Value {
    json!({
        "key": l.key, "holder": l.holder, "token": l.token, "ttl_ms": l.ttl_ms, "remaining_ms": l.remaining_ms,
        "owner": l.owner, "revoked": l.revoked,
    })
}

pub async fn get(client: &Client, out: &Printer, args: &GetArgs) -> Result<(), Failure> {
    match args.kind {
        Kind::Regions => {
            let regions = client.regions().await?;
            let value = json!({"regions": regions.iter().map(|r| json!({
                "id": r.id, "capacity": r.capacity, "state": r.state, "maintenance": r.maintenance,
            })).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["REGION", "STATE", "CAPACITY", "MAINTENANCE"]);
                for r in &regions {
                    t.add_row(vec![r.id.clone(), r.state.clone(), r.capacity.to_string(), r.maintenance.to_string()]);
                }
                t.to_string()
            })
        }
        Kind::Shards => {
            let shards = client.shards().await?;
            let value = json!({"shards": shards.iter().map(|s| json!({
                "service": s.service, "id": s.id, "epoch": s.epoch, "primary": s.primary,
                "primary_address": s.primary_address,
                "max_lag_on_failover": s.max_lag_on_failover, "replicas": s.replicas,
                "pending": s.pending, "switchover_to": s.switchover_to, "awaiting_operator": s.awaiting_operator,
                "status": s.status,
            })).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["SERVICE", "SHARD", "EPOCH", "PRIMARY", "STATUS", "REPLICAS"]);
                let dash = |v: &str| if v.is_empty() { "-".to_string() } else { v.to_string() };
                for s in &shards {
                    // The leader's verdict (interlock_core::failover::policy::shard_status).
                    let status = s.status.clone();
                    t.add_row(vec![
                        s.service.clone(),
                        s.id.clone(),
                        s.epoch.to_string(),
                        dash(&s.primary),
                        status,
                        s.replicas.join(","),
                    ]);
                }
                t.to_string()
            })
        }
        Kind::Replicas => {
            let replicas = client.replicas().await?;
            let value = json!({"replicas": replicas.iter().map(|r| json!({
                "id": r.id, "service": r.service, "shard": r.shard, "region": r.region,
                "priority": r.priority, "address": r.address, "role": r.role, "controller": r.controller,
                "acked_role": r.acked_role, "acked_epoch": r.acked_epoch,
                "position": r.position, "lag": r.lag, "healthy": r.healthy,
            })).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&[
                    "REPLICA",
                    "SERVICE/SHARD",
                    "REGION",
                    "ROLE",
                    "ACKED",
                    "PRIORITY",
                    "POSITION",
                    "LAG",
                    "CONTROLLER",
                ]);
                let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                for r in &replicas {
                    let acked = if r.acked_role.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{}@{}", r.acked_role, r.acked_epoch)
                    };
                    t.add_row(vec![
                        r.id.clone(),
                        format!("{}/{}", r.service, r.shard),
                        r.region.clone(),
                        r.role.clone(),
                        acked,
                        r.priority.to_string(),
                        opt(r.position),
                        opt(r.lag),
                        r.controller.clone(),
                    ]);
                }
                t.to_string()
            })
        }
        Kind::Controllers => {
            let controllers = client.controllers().await?;
            let value = json!({"controllers": controllers.iter().map(|c| json!({
                "id": c.id, "region": c.region, "identity": c.identity, "replicas": c.replicas,
                "registered_at_unix_ms": c.registered_at_unix_ms, "last_heartbeat_ms_ago": c.last_heartbeat_ms_ago,
            })).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["CONTROLLER", "REGION", "REPLICAS", "LAST HEARTBEAT"]);
                for c in &controllers {
                    let seen = c.last_heartbeat_ms_ago.map_or("never".to_string(), |ms| format!("{ms} ms ago"));
                    t.add_row(vec![c.id.clone(), c.region.clone(), c.replicas.join(","), seen]);
                }
                t.to_string()
            })
        }
        Kind::Routing => crate::routing::get(client, out, args.name.as_deref()).await,
        Kind::Approvals => crate::security::approvals(client, out).await,
        Kind::Backups => crate::backups::backups(client, out, args.name.as_deref()).await,
        Kind::Readiness => crate::backups::readiness(client, out).await,
        Kind::Leases => {
            let leases = client.leases().await?;
            let value = json!({"leases": leases.iter().map(lease_json).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["KEY", "HOLDER", "TOKEN", "TTL MS", "REMAINING MS"]);
                for l in &leases {
                    t.add_row(vec![
                        l.key.clone(),
                        l.holder.clone(),
                        l.token.to_string(),
                        l.ttl_ms.to_string(),
                        l.remaining_ms.to_string(),
                    ]);
                }
                t.to_string()
            })
        }
    }
}

pub async fn lease(client: &Client, out: &Printer, cmd: &LeaseCmd) -> Result<(), Failure> {
    match cmd {
        LeaseCmd::Grant { key, ttl, holder } => {
            let (token, ttl_ms) = client.lease_grant(key, holder, ttl.as_millis() as u64).await?;
            let value = json!({"key": key, "holder": holder, "token": token, "ttl_ms": ttl_ms});
            out.record(&value, || format!("granted {key} to {holder}: token {token}, ttl {ttl_ms} ms"))
        }
        LeaseCmd::Get { key } => {
            let lease = client.lease_get(key).await?;
            out.record(&lease_json(&lease), || {
                format!(
                    "{}: held by {} with token {}, ttl {} ms, {} ms left",
                    lease.key, lease.holder, lease.token, lease.ttl_ms, lease.remaining_ms
                )
            })
        }
        LeaseCmd::Revoke { key, token, release: true } => {
            let revision = client.lease_release(key, token.unwrap_or(0)).await?;
            out.record(&json!({"key": key, "revision": revision}), || format!("released {key} at revision {revision}"))
        }
        LeaseCmd::Revoke { key, token, release: false } => {
            let reply = client.lease_revoke(key, token.unwrap_or(0)).await?;
            let value = json!({"key": key, "revision": reply.revision, "approval_id": reply.approval_id, "message": reply.message});
            out.record(&value, || reply.message.clone())
        }
        LeaseCmd::Keepalive { key } => keepalive(client, key).await,
    }
}

async fn keepalive(client: &Client, key: &str) -> Result<(), Failure> {
    let current = client.lease_get(key).await?;
    let ttl = Duration::from_millis(current.ttl_ms);
    let mut keeper = LeaseKeeper::acquire(client, key, &current.holder, ttl, LeaseOptions::default()).await?;
    if keeper.token() != current.token {
        return Err(Failure { code: 4, message: format!("{key} was re-granted meanwhile (token {})", keeper.token()) });
    }
    println!("keeping {key} (holder {}, token {}); Ctrl-C stops", current.holder, keeper.token());
    let mut report = tokio::time::interval(ttl / 2);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("stopped keeping {key}; it expires on the coordinator within {} ms", current.ttl_ms);
                return Ok(());
            }
            reason = keeper.lost() => {
                return Err(Failure { code: 1, message: format!("lost {key}: {reason}") });
            }
            _ = report.tick() => {
                if let LeaseState::Held { deadline } = keeper.state() {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    println!("held: token {}, holder deadline in {} ms", keeper.token(), left.as_millis());
                }
            }
        }
    }
}

fn print_event(e: &Event) {
    println!("{:>8}  {:<24} {:<28} {}", e.version, e.kind, e.subject, e.message);
}

pub async fn events(client: &Client, out: &Printer, args: &EventsArgs) -> Result<(), Failure> {
    if !args.follow {
        let mut events = client.events(args.after, 0).await?;
        events.retain(|e| args.wants(e));
        let value = json!({"events": events.iter().map(event_json).collect::<Vec<_>>()});
        return out.record(&value, || {
            let mut t = table(&["VERSION", "KIND", "SUBJECT", "MESSAGE"]);
            for e in &events {
                t.add_row(vec![e.version.to_string(), e.kind.clone(), e.subject.clone(), e.message.clone()]);
            }
            t.to_string()
        });
    }
    let mut watcher = client.watch_filtered("events", args.after, args.filter());
    loop {
        let message = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            m = watcher.next() => m.map_err(|e: ClientError| Failure::from(e))?,
        };
        if message.resync {
            eprintln!("(some events were older than the coordinator keeps; continuing from the oldest kept)");
        }
        for e in &message.events {
            match out.is_table() {
                true => print_event(e),
                false => println!("{}", event_json(e)),
            }
        }
    }
}

fn event_json(e: &Event) -> Value {
    json!({"version": e.version, "seq": e.seq, "at_unix_ms": e.at_unix_ms, "kind": e.kind, "subject": e.subject, "message": e.message})
}
