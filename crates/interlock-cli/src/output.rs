//! Rendering results as a table, JSON or YAML.

use crate::Failure;
use clap::ValueEnum;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};

/// Width tables wrap to (long cells, such as event messages, wrap inside).
const TABLE_WIDTH: u16 = 140;
use interlock_client::{ClusterStatus, KeyValue, Member, MembershipResponse};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
    /// Markdown: `runbook report`; other commands print their table.
    Md,
}

pub struct Printer {
    format: Format,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Printer { format }
    }

    pub fn is_table(&self) -> bool {
        matches!(self.format, Format::Table | Format::Md)
    }

    pub fn is_markdown(&self) -> bool {
        self.format == Format::Md
    }

    /// Prints `value` as JSON/YAML, or `table()` for the table format.
    pub fn record(&self, value: &Value, table: impl FnOnce() -> String) -> Result<(), Failure> {
        let text = match self.format {
            Format::Table | Format::Md => table(),
            Format::Json => serde_json::to_string_pretty(value).map_err(|e| anyhow::anyhow!(e))?,
            Format::Yaml => serde_saphyr::to_string(value).map_err(|e| anyhow::anyhow!("yaml: {e}"))?,
        };
        println!("{}", text.trim_end());
        Ok(())
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(TABLE_WIDTH)
        .set_header(header.to_vec());
    t
}

fn member_json(m: &Member) -> Value {
    json!({
        "id": m.id,
        "region": m.region,
        "grpc_addr": m.grpc_addr,
        "role": m.role,
        "last_applied": m.last_applied,
        "reachable": m.reachable,
    })
}

pub fn print_status(out: &Printer, status: &ClusterStatus) -> Result<(), Failure> {
    let value = json!({
        "leader": status.leader,
        "term": status.term,
        "members": status.members.iter().map(member_json).collect::<Vec<_>>(),
    });
    out.record(&value, || {
        let mut t = table(&["ID", "REGION", "GRPC ADDR", "ROLE", "LAST APPLIED", "REACHABLE"]);
        for m in &status.members {
            let applied = m.last_applied.map_or("-".to_string(), |a| a.to_string());
            t.add_row(vec![
                m.id.to_string(),
                m.region.clone(),
                m.grpc_addr.clone(),
                m.role.clone(),
                applied,
                if m.reachable { "yes" } else { "NO" }.to_string(),
            ]);
        }
        let leader = if status.leader == 0 { "none".to_string() } else { status.leader.to_string() };
        format!("leader: {leader}   term: {}\n{t}", status.term)
    })
}

pub fn print_members(out: &Printer, members: &[Member]) -> Result<(), Failure> {
    let value = json!({
        "members": members.iter().map(|m| json!({
            "id": m.id, "region": m.region, "grpc_addr": m.grpc_addr, "role": m.role,
        })).collect::<Vec<_>>(),
    });
    out.record(&value, || {
        let mut t = table(&["ID", "REGION", "GRPC ADDR", "ROLE"]);
        for m in members {
            t.add_row(vec![m.id.to_string(), m.region.clone(), m.grpc_addr.clone(), m.role.clone()]);
        }
        t.to_string()
    })
}

/// The answer to a membership change: done (the members now), or waiting
/// for a second operator (the approval id).
pub fn print_membership(out: &Printer, reply: &MembershipResponse) -> Result<(), Failure> {
    let members: Vec<Value> = reply
        .members
        .iter()
        .map(|m| json!({"id": m.id, "region": m.region, "grpc_addr": m.grpc_addr, "role": m.role}))
        .collect();
    let value = json!({"message": reply.message, "approval_id": reply.approval_id, "revision": reply.revision, "members": members});
    out.record(&value, || reply.message.clone())
}

pub fn print_kvs(out: &Printer, kvs: &[KeyValue]) -> Result<(), Failure> {
    let value = json!({
        "kvs": kvs.iter().map(|kv| json!({
            "key": kv.key, "value": String::from_utf8_lossy(&kv.value), "mod_revision": kv.mod_revision,
        })).collect::<Vec<_>>(),
    });
    out.record(&value, || {
        let mut t = table(&["KEY", "VALUE", "MOD REVISION"]);
        for kv in kvs {
            t.add_row(vec![
                kv.key.clone(),
                String::from_utf8_lossy(&kv.value).to_string(),
                kv.mod_revision.to_string(),
            ]);
        }
        t.to_string()
    })
}
