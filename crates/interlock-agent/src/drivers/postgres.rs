//! [`PostgresDriver`]: PostgreSQL streaming replication, driven with
//! PostgreSQL's own tools — queries through tokio-postgres, `pg_ctl`,
//! `pg_rewind` and `pg_basebackup` run as the database's OS user
//! (PostgreSQL refuses to run as root).
//!
//! | action | what it does | done when |
//! |---|---|---|
//! | status | `pg_is_in_recovery()` and the WAL position (bytes) | the query answers (else unhealthy) |
//! | promote | `pg_promote(true, 60)`, then records (epoch, token) in `interlock.fencing` | the instance is out of recovery |
//! | demote | `pg_ctl stop -m fast`, `standby.signal`, started again as a standby | the postmaster is gone or in recovery |
//! | fence | `standby.signal`, `pg_ctl stop -m immediate`, SIGKILL if that hangs | the postmaster process is gone |
//! | follow | a running standby: repoints `primary_conninfo` and reloads; a stopped instance that was a primary is rewound (`pg_rewind`), an empty one cloned (`pg_basebackup`); then started as a standby | the new primary is out of recovery, and this instance runs as its standby |
//! | backup | `pg_basebackup -Ft -X fetch` of the primary into `<backup_dir>/<id>/`, SHA-256 of `base.tar` | the tar is written and summed |
//! | restore test | the tar's SHA-256 checked, unpacked into a scratch data directory, started on a scratch port, the data check (`count(*)`, `max(column)` of the policy's table), stopped, removed | the restored instance answered the check |
//!
//! Per-instance settings (port, socket directory, listen address) are
//! given on the `postgres` command line, never in the data directory:
//! `pg_rewind` and `pg_basebackup` copy the source's configuration files.
//! `primary_conninfo` is written into `postgresql.auto.conf` before every
//! start and reload. Positions are WAL bytes, so a shard's
//! `max_lag_on_failover` is in bytes too. `pg_rewind` needs
//! `wal_log_hints = on` or data checksums (`initdb --data-checksums`).
//!
//! On start the driver starts every stopped instance that was a standby
//! (its control file says "in recovery"), as a standby. One that was a
//! primary stays stopped — it may hold WAL no other instance got — until
//! the coordinator names a primary for it to follow: then it is rewound.
//! Which instance is primary is the coordinator's to say, under the lease.

use super::backups::{file_checksum, file_path};
use crate::probes::Reachability;
use interlock_client::{BackupTaken, ReplicaDriver, ReplicaStatus, RestoreJob, RestoreProof};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The `[postgres]` section of the agent's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Where pg_ctl, pg_rewind, pg_basebackup and postgres are.
    #[serde(default = "default_bin_dir")]
    pub bin_dir: PathBuf,
    /// The OS user the tools run as (default: "postgres" when the agent
    /// runs as root, else the agent's own user).
    #[serde(default)]
    pub os_user: Option<String>,
    /// The database user for queries and replication.
    #[serde(default = "default_db_user")]
    pub db_user: String,
    /// Its password for the agent's own queries (none: trust, or peer
    /// authentication). pg_rewind and pg_basebackup read the OS user's
    /// ~/.pgpass, as every libpq tool does.
    #[serde(default)]
    pub db_password: Option<String>,
    /// How often each instance's status is read.
    #[serde(default = "default_status_every_ms")]
    pub status_every_ms: u64,
    /// A tool (pg_ctl, pg_rewind, pg_basebackup) still running after this
    /// is killed and has failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The instances, by replica id.
    pub instances: BTreeMap<String, InstanceConfig>,
}

/// One PostgreSQL instance (one replica).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub data_dir: PathBuf,
    pub port: u16,
    /// Where the agent connects to it (default 127.0.0.1).
    #[serde(default = "default_host")]
    pub host: String,
    /// `listen_addresses` (default: `host`).
    #[serde(default)]
    pub listen_addresses: Option<String>,
    /// The Unix socket directory (default: the data directory's parent).
    #[serde(default)]
    pub socket_dir: Option<PathBuf>,
    /// The server log (default: `<data_dir>.log`).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
}

fn default_bin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/postgresql/15/bin")
}
fn default_db_user() -> String {
    "postgres".into()
}
fn default_status_every_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_host() -> String {
    "127.0.0.1".into()
}

