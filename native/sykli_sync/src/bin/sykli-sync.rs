//! `sykli-sync`: the receiver inside the cluster and a few tools around the store.
//! Reads archives on stdin, writes JSON (or an archive) to stdout; errors go to stderr as
//! one line `sykli-sync: error[<kind>]: <message>` with exit status 1 (2 for a usage error),
//! `<kind>` being `Error::kind` (`refused`, `tree_mismatch`, `unknown_tree`, ...).

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sykli_sync::{check_path, extract_hardened, pack, Error, Limits, Manifest, Report, Store};

const USAGE: &str = "\
usage:
  sykli-sync idle                                  wait for SIGTERM or SIGINT, then exit 0
  sykli-sync manifest --store DIR [--tree HASH]    print the manifest of HASH (default: latest),
                                                   or {\"tree\":null}
  sykli-sync apply --store DIR --tree HASH [--max-entries N] [--max-bytes N]  < archive
                                                   apply a sync archive, print the report
  sykli-sync checkout --store DIR --tree HASH --to DEST
                                                   copy a published tree into DEST (empty or absent)
  sykli-sync verify --store DIR --tree HASH       check a published tree in place (exactly its
                                                   manifest: contents, modes, links, nothing more)
  sykli-sync pack --root DIR PATH...  > archive    archive PATHs below DIR (`.` for all)
  sykli-sync copy --root DIR --from REL --to REL  copy a file or directory tree within DIR
                                                   (hardened: no symlink followed or left
                                                   pointing out of DIR)
  sykli-sync place --from DIR --to DIR -- SRC DEST [SRC DEST]...
                                                   copy each file or tree SRC of DIR to DEST of
                                                   the other DIR (hardened, as copy)
  sykli-sync extract --to DIR [--max-entries N] [--max-bytes N]  < archive
                                                   extract with the hardened extractor
  sykli-sync scan --root DIR                       print the manifest of a directory
  sykli-sync status --store DIR --tree HASH       print {\"present\": bool, \"latest\": HASH|null}
  sykli-sync collect --from DIR --to DEST [--ready FILE] PATH...
                                                   wait for SIGTERM (the end of the task, for a
                                                   native sidecar), then copy PATHs into DEST
                                                   (writing nothing outside DEST)
  sykli-sync wait-ready --file FILE [--timeout S]  wait until FILE exists (default 120 s)
  sykli-sync remove-run --store DIR --run NAME     delete what a Job left on the claim (runs/NAME)
  sykli-sync fetch --url-env NAME --sha256 H --size N --tree T --to DIR --download FILE
                 [--parallel N] [--parallel-min BYTES] [--max-entries N] [--max-bytes N]
                 [--ca-env NAME]
                                                   download the archive at the URL in $NAME
                                                   (ranged requests in parallel from BYTES up;
                                                   trusting only the PEM CAs in $NAME of
                                                   --ca-env when given), verify size and
                                                   SHA-256, extract tree T
  sykli-sync version
";

enum Failure {
    Usage(String),
    /// What to copy does not exist (`error[not_found]`).
    NotFound(String),
    Error(Error),
    Io(io::Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As early as possible: a sidecar's SIGTERM may come as soon as the task ends, and
    // before it is blocked it would kill us instead of starting the copy.
    if matches!(args.first().map(String::as_str), Some("idle" | "collect")) {
        if let Err(e) = block_stop_signals() {
            eprintln!("sykli-sync: error[io]: {e}");
            return ExitCode::from(1);
        }
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("sykli-sync: usage: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::NotFound(msg)) => {
            eprintln!("sykli-sync: error[not_found]: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Error(e)) => {
            eprintln!("sykli-sync: error[{}]: {e}", e.kind());
            ExitCode::from(1)
        }
        Err(Failure::Io(e)) => {
            eprintln!("sykli-sync: error[io]: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--name VALUE` / `--name=VALUE` options and positional arguments.
struct Args {
    options: Vec<(String, String)>,
    positional: Vec<String>,
}

fn parse(args: &[String], known: &[&str]) -> Result<Args, Failure> {
    let mut parsed = Args {
        options: Vec::new(),
        positional: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            parsed.positional.extend(it.by_ref().cloned());
            break;
        }
        if let Some(flag) = a.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| Failure::Usage(format!("--{flag} needs a value")))?;
                    (flag.to_string(), v.clone())
                }
            };
            if !known.contains(&name.as_str()) {
                return Err(Failure::Usage(format!("unknown option --{name}")));
            }
            if parsed.options.iter().any(|(n, _)| *n == name) {
                return Err(Failure::Usage(format!("--{name} given twice")));
            }
            parsed.options.push((name, value));
        } else {
            parsed.positional.push(a.clone());
        }
    }
    Ok(parsed)
}

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Result<&str, Failure> {
        self.get(name)
            .ok_or_else(|| Failure::Usage(format!("--{name} is required")))
    }

    fn no_positional(&self) -> Result<(), Failure> {
        match self.positional.first() {
            Some(p) => Err(Failure::Usage(format!("unexpected argument {p:?}"))),
            None => Ok(()),
        }
    }

    fn limits(&self) -> Result<Limits, Failure> {
        let mut limits = Limits::default();
        let number = |name: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| Failure::Usage(format!("--{name} must be a number, not {v:?}")))
        };
        if let Some(v) = self.get("max-entries") {
            limits.max_entries = number("max-entries", v)?;
        }
        if let Some(v) = self.get("max-bytes") {
            limits.max_total_bytes = number("max-bytes", v)?;
        }
        Ok(limits)
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(io::Error::from)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn run(args: &[String]) -> Result<(), Failure> {
    let Some((command, rest)) = args.split_first() else {
        return Err(Failure::Usage("a command is required".into()));
    };
    match command.as_str() {
        "idle" => {
            parse(rest, &[])?.no_positional()?;
            idle()
        }
        "manifest" => {
            let a = parse(rest, &["store", "tree"])?;
            a.no_positional()?;
            let store = Store::new(a.need("store")?);
            let tree = match a.get("tree") {
                Some(t) => Some(t.to_string()),
                None => store.latest()?,
            };
            match tree.map(|t| store.manifest(&t)).transpose()?.flatten() {
                Some(m) => print_json(&m),
                None => print_json(&serde_json::json!({ "tree": null })),
            }
        }
        "apply" => {
            let a = parse(rest, &["store", "tree", "max-entries", "max-bytes"])?;
            a.no_positional()?;
            let store = Store::new(a.need("store")?);
            let report = store.apply_with_limits(
                a.need("tree")?,
                BufReader::new(io::stdin().lock()),
                a.limits()?,
            )?;
            print_json(&report)
        }
        "checkout" => {
            let a = parse(rest, &["store", "tree", "to"])?;
            a.no_positional()?;
            let report = Store::new(a.need("store")?)
                .checkout(a.need("tree")?, &PathBuf::from(a.need("to")?))?;
            print_json(&report)
        }
        "verify" => {
            let a = parse(rest, &["store", "tree"])?;
            a.no_positional()?;
            print_json(&Store::new(a.need("store")?).verify(a.need("tree")?)?)
        }
        "pack" => {
            let a = parse(rest, &["root"])?;
            if a.positional.is_empty() {
                return Err(Failure::Usage("pack needs at least one PATH".into()));
            }
            let mut out = BufWriter::new(io::stdout().lock());
            pack(&PathBuf::from(a.need("root")?), &a.positional, &mut out)?;
            out.flush()?;
            Ok(())
        }
        "copy" => {
            let a = parse(rest, &["root", "from", "to"])?;
            a.no_positional()?;
            let root = PathBuf::from(a.need("root")?);
            print_json(&copy(&root, a.need("from")?, a.need("to")?)?)
        }
        "place" => {
            let a = parse(rest, &["from", "to"])?;
            let (from, to) = (PathBuf::from(a.need("from")?), PathBuf::from(a.need("to")?));
            let pairs = a.positional.chunks(2);
            if a.positional.is_empty() || a.positional.len() % 2 != 0 {
                return Err(Failure::Usage(
                    "place needs pairs of SRC DEST (a path of --from, where it goes in --to)"
                        .into(),
                ));
            }
            let mut reports = Vec::new();
            for pair in pairs {
                reports.push(copy_between(&from, &pair[0], &to, &pair[1])?);
            }
            print_json(&reports)
        }
        "extract" => {
            let a = parse(rest, &["to", "max-entries", "max-bytes"])?;
            a.no_positional()?;
            let report = extract_hardened(
                BufReader::new(io::stdin().lock()),
                &PathBuf::from(a.need("to")?),
                a.limits()?,
            )?;
            print_json(&report)
        }
        "status" => {
            let a = parse(rest, &["store", "tree"])?;
            a.no_positional()?;
            let store = Store::new(a.need("store")?);
            print_json(&serde_json::json!({
                "present": store.has_tree(a.need("tree")?)?,
                "latest": store.latest()?,
            }))
        }
        "collect" => {
            let a = parse(rest, &["from", "to", "ready"])?;
            if a.positional.is_empty() {
                return Err(Failure::Usage("collect needs at least one PATH".into()));
            }
            let (from, to) = (PathBuf::from(a.need("from")?), PathBuf::from(a.need("to")?));
            // SIGTERM is blocked (main did it): only now may the task start.
            if let Some(ready) = a.get("ready") {
                std::fs::write(ready, b"ready\n")?;
            }
            idle()?;
            // Through an archive, so the copy obeys the hardened extractor's rules.
            // Packed whole (a refused path leaves nothing behind) into a spool inside the
            // destination, not memory: the destination may be all the sidecar can write
            // (its Job's directory, a subPath of the claim).
            std::fs::create_dir_all(&to)?;
            let spool = spool(&to, |w| Ok(pack(&from, &a.positional, w).map(|_| ())?))?;
            let report = extract_hardened(BufReader::new(spool.file()?), &to, Limits::default());
            drop(spool);
            print_json(&report?)
        }
        "wait-ready" => {
            let a = parse(rest, &["file", "timeout"])?;
            a.no_positional()?;
            let file = PathBuf::from(a.need("file")?);
            let secs: u64 = a
                .get("timeout")
                .unwrap_or("120")
                .parse()
                .map_err(|_| Failure::Usage("--timeout is a number of seconds".into()))?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            // A startup gate: the outputs sidecar is ready once it can no longer miss the
            // end of the task.
            while !file.exists() {
                if std::time::Instant::now() > deadline {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{} did not appear within {secs}s", file.display()),
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(())
        }
        "remove-run" => {
            let a = parse(rest, &["store", "run"])?;
            a.no_positional()?;
            let name = a.need("run")?;
            // A Job name: one DNS label, so it can only name a directory right under runs/.
            let label = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-');
            if !label {
                return Err(Failure::Usage(format!("{name:?} is not a Job name")));
            }
            let dir = PathBuf::from(a.need("store")?).join("runs").join(name);
            // remove_dir_all does not follow symlinks inside the tree.
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Failure::Io(e)),
            }
            print_json(&serde_json::json!({ "removed": name }))
        }
        "fetch" => {
            let a = parse(
                rest,
                &[
                    "url-env",
                    "sha256",
                    "size",
                    "tree",
                    "to",
                    "download",
                    "parallel",
                    "parallel-min",
                    "max-entries",
                    "max-bytes",
                    "ca-env",
                ],
            )?;
            a.no_positional()?;
            let var = a.need("url-env")?;
            // The CAs of a bucket behind a private CA, PEM, by name too (no shell between).
            let ca_pem =
                match a.get("ca-env") {
                    None => None,
                    Some(name) => Some(std::env::var(name).map_err(|_| {
                        Failure::Usage(format!("${name} (the CA bundle) is not set"))
                    })?),
                };
            // From the environment, not the command line: the URL is a bearer capability
            // that `ps` and the Job's args would show.
            let url = std::env::var(var)
                .map_err(|_| Failure::Usage(format!("${var} (the presigned URL) is not set")))?;
            let number = |name: &str, default: Option<u64>| -> Result<u64, Failure> {
                match (a.get(name), default) {
                    (Some(v), _) => v.parse().map_err(|_| {
                        Failure::Usage(format!("--{name} must be a number, not {v:?}"))
                    }),
                    (None, Some(d)) => Ok(d),
                    (None, None) => Err(Failure::Usage(format!("--{name} is required"))),
                }
            };
            let download = sykli_sync::Download {
                url,
                sha256: a.need("sha256")?.to_string(),
                size: number("size", None)?,
                parallel: number("parallel", Some(4))?.clamp(1, 64) as usize,
                parallel_min: number("parallel-min", Some(64 << 20))?,
                attempts: 4,
                ca_pem,
            };
            let file = PathBuf::from(a.need("download")?);
            let fetched = sykli_sync::download(&download, &file)?;
            let report = sykli_sync::extract_tree(
                sykli_sync::fetch::reopen(&file)?,
                &PathBuf::from(a.need("to")?),
                a.need("tree")?,
                a.limits()?,
            );
            let _ = std::fs::remove_file(&file);
            print_json(&serde_json::json!({ "download": fetched, "extract": report? }))
        }
        "scan" => {
            let a = parse(rest, &["root"])?;
            a.no_positional()?;
            print_json(&Manifest::scan(&PathBuf::from(a.need("root")?))?)
        }
        "version" | "--version" => {
            println!("sykli-sync {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(Failure::Usage(format!("unknown command {other:?}"))),
    }
}

/// `copy`: `from` (a file, a symlink or a directory tree) to `to`, both relative to `root`.
/// Through an archive, as `collect`: `pack` refuses what is reached through a symlink or
/// points out of `root`, and its entries, renamed from `from` to `to`, are checked again by
/// the hardened extractor where they land.
fn copy(root: &Path, from: &str, to: &str) -> Result<Report, Failure> {
    // The archive streams from the walk of `from` into the writes of `to`: they must not
    // overlap, or the copy would read what it is writing.
    let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    if inside(to, from) || inside(from, to) {
        check_path(from.as_bytes())?;
        check_path(to.as_bytes())?;
        return Err(Failure::Usage(format!(
            "cannot copy {from} to {to}: one contains the other"
        )));
    }
    copy_between(root, from, root, to)
}

/// Copies `from` (a path of `src_root`) to `to` (a path of `dest_root`), through the
/// archive format and the hardened extractor: nothing is followed or left pointing out of
/// either root.
fn copy_between(
    src_root: &Path,
    from: &str,
    dest_root: &Path,
    to: &str,
) -> Result<Report, Failure> {
    check_path(from.as_bytes())?;
    check_path(to.as_bytes())?;
    // The whole source is packed (and checked) before anything is written: a refused entry
    // leaves no partial copy. Spooled to a file beside the destination, not held in memory.
    let spool = spool(dest_root, |w| {
        match pack(src_root, &[from.to_string()], w) {
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Err(
                Failure::NotFound(format!("{from} does not exist in {}", src_root.display())),
            ),
            packed => Ok(packed.map(|_| ())?),
        }
    })?;
    let result = piped(
        |w| rename_entries(&mut BufReader::new(spool.file()?), from, to, w),
        |r| Ok(extract_hardened(r, dest_root, Limits::default())?),
    );
    drop(spool);
    result
}

/// A file holding what `produce` wrote, in `dir`, deleted when dropped.
struct Spool(PathBuf);

impl Spool {
    fn file(&self) -> Result<std::fs::File, Failure> {
        Ok(std::fs::File::open(&self.0)?)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn spool(
    dir: &Path,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Failure>,
) -> Result<Spool, Failure> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let spool = Spool(dir.join(format!(".sykli-spool.{}.{nanos}", std::process::id())));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spool.0)?;
    let mut w = BufWriter::with_capacity(256 << 10, file);
    produce(&mut w)?;
    w.flush()?;
    Ok(spool)
}

/// Re-roots the entries of the gzip tar `input` from `from` to `to`, written to `out`.
fn rename_entries(
    input: &mut dyn Read,
    from: &str,
    to: &str,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    // No compression: the stream never leaves this process.
    let mut renamed = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::none(),
    ));
    for entry in tar::Archive::new(flate2::read::GzDecoder::new(input)).entries()? {
        let mut entry = entry?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let below = path
            .trim_end_matches('/')
            .strip_prefix(from)
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or_else(|| io::Error::other(format!("pack wrote {path:?}, not below {from}")))?;
        let path = format!("{to}{below}");
        let mut header = entry.header().clone();
        match header.entry_type() {
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target = String::from_utf8_lossy(&target).into_owned();
                renamed.append_link(&mut header, &path, &target)?
            }
            tar::EntryType::Directory => {
                renamed.append_data(&mut header, format!("{path}/"), io::empty())?
            }
            _ => renamed.append_data(&mut header, &path, &mut entry)?,
        }
    }
    renamed.into_inner()?.finish()?;
    Ok(())
}

fn broken_pipe(f: &Failure) -> bool {
    let io = match f {
        Failure::Io(e) => Some(e),
        Failure::Error(Error::Io { source, .. }) => Some(source),
        _ => None,
    };
    io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Runs `produce` on a thread, writing into a pipe that `consume` reads here, so an archive
/// streams through instead of being held in memory. When both fail, the producer's error
/// is the one reported (the consumer only saw a stream cut short).
fn piped<T>(
    produce: impl FnOnce(&mut dyn Write) -> Result<(), Failure> + Send,
    consume: impl FnOnce(&mut dyn Read) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let (mut reader, writer) = io::pipe()?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let mut w = BufWriter::with_capacity(256 << 10, writer);
            produce(&mut w).and_then(|()| w.flush().map_err(Failure::Io))
            // The writer drops here: the reader sees the end of the stream.
        });
        let consumed = consume(&mut reader);
        // Unblock a producer still writing into a pipe nobody reads any more.
        drop(reader);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(Failure::Io(io::Error::other("the archive writer panicked"))));
        match (produced, consumed) {
            // The consumer stopped first (a refused entry): its reason, not the broken pipe.
            (Err(p), Err(c)) if broken_pipe(&p) => Err(c),
            (Err(e), _) => Err(e),
            (Ok(()), consumed) => consumed,
        }
    })
}

/// The receiver pod's main process: blocks SIGTERM and SIGINT and waits for one. Blocked
/// signals are queued even for PID 1 (which ignores default-action signals), so this
/// works as a container's entrypoint without an init.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a zeroed set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

fn block_stop_signals() -> io::Result<()> {
    let set = stop_signals();
    // SAFETY: blocks signals for this (still single) thread; threads spawned later inherit it.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn idle() -> Result<(), Failure> {
    block_stop_signals()?;
    let set = stop_signals();
    unsafe {
        let mut sig: libc::c_int = 0;
        loop {
            let rc = libc::sigwait(&set, &mut sig);
            if rc == 0 {
                return Ok(());
            }
            if rc != libc::EINTR {
                return Err(Failure::Io(io::Error::from_raw_os_error(rc)));
            }
        }
    }
}
