//! The peer: a 3-member etcd cluster on loopback (Debian's `etcd-server`),
//! driven with the `etcd-client` crate at the same concurrency as Interlock.

use crate::Row;
use interlock_tests::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member process.
struct Member {
    name: String,
    client_url: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new("etcd").args(&self.args).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A 3-member etcd cluster in a temp dir; killed on drop.
pub struct EtcdCluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    /// mTLS on client and peer links (None: plaintext).
    tls: Option<EtcdTls>,
}

/// The throwaway PKI of a TLS etcd cluster: the client's PEM material for
/// etcd-client, and the same as an interlock-tls config for the raw
/// keepalive streams.
#[derive(Clone)]
struct EtcdTls {
    pem: interlock_tls::Pem,
    tls: interlock_tls::Tls,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill9();
        }
    }
}

impl EtcdCluster {
    /// Starts the cluster; with `tls`, every link is mTLS (etcd's
    /// `--client-cert-auth` and `--peer-client-cert-auth`), like Interlock's.
    pub async fn start(tls: bool) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let scheme = if tls { "https" } else { "http" };
        let specs: Vec<(String, u16, u16)> = (1..=3).map(|i| (format!("e{i}"), free_port(), free_port())).collect();
        let initial: Vec<String> =
            specs.iter().map(|(n, _, peer)| format!("{n}={scheme}://127.0.0.1:{peer}")).collect();
        let authority = interlock_tls::dev::Authority::new("etcd bench CA")?;
        let client_tls = match tls {
            true => {
                let files = authority.write(dir.path(), "bench", "bench")?;
                let pem = files.read()?;
                Some(EtcdTls { tls: interlock_tls::Tls::from_pem(&pem)?, pem })
            }
            false => None,
        };
        let mut members = Vec::new();
        for (name, client, peer) in &specs {
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("{scheme}://127.0.0.1:{peer}");
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.path().join(name).display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-token=interlock-bench".to_string(),
                "--initial-cluster-state=new".to_string(),
                "--log-level=error".to_string(),
                "--logger=zap".to_string(),
            ];
            if tls {
                let files = authority.write(dir.path(), name, name)?;
                let (ca, cert, key) = (files.ca.display(), files.cert.display(), files.key.display());
                args.extend([
                    format!("--cert-file={cert}"),
                    format!("--key-file={key}"),
                    format!("--trusted-ca-file={ca}"),
                    "--client-cert-auth".to_string(),
                    format!("--peer-cert-file={cert}"),
                    format!("--peer-key-file={key}"),
                    format!("--peer-trusted-ca-file={ca}"),
                    "--peer-client-cert-auth".to_string(),
                ]);
            }
            let mut member = Member { name: name.clone(), client_url, args, child: None };
            member.start()?;
            members.push(member);
        }
        let cluster = EtcdCluster { _dir: dir, members, tls: client_tls };
        cluster.wait_writable(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        self.connect(self.endpoints()).await
    }

    /// An etcd-client over `endpoints`, with the bench's certificate when TLS is on.
    async fn connect(&self, endpoints: Vec<String>) -> anyhow::Result<etcd_client::Client> {
        let options = self.tls.as_ref().map(|t| {
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(t.pem.ca.clone()))
                .identity(etcd_client::Identity::from_pem(t.pem.cert.clone(), t.pem.key.clone()));
            etcd_client::ConnectOptions::new().with_tls(tls)
        });
        Ok(etcd_client::Client::connect(endpoints, options).await?)
    }

    async fn wait_writable(&self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(mut c) = self.client().await {
                let put = tokio::time::timeout(Duration::from_millis(500), c.put("bench/ready", "1", None)).await;
                if matches!(put, Ok(Ok(_))) {
                    return Ok(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("etcd did not accept a write within {within:?}")
    }

    /// Index of the current leader.
    async fn leader(&self) -> anyhow::Result<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let Ok(mut c) = self.connect(vec![m.client_url.clone()]).await else { continue };
            let Ok(status) = c.status().await else { continue };
            let leader = status.leader();
            for (i, other) in self.members.iter().enumerate() {
                let Ok(mut oc) = self.connect(vec![other.client_url.clone()]).await else {
                    continue;
                };
                if let Ok(s) = oc.status().await {
                    if s.header().map(|h| h.member_id()) == Some(leader) {
                        return Ok(i);
                    }
                }
            }
        }
        anyhow::bail!("no etcd leader found")
    }

    /// Kills the leader with SIGKILL; returns the time from the kill to the
    /// first acknowledged write, then restarts the killed member.
    pub async fn leader_kill_to_write(&mut self) -> anyhow::Result<Duration> {
        let leader = self.leader().await?;
        let survivors: Vec<String> =
            self.members.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m.client_url.clone()).collect();
        let mut client = self.connect(survivors).await?;
        let killed_at = Instant::now();
        self.members[leader].kill9();
        let took = loop {
            let put = tokio::time::timeout(Duration::from_millis(500), client.put("bench/failover", "x", None)).await;
            if matches!(put, Ok(Ok(_))) {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                anyhow::bail!("etcd: no write within 60 s of the leader kill");
            }
        };
        let member = &mut self.members[leader];
        for arg in member.args.iter_mut() {
            if arg == "--initial-cluster-state=new" {
                *arg = "--initial-cluster-state=existing".to_string();
            }
        }
        eprintln!("etcd: restarting {}", member.name);
        member.start()?;
        self.wait_writable(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(took)
    }
}

