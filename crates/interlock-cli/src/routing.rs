//! Routing commands: show, set weights, drain and undrain regions (SPEC §5).

use crate::output::{table, Printer};
use crate::Failure;
use clap::{Args, Subcommand};
use interlock_client::{Client, ClientError, RoutingStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Subcommand)]
pub enum RoutingCmd {
    /// Set the base weights of SERVICE: REGION=WEIGHT for every region, in
    /// basis points (5000) or percent (50%), summing to 10000 / 100%.
    ///
    /// Every change is checked against the safety rules (min-serving-regions,
    /// capacity-ceiling, never-all-zero, max-step); a refusal names the rule
    /// and exits 4. `--override RULE --reason TEXT` bypasses a rule for this
    /// change only; the override is recorded in the event log.
    Set {
        service: String,
        /// REGION=WEIGHT pairs, e.g. eu-west=50% us-east=30% ap-south=20%.
        #[arg(required = true)]
        weights: Vec<String>,
        /// A rule to bypass for this change (repeatable).
        #[arg(long = "override")]
        overrides: Vec<String>,
        /// Why (required with --override).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Args)]
pub struct DrainArgs {
    /// The region to drain (or undrain).
    pub region: String,
    /// How much of the region's weight each step moves: 10% or 1000 (bps).
    #[arg(long, default_value = "10%")]
    pub step: String,
    /// Time between steps.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Why, for the event log.
    #[arg(long, default_value = "operator")]
    pub reason: String,
}

/// "50%" -> 5000, "33.34%" -> 3334, "2500" -> 2500.
pub fn parse_bps(text: &str) -> Result<u32, String> {
    let value = match text.strip_suffix('%') {
        Some(pct) => pct
            .trim()
            .parse::<f64>()
            .map(|p| (p * 100.0).round())
            .map_err(|_| format!("{text:?} is not a percentage"))?,
        None => text
            .trim()
            .parse::<u32>()
            .map(f64::from)
            .map_err(|_| format!("{text:?} is not a number of basis points"))?,
    };
    if !(0.0..=10_000.0).contains(&value) {
        return Err(format!("{text:?} is out of range 0..=10000 bps (0..=100%)"));
    }
    Ok(value as u32)
}

fn parse_weights(pairs: &[String]) -> Result<BTreeMap<String, u32>, Failure> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        let (region, weight) =
            pair.split_once('=').ok_or_else(|| Failure::usage(format!("weights: {pair:?} is not REGION=WEIGHT")))?;
        let bps = parse_bps(weight).map_err(|e| Failure::usage(format!("weights: {region}: {e}")))?;
        if out.insert(region.to_string(), bps).is_some() {
            return Err(Failure::usage(format!("weights: region {region} given twice")));
        }
    }
    Ok(out)
}

fn status_json(s: &RoutingStatus) -> serde_json::Value {
    let table = s.table.clone().unwrap_or_default();
    let sorted =
        |m: &std::collections::HashMap<String, u32>| m.iter().map(|(k, v)| (k.clone(), *v)).collect::<BTreeMap<_, _>>();
    json!({
        "service": table.service,
        "version": table.version,
        "weights": sorted(&table.weights),
        "base": sorted(&table.base),
        "converged": s.converged,
        "acknowledged": s.acks.iter().map(|a| json!({
            "controller": a.controller_id, "version": a.version, "propagation_ms": a.propagation_ms,
        })).collect::<Vec<_>>(),
        "region_states": s.region_states.iter().collect::<BTreeMap<_, _>>(),
    })
}

pub async fn get(client: &Client, out: &Printer, service: Option<&str>) -> Result<(), Failure> {
    let statuses = client.routing(service.unwrap_or_default()).await?;
    let value = json!({"routing": statuses.iter().map(status_json).collect::<Vec<_>>()});
    out.record(&value, || {
        let mut t = table(&["SERVICE", "VERSION", "REGION", "STATE", "WEIGHT", "BASE", "ACKNOWLEDGED"]);
        for s in &statuses {
            let Some(tbl) = &s.table else { continue };
            let acked = s.acks.iter().filter(|a| a.version >= tbl.version).count();
            let regions: BTreeMap<&String, &u32> = tbl.weights.iter().collect();
            for (i, (region, weight)) in regions.into_iter().enumerate() {
                let pct = |bps: u32| format!("{:.2}%", f64::from(bps) / 100.0);
                t.add_row(vec![
                    if i == 0 { tbl.service.clone() } else { String::new() },
                    if i == 0 { tbl.version.to_string() } else { String::new() },
                    region.clone(),
                    s.region_states.get(region).cloned().unwrap_or_default(),
                    pct(*weight),
                    pct(*tbl.base.get(region).unwrap_or(&0)),
                    if i == 0 {
                        format!("{acked} controllers{}", if s.converged { " (converged)" } else { "" })
                    } else {
                        String::new()
                    },
                ]);
            }
        }
        t.to_string()
    })
}

pub async fn routing(client: &Client, out: &Printer, cmd: &RoutingCmd) -> Result<(), Failure> {
    match cmd {
        RoutingCmd::Set { service, weights, overrides, reason } => {
            let weights = parse_weights(weights)?;
            let reply = client.set_routing(service, &weights, overrides, reason).await?;
            let value = json!({"message": reply.message, "revision": reply.revision, "approval_id": reply.approval_id});
            out.record(&value, || reply.message.clone())
        }
    }
}

pub async fn drain(client: &Client, out: &Printer, args: &DrainArgs, undrain: bool) -> Result<(), Failure> {
    let step = parse_bps(&args.step).map_err(|e| Failure::usage(format!("step: {e}")))?;
    if step == 0 {
        return Err(ClientError::InvalidArgument("step: must be above 0".into()).into());
    }
    let reply = client.drain(&args.region, undrain, step, args.interval, &args.reason).await?;
    out.record(&json!({"message": reply.message, "revision": reply.revision}), || reply.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_in_percent_or_basis_points() {
        assert_eq!(parse_bps("50%"), Ok(5000));
        assert_eq!(parse_bps("33.34%"), Ok(3334));
        assert_eq!(parse_bps("2500"), Ok(2500));
        assert!(parse_bps("101%").is_err());
        assert!(parse_bps("half").is_err());
    }
}
