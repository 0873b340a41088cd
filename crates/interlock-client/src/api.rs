//! The coordinator API on [`Client`]: topology, registration, leases, views.

use crate::{
    ApplyTopologyResponse, Client, ClientError, ControllerInfo, Event, Idempotence, LeaseInfo, OperationResponse,
};
use interlock_core::Topology;
use interlock_proto::v1::admin_client::AdminClient;
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::{
    AckRoutingRequest, AcknowledgeRequest, ApplyTopologyRequest, Approval, ApproveRequest, AuditList, DrainRequest,
    FailoverRequest, GetAuditRequest, GetEventsRequest, GetRoutingRequest, LeaseGetRequest, LeaseGrantRequest,
    LeaseRevokeRequest, LeaseRevokeResponse, ListRequest, MaintenanceRequest, Region, RegionRequest, RegisterRequest,
    Replica, RoutingStatus, SetRoutingRequest, Shard, SwitchoverRequest,
};
use interlock_proto::v1::{
    ApplyRunbookRequest, ControlExecutionRequest, ExecutionInfo, GetExecutionsRequest, GetRunbooksRequest,
    HookResultRequest, RunRunbookRequest, RunRunbookResponse, RunbookInfo,
};
use interlock_proto::v1::{
    GetBackupsRequest, ReadinessReport, ReportBackupRequest, RestoreResultRequest, ShardBackups,
};
use std::collections::BTreeMap;
use std::time::Duration;