impl PostgresConfig {
    /// Refuses what cannot work, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.instances.is_empty() {
            return Err("postgres.instances: at least one instance is needed".into());
        }
        if self.status_every_ms < 50 {
            return Err(format!("postgres.status_every_ms: {} is below the minimum of 50", self.status_every_ms));
        }
        if self.timeout_ms < 1_000 {
            return Err(format!("postgres.timeout_ms: {} is below the minimum of 1000", self.timeout_ms));
        }
        for (id, i) in &self.instances {
            if i.port == 0 {
                return Err(format!("postgres.instances.{id}.port: 0 is not a port"));
            }
            if !i.data_dir.is_absolute() {
                return Err(format!(
                    "postgres.instances.{id}.data_dir: {} is not an absolute path",
                    i.data_dir.display()
                ));
            }
        }
        Ok(())
    }
}

/// What the last look at an instance showed.
#[derive(Debug, Clone, Copy, Default)]
struct Observed {
    healthy: bool,
    primary: bool,
    position: u64,
}

/// The postgres driver of one agent.
pub struct PostgresDriver {
    config: PostgresConfig,
    /// replica -> SERVICE/SHARD.
    shards: BTreeMap<String, String>,
    reachable: Arc<Reachability>,
    known: Mutex<BTreeMap<String, Observed>>,
    /// One role operation at a time per instance: the controller's guard
    /// may fence while its actor demotes.
    ops: BTreeMap<String, tokio::sync::Mutex<()>>,
    /// (uid, gid) the tools run as; None: as the agent.
    run_as: Option<(u32, u32)>,
    /// Where base backups go and restore tests unpack (None: no backups).
    backup_dir: Option<PathBuf>,
}

impl PostgresDriver {
    /// `replicas` are (replica id, SERVICE/SHARD); each needs an instance.
    pub fn new(
        config: PostgresConfig,
        replicas: Vec<(String, String)>,
        reachable: Arc<Reachability>,
    ) -> Result<Self, String> {
        config.validate()?;
        for (id, _) in &replicas {
            if !config.instances.contains_key(id) {
                return Err(format!("postgres.instances: no instance for replica {id:?}"));
            }
        }
        let run_as = run_as(config.os_user.as_deref())?;
        let ops = replicas.iter().map(|(id, _)| (id.clone(), tokio::sync::Mutex::new(()))).collect();
        Ok(PostgresDriver {
            config,
            shards: replicas.into_iter().collect(),
            reachable,
            known: Mutex::new(BTreeMap::new()),
            ops,
            run_as,
            backup_dir: None,
        })
    }

    /// Takes base backups into `dir` (shared with the other regions'
    /// agents) and runs restore tests from it.
    pub fn with_backups(mut self, dir: PathBuf) -> Self {
        self.backup_dir = Some(dir);
        self
    }

    fn backup_dir(&self) -> Result<&PathBuf, String> {
        self.backup_dir.as_ref().ok_or_else(|| "no backup_dir configured".to_string())
    }

    /// A base backup of `replica` (which must be the running primary):
    /// `pg_basebackup` in tar format with the WAL it needs, summed.
    async fn take_backup(&self, replica: &str) -> Result<BackupTaken, String> {
        let dir = self.backup_dir()?;
        let i = self.instance(replica)?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        self.chown(dir)?;
        let started = crate::unix_ms();
        let id = Some(format!("{replica}-{started}")).filter(|id| id.len() <= 63);
        let id = id.unwrap_or_else(|| format!("b-{started}"));
        let target = dir.join(&id);
        let (host, port) = (i.host.clone(), i.port.to_string());
        let args = ["-D", &path(&target), "-Ft", "-X", "fetch", "-c", "fast", "-h", &host, "-p", &port];
        let mut args: Vec<String> = args.map(String::from).to_vec();
        args.extend(["-U".to_string(), self.config.db_user.clone(), "-w".to_string()]);
        self.tool("pg_basebackup", &args).await?;
        let tar = target.join("base.tar");
        let tars = std::fs::read_dir(&target)
            .map_err(|e| format!("reading {}: {e}", target.display()))?
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tar")))
            .count();
        if tars != 1 {
            return Err(format!("{}: {tars} tar files; tablespaces are not supported", target.display()));
        }
        let summed = tar.clone();
        let (checksum, size) = tokio::task::spawn_blocking(move || file_checksum(&summed))
            .await
            .map_err(|e| format!("summing the backup: {e}"))??;
        Ok(BackupTaken {
            id,
            taken_at_unix_ms: crate::unix_ms(),
            size_bytes: size,
            checksum,
            location: format!("file://{}", tar.display()),
        })
    }

