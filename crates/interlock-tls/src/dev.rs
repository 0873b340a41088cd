//! A throwaway certificate authority (rcgen), for `interlockd dev`, the
//! tests and the simulation: a CA and leaf certificates whose identity is
//! their first DNS SAN. Never for production: keys are generated here and
//! written next to the certificates.

use crate::{Pem, TlsError};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use std::path::Path;
use std::time::Duration;

/// A certificate authority that signs leaf certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// A leaf certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError { field: "dev CA".into(), reason: e.to_string() }
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Authority, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Authority { ca_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// A certificate for `identity` (its CN and first DNS SAN), also valid
    /// for `localhost`, 127.0.0.1 and any `extra_names`, usable to serve
    /// and to dial (a node does both).
    pub fn leaf(&self, identity: &str, extra_names: &[&str]) -> Result<Leaf, TlsError> {
        self.leaf_valid_for(identity, extra_names, None)
    }

    /// Like [`Authority::leaf`]; with `expired_for`, the certificate's
    /// validity ended that long ago (for tests of expired certificates).
    pub fn leaf_valid_for(
        &self,
        identity: &str,
        extra_names: &[&str],
        expired_for: Option<Duration>,
    ) -> Result<Leaf, TlsError> {
        let mut names = vec![identity.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().map(|n| n.to_string()));
        let mut params = CertificateParams::new(names).map_err(err)?;
        params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, identity);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(ago) = expired_for {
            let now = std::time::SystemTime::now();
            params.not_before = (now - ago - Duration::from_secs(86_400)).into();
            params.not_after = (now - ago).into();
        }
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The PEM material of `leaf` trusting this CA.
    pub fn pem(&self, leaf: &Leaf) -> Pem {
        Pem { ca: self.ca_pem.clone(), cert: leaf.cert_pem.clone(), key: leaf.key_pem.clone(), peer_ca: None }
    }

    /// Writes `ca.pem` (once) and `<name>.pem`, `<name>.key` for `identity`
    /// into `dir`; returns the files.
    pub fn write(&self, dir: &Path, name: &str, identity: &str) -> Result<crate::TlsFiles, TlsError> {
        let leaf = self.leaf(identity, &[])?;
        let io = |e: std::io::Error| TlsError { field: dir.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(io)?;
        let files = crate::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            peer_ca: None,
        };
        // The CA file is shared by every identity in `dir`: rewriting it would
        // make every node watching it reload (and might let one read it half-written).
        if std::fs::read_to_string(&files.ca).ok().as_deref() != Some(self.ca_pem.as_str()) {
            std::fs::write(&files.ca, &self.ca_pem).map_err(io)?;
        }
        std::fs::write(&files.cert, &leaf.cert_pem).map_err(io)?;
        write_private(&files.key, &leaf.key_pem).map_err(io)?;
        Ok(files)
    }
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())
}
