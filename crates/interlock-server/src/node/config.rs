//! Node configuration: a TOML file, flags and `INTERLOCK_*` environment
//! variables, merged in that order of increasing precedence, then validated
//! into a [`NodeConfig`].
//!
//! Every key of the file has a flag (`--grpc-listen`) and an environment
//! variable (`INTERLOCK_GRPC_LISTEN`). Unknown keys are errors, and every
//! error names the key and the reason.

use clap::{Args, ValueEnum};
use interlock_core::{NodeId, NodeInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { field: field.into(), reason: reason.into() }
    }
}

/// Heartbeat and election timing, sized for the round-trip time between voters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimingPreset {
    /// Voters in one region or on one host (RTT ≤ 5 ms).
    #[default]
    Lan,
    /// Voters in several regions (RTT up to ~150 ms).
    Wan,
}

/// Resolved Raft timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Leader heartbeat period. In openraft 0.9 it is also the timeout of
    /// append-entries and of the heartbeats behind linearizable reads, so it
    /// must exceed the worst RTT plus a follower's fsync.
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl TimingPreset {
    pub fn timing(self) -> Timing {
        match self {
            // election_max is the leader lease a follower grants: it votes
            // for nobody until that long after it last heard the leader.
            // The pre-vote driver (`raft::prevote`) campaigns as soon as a
            // majority's leases have run out: a new leader about
            // election_max + 2 round trips after a death (about 1.3 s for
            // wan). openraft's own timer, election_max + a random timeout in
            // [min, max] (0.75-0.9 s here, 1.4-1.6 s for wan), is the fallback.
            TimingPreset::Lan => Timing {
                heartbeat: Duration::from_millis(50),
                election_min: Duration::from_millis(300),
                election_max: Duration::from_millis(450),
            },
            TimingPreset::Wan => Timing {
                heartbeat: Duration::from_millis(300),
                election_min: Duration::from_millis(600),
                election_max: Duration::from_millis(800),
            },
        }
    }
}

/// Whether links are encrypted and callers authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// mTLS on every link: tls_ca, tls_cert and tls_key are required.
    #[default]
    On,
    /// Plaintext, nobody authenticated, everything allowed (a warning is
    /// logged at start). For a laptop, never for production.
    Off,
}

/// Whether dangerous actions need a second operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalMode {
    /// A different operator approves each dangerous action.
    #[default]
    TwoPerson,
    /// One operator does everything (audited). A choice for a small team's
    /// lab, never the production default.
    SingleOperator,
}

/// How a node secures itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// None: TLS is off.
    pub tls: Option<interlock_tls::TlsFiles>,
    /// How often the TLS files are checked for a change.
    pub tls_reload_every: Duration,
    /// Identity → role entries (`IDENTITY=ROLE`), validated.
    pub roles: Vec<String>,
    pub approvals: ApprovalMode,
}

impl Security {
    /// Plaintext, everything allowed (tests and tools that say so).
    pub fn off() -> Security {
        Security {
            tls: None,
            tls_reload_every: Duration::from_secs(5),
            roles: Vec::new(),
            approvals: ApprovalMode::SingleOperator,
        }
    }
}

