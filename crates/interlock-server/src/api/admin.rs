//! The `interlock.v1.Admin` service: apply the declared topology, operator
//! actions (routing, drains, switchover, failover, maintenance), and
//! linearizable views of the state for operators. The rules an operator
//! action must meet are `interlock_core::failover::policy`'s; this module
//! gathers the leader's observations and maps the answers to statuses.

use super::auth::{caller, Caller};
use super::{
    ask_approval, awaiting_approval, invalid, linearizable, on_leader, propose_here, refusal_status, revision_of,
    to_leader,
};
use crate::control::leases::LeaseTable;
use crate::control::liveness::Liveness;
use crate::control::routing_acks::RoutingAcks;
use crate::ctx::NodeCtx;
use interlock_core::command::Action;
use interlock_core::failover::detector::DetectorParams;
use interlock_core::failover::policy::{self, Refused};
use interlock_core::failover::Observations;
use interlock_core::vocab::{validate_id, validate_shard_key, PromotionMode, RegionState, Rule};
use interlock_core::{audit, topology, Command, State, Topology};
use interlock_proto::convert::lease_info;
use interlock_proto::v1::admin_client::AdminClient;
use interlock_proto::v1::admin_server::{Admin, AdminServer};
use interlock_proto::v1::{
    ApplyRunbookRequest, ControlExecutionRequest, ExecutionList, GetExecutionsRequest, GetRunbooksRequest,
    RunRunbookRequest, RunRunbookResponse, RunbookList,
};
use interlock_proto::v1::{
    ApplyTopologyRequest, ApplyTopologyResponse, ApprovalList, ApproveRequest, AuditList, ControllerInfo,
    ControllerList, DrainRequest, EventList, FailoverRequest, GetAuditRequest, GetEventsRequest, GetRoutingRequest,
    LeaseList, ListRequest, MaintenanceRequest, OperationResponse, RegionList, RegionRequest, ReplicaList, RoutingList,
    RoutingStatus, SetRoutingRequest, ShardList, SwitchoverRequest,
};
use interlock_proto::v1::{BackupList, GetBackupsRequest, ReadinessReport};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Most audit entries one GetAudit answers.
pub const AUDIT_PAGE_MAX: u32 = 10_000;

/// Most events one GetEvents answers.
pub const EVENTS_PAGE_MAX: u32 = 10_000;

pub struct AdminService {
    pub ctx: Arc<NodeCtx>,
    pub leases: Arc<LeaseTable>,
    pub liveness: Arc<Liveness>,
    pub routing_acks: Arc<RoutingAcks>,
}