    /// Restores `job`'s base backup into a scratch instance, checks it and
    /// removes it, whatever happened.
    /// A restore test: the backup restored into a scratch instance on a free
    /// port, checked (checksum, start, data check; with `write`, a write
    /// taken too, as a promoted primary must), torn down.
    async fn test_restore(&self, job: &RestoreJob, write: bool) -> Result<RestoreProof, String> {
        let dir = self.backup_dir()?;
        let tar = file_path(&job.location)?;
        let summed = tar.clone();
        let (checksum, _) = tokio::task::spawn_blocking(move || file_checksum(&summed))
            .await
            .map_err(|e| format!("summing the backup: {e}"))??;
        if checksum != job.checksum {
            return Err(format!(
                "checksum mismatch: the catalogue says {}, {} is {checksum}",
                job.checksum,
                tar.display()
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a scratch port: {e}"))?
            .port();
        let scratch = InstanceConfig {
            data_dir: dir.join(format!(".restore-{}", job.job_id)),
            port,
            host: "127.0.0.1".into(),
            listen_addresses: None,
            socket_dir: None,
            log_file: None,
        };
        let outcome = self.restore_into(&scratch, &tar, job, write).await;
        if postmaster(&scratch).is_some() {
            let _ = self.stop(&scratch, "immediate", 10).await;
        }
        let _ = std::fs::remove_dir_all(&scratch.data_dir);
        let _ = std::fs::remove_file(scratch.data_dir.with_extension("log"));
        outcome
    }

    async fn restore_into(
        &self,
        scratch: &InstanceConfig,
        tar: &Path,
        job: &RestoreJob,
        write: bool,
    ) -> Result<RestoreProof, String> {
        let _ = std::fs::remove_dir_all(&scratch.data_dir);
        self.create_data_dir(scratch)?;
        let args = ["-xf".to_string(), path(tar), "-C".to_string(), path(&scratch.data_dir)];
        self.run_program(Path::new("tar"), "tar", &args, false).await?;
        for signal in ["standby.signal", "recovery.signal"] {
            let _ = std::fs::remove_file(scratch.data_dir.join(signal));
        }
        // No standby to wait for, nothing to archive: a scratch copy.
        self.start_with(scratch, "-c synchronous_standby_names='' -c archive_mode=off").await?;
        let client = self.connect_at(&scratch.host, scratch.port).await?;
        let data_check = match (job.check_table.as_str(), job.check_column.as_str()) {
            ("", _) => {
                client.query_one("SELECT 1", &[]).await.map_err(|e| format!("the restored instance: {e}"))?;
                None
            }
            (table, column) => {
                if !sql_name(table, 2) || !sql_name(column, 1) {
                    return Err(format!("check_table {table:?} / check_column {column:?}: not plain SQL names"));
                }
                let query = format!("SELECT count(*)::bigint, coalesce(max({column}), 0)::bigint FROM {table}");
                let row = client.query_one(&query, &[]).await.map_err(|e| format!("the data check ({query}): {e}"))?;
                let rows: i64 = row.try_get(0).map_err(|e| e.to_string())?;
                let newest: i64 = row.try_get(1).map_err(|e| e.to_string())?;
                Some((rows.max(0) as u64, newest.max(0) as u64))
            }
        };
        if write {
            let probe = "CREATE TABLE interlock_drill_write (at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO interlock_drill_write DEFAULT VALUES;";
            client.batch_execute(probe).await.map_err(|e| format!("the restored instance refused a write: {e}"))?;
            let row = client
                .query_one("SELECT count(*)::bigint FROM interlock_drill_write", &[])
                .await
                .map_err(|e| format!("reading the write back: {e}"))?;
            if row.try_get::<_, i64>(0).map_err(|e| e.to_string())? != 1 {
                return Err("the restored instance did not keep its write".to_string());
            }
        }
        Ok(RestoreProof { checksum_match: true, data_check })
    }

    fn instance(&self, replica: &str) -> Result<&InstanceConfig, String> {
        self.config
            .instances
            .get(replica)
            .filter(|_| self.shards.contains_key(replica))
            .ok_or_else(|| format!("replica {replica} is not run by this agent"))
    }

    /// Waits for the instance's turn for a role operation.
    async fn turn(&self, replica: &str) -> Result<tokio::sync::MutexGuard<'_, ()>, String> {
        match self.ops.get(replica) {
            Some(m) => Ok(m.lock().await),
            None => Err(format!("replica {replica} is not run by this agent")),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Observed>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts every initialised instance that is not running, as a standby;
    /// then reads every status each `status_every_ms`, forever.
    pub async fn run(self: Arc<Self>) {
        for replica in self.shards.keys() {
            if let Err(e) = self.start_stopped_as_standby(replica).await {
                tracing::warn!(replica, "starting it as a standby: {e}");
            }
        }
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.status_every_ms));
        loop {
            tick.tick().await;
            for replica in self.shards.keys() {
                self.refresh(replica).await;
            }
        }
    }

    /// A stopped standby starts again as a standby. A stopped instance that
    /// was a primary stays stopped: it may hold WAL the next primary never
    /// got, and rejoins only through [`PostgresDriver::rejoin`] (pg_rewind).
    async fn start_stopped_as_standby(&self, replica: &str) -> Result<(), String> {
        let i = self.instance(replica)?;
        if !i.data_dir.join("PG_VERSION").exists() || postmaster(i).is_some() || self.was_primary(i).await? {
            return Ok(());
        }
        self.standby_signal(i)?;
        self.start(i).await
    }

    /// Whether a stopped instance was last a primary, from its control file
    /// (`pg_controldata`): "in production" or "shut down", not "… in
    /// recovery". Unknown counts as a primary.
    async fn was_primary(&self, i: &InstanceConfig) -> Result<bool, String> {
        let out = self.quiet_tool("pg_controldata", &["-D".to_string(), path(&i.data_dir)]).await?;
        let state = out.lines().find_map(|l| l.strip_prefix("Database cluster state:")).map(str::trim);
        Ok(!state.is_some_and(|s| s.contains("recovery")))
    }

    /// Reads the instance's status now and remembers it.
    async fn refresh(&self, replica: &str) -> Observed {
        let previous = self.known().get(replica).copied().unwrap_or_default();
        let observed = match self.observe(replica).await {
            Ok(o) => o,
            Err(e) => {
                if previous.healthy {
                    tracing::warn!(replica, "unhealthy: {e}");
                }
                Observed { healthy: false, primary: false, position: previous.position }
            }
        };
        self.known().insert(replica.to_string(), observed);
        observed
    }

    async fn observe(&self, replica: &str) -> Result<Observed, String> {
        let client = self.connect(replica).await?;
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                 THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_lsn() END, '0/0')::bigint",
                &[],
            )
            .await
            .map_err(|e| format!("status query: {e}"))?;
        let in_recovery: bool = row.try_get(0).map_err(|e| format!("pg_is_in_recovery: {e}"))?;
        let position: i64 = row.try_get(1).map_err(|e| format!("position: {e}"))?;
        Ok(Observed { healthy: true, primary: !in_recovery, position: position.max(0) as u64 })
    }

