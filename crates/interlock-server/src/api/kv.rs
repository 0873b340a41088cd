//! The `interlock.v1.Kv` service: a linearizable key-value space.

use super::auth::{caller, deny, Caller};
use super::{invalid, linearizable, propose, revision_of, to_leader, Proposed};
use crate::ctx::NodeCtx;
use interlock_core::kv::validate_key;
use interlock_core::{Command, InvalidArgument};
use interlock_proto::v1::kv_client::KvClient;
use interlock_proto::v1::kv_server::{Kv, KvServer};
use interlock_proto::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, KeyValue, PutRequest, PutResponse, RangeRequest,
    RangeResponse,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Most keys one Range answers.
pub const RANGE_LIMIT_MAX: u32 = 10_000;
/// A Range page ends before its keys and values exceed this, so that it
/// stays under gRPC's default 4 MiB message limit.
pub const RANGE_PAGE_BYTES_MAX: usize = 3 * 1024 * 1024;

pub struct KvService {
    pub ctx: Arc<NodeCtx>,
}

impl KvService {
    pub fn into_service(self) -> KvServer<Self> {
        KvServer::new(self)
    }

    /// An operator writes any key; a controller only under
    /// `agents/<its region>/` (where agents announce their probe addresses).
    fn check_writer(&self, caller: &Caller, key: &str) -> Result<(), Status> {
        if caller.is_operator() {
            return Ok(());
        }
        let regions = caller.controller_regions();
        if regions.iter().any(|r| key.starts_with(&format!("{AGENTS_PREFIX}{r}/"))) {
            return Ok(());
        }
        let reason = format!("key: {} may write only under {AGENTS_PREFIX}<its region>/, not {key:?}", caller.identity);
        Err(deny(&self.ctx.auth, caller, &format!("Kv write {key}"), reason))
    }
}

/// Where agents announce themselves in the key-value space.
pub const AGENTS_PREFIX: &str = "agents/";

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let command = Command::Put { key: message.key.clone(), value: message.value.clone() };
        command.validate().map_err(invalid)?;
        self.check_writer(&caller, &message.key)?;
        match propose(&self.ctx, &caller, &metadata, command, to_leader!(KvClient, put, message)).await? {
            Proposed::Here(r) => Ok(Response::new(PutResponse { revision: revision_of(&r) })),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = caller(&request);
        let (metadata, _, message) = request.into_parts();
        let command = Command::Delete { key: message.key.clone() };
        command.validate().map_err(invalid)?;
        self.check_writer(&caller, &message.key)?;
        match propose(&self.ctx, &caller, &metadata, command, to_leader!(KvClient, delete, message)).await? {
            Proposed::Here(r) => Ok(Response::new(DeleteResponse { revision: revision_of(&r) })),
            Proposed::Forwarded(reply) => Ok(reply),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        validate_key(&message.key).map_err(invalid)?;
        if message.linearizable {
            if let Some(reply) = linearizable(&self.ctx, &metadata, to_leader!(KvClient, get, message.clone())).await? {
                return Ok(reply);
            }
        }
        let applied = self.ctx.state.read();
        let reply = match applied.state.kv.get(&message.key) {
            Some(entry) => GetResponse {
                found: true,
                value: entry.value.clone(),
                mod_revision: entry.mod_revision,
                revision: applied.state.revision,
            },
            None => GetResponse { found: false, value: Vec::new(), mod_revision: 0, revision: applied.state.revision },
        };
        Ok(Response::new(reply))
    }

    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        if message.limit > RANGE_LIMIT_MAX {
            return Err(invalid(InvalidArgument::new("limit", format!("must be at most {RANGE_LIMIT_MAX}"))));
        }
        if message.linearizable {
            let send = to_leader!(KvClient, range, message.clone());
            if let Some(reply) = linearizable(&self.ctx, &metadata, send).await? {
                return Ok(reply);
            }
        }
        let limit = if message.limit == 0 { RANGE_LIMIT_MAX } else { message.limit } as usize;
        let applied = self.ctx.state.read();
        let start = if message.start_after.is_empty() {
            std::ops::Bound::Included(message.prefix.clone())
        } else {
            std::ops::Bound::Excluded(message.start_after.clone())
        };
        let mut matching = applied
            .state
            .kv
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&message.prefix))
            .peekable();
        let (mut kvs, mut bytes) = (Vec::new(), 0usize);
        while let Some((key, entry)) = matching.peek() {
            let size = key.len() + entry.value.len();
            if kvs.len() == limit || (!kvs.is_empty() && bytes + size > RANGE_PAGE_BYTES_MAX) {
                break;
            }
            bytes += size;
            kvs.push(KeyValue { key: (*key).clone(), value: entry.value.clone(), mod_revision: entry.mod_revision });
            matching.next();
        }
        let more = matching.peek().is_some();
        Ok(Response::new(RangeResponse { kvs, revision: applied.state.revision, more }))
    }
}
