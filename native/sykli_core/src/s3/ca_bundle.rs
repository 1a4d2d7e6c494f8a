//! `s3.ca_bundle`: a PEM file of the CAs that sign the certificate of the bucket's endpoint
//! (a MinIO or another S3-compatible service behind a private CA). They are the roots this
//! machine's S3 requests trust, and the Jobs' download gets the same certificates (in the
//! fetch container's environment) and trusts them too. Checked whole before anything uses
//! it: the SDK's TLS setup would panic on a certificate it cannot parse.

use std::io::Read;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::error::{Error, Result};

/// What a bundle may weigh: it travels to the pods in an environment variable (Linux caps
/// one at 128 KiB), so it must hold the endpoint's CAs, not a whole system store.
pub const MAX_BUNDLE_BYTES: usize = 64 << 10;
const KEY: &str = "s3.ca_bundle";
const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// A checked bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// The certificates only (`BEGIN CERTIFICATE` blocks; comments and other blocks left
    /// out), PEM.
    pub pem: String,
    pub certificates: usize,
}

/// Reads `path` and checks that it holds at least one certificate, each usable as a root.
pub fn read(path: &Path) -> Result<CaBundle> {
    let invalid = |message: String| Error::InvalidOption {
        key: KEY.into(),
        message: format!("{}: {message}", path.display()),
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(4 * MAX_BUNDLE_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| invalid(format!("cannot be read ({e})")))?;
    parse(&text).map_err(invalid)
}

/// The certificate blocks of `text`, each checked; `Err` says what is wrong.
pub fn parse(text: &str) -> std::result::Result<CaBundle, String> {
    let mut pem = String::new();
    let mut block: Option<String> = None;
    let mut certificates = 0;
    for line in text.lines().map(str::trim) {
        match &mut block {
            None if line == BEGIN => block = Some(format!("{BEGIN}\n")),
            None => {}
            Some(b) => {
                b.push_str(line);
                b.push('\n');
                if line == END {
                    certificates += 1;
                    check(b, certificates)?;
                    pem.push_str(b);
                    block = None;
                }
            }
        }
    }
    if block.is_some() {
        return Err(format!(
            "certificate {} has no {END} line",
            certificates + 1
        ));
    }
    if certificates == 0 {
        return Err(format!(
            "no certificate in it (a PEM file of {BEGIN} blocks is needed)"
        ));
    }
    if pem.len() > MAX_BUNDLE_BYTES {
        return Err(format!(
            "its {certificates} certificates take {} KiB, more than the {} KiB a bundle may have: \
             give only the CAs of the bucket's endpoint",
            pem.len().div_ceil(1024),
            MAX_BUNDLE_BYTES / 1024
        ));
    }
    Ok(CaBundle { pem, certificates })
}

fn check(block: &str, n: usize) -> std::result::Result<(), String> {
    let der = CertificateDer::from_pem_slice(block.as_bytes())
        .map_err(|e| format!("certificate {n} is not valid PEM ({e})"))?;
    rustls::RootCertStore::empty()
        .add(der)
        .map_err(|e| format!("certificate {n} cannot be a trusted root ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_but_valid_certificates_passes() {
        assert!(parse("").unwrap_err().contains("no certificate"));
        assert!(
            parse("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("no certificate")
        );
        let err = parse(&format!("{BEGIN}\nnot base64 at all!\n{END}\n")).unwrap_err();
        assert!(err.contains("certificate 1"), "{err}");
        let err = parse(&format!("{BEGIN}\nAAAA\n")).unwrap_err();
        assert!(err.contains("no -----END"), "{err}");
        // Valid base64 but no certificate inside.
        let err = parse(&format!("{BEGIN}\nAAAA\n{END}\n")).unwrap_err();
        assert!(
            err.contains("certificate 1 cannot be a trusted root"),
            "{err}"
        );
    }
}
