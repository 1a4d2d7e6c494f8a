//! The pod side of the S3 strategy: download one archive from a presigned URL (ranged
//! requests in parallel above a size threshold), verify its SHA-256 and size, and extract
//! it with the hardened rules. The URL is a bearer capability: it never appears in a
//! message, only its host and path do.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::archive::SyncHeader;
use crate::error::{Error, Result};
use crate::extract::{extract_tar, Limits, Report, HEADER_NAME};
use crate::fs::Dir;
use crate::manifest::Manifest;

/// What a download should be, and how to fetch it.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    /// Lowercase hex SHA-256 of the whole object.
    pub sha256: String,
    pub size: u64,
    /// Concurrent ranged requests (1: one stream).
    pub parallel: usize,
    /// Objects smaller than this are fetched with one request whatever `parallel` says.
    pub parallel_min: u64,
    /// Attempts per request on a connection error or a 5xx / 429 answer.
    pub attempts: u32,
    /// PEM certificates of the CAs the endpoint's certificate must chain to, instead of
    /// the public roots (a bucket behind a private CA).
    pub ca_pem: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownloadReport {
    pub bytes: u64,
    pub requests: u64,
    pub ranges: u64,
}

/// Downloads `d` into `file` (created or truncated), checking the size of every answer and
/// the SHA-256 of the whole. A mismatch is [`Error::Integrity`]; nothing of it may be used.
pub fn download(d: &Download, file: &Path) -> Result<DownloadReport> {
    let agent = agent(d.ca_pem.as_deref())?;
    let out = File::create(file).map_err(|e| Error::io_path(file, e))?;
    let ranges = if d.parallel > 1 && d.size >= d.parallel_min.max(2) {
        split(d.size, d.parallel)
    } else {
        vec![]
    };
    let mut report = DownloadReport::default();
    if ranges.is_empty() {
        let (bytes, requests) = fetch(&agent, d, None, &out, 0)?;
        report.bytes = bytes;
        report.requests = requests;
    } else {
        out.set_len(d.size).map_err(|e| Error::io_path(file, e))?;
        report.ranges = ranges.len() as u64;
        let results: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(start, end)| {
                    let (agent, out) = (&agent, &out);
                    s.spawn(move || fetch(agent, d, Some((start, end)), out, start))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::InvalidArchive("a download thread panicked".into()))
                    })
                })
                .collect()
        });
        for r in results {
            let (bytes, requests) = r?;
            report.bytes += bytes;
            report.requests += requests;
        }
    }
    if report.bytes != d.size {
        return Err(Error::Integrity(format!(
            "{} is {} bytes, expected {}",
            redact(&d.url),
            report.bytes,
            d.size
        )));
    }
    let actual = hash_file(file)?;
    if actual != d.sha256 {
        return Err(Error::Integrity(format!(
            "{} has SHA-256 {actual}, expected {}: the object was changed or corrupted after it was uploaded",
            redact(&d.url),
            d.sha256
        )));
    }
    Ok(report)
}

/// Extracts a sync archive made from scratch (no base tree) into `dest` with the hardened
/// rules, and checks that its files make exactly `tree`.
pub fn extract_tree(archive: impl Read, dest: &Path, tree: &str, limits: Limits) -> Result<Report> {
    crate::path::check_tree_hash(tree)?;
    std::fs::create_dir_all(dest).map_err(|e| Error::io_path(dest, e))?;
    let dir = Dir::open(dest).map_err(|e| Error::io_path(dest, e))?;
    let mut on_header = |bytes: Vec<u8>| -> Result<()> {
        let h: SyncHeader = serde_json::from_slice(&bytes)
            .map_err(|e| Error::InvalidArchive(format!("{HEADER_NAME}: {e}")))?;
        if h.format != 1 || h.base.is_some() || !h.deleted.is_empty() || h.tree != tree {
            return Err(Error::InvalidArchive(format!(
                "the archive is not the full tree {tree} (its header names tree {}{})",
                h.tree,
                if h.base.is_some() {
                    " relative to a base"
                } else {
                    ""
                }
            )));
        }
        Ok(())
    };
    let mut manifest = Manifest::new();
    let gz = flate2::read::GzDecoder::new(archive);
    let report = extract_tar(gz, &dir, &limits, false, Some(&mut on_header), |e| {
        manifest.insert(e);
    })?;
    let actual = manifest.tree_hash();
    if actual != tree {
        return Err(Error::TreeMismatch {
            expected: tree.into(),
            actual,
        });
    }
    Ok(report)
}

/// The URL without its query (the signature and credentials scope), for messages.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base} (presigned)"),
        None => url.to_string(),
    }
}

fn agent(ca_pem: Option<&str>) -> Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(Some(Duration::from_secs(300)));
    if let Some(pem) = ca_pem {
        let roots = ca_certificates(pem)?;
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// The certificates of a PEM bundle; none is an error.
fn ca_certificates(pem: &str) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem.as_bytes()) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(Error::Download(format!("the CA bundle is not PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(Error::Download(
            "the CA bundle holds no certificate".to_string(),
        ));
    }
    Ok(certs)
}