impl AdminService {
    pub fn into_service(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

/// Serves a linearizable read: from the leader if this node is not it, or
/// falls through to serve it here once this node has confirmed leadership.
macro_rules! leader_read {
    ($self:ident, $metadata:expr, $message:expr, $method:ident) => {
        if let Some(reply) =
            linearizable(&$self.ctx, &$metadata, to_leader!(AdminClient, $method, $message.clone())).await?
        {
            return Ok(reply);
        }
    };
}

/// Operator actions that depend on the leader's soft state (liveness,
/// positions) run on the leader: other nodes forward the whole request.
macro_rules! on_leader {
    ($self:ident, $metadata:expr, $message:expr, $method:ident) => {
        if let Some(reply) =
            on_leader(&$self.ctx, &$metadata, to_leader!(AdminClient, $method, $message.clone())).await?
        {
            return Ok(reply);
        }
    };
}

fn refused((code, reason): Refused) -> Status {
    refusal_status(code, reason)
}

/// Checks the fields every switchover and failover request has.
fn validate_operation(shard: &str, to: &str, (wait_field, wait_ms): (&str, u64)) -> Result<(), Status> {
    validate_shard_key(shard).map_err(invalid)?;
    if !to.is_empty() {
        validate_id(to, "to").map_err(invalid)?;
    }
    if Duration::from_millis(wait_ms) > OPERATION_WAIT_MAX {
        return Err(Status::invalid_argument(format!("{wait_field}: at most {}", OPERATION_WAIT_MAX.as_millis())));
    }
    Ok(())
}

/// Longest an operator call waits for a switchover or a promotion.
pub const OPERATION_WAIT_MAX: Duration = Duration::from_secs(300);

impl AdminService {
    /// Proposes `command` for `caller` on this (leader) node; its revision.
    async fn propose_here(&self, caller: &Caller, command: Command) -> Result<u64, Status> {
        Ok(revision_of(&propose_here(&self.ctx, caller, command).await?))
    }

    /// The leader's observations now, as the planner sees them.
    pub(crate) fn observations(&self, state: &State) -> Observations {
        let params = DetectorParams::from_policy(&state.topology.failover);
        self.liveness.observations(self.ctx.clock.monotonic_ms(), self.ctx.clock.unix_ms(), &params)
    }

    /// Waits until `shard_key` has `to` as its acknowledged primary, or the
    /// attempt visibly ended otherwise.
    async fn wait_for_primary(&self, shard_key: &str, to: &str, wait: Duration) -> Result<OperationResponse, Status> {
        let mut changes = self.ctx.state.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let applied = self.ctx.state.read();
                let s = &applied.state;
                let Some(shard) = s.shards.get(shard_key) else {
                    return Err(Status::not_found(format!("shard: {shard_key} was removed")));
                };
                if shard.primary.as_deref() == Some(to) && shard.pending.is_none() {
                    return Ok(OperationResponse {
                        revision: s.revision,
                        message: format!("{to} is the primary of {shard_key} at epoch {}", shard.epoch),
                        epoch: shard.epoch,
                        approval_id: 0,
                    });
                }
                let underway = shard.switchover.as_ref().is_some_and(|sw| sw.to == to)
                    || shard.pending.as_ref().is_some_and(|p| p.replica == to);
                if !underway && shard.primary.as_deref() != Some(to) {
                    let last = s.events.iter().rev().find(|e| e.subject == shard_key || e.subject == to);
                    return Err(Status::failed_precondition(format!(
                        "{shard_key}: {to} did not become primary: {}",
                        last.map_or("no event recorded".to_string(), |e| format!("{} {}", e.kind, e.message))
                    )));
                }
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return Err(Status::deadline_exceeded(format!(
                    "{shard_key}: {to} is not the acknowledged primary after {wait:?}; see `interlockctl events`"
                )));
            }
        }
    }
}