/// The keys of the configuration file, each also a flag and an env variable.
/// Every field is optional here; [`RunArgs::resolve`] decides what is required.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKeys {
    /// This node's id: a positive integer, unique in the cluster, never reused.
    #[arg(long, env = "INTERLOCK_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,

    /// The region this node runs in, e.g. "eu-west".
    #[arg(long, env = "INTERLOCK_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Address the gRPC server (Raft, API) listens on, e.g. 0.0.0.0:7001.
    #[arg(long, env = "INTERLOCK_GRPC_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<String>,

    /// Address other nodes and clients dial to reach this node [default: grpc_listen].
    #[arg(long, env = "INTERLOCK_GRPC_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_advertise: Option<String>,

    /// Address of the admin HTTP server (/livez, /readyz, /metrics).
    #[arg(long, env = "INTERLOCK_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,

    /// Directory for the Raft log, vote and snapshots. Created if missing.
    #[arg(long, env = "INTERLOCK_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// Members that bootstrap a new cluster, as ID@REGION=HOST:PORT, comma
    /// separated. Used once, on the first start; empty on a node that joins
    /// an existing cluster through `interlockctl cluster add`.
    #[arg(long, env = "INTERLOCK_INITIAL_PEERS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_peers: Option<Vec<String>>,

    /// Timing preset: lan (one region) or wan (several regions).
    #[arg(long, env = "INTERLOCK_TIMING")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<TimingPreset>,

    /// Overrides the preset's heartbeat interval (e.g. "150ms").
    #[arg(long, env = "INTERLOCK_HEARTBEAT_INTERVAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,

    /// Overrides the preset's minimum election timeout.
    #[arg(long, env = "INTERLOCK_ELECTION_TIMEOUT_MIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout_min: Option<String>,

    /// Overrides the preset's maximum election timeout.
    #[arg(long, env = "INTERLOCK_ELECTION_TIMEOUT_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub election_timeout_max: Option<String>,

    /// Log entries applied between two snapshots; older entries are purged [default: 10000].
    #[arg(long, env = "INTERLOCK_SNAPSHOT_EVERY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_every: Option<u64>,

    /// Log filter, tracing-subscriber syntax [default: info].
    #[arg(long, env = "INTERLOCK_LOG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,

    /// mTLS on every link (on) or plaintext (off) [default: on].
    #[arg(long, env = "INTERLOCK_TLS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsMode>,

    /// The CA certificate (PEM) that signs every trusted certificate.
    #[arg(long, env = "INTERLOCK_TLS_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,

    /// This node's certificate chain (PEM); it serves and dials with it.
    #[arg(long, env = "INTERLOCK_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// This node's private key (PEM).
    #[arg(long, env = "INTERLOCK_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// A separate CA for the nodes' certificates; then only a certificate it
    /// signed may hold the node role.
    #[arg(long, env = "INTERLOCK_TLS_PEER_CA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_peer_ca: Option<PathBuf>,

    /// How often the TLS files are checked; changed files are reloaded
    /// without a restart [default: 5s].
    #[arg(long, env = "INTERLOCK_TLS_RELOAD_EVERY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_reload_every: Option<String>,

    /// Roles of identities (a certificate's first DNS SAN, else its CN), as
    /// IDENTITY=ROLE[+ROLE], comma separated; a trailing * matches a prefix.
    /// Roles: node, controller:REGION, viewer, operator. E.g.
    /// node-*=node,ctl-eu=controller:eu-west,alice=operator. Anyone else is denied.
    #[arg(long, env = "INTERLOCK_ROLES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,

    /// Dangerous actions need a second operator (two-person) or not
    /// (single-operator) [default: two-person; always single-operator with TLS off].
    #[arg(long, env = "INTERLOCK_APPROVALS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalMode>,
}

/// `interlockd run` arguments.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of the keys below; flags and env override it.
    #[arg(long, short = 'c', env = "INTERLOCK_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub keys: ConfigKeys,
}

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    pub region: String,
    pub grpc_listen: SocketAddr,
    pub grpc_advertise: String,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub initial_peers: BTreeMap<NodeId, NodeInfo>,
    pub timing: Timing,
    pub snapshot_every: u64,
    pub log: String,
    pub security: Security,
}

impl RunArgs {
    /// Reads the file (if any), lets flags and env win, and validates.
    pub fn resolve(&self) -> Result<NodeConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => load_file(path)?,
            None => ConfigKeys::default(),
        };
        self.keys.clone().or(file).validate()
    }
}

fn load_file(path: &Path) -> Result<ConfigKeys, ConfigError> {
    let field = "--config";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's message names the unknown or mistyped key and its line.
        let message = e.message().to_string();
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        ConfigError::new(path.display().to_string(), format!("{message}{at}"))
    })
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| {
        let flag = field.replace('_', "-");
        let env = field.to_uppercase();
        ConfigError::new(field, format!("missing: set it in the file, with --{flag}, or with INTERLOCK_{env}"))
    })
}

fn socket_addr(value: &str, field: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(field, format!("{value:?} is not HOST:PORT with a numeric IP (e.g. 127.0.0.1:7001)"))
    })
}

/// Parses a duration like "150ms" or "2s".
pub fn duration(value: &str, field: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value)
        .map_err(|e| ConfigError::new(field, format!("{value:?} is not a duration like 150ms or 2s: {e}")))
}

/// Checks that `addr` looks like HOST:PORT (a name is allowed: it is dialled, not bound).
pub fn validate_dial_addr(addr: &str, field: &str) -> Result<(), ConfigError> {
    interlock_core::vocab::validate_host_port(addr, field).map_err(|e| ConfigError::new(field, e.reason))
}

