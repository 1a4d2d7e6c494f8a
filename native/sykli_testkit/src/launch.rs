//! Starting a server process that reports the port it listens on: the steps the giftless,
//! moto and s3s-fs harnesses share.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The port of the first line a launcher prints on `stdout`, `{"port": N}`, read on a thread
/// so that a silent server cannot block past `timeout`. `Err` says what went wrong.
pub(crate) fn reported_port(stdout: ChildStdout, timeout: Duration) -> Result<u16, String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
    });
    let line = match rx.recv_timeout(timeout) {
        Ok(Ok(line)) if line.is_empty() => return Err("it exited before reporting its port".into()),
        Ok(Ok(line)) => line,
        Ok(Err(e)) => return Err(format!("reading its port: {e}")),
        Err(_) => return Err(format!("no port reported within {timeout:?}")),
    };
    serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("unexpected first line {line:?}"))
}

/// Checks that 127.0.0.1:`port` accepts a connection, waiting what is left until `deadline`
/// (at least a second). The servers listen before they report their port, so one attempt
/// is enough.
pub(crate) fn answers(port: u16, deadline: Instant) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let left = deadline.saturating_duration_since(Instant::now());
    TcpStream::connect_timeout(&addr, left.max(Duration::from_secs(1)))
        .map(|_| ())
        .map_err(|e| format!("port {port} does not answer: {e}"))
}