/// Default drain step and interval (`interlockctl drain` without flags).
pub const DRAIN_STEP_BPS: u32 = 1_000;
pub const DRAIN_INTERVAL_MS: u64 = 30_000;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_routing(&self, request: Request<GetRoutingRequest>) -> Result<Response<RoutingList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_routing);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        if !message.service.is_empty() && !s.routing.contains_key(&message.service) {
            return Err(Status::not_found(format!("service: no routing table for {:?}", message.service)));
        }
        let region_states: std::collections::HashMap<String, String> = s
            .regions
            .values()
            .map(|r| (r.id.clone(), interlock_proto::convert::region_state_name(r.state).to_string()))
            .collect();
        let services = s
            .routing
            .values()
            .filter(|r| message.service.is_empty() || r.service == message.service)
            .map(|r| {
                let acks = self.routing_acks.for_service(&r.service);
                let converged = self.routing_acks.converged(s, &r.service, r.version);
                RoutingStatus {
                    table: Some(super::watch::routing_table(r)),
                    acks,
                    converged,
                    region_states: region_states.clone(),
                }
            })
            .collect();
        Ok(Response::new(RoutingList { services, revision: s.revision }))
    }

    async fn set_routing(&self, request: Request<SetRoutingRequest>) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let mut overrides = Vec::new();
        for name in &message.override_rules {
            let rule = Rule::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Rule::ALL.iter().map(|r| r.name()).collect();
                Status::invalid_argument(format!("override_rules: unknown rule {name:?} (known: {})", known.join(", ")))
            })?;
            overrides.push(rule);
        }
        if !overrides.is_empty() && message.reason.trim().is_empty() {
            return Err(Status::invalid_argument("reason: an override needs a reason (it is audited)"));
        }
        let command = Command::SetRouting {
            service: message.service.clone(),
            weights: message.weights.clone().into_iter().collect(),
            overrides,
            reason: if message.reason.is_empty() { "operator".to_string() } else { message.reason.clone() },
        };
        command.validate().map_err(invalid)?;
        on_leader!(self, metadata, message, set_routing);
        if !message.override_rules.is_empty() {
            let what =
                format!("a routing change of {} overriding {}", message.service, message.override_rules.join(", "));
            if let Some(id) =
                ask_approval(&self.ctx, &caller, Action::Command(Box::new(command.clone())), &what).await?
            {
                return Ok(Response::new(OperationResponse {
                    revision: id,
                    message: awaiting_approval(id, &what),
                    epoch: 0,
                    approval_id: id,
                }));
            }
        }
        let revision = self.propose_here(&caller, command).await?;
        let message = format!("routing of {} set at revision {revision}", message.service);
        Ok(Response::new(OperationResponse { revision, message, epoch: 0, approval_id: 0 }))
    }

    async fn drain(&self, request: Request<DrainRequest>) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let step_bps = if message.step_bps == 0 { DRAIN_STEP_BPS } else { message.step_bps };
        let interval_ms = if message.interval_ms == 0 { DRAIN_INTERVAL_MS } else { message.interval_ms };
        let command = Command::Drain {
            region: message.region.clone(),
            undrain: message.undrain,
            step_bps,
            interval_ms,
            reason: if message.reason.is_empty() { "operator".to_string() } else { message.reason.clone() },
        };
        command.validate().map_err(invalid)?;
        on_leader!(self, metadata, message, drain);
        let revision = self.propose_here(&caller, command).await?;
        let verb = if message.undrain { "undraining" } else { "draining" };
        let text = format!(
            "{verb} {} by {step_bps} bps every {interval_ms} ms (first step applied at revision {revision})",
            message.region
        );
        Ok(Response::new(OperationResponse { revision, message: text, epoch: 0, approval_id: 0 }))
    }

    async fn switchover(&self, request: Request<SwitchoverRequest>) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_operation(&message.shard, &message.to, ("timeout_ms", message.timeout_ms))?;
        match (message.to.is_empty(), message.away_from_region.is_empty()) {
            (true, true) => {
                return Err(Status::invalid_argument("to: name the replica to promote, or away_from_region"))
            }
            (false, false) => {
                return Err(Status::invalid_argument("away_from_region: give either it or `to`, not both"))
            }
            (true, false) => validate_id(&message.away_from_region, "away_from_region").map_err(invalid)?,
            (false, true) => {}
        }
        on_leader!(self, metadata, message, switchover);
        let (from, to, epoch, policy) = {
            let applied = self.ctx.state.read();
            let s = &applied.state;
            let obs = self.observations(s);
            let to = match message.to.as_str() {
                "" => policy::switchover_target(s, &obs, &message.shard, &message.away_from_region).map_err(refused)?,
                to => to.to_string(),
            };
            let (from, epoch) = policy::switchover_check(s, &obs, &message.shard, &to).map_err(refused)?;
            (from, to, epoch, s.topology.failover.clone())
        };
        let reason = format!("operator switchover from {from}");
        let demote = Command::Demote { shard: message.shard.clone(), expected_epoch: epoch, to: to.clone(), reason };
        self.propose_here(&caller, demote).await?;
        let wait = match message.timeout_ms {
            0 => Duration::from_millis(policy.switchover_timeout_ms + policy.promote_ack_timeout_ms),
            ms => Duration::from_millis(ms),
        };
        Ok(Response::new(self.wait_for_primary(&message.shard, &to, wait).await?))
    }

    async fn failover(&self, request: Request<FailoverRequest>) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        validate_operation(&message.shard, &message.to, ("wait_ms", message.wait_ms))?;
        if message.to.is_empty() {
            return Err(Status::invalid_argument("to: name the replica to promote"));
        }
        on_leader!(self, metadata, message, failover);
        let epoch = {
            let applied = self.ctx.state.read();
            let s = &applied.state;
            let obs = self.observations(s);
            policy::operator_failover_check(s, &obs, &message.shard, &message.to, message.accept_data_loss)
                .map_err(refused)?
        };
        let reason = if message.accept_data_loss {
            "operator failover, data loss accepted".to_string()
        } else {
            "operator failover".to_string()
        };
        let promote = Command::Promote {
            shard: message.shard.clone(),
            replica: message.to.clone(),
            expected_epoch: epoch,
            mode: PromotionMode::Operator,
            reason,
        };
        if message.accept_data_loss {
            let action = Action::Command(Box::new(promote.clone()));
            let what = format!("failover of {} to {} with data loss", message.shard, message.to);
            if let Some(id) = ask_approval(&self.ctx, &caller, action, &what).await? {
                return Ok(Response::new(OperationResponse {
                    revision: id,
                    message: awaiting_approval(id, &what),
                    epoch,
                    approval_id: id,
                }));
            }
        }
        let revision = self.propose_here(&caller, promote).await?;
        if message.wait_ms == 0 {
            let message = format!(
                "{} promoted in {} at epoch {}; waiting for its acknowledgement",
                message.to,
                message.shard,
                epoch + 1
            );
            return Ok(Response::new(OperationResponse { revision, message, epoch: epoch + 1, approval_id: 0 }));
        }
        let wait = Duration::from_millis(message.wait_ms);
        Ok(Response::new(self.wait_for_primary(&message.shard, &message.to, wait).await?))
    }

    async fn set_maintenance(
        &self,
        request: Request<MaintenanceRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let region = (!message.region.is_empty()).then(|| message.region.clone());
        if let Some(region) = &region {
            validate_id(region, "region").map_err(invalid)?;
        }
        let command =
            Command::SetMaintenance { region: region.clone(), on: message.on, reason: message.reason.clone() };
        command.validate().map_err(invalid)?;
        on_leader!(self, metadata, message, set_maintenance);
        let revision = self.propose_here(&caller, command).await?;
        let word = if message.on { "on" } else { "off" };
        let message = format!("maintenance {word} for {}", region.as_deref().unwrap_or("all regions"));
        Ok(Response::new(OperationResponse { revision, message, epoch: 0, approval_id: 0 }))
    }

    async fn activate_region(&self, request: Request<RegionRequest>) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let command = Command::SetRegionState {
            region: message.region.clone(),
            state: RegionState::Active,
            reason: if message.reason.is_empty() { "operator".to_string() } else { message.reason.clone() },
        };
        command.validate().map_err(invalid)?;
        on_leader!(self, metadata, message, activate_region);
        let revision = self.propose_here(&caller, command).await?;
        Ok(Response::new(OperationResponse {
            revision,
            message: format!("region {} is ACTIVE", message.region),
            epoch: 0,
            approval_id: 0,
        }))
    }

    async fn apply_topology(
        &self,
        request: Request<ApplyTopologyRequest>,
    ) -> Result<Response<ApplyTopologyResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let topology: Topology = message.topology.clone().unwrap_or_default().into();
        let problems = topology::validate(&topology);
        if !problems.is_empty() {
            let listed: Vec<String> = problems.iter().map(|p| format!("{}: {}", p.field, p.reason)).collect();
            return Err(Status::invalid_argument(format!(
                "the topology is refused, nothing was changed: {}",
                listed.join("; ")
            )));
        }
        leader_read!(self, metadata, message, apply_topology);
        let (changes, refusal) = topology::diff(&self.ctx.state.read().state, &topology);
        if let Some((code, reason)) = refusal {
            return Err(refusal_status(code, reason));
        }
        if message.dry_run || changes.is_empty() {
            // Nothing to change: an unchanged topology is not written again.
            return Ok(Response::new(ApplyTopologyResponse { changes, revision: 0 }));
        }
        let revision = self.propose_here(&caller, Command::ApplyTopology { topology }).await?;
        Ok(Response::new(ApplyTopologyResponse { changes, revision }))
    }

    async fn get_regions(&self, request: Request<ListRequest>) -> Result<Response<RegionList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_regions);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        Ok(Response::new(RegionList { regions: s.regions.values().map(Into::into).collect(), revision: s.revision }))
    }

    async fn get_shards(&self, request: Request<ListRequest>) -> Result<Response<ShardList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_shards);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let obs = self.observations(s);
        let shards = s
            .shards
            .iter()
            .map(|(key, shard)| interlock_proto::v1::Shard {
                status: policy::shard_status(s, &obs, key, shard),
                primary_address: s.primary_address(key),
                ..shard.into()
            })
            .collect();
        Ok(Response::new(ShardList { shards, revision: s.revision }))
    }

    async fn get_replicas(&self, request: Request<ListRequest>) -> Result<Response<ReplicaList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_replicas);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let replicas = s
            .replicas
            .values()
            .map(|r| {
                let report = r.controller.as_deref().and_then(|c| self.liveness.report(c, &r.id));
                interlock_proto::v1::Replica {
                    position: report.map(|p| p.position),
                    lag: report.map(|p| p.lag),
                    healthy: report.map(|p| p.healthy),
                    ..r.into()
                }
            })
            .collect();
        Ok(Response::new(ReplicaList { replicas, revision: s.revision }))
    }

    async fn get_controllers(&self, request: Request<ListRequest>) -> Result<Response<ControllerList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_controllers);
        let now = self.ctx.clock.monotonic_ms();
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let controllers = s
            .controllers
            .values()
            .map(|c| ControllerInfo {
                last_heartbeat_ms_ago: self.liveness.last_seen_ms(&c.id).map(|seen| now.saturating_sub(seen)),
                ..c.into()
            })
            .collect();
        Ok(Response::new(ControllerList { controllers, revision: s.revision }))
    }

    async fn get_leases(&self, request: Request<ListRequest>) -> Result<Response<LeaseList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_leases);
        let now = self.ctx.clock.monotonic_ms();
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let leases = s
            .leases
            .values()
            .map(|l| lease_info(l, self.leases.remaining_ms(&l.key, now).unwrap_or(l.ttl_ms)))
            .collect();
        Ok(Response::new(LeaseList { leases, revision: s.revision }))
    }

    async fn get_events(&self, request: Request<GetEventsRequest>) -> Result<Response<EventList>, Status> {
        let (metadata, _, message) = request.into_parts();
        if message.limit > EVENTS_PAGE_MAX {
            return Err(Status::invalid_argument(format!("limit: must be at most {EVENTS_PAGE_MAX}")));
        }
        leader_read!(self, metadata, message, get_events);
        let limit = if message.limit == 0 { EVENTS_PAGE_MAX } else { message.limit } as usize;
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let events = s.events_after(message.after_version).take(limit).map(Into::into).collect();
        Ok(Response::new(EventList { events, revision: s.revision }))
    }

    async fn approve(&self, request: Request<ApproveRequest>) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        on_leader!(self, metadata, message, approve);
        let response = propose_here(&self.ctx, &caller, Command::Approve { id: message.id }).await?;
        let approval = self.ctx.state.read().state.approvals.get(&message.id).cloned();
        let Some(approval) = approval else {
            return Err(Status::not_found(format!("id: no approval request {}", message.id)));
        };
        let outcome = approval.decision.as_ref().map(|d| d.outcome.clone()).unwrap_or_default();
        let mut text = format!(
            "approval {} of {} (asked for by {}): {outcome}",
            approval.id, approval.action, approval.requested_by
        );
        if matches!(approval.action, Action::AddMember { .. } | Action::RemoveMember { .. }) {
            let revision = super::cluster::carry_out(&self.ctx, &caller, &approval.action, Some(approval.id)).await?;
            text = format!("approval {}: {} done at revision {revision}", approval.id, approval.action);
        }
        let revision = revision_of(&response);
        Ok(Response::new(OperationResponse { revision, message: text, epoch: 0, approval_id: approval.id }))
    }

    async fn get_approvals(&self, request: Request<ListRequest>) -> Result<Response<ApprovalList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_approvals);
        let now = self.ctx.clock.unix_ms();
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let approvals = s.approvals.values().rev().map(|a| interlock_proto::convert::approval(a, now)).collect();
        Ok(Response::new(ApprovalList { approvals, revision: s.revision }))
    }

    async fn get_audit(&self, request: Request<GetAuditRequest>) -> Result<Response<AuditList>, Status> {
        let (metadata, _, message) = request.into_parts();
        if message.limit > AUDIT_PAGE_MAX {
            return Err(Status::invalid_argument(format!("limit: must be at most {AUDIT_PAGE_MAX}")));
        }
        if !message.local {
            leader_read!(self, metadata, message, get_audit);
        }
        let limit = if message.limit == 0 { AUDIT_PAGE_MAX } else { message.limit } as usize;
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let entries =
            audit::after(&s.audit, message.after_seq).take(limit).map(interlock_proto::convert::audit_entry).collect();
        Ok(Response::new(AuditList {
            entries,
            checkpoint_seq: s.audit_checkpoint.seq,
            checkpoint_hash: if s.audit_checkpoint.seq == 0 { Vec::new() } else { s.audit_checkpoint.hash.to_vec() },
            node_id: self.ctx.id,
            revision: s.revision,
        }))
    }

    async fn get_backups(&self, request: Request<GetBackupsRequest>) -> Result<Response<BackupList>, Status> {
        let (metadata, _, message) = request.into_parts();
        if !message.service.is_empty() {
            validate_id(&message.service, "service").map_err(invalid)?;
        }
        if !message.shard.is_empty() {
            validate_id(&message.shard, "shard").map_err(invalid)?;
        }
        leader_read!(self, metadata, message, get_backups);
        let now = self.ctx.clock.unix_ms();
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let wanted = |key: &str| {
            let (service, shard) = key.split_once('/').unwrap_or((key, ""));
            (message.service.is_empty() || message.service == service)
                && (message.shard.is_empty() || message.shard == shard)
        };
        let shards: Vec<_> =
            s.shards.keys().filter(|k| wanted(k)).map(|k| interlock_proto::convert::shard_backups(s, k, now)).collect();
        if shards.is_empty() && !message.service.is_empty() {
            let what = if message.shard.is_empty() {
                message.service.clone()
            } else {
                format!("{}/{}", message.service, message.shard)
            };
            return Err(Status::not_found(format!("service: no shard matches {what}")));
        }
        Ok(Response::new(BackupList { shards, revision: s.revision }))
    }

    async fn get_readiness(&self, request: Request<ListRequest>) -> Result<Response<ReadinessReport>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_readiness);
        let applied = self.ctx.state.read();
        let s = &applied.state;
        let report = interlock_proto::convert::readiness_report(s, &self.observations(s));
        Ok(Response::new(report))
    }

    async fn apply_runbook(
        &self,
        request: Request<ApplyRunbookRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        on_leader!(self, metadata, message, apply_runbook);
        Ok(Response::new(super::runbooks::apply(self, &caller, message).await?))
    }

    async fn get_runbooks(&self, request: Request<GetRunbooksRequest>) -> Result<Response<RunbookList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_runbooks);
        Ok(Response::new(super::runbooks::list(self, &message)?))
    }

    async fn run_runbook(&self, request: Request<RunRunbookRequest>) -> Result<Response<RunRunbookResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        on_leader!(self, metadata, message, run_runbook);
        Ok(Response::new(super::runbooks::run(self, &caller, message).await?))
    }

    async fn get_executions(&self, request: Request<GetExecutionsRequest>) -> Result<Response<ExecutionList>, Status> {
        let (metadata, _, message) = request.into_parts();
        leader_read!(self, metadata, message, get_executions);
        Ok(Response::new(super::runbooks::executions(self, &message)?))
    }

    async fn control_execution(
        &self,
        request: Request<ControlExecutionRequest>,
    ) -> Result<Response<OperationResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        on_leader!(self, metadata, message, control_execution);
        Ok(Response::new(super::runbooks::control(self, &caller, message).await?))
    }
}