/// Checks a region name: lowercase letters, digits and dashes, 1 to 63 characters.
pub fn validate_region(region: &str, field: &str) -> Result<(), ConfigError> {
    let ok = !region.is_empty()
        && region.len() <= 63
        && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(field, format!("{region:?} must be 1-63 characters of a-z, 0-9 and '-'")))
    }
}

/// Parses one `ID@REGION=HOST:PORT` peer.
pub fn parse_peer(text: &str) -> Result<(NodeId, NodeInfo), ConfigError> {
    let field = "initial_peers";
    let bad = |why: &str| ConfigError::new(field, format!("{text:?}: {why} (expected ID@REGION=HOST:PORT)"));
    let (left, addr) = text.trim().split_once('=').ok_or_else(|| bad("no '='"))?;
    let (id, region) = left.split_once('@').ok_or_else(|| bad("no '@'"))?;
    let id: NodeId = id.parse().map_err(|_| bad("the id is not a positive integer"))?;
    if id == 0 {
        return Err(bad("the id must be positive"));
    }
    validate_region(region, field).map_err(|e| bad(&e.reason))?;
    validate_dial_addr(addr, field).map_err(|e| bad(&e.reason))?;
    Ok((id, NodeInfo { grpc_addr: addr.to_string(), region: region.to_string() }))
}

impl ConfigKeys {
    /// Fills every unset key of `self` from `other`.
    fn or(self, other: ConfigKeys) -> ConfigKeys {
        ConfigKeys {
            id: self.id.or(other.id),
            region: self.region.or(other.region),
            grpc_listen: self.grpc_listen.or(other.grpc_listen),
            grpc_advertise: self.grpc_advertise.or(other.grpc_advertise),
            admin_listen: self.admin_listen.or(other.admin_listen),
            data_dir: self.data_dir.or(other.data_dir),
            initial_peers: self.initial_peers.or(other.initial_peers),
            timing: self.timing.or(other.timing),
            heartbeat_interval: self.heartbeat_interval.or(other.heartbeat_interval),
            election_timeout_min: self.election_timeout_min.or(other.election_timeout_min),
            election_timeout_max: self.election_timeout_max.or(other.election_timeout_max),
            snapshot_every: self.snapshot_every.or(other.snapshot_every),
            log: self.log.or(other.log),
            tls: self.tls.or(other.tls),
            tls_ca: self.tls_ca.or(other.tls_ca),
            tls_cert: self.tls_cert.or(other.tls_cert),
            tls_key: self.tls_key.or(other.tls_key),
            tls_peer_ca: self.tls_peer_ca.or(other.tls_peer_ca),
            tls_reload_every: self.tls_reload_every.or(other.tls_reload_every),
            roles: self.roles.or(other.roles),
            approvals: self.approvals.or(other.approvals),
        }
    }

    /// Validates the merged keys into a [`NodeConfig`].
    pub fn validate(self) -> Result<NodeConfig, ConfigError> {
        let id = required(self.id, "id")?;
        if id == 0 {
            return Err(ConfigError::new("id", "must be a positive integer"));
        }
        let region = required(self.region, "region")?;
        validate_region(&region, "region")?;
        let grpc_listen = socket_addr(&required(self.grpc_listen, "grpc_listen")?, "grpc_listen")?;
        let admin_listen = socket_addr(&required(self.admin_listen, "admin_listen")?, "admin_listen")?;
        let grpc_advertise = match self.grpc_advertise {
            Some(a) => {
                validate_dial_addr(&a, "grpc_advertise")?;
                a
            }
            None if grpc_listen.ip().is_unspecified() => {
                return Err(ConfigError::new(
                    "grpc_advertise",
                    format!(
                        "required when grpc_listen is {grpc_listen}: other nodes cannot dial an unspecified address"
                    ),
                ))
            }
            None => grpc_listen.to_string(),
        };
        let data_dir = required(self.data_dir, "data_dir")?;
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }

