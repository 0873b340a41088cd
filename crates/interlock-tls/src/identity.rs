//! Who a peer is, from its (already verified) certificate: the first DNS
//! name among its subject alternative names, else its common name. Roles are
//! given to these names by the node's configuration.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity of the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's first DNS SAN, else its CN.
    pub name: String,
    /// Whether the certificate may carry the `node` role: it was issued by
    /// the peer CA, or no separate peer CA is configured.
    pub node_eligible: bool,
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, String> {
    X509Certificate::from_der(der.as_ref()).map(|(_, cert)| cert).map_err(|e| format!("not an X.509 certificate: {e}"))
}

/// The raw subject name of `cert`.
pub fn subject(cert: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    Ok(parse(cert)?.subject().as_raw().to_vec())
}

/// The identity in `leaf`; `peer_ca_subject` is the peer CA's subject when a
/// separate one is configured.
pub fn of(leaf: &CertificateDer<'_>, peer_ca_subject: Option<&[u8]>) -> Result<PeerIdentity, String> {
    let cert = parse(leaf)?;
    let san = cert.subject_alternative_name().ok().flatten().and_then(|ext| {
        ext.value.general_names.iter().find_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
    });
    let cn = || cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    let name = san.or_else(cn).filter(|n| !n.is_empty()).ok_or("the certificate names no DNS SAN and no CN")?;
    let node_eligible = peer_ca_subject.is_none_or(|subject| cert.issuer().as_raw() == subject);
    Ok(PeerIdentity { name, node_eligible })
}
