//! Who may call what: identity → roles, checked in one place, in front of
//! every service (SPEC §9). Default deny.
//!
//! - The identity is the peer certificate's first DNS SAN, else its CN
//!   (`interlock_tls::identity`); with TLS off every caller is `anonymous`
//!   and may do everything (the node logs a warning at start).
//! - Roles are given to identities by the node config (`roles =
//!   ["node-*=node", "ctl-eu=controller:eu-west", "alice=operator"]`):
//!   `node` (Raft and forwarding), `controller:<region>`, `viewer`,
//!   `operator`. A `node` role needs a certificate from the peer CA when
//!   one is configured.
//! - [`required`] maps every RPC to the roles that may call it; the
//!   [`AuthLayer`] refuses the rest with PERMISSION_DENIED (and records the
//!   refusal in the audit trail) and hands the handler a [`Caller`]. Checks
//!   that depend on the request (a controller acting only for its region,
//!   a lease only for its owner) are the handlers' and the state machine's.
//! - A node that forwards a request to the leader says on whose behalf
//!   (`x-interlock-on-behalf-of`); only a `node` identity is believed.

use crate::ctx::NodeCtx;
use interlock_core::vocab::ANONYMOUS;
use interlock_core::{Command, Request};
use interlock_proto::{CALLER_METADATA, ON_BEHALF_OF_METADATA};
use interlock_tls::stream::PeerInfo;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use tonic::Status;

/// A role an identity may hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A coordinator node: Raft RPCs, and requests forwarded for others.
    Node,
    /// A region controller: registration, heartbeats, leases, acknowledgements
    /// for its own region's replicas.
    Controller(String),
    /// Reads.
    Viewer,
    /// Reads and changes; dangerous changes need a second operator.
    Operator,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "node" => Ok(Role::Node),
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => match other.strip_prefix("controller:") {
                Some(region) => interlock_core::vocab::validate_id(region, "region")
                    .map(|_| Role::Controller(region.to_string()))
                    .map_err(|e| format!("controller:{region}: {}", e.reason)),
                None => Err(format!("{other:?} is not a role (node, controller:REGION, viewer, operator)")),
            },
        }
    }
}

/// Identity → roles, from the node config. An entry is `IDENTITY=ROLE` (or
/// `ROLE+ROLE`); an identity ending in `*` matches every identity with that
/// prefix. An identity without an entry has no role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles {
    exact: BTreeMap<String, Vec<Role>>,
    prefixes: Vec<(String, Vec<Role>)>,
}