        let mut initial_peers = BTreeMap::new();
        for text in self.initial_peers.unwrap_or_default().iter().filter(|t| !t.trim().is_empty()) {
            let (peer_id, info) = parse_peer(text)?;
            if let Some((other, _)) =
                initial_peers.iter().find(|(_, i): &(&NodeId, &NodeInfo)| i.grpc_addr == info.grpc_addr)
            {
                let reason = format!("nodes {other} and {peer_id} have the same address {}", info.grpc_addr);
                return Err(ConfigError::new("initial_peers", reason));
            }
            if initial_peers.insert(peer_id, info).is_some() {
                return Err(ConfigError::new("initial_peers", format!("node id {peer_id} appears twice")));
            }
        }
        if !initial_peers.is_empty() {
            match initial_peers.get(&id) {
                None => {
                    return Err(ConfigError::new(
                        "initial_peers",
                        format!("does not include this node (id {id}); leave it empty to join an existing cluster"),
                    ))
                }
                Some(me) if me.grpc_addr != grpc_advertise || me.region != region => {
                    return Err(ConfigError::new(
                        "initial_peers",
                        format!("lists this node as {me}, but grpc_advertise/region say {grpc_advertise}@{region}"),
                    ))
                }
                Some(_) => {}
            }
        }

        let mut timing = self.timing.unwrap_or_default().timing();
        if let Some(v) = &self.heartbeat_interval {
            timing.heartbeat = duration(v, "heartbeat_interval")?;
        }
        if let Some(v) = &self.election_timeout_min {
            timing.election_min = duration(v, "election_timeout_min")?;
        }
        if let Some(v) = &self.election_timeout_max {
            timing.election_max = duration(v, "election_timeout_max")?;
        }
        if timing.heartbeat.is_zero() {
            return Err(ConfigError::new("heartbeat_interval", "must be positive"));
        }
        if timing.election_min < timing.heartbeat * 2 {
            return Err(ConfigError::new(
                "election_timeout_min",
                format!(
                    "{:?} must be at least twice the heartbeat interval ({:?})",
                    timing.election_min, timing.heartbeat
                ),
            ));
        }
        if timing.election_max <= timing.election_min {
            return Err(ConfigError::new(
                "election_timeout_max",
                format!("{:?} must exceed election_timeout_min ({:?})", timing.election_max, timing.election_min),
            ));
        }
        let security = security(
            self.tls.unwrap_or_default(),
            [self.tls_ca, self.tls_cert, self.tls_key, self.tls_peer_ca],
            self.tls_reload_every.as_deref(),
            self.roles.unwrap_or_default(),
            self.approvals.unwrap_or_default(),
        )?;
        let snapshot_every = self.snapshot_every.unwrap_or(10_000);
        if snapshot_every == 0 {
            return Err(ConfigError::new("snapshot_every", "must be positive"));
        }
        Ok(NodeConfig {
            id,
            region,
            grpc_listen,
            grpc_advertise,
            admin_listen,
            data_dir,
            initial_peers,
            timing,
            snapshot_every,
            log: self.log.unwrap_or_else(|| "info".to_string()),
            security,
        })
    }
}

/// Validates the security keys: with TLS on, the three files are required
/// and roles must be given (without them every caller, the other nodes
/// included, is denied).
fn security(
    mode: TlsMode,
    [ca, cert, key, peer_ca]: [Option<PathBuf>; 4],
    reload_every: Option<&str>,
    roles: Vec<String>,
    approvals: ApprovalMode,
) -> Result<Security, ConfigError> {
    let roles: Vec<String> = roles.into_iter().filter(|r| !r.trim().is_empty()).collect();
    crate::api::auth::Roles::parse(&roles).map_err(|e| ConfigError::new("roles", e))?;
    let tls_reload_every = match reload_every {
        Some(v) => duration(v, "tls_reload_every")?,
        None => Duration::from_secs(5),
    };
    if tls_reload_every < Duration::from_millis(100) {
        return Err(ConfigError::new("tls_reload_every", "must be at least 100ms"));
    }
    let tls = match mode {
        TlsMode::Off => None,
        TlsMode::On => {
            if roles.is_empty() {
                return Err(ConfigError::new(
                    "roles",
                    "missing: with TLS on, give identities their roles (at least the nodes, e.g. node-*=node), \
                     or set tls = \"off\"",
                ));
            }
            Some(interlock_tls::TlsFiles {
                ca: required(ca, "tls_ca")?,
                cert: required(cert, "tls_cert")?,
                key: required(key, "tls_key")?,
                peer_ca,
            })
        }
    };
    Ok(Security { tls, tls_reload_every, roles, approvals })
}

impl NodeConfig {
    /// This node as it appears in the membership.
    pub fn node_info(&self) -> NodeInfo {
        NodeInfo { grpc_addr: self.grpc_advertise.clone(), region: self.region.clone() }
    }
}

