//! TLS for test servers on 127.0.0.1: a CA made on the spot, and a server certificate it
//! signs (IP SAN `127.0.0.1`, DNS SAN `localhost`), so that a client trusts the server only
//! when told to trust that CA.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What [`generate`] makes.
pub struct ServerTls {
    /// The CA certificate, PEM: what a client must be told to trust.
    pub ca_pem: String,
    /// The server's side: TLS 1.2 and 1.3 (the ring provider), no client authentication,
    /// the certificate chain and ALPN protocols asked for.
    pub config: Arc<rustls::ServerConfig>,
}

/// The certificates the server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// Its own certificate only.
    Leaf,
    /// Its own certificate, then the CA's.
    LeafAndCa,
}

/// A new CA (common name `ca_name` and a tag of its key) and a server certificate (common name `server_name`,
/// IP `127.0.0.1`, DNS `localhost`, server authentication) it signs, as a server
/// configuration presenting `chain` and offering `alpn`.
pub fn generate(
    ca_name: &str,
    server_name: &str,
    chain: Chain,
    alpn: &[&[u8]],
) -> io::Result<ServerTls> {
    let err = io::Error::other::<rcgen::Error>;
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    // Unique per CA (from its own key): a bundle of several test CAs must not hold two
    // issuers of one name, or a verifier may try the wrong one and fail.
    let tag: String = ca_key.public_key_raw()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{ca_name} {tag}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, server_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    let mut certs = vec![CertificateDer::from(cert.der().to_vec())];
    if chain == Chain::LeafAndCa {
        certs.push(CertificateDer::from(ca_cert.der().to_vec()));
    }
    // The provider is named: the process default may be ambiguous in a workspace build.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            certs,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(io::Error::other)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(ServerTls {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
    })
}
