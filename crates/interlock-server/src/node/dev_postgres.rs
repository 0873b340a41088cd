//! `interlockd dev --postgres`: the dev cluster's agents run three real
//! PostgreSQL 15 instances with the postgres driver — one primary and two
//! streaming standbys (`synchronous_standby_names = 'ANY 1 (…)'`), one per
//! region, forming shard `pg/0`.
//!
//! The first run creates the first instance (initdb) and starts it; the
//! coordinator adopts it as the primary and the other agents clone their
//! standbys from it (pg_basebackup). Later runs reuse the instances and
//! their ports. The dev cluster stops every instance when it stops.

use super::dev::DEV_REGIONS;
use anyhow::Context;
use interlock_agent::drivers::postgres::{PostgresConfig, PostgresDriver};
use interlock_agent::probes::Reachability;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where Debian's PostgreSQL 15 is.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The replica of `region` in shard pg/0.
fn replica(region: &str) -> String {
    format!("pg-0-{}", &region[..2])
}

/// The three instances of the dev cluster.
pub struct DevPostgres {
    root: PathBuf,
    ports: Vec<u16>,
    driver: PostgresDriver,
}

impl DevPostgres {
    /// Prepares (first run: creates and starts the first instance of) the
    /// instances under `dir/pg`.
    pub async fn prepare(dir: &Path) -> anyhow::Result<DevPostgres> {
        if !Path::new(PG_BIN_DIR).join("initdb").exists() {
            anyhow::bail!("--postgres: PostgreSQL 15 is not installed in {PG_BIN_DIR} (apt-get install postgresql-15)");
        }
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        if nix::unistd::geteuid().is_root() {
            reachable_by_postgres(&root)?;
        }
        let ports_file = root.join("ports");
        let ports: Vec<u16> = match std::fs::read_to_string(&ports_file) {
            Ok(text) => text.split(',').map(|p| p.trim().parse()).collect::<Result<_, _>>().context("pg/ports")?,
            Err(_) => {
                let held = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
                let ports = held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?;
                let text = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
                std::fs::write(&ports_file, text).context("writing pg/ports")?;
                ports
            }
        };
        anyhow::ensure!(ports.len() == DEV_REGIONS.len(), "pg/ports: expected {} ports", DEV_REGIONS.len());
        let config: PostgresConfig = toml::from_str(&section(&root, &ports, &DEV_REGIONS))?;
        let replicas = DEV_REGIONS.iter().map(|r| (replica(r), "pg/0".to_string())).collect();
        let reachable = Arc::new(Reachability::new("dev", Duration::from_secs(1)));
        let driver = PostgresDriver::new(config, replicas, reachable).map_err(anyhow::Error::msg)?;
        let dev = DevPostgres { root, ports, driver };
        let first = dev.root.join(replica(DEV_REGIONS[0]));
        let initialised = DEV_REGIONS.iter().any(|r| dev.root.join(replica(r)).join("PG_VERSION").exists());
        if !initialised {
            let names = DEV_REGIONS.map(|r| format!("\"{}\"", replica(r))).join(", ");
            let settings = format!("synchronous_standby_names = 'ANY 1 ({names})'\nwal_keep_size = '1GB'\n");
            dev.driver
                .initialise(&replica(DEV_REGIONS[0]), &settings)
                .await
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", first.display()))?;
        }
        Ok(dev)
    }

    /// The topology: regions and shard pg/0 with each instance's address.
    pub fn topology(&self) -> anyhow::Result<interlock_core::Topology> {
        let replicas: Vec<serde_json::Value> = DEV_REGIONS
            .iter()
            .zip(&self.ports)
            .zip([100, 90, 80])
            .map(|((r, port), priority)| {
                serde_json::json!({"id": replica(r), "region": r, "priority": priority, "address": format!("127.0.0.1:{port}")})
            })
            .collect();
        let topology = serde_json::json!({
            "regions": DEV_REGIONS.iter().map(|r| serde_json::json!({"id": r})).collect::<Vec<_>>(),
            // Positions are WAL bytes: a standby up to 16 MB behind may be
            // promoted. A 10 s cooldown (default 300 s) lets you try kill
            // after kill; a second automatic failover sooner waits for you.
            "services": [{"name": "pg", "shards": [{
                "id": "0", "max_lag_on_failover": 16 << 20, "cooldown_seconds": 10, "replicas": replicas
            }]}]
        });
        Ok(serde_json::from_value(topology)?)
    }

    /// The agent config lines for `region`'s instance.
    pub fn agent_section(&self, region: &str) -> String {
        let section = section(&self.root, &self.ports, &[region]).replace("[instances.", "[postgres.instances.");
        format!("driver = \"postgres\"\n[postgres]\n{section}")
    }

    /// `host:port` of every instance, by region.
    pub fn addresses(&self) -> Vec<(String, String)> {
        DEV_REGIONS.iter().zip(&self.ports).map(|(r, p)| (replica(r), format!("127.0.0.1:{p}"))).collect()
    }

    /// Stops every instance (the dev cluster owns them).
    pub fn stop(&self) {
        self.driver.stop_all_blocking();
    }
}

/// The `[postgres]` keys (without the header) for the instances of `regions`.
fn section(root: &Path, ports: &[u16], regions: &[&str]) -> String {
    let mut text = format!("bin_dir = {PG_BIN_DIR:?}\nstatus_every_ms = 250\n");
    for region in regions {
        let k = DEV_REGIONS.iter().position(|r| r == region).unwrap_or(0);
        let data = root.join(replica(region)).display().to_string();
        text.push_str(&format!("[instances.{}]\ndata_dir = {data:?}\nport = {}\n", replica(region), ports[k]));
    }
    text
}

/// As root, PostgreSQL runs as the postgres user, who must reach `root`:
/// it gets `root`, and every directory above must let others through.
fn reachable_by_postgres(root: &Path) -> anyhow::Result<()> {
    let user = nix::unistd::User::from_name("postgres")?.context("--postgres: no OS user postgres")?;
    nix::unistd::chown(root, Some(user.uid), Some(user.gid)).with_context(|| format!("chown {}", root.display()))?;
    let absolute = std::fs::canonicalize(root)?;
    for dir in absolute.ancestors().skip(1) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir)?.permissions());
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "--postgres: the postgres user cannot enter {} (mode {:o}); use a --data-dir it can reach, \
                 e.g. --data-dir /tmp/interlock-dev",
                dir.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}