/// The same closed loop as Interlock's `writes`, against etcd.
pub async fn writes(cluster: &EtcdCluster, clients: usize, duration: Duration) -> anyhow::Result<Row> {
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(cluster.client().await?);
    }
    let mut connections = connections.into_iter();
    Ok(crate::closed_loop("etcd writes", clients, duration, |c| {
        let client = connections.next();
        move |i| {
            let client = client.clone();
            async move {
                match client {
                    Some(mut client) => client.put(format!("bench/{c}/{i}"), vec![b'x'; 100], None).await.is_ok(),
                    None => false,
                }
            }
        }
    })
    .await)
}

/// The same as Interlock's `watch`: `watchers` watches of the prefix
/// `bench/watch/` over one connection per 100 watchers, and each of
/// `changes` puts timed to every watcher.
pub async fn watch(cluster: &EtcdCluster, watchers: usize, changes: usize) -> anyhow::Result<Row> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
    let mut clients = Vec::new();
    for _ in 0..watchers.div_ceil(100) {
        clients.push(cluster.client().await?);
    }
    for w in 0..watchers {
        let mut client = clients[w / 100].clone();
        let mut stream = client.watch("bench/watch/", Some(etcd_client::WatchOptions::new().with_prefix())).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                let now = Instant::now();
                for event in message.events() {
                    if let Some(kv) = event.kv() {
                        let _ = tx.send((kv.key().to_vec(), now));
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut writer = cluster.client().await?;
    let (mut latencies, mut missing) = (Vec::new(), 0u64);
    let started = Instant::now();
    for c in 0..changes {
        let key = format!("bench/watch/{c}").into_bytes();
        let sent = Instant::now();
        writer.put(key.clone(), "x", None).await?;
        let (l, m) = crate::await_notifications(&mut rx, &key, sent, watchers).await;
        latencies.extend(l);
        missing += m;
    }
    Ok(Row::from_latencies("etcd watch-notify", watchers, latencies, started.elapsed().as_secs_f64(), missing))
}

/// etcd's `LeaseKeepAlive` stream at the wire level. The `etcd-client`
/// crate's keeper renews one lease per stream; the stream itself accepts any
/// lease id, so this speaks it directly (prost messages with etcd's field
/// numbers; the response header, field 1, is skipped when decoding).
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveRequest {
        #[prost(int64, tag = "1")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveResponse {
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
    }

    pub const KEEPALIVE_PATH: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
}

/// The same as Interlock's `leases`: grants `leases` leases (60 s TTL) with
/// `grant_clients` closed loops, then keeps all of them alive over `streams`
/// streams to the leader, each pipelining its share round after round.
pub async fn leases(
    cluster: &EtcdCluster,
    leases: usize,
    streams: usize,
    grant_clients: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Row>> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..grant_clients {
        let mut client = cluster.client().await?;
        tasks.push(tokio::spawn(async move {
            let (mut granted, mut latencies) = (Vec::new(), Vec::new());
            for _ in (c..leases).step_by(grant_clients) {
                let sent = Instant::now();
                if let Ok(lease) = client.lease_grant(60, None).await {
                    latencies.push(sent.elapsed().as_micros() as u64);
                    granted.push(lease.id());
                }
            }
            (granted, latencies)
        }));
    }
    let (mut granted, mut grant_latencies) = (Vec::new(), Vec::new());
    for task in tasks {
        let (g, l) = task.await?;
        granted.extend(g);
        grant_latencies.extend(l);
    }
    let errors = (leases - granted.len()) as u64;
    let grants = Row::from_latencies(
        "etcd lease-grants",
        grant_clients,
        grant_latencies,
        started.elapsed().as_secs_f64(),
        errors,
    );

    let leader_url = cluster.members[cluster.leader().await?].client_url.clone();
    let measure_from = Instant::now() + Duration::from_secs(1);
    let stop_at = measure_from + duration;
    let mut tasks = Vec::new();
    for s in 0..streams {
        let share: Vec<i64> = granted.iter().copied().skip(s).step_by(streams).collect();
        let (url, tls) = (leader_url.clone(), cluster.tls.as_ref().map(|t| t.tls.clone()));
        tasks.push(tokio::spawn(async move { keep_share(url, tls, share, measure_from, stop_at).await }));
    }
    let (mut latencies, mut failures) = (Vec::new(), 0u64);
    for task in tasks {
        let (l, f) = task.await??;
        latencies.extend(l);
        failures += f;
    }
    let keepalives = Row::from_latencies("etcd keepalives", streams, latencies, duration.as_secs_f64(), failures);
    Ok(vec![grants, keepalives])
}

/// One keepalive stream renewing `share`: every lease sent, every answer
/// awaited, repeated until `stop_at`; latencies of the answers to keepalives
/// sent after `measure_from`.
async fn keep_share(
    url: String,
    tls: Option<interlock_tls::Tls>,
    share: Vec<i64>,
    measure_from: Instant,
    stop_at: Instant,
) -> anyhow::Result<(Vec<u64>, u64)> {
    use tonic::codegen::http::uri::PathAndQuery;
    use wire::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
    // Our own rustls connector (h2, the bench's client certificate) over the
    // https URL's host and port.
    let endpoint = tonic::transport::Endpoint::from_shared(url.replacen("https://", "http://", 1))?.tcp_nodelay(true);
    let channel = match tls {
        Some(tls) => endpoint.connect_with_connector(interlock_tls::stream::tcp_connector(tls)).await?,
        None => endpoint.connect().await?,
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(share.len() * 2 + 1);
    // etcd (grpc-go) sends the response headers with its first answer, and
    // the call below returns only once it has them: the first round must
    // already be queued.
    let mut sent = std::collections::HashMap::with_capacity(share.len());
    for id in &share {
        sent.insert(*id, Instant::now());
        tx.try_send(LeaseKeepAliveRequest { id: *id })?;
    }
    let codec = tonic_prost::ProstCodec::<LeaseKeepAliveRequest, LeaseKeepAliveResponse>::default();
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static(wire::KEEPALIVE_PATH),
            codec,
        )
        .await?
        .into_inner();
    let (mut latencies, mut failures) = (Vec::new(), 0u64);
    loop {
        for _ in 0..share.len() {
            let answer = inbound.message().await?.ok_or_else(|| anyhow::anyhow!("etcd keepalive stream closed"))?;
            let Some(at) = sent.get(&answer.id) else { continue };
            if *at >= measure_from && *at < stop_at {
                if answer.ttl > 0 {
                    latencies.push(at.elapsed().as_micros() as u64);
                } else {
                    failures += 1;
                }
            }
        }
        if Instant::now() >= stop_at {
            return Ok((latencies, failures));
        }
        for id in &share {
            sent.insert(*id, Instant::now());
            tx.send(LeaseKeepAliveRequest { id: *id }).await?;
        }
    }
}