impl Client {
    /// Applies the declared topology (validated as a whole by the server);
    /// with `dry_run`, only returns the changes it would make.
    pub async fn apply_topology(
        &self,
        topology: &Topology,
        dry_run: bool,
    ) -> Result<ApplyTopologyResponse, ClientError> {
        let request = ApplyTopologyRequest { topology: Some(topology.into()), dry_run };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).apply_topology(request).await }
        })
        .await
    }

    pub async fn regions(&self) -> Result<Vec<Region>, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_regions(ListRequest {}).await })
            .await?;
        Ok(reply.regions)
    }

    pub async fn shards(&self) -> Result<Vec<Shard>, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_shards(ListRequest {}).await })
            .await?;
        Ok(reply.shards)
    }

    pub async fn replicas(&self) -> Result<Vec<Replica>, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_replicas(ListRequest {}).await })
            .await?;
        Ok(reply.replicas)
    }

    pub async fn controllers(&self) -> Result<Vec<ControllerInfo>, ClientError> {
        let reply =
            self.call(Idempotence::Idempotent, |ch| async move {
                AdminClient::new(ch).get_controllers(ListRequest {}).await
            })
            .await?;
        Ok(reply.controllers)
    }

    pub async fn leases(&self) -> Result<Vec<LeaseInfo>, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_leases(ListRequest {}).await })
            .await?;
        Ok(reply.leases)
    }

    /// Approves request `id` (asked for by another operator).
    pub async fn approve(&self, id: u64) -> Result<OperationResponse, ClientError> {
        self.call(
            Idempotence::NotIdempotent,
            |ch| async move { AdminClient::new(ch).approve(ApproveRequest { id }).await },
        )
        .await
    }

    /// Every kept approval request, newest first.
    pub async fn approvals(&self) -> Result<Vec<Approval>, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_approvals(ListRequest {}).await })
            .await?;
        Ok(reply.approvals)
    }

    /// Audit entries after sequence `after_seq`, at most `limit` (0: the
    /// server's limit), read linearizably.
    pub async fn audit(&self, after_seq: u64, limit: u32) -> Result<AuditList, ClientError> {
        let request = GetAuditRequest { after_seq, limit, local: false };
        self.call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_audit(request).await }).await
    }

    /// The audit trail as the node at endpoint `index` holds it (its own
    /// copy, no leader involved), from `after_seq`; one attempt.
    pub async fn audit_of_node(&self, index: usize, after_seq: u64, limit: u32) -> Result<AuditList, ClientError> {
        let channel = self.channel(index);
        let request = GetAuditRequest { after_seq, limit, local: true };
        let mut admin = AdminClient::new(channel);
        let call = admin.get_audit(request);
        match tokio::time::timeout(self.options().request_timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(ClientError::from_status(status, None)),
            Err(_) => Err(ClientError::Unavailable(format!("{} did not answer", self.endpoints()[index]))),
        }
    }

    /// Events after `after_version`, at most `limit` (0: the server's limit).
    pub async fn events(&self, after_version: u64, limit: u32) -> Result<Vec<Event>, ClientError> {
        let request = GetEventsRequest { after_version, limit };
        let reply = self
            .call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_events(request).await })
            .await?;
        Ok(reply.events)
    }

    /// Registers a controller and the declared replicas it runs (all in its region).
    pub async fn register_controller(
        &self,
        controller_id: &str,
        region: &str,
        identity: &str,
        replicas: &[String],
    ) -> Result<u64, ClientError> {
        let request = RegisterRequest {
            controller_id: controller_id.to_string(),
            region: region.to_string(),
            identity: identity.to_string(),
            replicas: replicas.to_vec(),
        };
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).register(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// Grants `key` to `holder`; returns (fencing token, ttl_ms). Repeating a
    /// grant for the same holder returns the lease it already holds, so it is
    /// safe to retry. Prefer [`crate::LeaseKeeper`], which also keeps it.
    pub async fn lease_grant(&self, key: &str, holder: &str, ttl_ms: u64) -> Result<(u64, u64), ClientError> {
        let request = LeaseGrantRequest { key: key.to_string(), holder: holder.to_string(), ttl_ms };
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).lease_grant(request).await }
            })
            .await?;
        Ok((reply.token, reply.ttl_ms))
    }

    /// Releases `key`, held by this client's identity, which has stopped
    /// acting on it: the key is freed at once. With a non-zero `token`, only
    /// if the lease still has it. Returns the revision.
    pub async fn lease_release(&self, key: &str, token: u64) -> Result<u64, ClientError> {
        let request = LeaseRevokeRequest { key: key.to_string(), token, release: true };
        Ok(self.revoke_request(request).await?.revision)
    }

    /// Revokes the lease on `key` (with a non-zero `token`, only if it still
    /// has it): it is no longer renewable, and the key is freed when the
    /// leader's deadline for it passes. Revoking another identity's lease
    /// waits for a second operator (`approval_id` in the answer).
    pub async fn lease_revoke(&self, key: &str, token: u64) -> Result<LeaseRevokeResponse, ClientError> {
        self.revoke_request(LeaseRevokeRequest { key: key.to_string(), token, release: false }).await
    }

    async fn revoke_request(&self, request: LeaseRevokeRequest) -> Result<LeaseRevokeResponse, ClientError> {
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { ControllerClient::new(ch).lease_revoke(request).await }
        })
        .await
    }

    /// The lease on `key`, with the time the leader gives it.
    pub async fn lease_get(&self, key: &str) -> Result<LeaseInfo, ClientError> {
        let request = LeaseGetRequest { key: key.to_string() };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { ControllerClient::new(ch).lease_get(request).await }
        })
        .await
    }

    /// Tells the coordinator that a controller has applied its assignment
    /// (safe to repeat: a stale acknowledgement is refused and changes nothing).
    pub async fn acknowledge(&self, request: AcknowledgeRequest) -> Result<u64, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).acknowledge(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// Planned switchover of `shard` (SERVICE/SHARD) to replica `to`; waits
    /// up to `timeout` (zero: the policy's) for it to complete.
    pub async fn switchover(&self, shard: &str, to: &str, timeout: Duration) -> Result<OperationResponse, ClientError> {
        let request = SwitchoverRequest {
            shard: shard.into(),
            to: to.into(),
            timeout_ms: timeout.as_millis() as u64,
            away_from_region: String::new(),
        };
        self.switchover_request(request).await
    }

    /// Planned switchover of `shard`'s primary out of `region`, to the replica
    /// the coordinator ranks best elsewhere; waits as [`Client::switchover`].
    pub async fn switchover_away_from(
        &self,
        shard: &str,
        region: &str,
        timeout: Duration,
    ) -> Result<OperationResponse, ClientError> {
        let request = SwitchoverRequest {
            shard: shard.into(),
            to: String::new(),
            timeout_ms: timeout.as_millis() as u64,
            away_from_region: region.into(),
        };
        self.switchover_request(request).await
    }

    async fn switchover_request(&self, request: SwitchoverRequest) -> Result<OperationResponse, ClientError> {
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).switchover(request).await }
        })
        .await
    }

    /// Operator failover of `shard` to `to`; waits up to `wait` for the
    /// acknowledgement (zero: returns once committed).
    pub async fn failover(
        &self,
        shard: &str,
        to: &str,
        accept_data_loss: bool,
        wait: Duration,
    ) -> Result<OperationResponse, ClientError> {
        let request =
            FailoverRequest { shard: shard.into(), to: to.into(), accept_data_loss, wait_ms: wait.as_millis() as u64 };
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).failover(request).await }
        })
        .await
    }

    /// Pauses (`on`) or resumes automation for `region` (None: all regions).
    pub async fn set_maintenance(
        &self,
        region: Option<&str>,
        on: bool,
        reason: &str,
    ) -> Result<OperationResponse, ClientError> {
        let request = MaintenanceRequest { region: region.unwrap_or_default().into(), on, reason: reason.into() };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).set_maintenance(request).await }
        })
        .await
    }

    /// Makes a RECOVERING or drained region ACTIVE again.
    pub async fn activate_region(&self, region: &str, reason: &str) -> Result<OperationResponse, ClientError> {
        let request = RegionRequest { region: region.into(), reason: reason.into() };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).activate_region(request).await }
        })
        .await
    }

    /// Routing tables with their convergence (one service, or all with "").
    pub async fn routing(&self, service: &str) -> Result<Vec<RoutingStatus>, ClientError> {
        let request = GetRoutingRequest { service: service.into() };
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).get_routing(request).await }
            })
            .await?;
        Ok(reply.services)
    }

    /// Sets the base weights of `service` (basis points summing to 10 000),
    /// bypassing the named rules (audited with `reason`).
    pub async fn set_routing(
        &self,
        service: &str,
        weights: &BTreeMap<String, u32>,
        override_rules: &[String],
        reason: &str,
    ) -> Result<OperationResponse, ClientError> {
        let request = SetRoutingRequest {
            service: service.into(),
            weights: weights.clone().into_iter().collect(),
            override_rules: override_rules.to_vec(),
            reason: reason.into(),
        };
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).set_routing(request).await }
        })
        .await
    }

    /// Starts draining (or, with `undrain`, undraining) `region` by
    /// `step_bps` every `interval` (zeros: the server's defaults).
    pub async fn drain(
        &self,
        region: &str,
        undrain: bool,
        step_bps: u32,
        interval: Duration,
        reason: &str,
    ) -> Result<OperationResponse, ClientError> {
        let request = DrainRequest {
            region: region.into(),
            step_bps,
            interval_ms: interval.as_millis() as u64,
            reason: reason.into(),
            undrain,
        };
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).drain(request).await }
        })
        .await
    }

    /// Tells the leader that `controller_id` applied `version` of `service`'s routing.
    pub async fn ack_routing(&self, controller_id: &str, service: &str, version: u64) -> Result<(), ClientError> {
        let request = AckRoutingRequest { controller_id: controller_id.into(), service: service.into(), version };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { ControllerClient::new(ch).ack_routing(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Reports a backup taken in the controller's region (safe to repeat: the
    /// same backup reported again changes nothing).
    pub async fn report_backup(&self, request: ReportBackupRequest) -> Result<u64, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).report_backup(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// Reports the result of a restore test this controller holds (a repeat
    /// is refused: the job is no longer running).
    pub async fn report_restore_result(&self, request: RestoreResultRequest) -> Result<u64, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).report_restore_result(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// Reports the result of a runbook hook this controller ran (a repeat is
    /// refused: the attempt was reported).
    pub async fn report_hook_result(&self, request: HookResultRequest) -> Result<u64, ClientError> {
        let reply = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).report_hook_result(request).await }
            })
            .await?;
        Ok(reply.revision)
    }

    /// The backup catalogue: every shard (`service` empty), a service's, or one shard's.
    pub async fn backups(&self, service: &str, shard: &str) -> Result<Vec<ShardBackups>, ClientError> {
        let request = GetBackupsRequest { service: service.into(), shard: shard.into() };
        let list = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).get_backups(request).await }
            })
            .await?;
        Ok(list.shards)
    }

    /// Readiness per shard and per region.
    pub async fn readiness(&self) -> Result<ReadinessReport, ClientError> {
        self.call(Idempotence::Idempotent, |ch| async move { AdminClient::new(ch).get_readiness(ListRequest {}).await })
            .await
    }

    /// Stores a runbook from its YAML (idempotent: the same runbook again
    /// keeps its version).
    pub async fn apply_runbook(&self, yaml: &str) -> Result<OperationResponse, ClientError> {
        let request = ApplyRunbookRequest { yaml: yaml.into() };
        self.call(Idempotence::Idempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).apply_runbook(request).await }
        })
        .await
    }

    /// Every runbook (`name` empty), or one.
    pub async fn runbooks(&self, name: &str) -> Result<Vec<RunbookInfo>, ClientError> {
        let request = GetRunbooksRequest { name: name.into() };
        let list = self
            .call(Idempotence::Idempotent, |ch| {
                let request = request.clone();
                async move { AdminClient::new(ch).get_runbooks(request).await }
            })
            .await?;
        Ok(list.runbooks)
    }

    /// Starts a run (not retried once sent: a retry could start a second
    /// execution), or answers a dry run.
    pub async fn run_runbook(&self, request: RunRunbookRequest) -> Result<RunRunbookResponse, ClientError> {
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).run_runbook(request).await }
        })
        .await
    }

    /// Every kept execution, newest first (`id` 0), or one.
    pub async fn executions(&self, id: u64) -> Result<Vec<ExecutionInfo>, ClientError> {
        let list = self
            .call(Idempotence::Idempotent, |ch| async move {
                AdminClient::new(ch).get_executions(GetExecutionsRequest { id }).await
            })
            .await?;
        Ok(list.executions)
    }

    /// Approves, continues, retries or skips a step, or aborts an execution.
    pub async fn control_execution(&self, request: ControlExecutionRequest) -> Result<OperationResponse, ClientError> {
        self.call(Idempotence::NotIdempotent, |ch| {
            let request = request.clone();
            async move { AdminClient::new(ch).control_execution(request).await }
        })
        .await
    }
}