/// Formats peers back into the `ID@REGION=HOST:PORT` form.
pub fn format_peers(peers: &BTreeMap<NodeId, NodeInfo>) -> Vec<String> {
    peers.iter().map(|(id, n)| format!("{id}@{}={}", n.region, n.grpc_addr)).collect()
}

impl fmt::Display for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} in {} (grpc {}, admin {})", self.id, self.region, self.grpc_advertise, self.admin_listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ConfigKeys {
        ConfigKeys {
            id: Some(1),
            region: Some("eu-west".into()),
            grpc_listen: Some("127.0.0.1:7001".into()),
            admin_listen: Some("127.0.0.1:7101".into()),
            data_dir: Some("/tmp/x".into()),
            initial_peers: Some(vec!["1@eu-west=127.0.0.1:7001".into(), "2@us-east=127.0.0.1:7002".into()]),
            tls: Some(TlsMode::Off),
            ..ConfigKeys::default()
        }
    }

    #[test]
    fn a_complete_config_validates() {
        let config = keys().validate().expect("valid");
        assert_eq!(config.initial_peers.len(), 2);
        assert_eq!(config.grpc_advertise, "127.0.0.1:7001");
        assert_eq!(config.timing, TimingPreset::Lan.timing());
    }

    #[test]
    fn each_bad_key_is_named() {
        let cases: Vec<(ConfigKeys, &str, &str)> = vec![
            (ConfigKeys { id: None, ..keys() }, "id", "missing"),
            (ConfigKeys { id: Some(0), ..keys() }, "id", "positive"),
            (ConfigKeys { region: Some("EU West".into()), ..keys() }, "region", "a-z"),
            (ConfigKeys { grpc_listen: Some("localhost".into()), ..keys() }, "grpc_listen", "HOST:PORT"),
            (ConfigKeys { initial_peers: Some(vec!["1=x".into()]), ..keys() }, "initial_peers", "no '@'"),
            (
                ConfigKeys { initial_peers: Some(vec!["2@eu-west=127.0.0.1:7002".into()]), ..keys() },
                "initial_peers",
                "does not include this node",
            ),
            (
                ConfigKeys { initial_peers: Some(vec!["1@eu-west=127.0.0.1:9999".into()]), ..keys() },
                "initial_peers",
                "lists this node as",
            ),
            (
                ConfigKeys {
                    initial_peers: Some(vec!["1@eu-west=127.0.0.1:7001".into(), "2@us-east=127.0.0.1:7001".into()]),
                    ..keys()
                },
                "initial_peers",
                "same address",
            ),
            (ConfigKeys { heartbeat_interval: Some("fast".into()), ..keys() }, "heartbeat_interval", "duration"),
            (ConfigKeys { election_timeout_min: Some("90ms".into()), ..keys() }, "election_timeout_min", "twice"),
            (ConfigKeys { snapshot_every: Some(0), ..keys() }, "snapshot_every", "positive"),
            (ConfigKeys { grpc_listen: Some("0.0.0.0:7001".into()), ..keys() }, "grpc_advertise", "required"),
            (ConfigKeys { tls: None, ..keys() }, "roles", "with TLS on"),
            (ConfigKeys { tls: None, roles: Some(vec!["n=node".into()]), ..keys() }, "tls_ca", "missing"),
            (ConfigKeys { roles: Some(vec!["alice=root".into()]), ..keys() }, "roles", "not a role"),
            (ConfigKeys { tls_reload_every: Some("1ms".into()), ..keys() }, "tls_reload_every", "at least"),
        ];
        for (k, field, reason) in cases {
            let err = k.validate().expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.reason.contains(reason), "{err}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "id = 1\nregoin = \"eu\"\n").expect("write");
        let args = RunArgs { config: Some(path), ..RunArgs::default() };
        let err = args.resolve().expect_err("unknown key");
        assert!(err.reason.contains("regoin"), "{err}");
        assert!(err.reason.contains("line 2"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        let file = toml::to_string(&ConfigKeys { region: Some("us-east".into()), ..keys() }).expect("toml");
        std::fs::write(&path, file).expect("write");
        let args = RunArgs {
            config: Some(path),
            keys: ConfigKeys { region: Some("eu-west".into()), ..ConfigKeys::default() },
        };
        assert_eq!(args.resolve().expect("valid").region, "eu-west");
    }
}
