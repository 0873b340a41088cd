//! Two-person approvals and the audit trail (SPEC §9): `approve`, `get
//! approvals`, `audit list`, `audit verify`.

use crate::output::{table, Printer};
use crate::Failure;
use clap::Subcommand;
use interlock_client::{AuditEntry, Client};
use interlock_core::audit::{hex, verify};
use interlock_core::model::AuditCheckpoint;
use serde_json::json;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Every kept entry: sequence, time, identity, action, outcome.
    ///
    /// JSON: {"checkpoint_seq", "entries": [{"seq","at_unix_ms","by","action","outcome","hash"}]}.
    List {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Recompute the hash chain on every reachable node.
    ///
    /// Each node's own copy is read (no leader involved) and checked: every
    /// entry's hash recomputed from its fields, every link to the one before.
    /// Exits 1 naming the first bad entry and its node; 3 if no node answers.
    Verify,
}

pub async fn approve(client: &Client, out: &Printer, id: u64) -> Result<(), Failure> {
    let reply = client.approve(id).await?;
    out.record(&json!({"approval_id": id, "revision": reply.revision, "message": reply.message}), || {
        reply.message.clone()
    })
}

pub async fn approvals(client: &Client, out: &Printer) -> Result<(), Failure> {
    let approvals = client.approvals().await?;
    let value = json!({"approvals": approvals.iter().map(|a| json!({
        "id": a.id, "action": a.action, "reason": a.reason, "requested_by": a.requested_by,
        "requested_at_unix_ms": a.requested_at_unix_ms, "expires_at_unix_ms": a.expires_at_unix_ms,
        "status": a.status, "approved_by": a.approved_by, "outcome": a.outcome,
    })).collect::<Vec<_>>()});
    out.record(&value, || {
        let mut t = table(&["ID", "STATUS", "REQUESTED BY", "ACTION", "APPROVED BY", "OUTCOME"]);
        for a in &approvals {
            t.add_row(vec![
                a.id.to_string(),
                a.status.clone(),
                a.requested_by.clone(),
                a.action.clone(),
                a.approved_by.clone(),
                a.outcome.clone(),
            ]);
        }
        t.to_string()
    })
}

pub async fn audit(client: &Client, out: &Printer, cmd: &AuditCmd) -> Result<(), Failure> {
    match cmd {
        AuditCmd::List { after } => {
            let mut entries: Vec<AuditEntry> = Vec::new();
            let mut checkpoint = 0;
            loop {
                let page = client.audit(entries.last().map_or(*after, |e| e.seq), 0).await?;
                checkpoint = page.checkpoint_seq.max(checkpoint);
                let more = !page.entries.is_empty();
                entries.extend(page.entries);
                if !more {
                    break;
                }
            }
            let value = json!({"checkpoint_seq": checkpoint, "entries": entries.iter().map(|e| json!({
                "seq": e.seq, "at_unix_ms": e.at_unix_ms, "by": e.by, "action": e.action,
                "outcome": e.outcome, "hash": hex(&e.hash),
            })).collect::<Vec<_>>()});
            out.record(&value, || {
                let mut t = table(&["SEQ", "AT (UNIX MS)", "BY", "ACTION", "OUTCOME"]);
                for e in &entries {
                    t.add_row(vec![
                        e.seq.to_string(),
                        e.at_unix_ms.to_string(),
                        e.by.clone(),
                        e.action.clone(),
                        e.outcome.clone(),
                    ]);
                }
                let trimmed = if checkpoint > 0 {
                    format!("\nentries up to {checkpoint} were trimmed; the chain continues from their checkpoint")
                } else {
                    String::new()
                };
                format!("{t}{trimmed}")
            })
        }
        AuditCmd::Verify => verify_all(client, out).await,
    }
}

/// One node's verdict.
struct Verdict {
    endpoint: String,
    node: u64,
    outcome: Result<usize, String>,
}

async fn verify_all(client: &Client, out: &Printer) -> Result<(), Failure> {
    let mut verdicts = Vec::new();
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        match read_node(client, index).await {
            Ok((node, checkpoint, entries)) => {
                let outcome = verify(checkpoint, &entries).map_err(|b| format!("entry {} is bad: {}", b.seq, b.reason));
                verdicts.push(Verdict { endpoint: endpoint.clone(), node, outcome });
            }
            Err(e) => eprintln!("{endpoint}: not checked: {e}"),
        }
    }
    if verdicts.is_empty() {
        return Err(Failure { code: 3, message: "no node answered; nothing was verified".to_string() });
    }
    let bad: Vec<String> = verdicts
        .iter()
        .filter_map(|v| v.outcome.as_ref().err().map(|e| format!("node {} ({}): {e}", v.node, v.endpoint)))
        .collect();
    let value = json!({"nodes": verdicts.iter().map(|v| json!({
        "node": v.node, "endpoint": v.endpoint,
        "ok": v.outcome.is_ok(), "entries": v.outcome.as_ref().ok(), "error": v.outcome.as_ref().err(),
    })).collect::<Vec<_>>()});
    out.record(&value, || {
        verdicts
            .iter()
            .map(|v| match &v.outcome {
                Ok(n) => format!("node {} ({}): {n} entries, chain intact", v.node, v.endpoint),
                Err(e) => format!("node {} ({}): BROKEN: {e}", v.node, v.endpoint),
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if let Some(first) = bad.first() {
        return Err(Failure { code: 1, message: format!("audit chain broken: {first}") });
    }
    Ok(())
}

/// A node's whole kept trail, page by page.
async fn read_node(
    client: &Client,
    index: usize,
) -> Result<(u64, AuditCheckpoint, Vec<interlock_core::model::AuditEntry>), String> {
    let mut entries = Vec::new();
    let mut after = 0;
    let mut checkpoint = AuditCheckpoint::default();
    loop {
        let page = client.audit_of_node(index, after, 0).await.map_err(|e| e.to_string())?;
        let node = page.node_id;
        if after == 0 {
            let hash: [u8; 32] = match page.checkpoint_hash.len() {
                0 => [0; 32],
                _ => page.checkpoint_hash.as_slice().try_into().map_err(|_| "checkpoint hash is not 32 bytes")?,
            };
            checkpoint = AuditCheckpoint { seq: page.checkpoint_seq, hash };
            after = page.checkpoint_seq;
        }
        if page.entries.is_empty() {
            return Ok((node, checkpoint, entries));
        }
        for e in &page.entries {
            let entry = interlock_proto::convert::audit_entry_from(e)
                .ok_or_else(|| format!("entry {} has a hash that is not 32 bytes", e.seq))?;
            after = entry.seq;
            entries.push(entry);
        }
    }
}
