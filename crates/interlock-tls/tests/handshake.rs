//! Real handshakes over loopback TCP: the server learns the client's
//! identity; a client without a certificate, with one from another CA, or
//! with an expired one is refused at the handshake; a reload takes effect
//! for new connections.

use interlock_tls::dev::Authority;
use interlock_tls::stream::{accept, tcp_connector};
use interlock_tls::{Pem, Tls};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

async fn server(tls: Tls) -> (String, tokio::task::JoinHandle<std::io::Result<Option<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let task = tokio::spawn(async move {
        let (stream, remote) = listener.accept().await?;
        let io = accept(&tls, stream, Some(remote)).await?;
        Ok(tonic::transport::server::Connected::connect_info(&io).identity.map(|i| i.name))
    });
    (addr, task)
}

async fn dial(tls: Tls, addr: &str) -> std::io::Result<()> {
    let uri: tonic::transport::Uri = format!("http://{addr}").parse().expect("uri");
    tcp_connector(tls).oneshot(uri).await.map(|_| ())
}

#[tokio::test]
async fn the_server_learns_who_the_client_is_and_refuses_strangers() {
    let ca = Authority::new("test CA").expect("ca");
    let node = Tls::from_pem(&ca.pem(&ca.leaf("node-1", &[]).expect("leaf"))).expect("node tls");
    let alice = Tls::from_pem(&ca.pem(&ca.leaf("alice", &[]).expect("leaf"))).expect("alice tls");

    let (addr, task) = server(node.clone()).await;
    dial(alice.clone(), &addr).await.expect("a client of the CA is accepted");
    assert_eq!(task.await.expect("join").expect("handshake"), Some("alice".to_string()));

    // A certificate from another CA (that trusts the server's CA, so only
    // the server's check can refuse it).
    let other = Authority::new("other CA").expect("ca");
    let leaf = other.leaf("mallory", &[]).expect("leaf");
    let stranger = Tls::from_pem(&Pem { ca: ca.ca_pem.clone(), ..other.pem(&leaf) }).expect("tls");
    let (addr, task) = server(node.clone()).await;
    let _ = dial(stranger, &addr).await;
    let refused = task.await.expect("join").expect_err("a certificate from another CA is refused");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");

    // An expired certificate.
    let expired = ca.leaf_valid_for("old", &[], Some(Duration::from_secs(3600))).expect("leaf");
    let expired = Tls::from_pem(&ca.pem(&expired)).expect("tls");
    let (addr, task) = server(node.clone()).await;
    let _ = dial(expired, &addr).await;
    let refused = task.await.expect("join").expect_err("an expired certificate is refused");
    assert!(refused.to_string().contains("certificate expired"), "{refused}");

    // No certificate at all: a plain rustls client that offers none.
    let (addr, task) = server(node.clone()).await;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(&addr).await.expect("tcp");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let _ = connector.connect(name, tcp).await;
    let refused = task.await.expect("join").expect_err("a client without a certificate is refused");
    assert!(refused.to_string().contains("no certificates"), "{refused}");
}

#[tokio::test]
async fn a_reload_changes_the_certificate_for_new_connections() {
    let ca = Authority::new("test CA").expect("ca");
    let client = Tls::from_pem(&ca.pem(&ca.leaf("alice", &[]).expect("leaf"))).expect("tls");
    client.reload(&ca.pem(&ca.leaf("alice-rotated", &[]).expect("leaf"))).expect("reload");
    let node = Tls::from_pem(&ca.pem(&ca.leaf("node-1", &[]).expect("leaf"))).expect("tls");
    let (addr, task) = server(node).await;
    dial(client.clone(), &addr).await.expect("handshake");
    assert_eq!(task.await.expect("join").expect("handshake"), Some("alice-rotated".to_string()));
    // A reload that does not build changes nothing.
    let broken = Pem { key: "not a key".into(), ..ca.pem(&ca.leaf("x", &[]).expect("leaf")) };
    let refused = client.reload(&broken).expect_err("a broken key is refused");
    assert_eq!(refused.field, "key");
}
