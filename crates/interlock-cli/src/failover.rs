//! Operator actions on primaries and regions: switchover, failover,
//! maintenance, region activation (SPEC §4).

use crate::output::Printer;
use crate::Failure;
use clap::{Args, Subcommand};
use interlock_client::{Client, ClientError, OperationResponse};
use serde_json::json;
use std::time::Duration;

/// The longest a switchover or failover call waits on the server.
pub const LONGEST_WAIT: Duration = Duration::from_secs(300);

#[derive(Args)]
pub struct SwitchoverArgs {
    /// SERVICE/SHARD to switch over (omit with --region).
    #[arg(required_unless_present = "region", conflicts_with = "region")]
    pub shard: Option<String>,
    /// The replica to promote.
    #[arg(long, required_unless_present = "region")]
    pub to: Option<String>,
    /// Move every primary out of REGION, each to the replica elsewhere that
    /// the coordinator ranks best (best position, then priority) and that
    /// passes the switchover preconditions.
    #[arg(long)]
    pub region: Option<String>,
    /// How long to wait for each switchover (default: the policy's
    /// switchover_timeout_ms + promote_ack_timeout_ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
}

#[derive(Args)]
pub struct FailoverArgs {
    /// SERVICE/SHARD to give a new primary.
    pub shard: String,
    /// The replica to promote.
    #[arg(long)]
    pub to: String,
    /// Promote even if the replica is further behind than max_lag_on_failover
    /// (committed writes it has not received are lost). Asks for confirmation.
    #[arg(long)]
    pub accept_data_loss: bool,
    /// Wait this long for the new primary's acknowledgement (0s: do not wait).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

#[derive(Subcommand)]
pub enum MaintenanceCmd {
    /// Pause automation (no region is declared lost, no automatic promotion)
    /// for one region, or for all with no --region (Patroni's pause).
    On(MaintenanceArgs),
    /// Resume automation.
    Off(MaintenanceArgs),
}

#[derive(Args)]
pub struct MaintenanceArgs {
    /// Only this region (default: every region).
    #[arg(long)]
    pub region: Option<String>,
    /// Why, for the event log.
    #[arg(long, default_value = "operator")]
    pub reason: String,
}

#[derive(Subcommand)]
pub enum RegionCmd {
    /// Make a RECOVERING (returned after loss) or drained region ACTIVE:
    /// its replicas become candidates again. Traffic returns only this way.
    Activate {
        region: String,
        /// Why, for the event log.
        #[arg(long, default_value = "operator")]
        reason: String,
    },
}

fn report(out: &Printer, r: &OperationResponse) -> Result<(), Failure> {
    let value = json!({"message": r.message, "revision": r.revision, "epoch": r.epoch, "approval_id": r.approval_id});
    out.record(&value, || r.message.clone())
}

pub async fn switchover(client: &Client, out: &Printer, args: &SwitchoverArgs) -> Result<(), Failure> {
    let wait = args.wait.unwrap_or(Duration::ZERO);
    if let (Some(shard), Some(to)) = (&args.shard, &args.to) {
        return report(out, &client.switchover(shard, to, wait).await?);
    }
    let Some(region) = &args.region else {
        return Err(ClientError::InvalidArgument("shard: give SERVICE/SHARD --to REPLICA, or --region".into()).into());
    };
    // Which shards have their primary in the region; the coordinator picks
    // each one's target (best position, then priority) and checks it.
    let replicas = client.replicas().await?;
    let shards: Vec<String> = client
        .shards()
        .await?
        .iter()
        .filter(|s| replicas.iter().any(|r| r.id == s.primary && r.region == *region))
        .map(|s| format!("{}/{}", s.service, s.id))
        .collect();
    let mut failed = 0;
    let mut results = Vec::new();
    for shard in shards {
        let outcome = client.switchover_away_from(&shard, region, wait).await.map(|r| r.message);
        match outcome {
            Ok(message) => {
                eprintln!("{message}");
                results.push(json!({"shard": shard, "ok": true, "message": message}));
            }
            Err(e) => {
                eprintln!("{shard}: {e}");
                failed += 1;
                results.push(json!({"shard": shard, "ok": false, "message": e.to_string()}));
            }
        }
    }
    let summary = format!("{} primaries moved out of {region}, {failed} failed", results.len() - failed);
    out.record(&json!({"region": region, "results": results}), || summary.clone())?;
    if failed > 0 {
        return Err(Failure { code: 4, message: summary });
    }
    Ok(())
}

pub async fn failover(client: &Client, out: &Printer, args: &FailoverArgs, yes: bool) -> Result<(), Failure> {
    if args.accept_data_loss {
        crate::confirm_dangerous(
            yes,
            &format!("Promote {} in {} even if it lost committed writes", args.to, args.shard),
        )?;
    }
    report(out, &client.failover(&args.shard, &args.to, args.accept_data_loss, args.wait).await?)
}

pub async fn maintenance(client: &Client, out: &Printer, cmd: &MaintenanceCmd) -> Result<(), Failure> {
    let (on, args) = match cmd {
        MaintenanceCmd::On(a) => (true, a),
        MaintenanceCmd::Off(a) => (false, a),
    };
    report(out, &client.set_maintenance(args.region.as_deref(), on, &args.reason).await?)
}

pub async fn region(client: &Client, out: &Printer, cmd: &RegionCmd) -> Result<(), Failure> {
    match cmd {
        RegionCmd::Activate { region, reason } => report(out, &client.activate_region(region, reason).await?),
    }
}
