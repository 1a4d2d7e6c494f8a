//! A CA made at start, and the server's certificate (IP SAN 127.0.0.1, DNS localhost) it signs.

use std::sync::Arc;

use sykli_testkit::tls::{self, Chain};

pub struct Tls {
    /// The CA certificate, PEM (what kubeconfig's certificate-authority-data holds).
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

pub fn generate() -> Result<Tls, String> {
    let tls = tls::generate(
        "sykli-test-cluster-ca",
        "kube-apiserver",
        Chain::LeafAndCa,
        &[b"h2", b"http/1.1"],
    )
    .map_err(|e| e.to_string())?;
    Ok(Tls {
        ca_pem: tls.ca_pem,
        server_config: tls.config,
    })
}
