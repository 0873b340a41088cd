//! The coordinator API on [`Client`]: topology, registration, leases, views.

use crate::{ApplyTopologyResponse, Client, ClientError, ControllerInfo, Event, Idempotence, LeaseInfo};
use interlock_core::Topology;
use interlock_proto::v1::admin_client::AdminClient;
use interlock_proto::v1::controller_client::ControllerClient;
use interlock_proto::v1::{
    ApplyTopologyRequest, GetEventsRequest, LeaseGetRequest, LeaseGrantRequest, LeaseRevokeRequest, ListRequest,
    Region, RegisterRequest, Replica, Shard,
};

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

    /// Frees `key`; with a non-zero `token`, only if the lease still has it.
    pub async fn lease_revoke(&self, key: &str, token: u64) -> Result<u64, ClientError> {
        let request = LeaseRevokeRequest { key: key.to_string(), token };
        let reply = self
            .call(Idempotence::NotIdempotent, |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).lease_revoke(request).await }
            })
            .await?;
        Ok(reply.revision)
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
}