    async fn connect(&self, replica: &str) -> Result<tokio_postgres::Client, String> {
        let i = self.instance(replica)?;
        self.connect_at(&i.host, i.port).await
    }

    async fn connect_at(&self, host: &str, port: u16) -> Result<tokio_postgres::Client, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(port)
            .user(&self.config.db_user)
            .dbname("postgres")
            .application_name("interlock-agent")
            .connect_timeout(Duration::from_secs(2));
        if let Some(password) = &self.config.db_password {
            config.password(password);
        }
        let (client, connection) = tokio::time::timeout(Duration::from_secs(3), config.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| format!("connecting to {host}:{port}: timed out"))?
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Whether the instance at `address` (host:port) is in recovery.
    async fn source_in_recovery(&self, address: &str) -> Result<bool, String> {
        let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("address {address:?}: not host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("address {address:?}: bad port"))?;
        let client = self.connect_at(host, port).await?;
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(|e| e.to_string())?;
        row.try_get(0).map_err(|e| e.to_string())
    }

    /// Runs one of PostgreSQL's tools as the database's OS user, under the
    /// timeout; its output goes into the agent's log.
    async fn tool(&self, program: &str, args: &[String]) -> Result<String, String> {
        self.run_tool(program, args, true).await
    }

    /// [`PostgresDriver::tool`], logging its output only if it fails.
    async fn quiet_tool(&self, program: &str, args: &[String]) -> Result<String, String> {
        self.run_tool(program, args, false).await
    }

    async fn run_tool(&self, program: &str, args: &[String], log: bool) -> Result<String, String> {
        self.run_program(&self.config.bin_dir.join(program), program, args, log).await
    }

    /// Runs `exe` as the database's OS user under the timeout.
    async fn run_program(&self, exe: &Path, program: &str, args: &[String], log: bool) -> Result<String, String> {
        let mut command = tokio::process::Command::new(exe);
        command.args(args).current_dir("/").kill_on_drop(true).stdin(std::process::Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Err(_) => return Err(format!("{program}: still running after {} ms; killed", self.config.timeout_ms)),
            Ok(Err(e)) => return Err(format!("{program}: cannot run it: {e}")),
            Ok(Ok(o)) => o,
        };
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if log || !output.status.success() {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                tracing::info!("{program}: {line}");
            }
        }
        if output.status.success() {
            Ok(text)
        } else {
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            Err(format!("{program} {}: {last}", output.status))
        }
    }

