//! mTLS for every Interlock link (SPEC §9), one place that knows TLS.
//!
//! Map of the crate:
//! - this file: [`Tls`], the live server and client configurations built
//!   from a CA, a certificate and its key (and optionally a separate CA for
//!   peer nodes); swapped whole when the files change ([`Tls::watch`]), so
//!   certificates rotate without a restart.
//! - [`identity`]: who a peer is — its certificate's first DNS SAN, else its
//!   CN — and whether its certificate may carry the `node` role.
//! - [`stream`]: the server side (TLS over any accepted stream, TCP or the
//!   simulation's, exposing the peer's identity to tonic) and the client
//!   side (a connector for tonic channels).
//! - [`dev`]: a throwaway CA and leaf certificates (rcgen), for `interlockd
//!   dev`, the tests and the simulation.
//!
//! Both sides require a certificate from the trusted CA: a client without
//! one, with one from another CA, or with an expired one fails the handshake.
//! Which identity may do what is decided above this crate (the server's
//! `api::auth`). Every config is built with the ring provider passed in, so
//! no process-wide crypto provider has to be installed.

pub mod dev;
pub mod identity;
pub mod stream;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// The files a node, an agent or `interlockctl` reads its TLS material from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signs every certificate trusted here (PEM).
    pub ca: PathBuf,
    /// This party's certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// A separate CA for the nodes' own certificates; when set, only a
    /// certificate it signed may carry the `node` role.
    pub peer_ca: Option<PathBuf>,
}

/// The same material as PEM text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub peer_ca: Option<String>,
}

/// TLS material that cannot be used, naming the file or field and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct TlsError {
    pub field: String,
    pub reason: String,
}

impl TlsError {
    fn new(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        TlsError { field: field.into(), reason: reason.to_string() }
    }
}

/// What one set of files builds.
struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The raw subject of the peer CA, when one is configured.
    peer_ca_subject: Option<Vec<u8>>,
}

/// The live TLS configuration of one process, shared by its listeners and
/// channels. Cheap to clone; a reload is seen by every new connection.
#[derive(Clone)]
pub struct Tls {
    current: Arc<RwLock<Arc<Configs>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::new(field, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(field, "holds no certificate"));
    }
    Ok(certs)
}

/// The ALPN protocol gRPC speaks.
const H2: &[u8] = b"h2";

fn build(pem: &Pem) -> Result<Configs, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut trusted = certs(&pem.ca, "ca")?;
    let mut peer_ca_subject = None;
    if let Some(peer) = &pem.peer_ca {
        let peer = certs(peer, "peer_ca")?;
        peer_ca_subject = Some(identity::subject(&peer[0]).map_err(|e| TlsError::new("peer_ca", e))?);
        trusted.extend(peer);
    }
    for cert in trusted {
        roots.add(cert).map_err(|e| TlsError::new("ca", format!("not a usable CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&pem.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| TlsError::new("key", format!("not a PEM private key: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::new("ca", e))?;
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::new("cert", format!("does not match its key or is unusable: {e}")))?;
    server.alpn_protocols = vec![H2.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new("tls", e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::new("cert", format!("does not match its key or is unusable: {e}")))?;
    client.alpn_protocols = vec![H2.to_vec()];
    Ok(Configs { server: Arc::new(server), client: Arc::new(client), peer_ca_subject })
}

fn read(path: &Path, field: &str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::new(field, format!("{}: {e}", path.display())))
}

impl TlsFiles {
    /// Reads the files into PEM text.
    pub fn read(&self) -> Result<Pem, TlsError> {
        Ok(Pem {
            ca: read(&self.ca, "ca")?,
            cert: read(&self.cert, "cert")?,
            key: read(&self.key, "key")?,
            peer_ca: self.peer_ca.as_deref().map(|p| read(p, "peer_ca")).transpose()?,
        })
    }

    /// The newest modification time among the files (for reloading).
    fn modified(&self) -> Option<SystemTime> {
        let paths = [Some(&self.ca), Some(&self.cert), Some(&self.key), self.peer_ca.as_ref()];
        paths.into_iter().flatten().filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).max()
    }
}

impl Tls {
    /// Builds the configuration from PEM text.
    pub fn from_pem(pem: &Pem) -> Result<Tls, TlsError> {
        Ok(Tls { current: Arc::new(RwLock::new(Arc::new(build(pem)?))) })
    }

    /// Builds the configuration from files.
    pub fn from_files(files: &TlsFiles) -> Result<Tls, TlsError> {
        Tls::from_pem(&files.read()?)
    }

    /// Replaces the configuration; new connections use it, open ones keep
    /// theirs. On error nothing changes.
    pub fn reload(&self, pem: &Pem) -> Result<(), TlsError> {
        let built = Arc::new(build(pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = built;
        Ok(())
    }

    fn configs(&self) -> Arc<Configs> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configs().server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.configs().client.clone()
    }

    /// Reloads from `files` whenever one of them changes (checked every
    /// `every`), until the runtime stops. A change that does not build (a
    /// half-written file, a key that does not match) is logged and retried
    /// at the next check; the old configuration stays in force meanwhile.
    pub fn watch(&self, files: TlsFiles, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut seen = files.modified();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = files.modified();
                if now == seen {
                    continue;
                }
                match files.read().and_then(|pem| tls.reload(&pem)) {
                    Ok(()) => {
                        tracing::info!(cert = %files.cert.display(), "TLS certificates reloaded");
                        seen = now;
                    }
                    Err(e) => tracing::warn!("TLS files changed but cannot be used yet (keeping the old ones): {e}"),
                }
            }
        })
    }
}