/// `parallel` contiguous inclusive ranges covering `size` bytes.
fn split(size: u64, parallel: usize) -> Vec<(u64, u64)> {
    let n = (parallel as u64).min(size).max(1);
    let chunk = size.div_ceil(n);
    (0..n)
        .map(|i| (i * chunk, ((i + 1) * chunk).min(size) - 1))
        .filter(|(s, e)| s <= e)
        .collect()
}

/// One request (retried on transient failures) for `range` (or the whole object), written
/// at `offset` of `out`. Returns (bytes, requests made).
fn fetch(
    agent: &ureq::Agent,
    d: &Download,
    range: Option<(u64, u64)>,
    out: &File,
    offset: u64,
) -> Result<(u64, u64)> {
    let expected = match range {
        Some((s, e)) => e - s + 1,
        None => d.size,
    };
    let mut requests = 0;
    let mut last = String::new();
    for attempt in 0..d.attempts.max(1) {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt.min(5)));
        }
        requests += 1;
        let mut req = agent.get(&d.url);
        if let Some((s, e)) = range {
            req = req.header("Range", &format!("bytes={s}-{e}"));
        }
        let mut resp = match req.call() {
            Ok(r) => r,
            Err(e) => {
                last = format!("{}: {e}", redact(&d.url));
                continue;
            }
        };
        let status = resp.status().as_u16();
        let ok = if range.is_some() { 206 } else { 200 };
        if status != ok {
            let body = resp
                .body_mut()
                .with_config()
                .limit(64 << 10)
                .read_to_string()
                .unwrap_or_default();
            let why = s3_error(status, &body);
            last = format!("GET {} answered {why}", redact(&d.url));
            if status >= 500 || status == 429 {
                continue;
            }
            return Err(Error::Download(last));
        }
        let mut reader = resp.body_mut().with_config().limit(expected + 1).reader();
        match copy_at(&mut reader, out, offset, expected) {
            Ok(n) if n == expected => return Ok((n, requests)),
            Ok(n) => {
                let got = if n > expected {
                    "more".to_string()
                } else {
                    n.to_string()
                };
                return Err(Error::Integrity(format!(
                    "GET {} gave {got} bytes, expected {expected}",
                    redact(&d.url)
                )));
            }
            Err(e) => last = format!("reading {}: {e}", redact(&d.url)),
        }
    }
    Err(Error::Download(format!(
        "{last} (after {} attempts)",
        d.attempts.max(1)
    )))
}

fn copy_at(r: &mut impl Read, out: &File, mut offset: u64, limit: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Ok(total);
        }
        out.write_all_at(&buf[..n], offset)?;
        offset += n as u64;
    }
}

/// "403 AccessDenied: Request has expired" from an S3 error document, else the status.
fn s3_error(status: u16, body: &str) -> String {
    match (xml_tag(body, "Code"), xml_tag(body, "Message")) {
        (Some(c), Some(m)) => format!("{status} {c}: {m}"),
        (Some(c), None) => format!("{status} {c}"),
        _ => format!("HTTP {status}"),
    }
}

pub fn hash_file(path: &Path) -> Result<String> {
    let f = File::open(path).map_err(|e| Error::io_path(path, e))?;
    Ok(sha256_of(f).map_err(|e| Error::io_path(path, e))?.1)
}

/// The byte count and lowercase hex SHA-256 of everything `r` gives.
pub fn sha256_of(r: impl Read) -> io::Result<(u64, String)> {
    crate::fs::copy_hashing(r, None)
}

/// The text of the first `<name>…</name>` element of an XML document (S3's and STS's
/// answers are small and flat enough for this), trimmed.
pub fn xml_tag<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim())
}

/// Opens a downloaded file for extraction.
pub fn reopen(path: &Path) -> Result<BufReader<File>> {
    let f = File::open(path).map_err(|e| Error::io_path(path, e))?;
    Ok(BufReader::with_capacity(1 << 20, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_object_exactly() {
        for size in [1u64, 2, 7, 1000, 1 << 20] {
            for p in [1usize, 2, 3, 8] {
                let r = split(size, p);
                assert_eq!(r.first().unwrap().0, 0);
                assert_eq!(r.last().unwrap().1, size - 1);
                for w in r.windows(2) {
                    assert_eq!(w[0].1 + 1, w[1].0, "{size} {p}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn s3_error_documents_become_one_line() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(s3_error(403, body), "403 AccessDenied: Request has expired");
        assert_eq!(s3_error(404, ""), "HTTP 404");
    }

    #[test]
    fn redacted_urls_keep_no_signature() {
        let r = redact("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Credential=AK");
        assert!(!r.contains("abc") && !r.contains("AK"), "{r}");
    }
}