    async fn start(&self, i: &InstanceConfig) -> Result<(), String> {
        self.start_with(i, "").await
    }

    /// Starts the instance with `extra` server options.
    async fn start_with(&self, i: &InstanceConfig, extra: &str) -> Result<(), String> {
        let socket_dir = i.socket_dir.clone().unwrap_or_else(|| parent(&i.data_dir));
        let listen = i.listen_addresses.clone().unwrap_or_else(|| i.host.clone());
        let log = i.log_file.clone().unwrap_or_else(|| i.data_dir.with_extension("log"));
        let options = format!("-p {} -k {} -c listen_addresses='{listen}' {extra}", i.port, socket_dir.display());
        let timeout_s = (self.config.timeout_ms / 1000).max(1).to_string();
        let args = ["start", "-w", "-t", &timeout_s, "-D", &path(&i.data_dir), "-l", &path(&log), "-o", &options];
        self.tool("pg_ctl", &args.map(String::from)).await.map(|_| ())
    }

    async fn stop(&self, i: &InstanceConfig, mode: &str, timeout_s: u64) -> Result<(), String> {
        let t = timeout_s.to_string();
        let args = ["stop", "-w", "-t", &t, "-m", mode, "-D", &path(&i.data_dir)];
        self.tool("pg_ctl", &args.map(String::from)).await.map(|_| ())
    }

    /// Any start from now on comes up as a standby.
    fn standby_signal(&self, i: &InstanceConfig) -> Result<(), String> {
        let file = i.data_dir.join("standby.signal");
        std::fs::write(&file, b"").map_err(|e| format!("writing {}: {e}", file.display()))?;
        self.chown(&file)
    }

    /// An empty data directory, owned by the OS user, mode 0700 (PostgreSQL
    /// refuses any other).
    fn create_data_dir(&self, i: &InstanceConfig) -> Result<(), String> {
        let dir = &i.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(dir, mode).map_err(|e| format!("chmod 0700 {}: {e}", dir.display()))?;
        self.chown(dir)
    }

    fn chown(&self, file: &Path) -> Result<(), String> {
        if let Some((uid, gid)) = self.run_as {
            let (uid, gid) = (nix::unistd::Uid::from_raw(uid), nix::unistd::Gid::from_raw(gid));
            nix::unistd::chown(file, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", file.display()))?;
        }
        Ok(())
    }

    /// Points the instance at `address` (host:port) in
    /// `postgresql.auto.conf`, read at the next start or reload.
    fn write_conninfo(&self, i: &InstanceConfig, replica: &str, address: &str) -> Result<(), String> {
        let (host, port) =
            address.rsplit_once(':').ok_or_else(|| format!("primary address {address:?}: not host:port"))?;
        let conninfo = format!("host={host} port={port} user={} application_name={replica}", self.config.db_user);
        let file = i.data_dir.join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&file).unwrap_or_default();
        let mut text: String =
            old.lines().filter(|l| !l.trim_start().starts_with("primary_conninfo")).map(|l| format!("{l}\n")).collect();
        text.push_str(&format!("primary_conninfo = '{}'\n", conninfo.replace('\'', "''")));
        std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
        self.chown(&file)
    }