impl Roles {
    /// Parses entries, naming the first bad one.
    pub fn parse(entries: &[String]) -> Result<Roles, String> {
        let mut roles = Roles::default();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (identity, list) =
                entry.split_once('=').ok_or_else(|| format!("{entry:?}: expected IDENTITY=ROLE[+ROLE]"))?;
            let list: Vec<Role> = list
                .split('+')
                .map(|r| Role::parse(r.trim()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{entry:?}: {e}"))?;
            let identity = identity.trim();
            if identity.is_empty() || identity == "*" {
                return Err(format!("{entry:?}: name an identity (a trailing * matches a prefix)"));
            }
            match identity.strip_suffix('*') {
                Some(prefix) => roles.prefixes.push((prefix.to_string(), list)),
                None => {
                    roles.exact.entry(identity.to_string()).or_default().extend(list);
                }
            }
        }
        Ok(roles)
    }

    /// The roles of `identity` (exact entries and every matching prefix).
    pub fn of(&self, identity: &str) -> Vec<Role> {
        let mut out: Vec<Role> = self.exact.get(identity).cloned().unwrap_or_default();
        for (prefix, roles) in &self.prefixes {
            if identity.starts_with(prefix.as_str()) {
                out.extend(roles.iter().cloned());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The caller of one request, as the auth layer established it; in the
/// request's extensions for every handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: String,
    pub roles: Vec<Role>,
    /// false: TLS is off, nothing is authenticated, everything is allowed.
    pub authenticated: bool,
}

impl Caller {
    /// The coordinator itself (its own commands, and the simulation's
    /// deliberate bugs).
    pub fn system() -> Caller {
        Caller { identity: interlock_core::vocab::SYSTEM.to_string(), roles: Vec::new(), authenticated: false }
    }

    /// Every caller when TLS is off.
    pub fn anonymous() -> Caller {
        Caller { identity: ANONYMOUS.to_string(), roles: Vec::new(), authenticated: false }
    }

    fn has(&self, role: &Role) -> bool {
        !self.authenticated || self.roles.contains(role)
    }

    pub fn is_operator(&self) -> bool {
        self.has(&Role::Operator)
    }

    pub fn is_node(&self) -> bool {
        self.has(&Role::Node)
    }

    /// Whether the caller may act as a controller of `region`.
    pub fn controls(&self, region: &str) -> bool {
        self.has(&Role::Controller(region.to_string()))
    }

    /// The regions the caller controls (none when unauthenticated: any).
    pub fn controller_regions(&self) -> Vec<&str> {
        self.roles
            .iter()
            .filter_map(|r| match r {
                Role::Controller(region) => Some(region.as_str()),
                _ => None,
            })
            .collect()
    }

    fn meets(&self, need: Need) -> bool {
        if !self.authenticated {
            return true;
        }
        let controller = self.roles.iter().any(|r| matches!(r, Role::Controller(_)));
        let any = |roles: &[Role]| roles.iter().any(|r| self.roles.contains(r));
        match need {
            Need::Node => any(&[Role::Node]),
            Need::Read => controller || any(&[Role::Viewer, Role::Operator, Role::Node]),
            Need::Controller => controller,
            Need::Operator => any(&[Role::Operator]),
            Need::ControllerOrOperator => controller || any(&[Role::Operator]),
            Need::Authenticated => true,
            Need::Nobody => false,
        }
    }
}

/// The caller of a request (set by the [`AuthLayer`]; anonymous if absent).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or_else(Caller::anonymous)
}

/// Who may call an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Node,
    /// viewer, operator, any controller, node.
    Read,
    /// any controller (the handler checks the region).
    Controller,
    Operator,
    ControllerOrOperator,
    /// anyone with a certificate from the CA (health, reflection).
    Authenticated,
    Nobody,
}

/// The table: who may call each RPC, by its gRPC path. Default deny.
pub fn required(path: &str) -> Need {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else { return Need::Nobody };
    match (service, method) {
        ("interlock.raft.v1.Raft", _) => Need::Node,
        ("interlock.v1.Kv", "Get" | "Range") => Need::Read,
        // Controllers announce their probe address under agents/<region>/.
        ("interlock.v1.Kv", "Put" | "Delete") => Need::ControllerOrOperator,
        ("interlock.v1.Cluster", "Status" | "NodeStatus" | "ReadIndex") => Need::Read,
        ("interlock.v1.Cluster", "AddMember" | "RemoveMember") => Need::Operator,
        (
            "interlock.v1.Controller",
            "Register"
            | "Heartbeat"
            | "Acknowledge"
            | "AckRouting"
            | "ReportBackup"
            | "ReportRestoreResult"
            | "ReportHookResult",
        ) => Need::Controller,
        ("interlock.v1.Controller", "LeaseGrant" | "LeaseKeepAlive" | "LeaseRevoke") => Need::ControllerOrOperator,
        ("interlock.v1.Controller", "LeaseGet" | "Watch") => Need::Read,
        ("interlock.v1.Admin", m) if m.starts_with("Get") => Need::Read,
        (
            "interlock.v1.Admin",
            "SetRouting" | "Drain" | "Switchover" | "Failover" | "SetMaintenance" | "ActivateRegion" | "ApplyTopology"
            | "Approve" | "ApplyRunbook" | "RunRunbook" | "ControlExecution",
        ) => Need::Operator,
        ("grpc.health.v1.Health", _) => Need::Authenticated,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => Need::Authenticated,
        _ => Need::Nobody,
    }
}

/// Records refused requests in the audit trail, at most
/// [`REFUSALS_PER_SECOND_MAX`] per identity per second (a flood from one
/// compromised identity must not flood the log); what is left out is
/// counted in the next entry and in `interlock_audit_refusals_suppressed_total`.
pub const REFUSALS_PER_SECOND_MAX: u32 = 10;

#[derive(Default)]
struct Window {
    started_ms: u64,
    recorded: u32,
    suppressed: u64,
}

/// What the layer needs of the node.
pub struct Auth {
    pub roles: Roles,
    /// TLS on: identities come from certificates.
    pub tls: bool,
    /// Dangerous actions wait for a second operator (false: the
    /// single-operator mode, and always when TLS is off — without
    /// identities, a second operator cannot be told apart).
    pub two_person: bool,
    /// The node, once assembled (for recording refusals). Weak: the node's
    /// context holds this.
    pub ctx: OnceLock<Weak<NodeCtx>>,
    windows: Mutex<BTreeMap<String, Window>>,
}

impl Auth {
    pub fn new(roles: Roles, tls: bool, two_person: bool) -> Arc<Auth> {
        Arc::new(Auth { roles, tls, two_person: tls && two_person, ctx: OnceLock::new(), windows: Mutex::default() })
    }

    /// Everything allowed, nothing authenticated (TLS off).
    pub fn open() -> Arc<Auth> {
        Auth::new(Roles::default(), false, false)
    }

    /// The caller of a request from `peer` with these headers, or why it is
    /// refused before any handler sees it.
    fn establish(&self, peer: Option<&PeerInfo>, headers: &http::HeaderMap) -> Result<Caller, String> {
        if !self.tls {
            return Ok(Caller::anonymous());
        }
        let Some(identity) = peer.and_then(|p| p.identity.as_ref()) else {
            return Err("no client certificate".to_string());
        };
        let mut roles = self.roles.of(&identity.name);
        if !identity.node_eligible {
            roles.retain(|r| *r != Role::Node);
        }
        let direct = Caller { identity: identity.name.clone(), roles, authenticated: true };
        let on_behalf = headers.get(ON_BEHALF_OF_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string);
        match on_behalf {
            Some(other) if direct.is_node() => {
                Ok(Caller { roles: self.roles.of(&other), identity: other, authenticated: true })
            }
            Some(_) => Err(format!("{} is not a node and may not speak for others", direct.identity)),
            None => Ok(direct),
        }
    }

    /// Records that `identity` was refused `action` (rate-limited).
    pub fn record_refusal(&self, identity: &str, action: &str, reason: &str) {
        let Some(ctx) = self.ctx.get().and_then(Weak::upgrade) else { return };
        let now = ctx.clock.monotonic_ms();
        let suppressed = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.entry(identity.to_string()).or_default();
            if now.saturating_sub(w.started_ms) >= 1000 {
                w.started_ms = now;
                w.recorded = 0;
            }
            if w.recorded >= REFUSALS_PER_SECOND_MAX {
                w.suppressed += 1;
                ctx.metrics.audit_refusals_suppressed.inc();
                return;
            }
            w.recorded += 1;
            std::mem::take(&mut w.suppressed)
        };
        let mut outcome = format!("refused (PermissionDenied): {reason}");
        if suppressed > 0 {
            outcome.push_str(&format!(" ({suppressed} earlier refusals of {identity} were not recorded)"));
        }
        let request = Request::by(
            ctx.clock.unix_ms(),
            identity,
            Command::Audit { action: truncate(action), outcome: truncate(&outcome) },
        );
        tokio::spawn(async move { crate::raft::network::propose_via_leader(&ctx, request).await });
    }
}

/// Cuts text to what an audit entry holds.
fn truncate(text: &str) -> String {
    let max = interlock_core::vocab::TEXT_MAX_BYTES;
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// PERMISSION_DENIED for `caller`, recorded in the audit trail.
pub fn deny(auth: &Auth, caller: &Caller, action: &str, reason: String) -> Status {
    auth.record_refusal(&caller.identity, action, &reason);
    Status::permission_denied(reason)
}

/// The tower layer in front of every service.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Auth>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { auth: self.0.clone(), inner }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    auth: Arc<Auth>,
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let peer = request.extensions().get::<PeerInfo>().cloned();
        let outcome = self.auth.establish(peer.as_ref(), request.headers()).and_then(|caller| {
            if caller.meets(required(&path)) {
                Ok(caller)
            } else {
                let roles: Vec<String> = caller.roles.iter().map(|r| format!("{r:?}")).collect();
                Err(format!("{} (roles {roles:?}) may not call {path}", caller.identity))
            }
        });
        match outcome {
            Ok(caller) => {
                let headers = request.headers_mut();
                headers.remove(ON_BEHALF_OF_METADATA);
                if let Ok(value) = http::HeaderValue::from_str(&caller.identity) {
                    headers.insert(CALLER_METADATA, value);
                }
                request.extensions_mut().insert(caller);
                let mut inner = self.inner.clone();
                std::mem::swap(&mut self.inner, &mut inner);
                Box::pin(inner.call(request))
            }
            Err(reason) => {
                let identity = peer.and_then(|p| p.identity).map_or("unknown".to_string(), |i| i.name);
                self.auth.record_refusal(&identity, &path, &reason);
                Box::pin(async move { Ok(Status::permission_denied(reason).into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_mapped_by_exact_identity_and_by_prefix() {
        let entries: Vec<String> =
            ["node-*=node", "ctl-eu=controller:eu-west", "alice=operator+viewer", "node-9=viewer"]
                .map(String::from)
                .into();
        let roles = Roles::parse(&entries).expect("roles");
        assert_eq!(roles.of("node-1"), vec![Role::Node]);
        assert_eq!(roles.of("node-9"), vec![Role::Node, Role::Viewer]);
        assert_eq!(roles.of("ctl-eu"), vec![Role::Controller("eu-west".into())]);
        assert_eq!(roles.of("alice"), vec![Role::Viewer, Role::Operator]);
        assert_eq!(roles.of("mallory"), vec![], "default deny");
        for (bad, why) in [
            ("alice", "IDENTITY=ROLE"),
            ("alice=admin", "not a role"),
            ("*=node", "name an identity"),
            ("c=controller:EU", "controller:EU"),
        ] {
            let err = Roles::parse(&[bad.to_string()]).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn every_rpc_has_an_entry_and_the_rest_are_denied() {
        let caller = |roles: Vec<Role>| Caller { identity: "x".into(), roles, authenticated: true };
        let viewer = caller(vec![Role::Viewer]);
        let operator = caller(vec![Role::Operator]);
        let controller = caller(vec![Role::Controller("eu".into())]);
        let node = caller(vec![Role::Node]);
        let cases = [
            ("/interlock.v1.Kv/Put", [false, true, true, false]),
            ("/interlock.v1.Kv/Get", [true, true, true, true]),
            ("/interlock.v1.Admin/GetShards", [true, true, true, true]),
            ("/interlock.v1.Admin/Failover", [false, true, false, false]),
            ("/interlock.v1.Admin/Approve", [false, true, false, false]),
            ("/interlock.v1.Controller/Heartbeat", [false, false, true, false]),
            ("/interlock.v1.Controller/LeaseRevoke", [false, true, true, false]),
            ("/interlock.v1.Cluster/AddMember", [false, true, false, false]),
            ("/interlock.raft.v1.Raft/AppendEntries", [false, false, false, true]),
            ("/interlock.v1.Admin/Nonexistent", [false, false, false, false]),
            ("/some.Other/Thing", [false, false, false, false]),
        ];
        for (path, want) in cases {
            let got = [&viewer, &operator, &controller, &node].map(|c| c.meets(required(path)));
            assert_eq!(got, want, "{path} (viewer, operator, controller, node)");
        }
        assert!(Caller::anonymous().meets(required("/interlock.raft.v1.Raft/Vote")), "TLS off: all allowed");
    }

    #[test]
    fn only_a_node_speaks_for_someone_else() {
        let roles =
            Roles::parse(&["node-1=node".into(), "alice=operator".into(), "ctl=controller:eu".into()]).expect("roles");
        let auth = Auth::new(roles, true, true);
        let peer = |name: &str, node_eligible| PeerInfo {
            remote_addr: None,
            identity: Some(interlock_tls::identity::PeerIdentity { name: name.into(), node_eligible }),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(ON_BEHALF_OF_METADATA, http::HeaderValue::from_static("alice"));
        let forwarded = auth.establish(Some(&peer("node-1", true)), &headers).expect("a node forwards");
        assert_eq!((forwarded.identity.as_str(), forwarded.is_operator()), ("alice", true));
        assert!(auth.establish(Some(&peer("ctl", true)), &headers).is_err(), "a controller cannot");
        let not_peer_ca = auth.establish(Some(&peer("node-1", false)), &http::HeaderMap::new()).expect("caller");
        assert!(!not_peer_ca.is_node(), "node role only with a peer-CA certificate");
        assert!(auth.establish(None, &http::HeaderMap::new()).is_err(), "no certificate, no caller");
    }
}