    /// Stops the postmaster by force and waits until its process is gone.
    async fn kill(&self, i: &InstanceConfig) -> Result<(), String> {
        let Some(pid) = postmaster(i) else { return Ok(()) };
        if let Err(e) = self.stop(i, "immediate", 5).await {
            tracing::warn!("pg_ctl stop -m immediate: {e}; SIGKILL to the postmaster {pid}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.timeout_ms);
        while alive(pid) {
            if Instant::now() > deadline {
                return Err(format!("the postmaster {pid} is still running"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Creates `replica`'s instance from nothing — `initdb` with data
    /// checksums (for pg_rewind) and trust authentication, `settings`
    /// appended to its postgresql.conf — and starts it as a primary. For
    /// `interlockd dev --postgres`, the tests and the benchmark; the other
    /// instances are then cloned from it by [`ReplicaDriver::follow`].
    pub async fn initialise(&self, replica: &str, settings: &str) -> Result<(), String> {
        let i = self.instance(replica)?;
        self.create_data_dir(i)?;
        let args = ["-D", &path(&i.data_dir), "-U", &self.config.db_user, "--auth=trust", "--data-checksums"];
        let args: Vec<String> = args.iter().chain(&["--locale=C", "-E", "UTF8"]).map(|a| a.to_string()).collect();
        self.tool("initdb", &args).await?;
        let conf = i.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).map_err(|e| format!("reading {}: {e}", conf.display()))?;
        text.push_str("\n# interlock\n");
        text.push_str(settings);
        text.push('\n');
        std::fs::write(&conf, text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
        self.start(i).await
    }

    /// Stops every instance now (`pg_ctl stop -m immediate`), blocking: for
    /// whoever created them ([`PostgresDriver::initialise`]) when it is
    /// done. The agent itself never stops its databases on exit.
    pub fn stop_all_blocking(&self) {
        for i in self.config.instances.values().filter(|i| postmaster(i).is_some()) {
            let mut command = std::process::Command::new(self.config.bin_dir.join("pg_ctl"));
            command.args(["stop", "-m", "immediate", "-w", "-D", &path(&i.data_dir)]).current_dir("/");
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::process::CommandExt::uid(&mut command, uid);
                std::os::unix::process::CommandExt::gid(&mut command, gid);
            }
            let _ = command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status();
        }
    }

    /// A stopped (or never created) instance becomes a standby of the
    /// primary at `host:port`: cloned if empty, rewound if it diverged.
    async fn rejoin(&self, replica: &str, address: &str) -> Result<(), String> {
        let i = self.instance(replica)?;
        let (host, port) =
            address.rsplit_once(':').ok_or_else(|| format!("primary address {address:?}: not host:port"))?;
        let source = format!("host={host} port={port} user={} dbname=postgres", self.config.db_user);
        if i.data_dir.join("PG_VERSION").exists() {
            // A clean stop: an instance stopped by force is crash-recovered
            // below, which writes WAL of its own.
            if postmaster(i).is_some() && self.stop(i, "fast", 10).await.is_err() {
                self.kill(i).await?;
            }
            self.kill(i).await?; // and wait until the postmaster is gone

            // A former standby needs no rewind (it never wrote WAL; it follows
            // the new timeline). A former primary is rewound. pg_rewind first
            // completes crash recovery in single-user mode, which refuses
            // standby mode: the signal goes back right after.
            if self.was_primary(i).await? {
                // A just-promoted source writes its new timeline into
                // pg_control only at its end-of-recovery checkpoint, and
                // pg_rewind reads it from there: rewound against the old
                // timeline, this instance never starts again ("requested
                // timeline does not contain minimum recovery point").
                let port: u16 = port.parse().map_err(|_| format!("primary address {address:?}: bad port"))?;
                let primary = self.connect_at(host, port).await?;
                primary.batch_execute("CHECKPOINT").await.map_err(|e| format!("CHECKPOINT on {address}: {e}"))?;
                let _ = std::fs::remove_file(i.data_dir.join("standby.signal"));
                let args = ["--target-pgdata".to_string(), path(&i.data_dir), format!("--source-server={source}")];
                let rewound = self.tool("pg_rewind", &args).await;
                self.standby_signal(i)?;
                rewound?;
            }
        } else {
            self.create_data_dir(i)?;
            let args = ["-D", &path(&i.data_dir), "-d", &source, "-X", "stream", "-c", "fast"].map(String::from);
            self.tool("pg_basebackup", &args).await?;
        }
        self.standby_signal(i)?;
        self.write_conninfo(i, replica, address)?;
        self.start(i).await?;
        self.refresh(replica).await;
        Ok(())
    }
}

impl ReplicaDriver for PostgresDriver {
    fn status(&self) -> Vec<ReplicaStatus> {
        let known = self.known();
        self.shards
            .keys()
            .map(|id| {
                let o = known.get(id).copied().unwrap_or_default();
                ReplicaStatus { replica_id: id.clone(), position: o.position, lag: 0, healthy: o.healthy }
            })
            .collect()
    }

    fn reachable_regions(&self) -> Vec<String> {
        self.reachable.regions()
    }

    async fn backup(&self, replica: &str) -> Result<BackupTaken, String> {
        self.take_backup(replica).await
    }

    async fn restore_test(&self, job: &RestoreJob) -> Result<RestoreProof, String> {
        self.test_restore(job, false).await
    }

    /// One built-in runbook hook, `drill-restore` (a drill variant: nothing
    /// in production changes): the newest verified backup of each shard this
    /// agent runs is restored into a scratch instance in this region,
    /// started as a primary, checked, made to take a write, timed, and torn
    /// down.
    async fn hook(&self, job: &interlock_client::HookJob) -> Result<String, String> {
        if job.name != "drill-restore" {
            return Err(format!("the PostgreSQL driver has no hook {:?} (it has: drill-restore)", job.name));
        }
        if job.restores.is_empty() {
            return Err("drill-restore: no verified backup of a shard this agent runs".to_string());
        }
        let mut said = Vec::new();
        for restore in &job.restores {
            let started = tokio::time::Instant::now();
            let proof = self.test_restore(restore, true).await.map_err(|e| {
                format!("drill-restore of backup {} of {}/{}: {e}", restore.backup_id, restore.service, restore.shard)
            })?;
            let data =
                proof.data_check.map_or(String::new(), |(rows, newest)| format!(", {rows} rows, newest {newest}"));
            said.push(format!(
                "{}/{}: backup {} restored, started as a primary{data}, took a write, in {} ms",
                restore.service,
                restore.shard,
                restore.backup_id,
                started.elapsed().as_millis()
            ));
        }
        Ok(said.join("; "))
    }

    async fn is_primary(&self, replica: &str) -> Result<bool, String> {
        let i = self.instance(replica)?;
        if postmaster(i).is_none() {
            return Ok(false);
        }
        let o = self.observe(replica).await?;
        Ok(o.primary)
    }

    async fn promote(&self, replica: &str, epoch: u64, token: u64) -> Result<(), String> {
        let _turn = self.turn(replica).await?;
        let client = self.connect(replica).await?;
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(|e| e.to_string())?;
        if row.try_get::<_, bool>(0).map_err(|e| e.to_string())? {
            let row = client.query_one("SELECT pg_promote(true, 60)", &[]).await.map_err(|e| e.to_string())?;
            if !row.try_get::<_, bool>(0).map_err(|e| e.to_string())? {
                return Err("pg_promote: not promoted within 60 s".into());
            }
        }
        // The fencing record, for writers that check it. Committed
        // locally: a synchronous standby may still be repointing.
        let (epoch, token) = (epoch as i64, token as i64);
        let record = "SET synchronous_commit = local;
             CREATE SCHEMA IF NOT EXISTS interlock;
             CREATE TABLE IF NOT EXISTS interlock.fencing (
                 epoch bigint PRIMARY KEY, token bigint NOT NULL, replica text NOT NULL,
                 promoted_at timestamptz NOT NULL DEFAULT now());";
        client.batch_execute(record).await.map_err(|e| format!("interlock.fencing: {e}"))?;
        client
            .execute(
                "INSERT INTO interlock.fencing (epoch, token, replica) VALUES ($1, $2, $3) \
                 ON CONFLICT (epoch) DO UPDATE SET token = EXCLUDED.token, replica = EXCLUDED.replica",
                &[&epoch, &token, &replica],
            )
            .await
            .map_err(|e| format!("interlock.fencing: {e}"))?;
        tracing::info!(replica, epoch, token, "promoted");
        self.refresh(replica).await;
        Ok(())
    }

    async fn demote(&self, replica: &str, reason: &str) -> Result<(), String> {
        let _turn = self.turn(replica).await?;
        let i = self.instance(replica)?;
        tracing::info!(replica, "demoting: {reason}");
        if postmaster(i).is_some() && self.observe(replica).await?.primary {
            self.stop(i, "fast", (self.config.timeout_ms / 1000).max(1)).await?;
        }
        self.standby_signal(i)?;
        if postmaster(i).is_none() {
            if let Err(e) = self.start(i).await {
                tracing::warn!(replica, "starting it again as a standby: {e}");
            }
        }
        if postmaster(i).is_some() && self.refresh(replica).await.primary {
            return Err("it still acts as primary".into());
        }
        Ok(())
    }

    async fn fence(&self, replica: &str, reason: &str) -> Result<(), String> {
        let _turn = self.turn(replica).await?;
        let i = self.instance(replica)?;
        tracing::warn!(replica, "fencing: {reason}");
        self.standby_signal(i)?;
        self.kill(i).await?;
        self.refresh(replica).await;
        Ok(())
    }

    async fn follow(&self, replica: &str, primary: &str, address: &str) -> Result<(), String> {
        let _turn = self.turn(replica).await?;
        let i = self.instance(replica)?;
        tracing::info!(replica, "following {primary} at {address}");
        // Not before the new primary is out of recovery: rewound against
        // a standby still on the old timeline, this instance would keep
        // WAL of its own (crash recovery writes some) past the fork.
        match self.source_in_recovery(address).await {
            Ok(false) => {}
            Ok(true) => return Err(format!("{primary} is not promoted yet")),
            Err(e) => return Err(format!("{primary}: {e}")),
        }
        if postmaster(i).is_none() {
            return self.rejoin(replica, address).await;
        }
        let o = self.observe(replica).await?;
        if o.primary {
            return Err("it acts as primary: it must be fenced before it follows".into());
        }
        self.write_conninfo(i, replica, address)?;
        let client = self.connect(replica).await?;
        client.query_one("SELECT pg_reload_conf()", &[]).await.map_err(|e| format!("pg_reload_conf: {e}"))?;
        Ok(())
    }
}

/// The postmaster's pid, if it is running.
fn postmaster(i: &InstanceConfig) -> Option<i32> {
    let text = std::fs::read_to_string(i.data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn alive(pid: i32) -> bool {
    // A zombie is gone for our purposes; /proc says which it is.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A lowercase SQL name of at most `parts` dot-separated parts (as the
/// topology validates a policy's check_table and check_column).
fn sql_name(name: &str, parts: usize) -> bool {
    let each: Vec<&str> = name.split('.').collect();
    each.len() <= parts
        && each.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map_or_else(|| PathBuf::from("/tmp"), Path::to_path_buf)
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The (uid, gid) to run the tools as.
fn run_as(os_user: Option<&str>) -> Result<Option<(u32, u32)>, String> {
    let root = nix::unistd::geteuid().is_root();
    let name = match os_user {
        Some(u) => u,
        None if root => "postgres",
        None => return Ok(None),
    };
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("postgres.os_user: {name}: {e}"))?
        .ok_or_else(|| format!("postgres.os_user: no OS user {name:?}"))?;
    if user.uid.is_root() {
        return Err("postgres.os_user: PostgreSQL refuses to run as root".into());
    }
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_by_key() {
        let base = |f: &dyn Fn(&mut PostgresConfig)| -> Result<(), String> {
            let mut c: PostgresConfig =
                toml::from_str("[instances.orders-0-eu]\ndata_dir = \"/var/lib/pg/eu\"\nport = 5432\n").expect("parse");
            f(&mut c);
            c.validate()
        };
        assert_eq!(base(&|_| {}), Ok(()));
        type Change<'a> = &'a dyn Fn(&mut PostgresConfig);
        let cases: [(Change<'_>, &str); 4] = [
            (&|c| c.instances.clear(), "postgres.instances: at least one"),
            (&|c| c.status_every_ms = 10, "postgres.status_every_ms"),
            (&|c| c.timeout_ms = 10, "postgres.timeout_ms"),
            (
                &|c| c.instances.values_mut().for_each(|i| i.data_dir = "pg/eu".into()),
                "postgres.instances.orders-0-eu.data_dir",
            ),
        ];
        for (change, expected) in cases {
            let err = base(change).expect_err(expected);
            assert!(err.contains(expected), "{expected}: {err}");
        }
        assert!(toml::from_str::<PostgresConfig>("instances = {}\nbogus = 1\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn primary_conninfo_is_replaced_not_appended() {
        let dir = std::env::temp_dir().join(format!("interlock-pg-conninfo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("postgresql.auto.conf"), "# keep\nprimary_conninfo = 'host=old'\nwork_mem = '4MB'\n")
            .expect("write");
        let config = PostgresConfig {
            bin_dir: default_bin_dir(),
            os_user: None,
            db_user: "postgres".into(),
            db_password: None,
            status_every_ms: 1000,
            timeout_ms: 30_000,
            instances: BTreeMap::new(),
        };
        let driver = PostgresDriver {
            config,
            shards: BTreeMap::new(),
            reachable: Arc::new(Reachability::new("eu", Duration::from_secs(1))),
            known: Mutex::new(BTreeMap::new()),
            ops: BTreeMap::new(),
            run_as: None,
            backup_dir: None,
        };
        let i = InstanceConfig {
            data_dir: dir.clone(),
            port: 5432,
            host: "127.0.0.1".into(),
            listen_addresses: None,
            socket_dir: None,
            log_file: None,
        };
        driver.write_conninfo(&i, "orders-0-eu", "10.0.0.7:5433").expect("write");
        let text = std::fs::read_to_string(dir.join("postgresql.auto.conf")).expect("read");
        assert_eq!(
            text,
            "# keep\nwork_mem = '4MB'\nprimary_conninfo = 'host=10.0.0.7 port=5433 user=postgres application_name=orders-0-eu'\n"
        );
        assert!(driver.write_conninfo(&i, "orders-0-eu", "no-port").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
