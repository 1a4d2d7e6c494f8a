//! `sykli-pod-runner`: runs a Kubernetes Job/Pod/PodSpec locally (see `sykli_testkit::pod_runner`).
//!
//! Container logs stream to stderr as `[container] line`; the result is printed as JSON on
//! stdout. Exit status: 0 if the pod Succeeded, 1 if it Failed, 2 if it could not be run.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sykli_testkit::{run_pod, Fixtures, PodPhase, RunOptions, Shell};

const USAGE: &str = "usage: sykli-pod-runner --manifest FILE [--fixtures FILE] \
[--shell host|busybox] [--work-dir DIR] [--timeout SECS]

  --manifest FILE   Job, Pod or PodSpec as JSON (- reads stdin)
  --fixtures FILE   {\"secrets\": {NAME: {KEY: BASE64}}, \"configMaps\": {NAME: {KEY: TEXT}},
                     \"pvcs\": {CLAIM: HOST_DIR}}
  --shell           host (default): the host's sh; busybox: busybox applets and ash
  --work-dir DIR    where volumes are created and left (default: a fresh temp dir)
  --timeout SECS    overall deadline (default: activeDeadlineSeconds, else 300)

Prints the pod result as JSON on stdout; exits 0 if the pod Succeeded, 1 if it Failed,
2 if it could not be run.";

struct Args {
    manifest: String,
    fixtures: Option<String>,
    shell: Shell,
    work_dir: Option<PathBuf>,
    timeout: Option<Duration>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut manifest = None;
    let mut fixtures = None;
    let mut shell = Shell::Host;
    let mut work_dir = None;
    let mut timeout = None;
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--manifest" => manifest = Some(value()?),
            "--fixtures" => fixtures = Some(value()?),
            "--shell" => {
                shell = match value()?.as_str() {
                    "host" => Shell::Host,
                    "busybox" => Shell::Busybox,
                    other => return Err(format!("--shell must be host or busybox, not {other:?}")),
                }
            }
            "--work-dir" => work_dir = Some(PathBuf::from(value()?)),
            "--timeout" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("--timeout must be a positive number of seconds, not {v:?}")
                    })?;
                timeout = Some(Duration::from_secs_f64(secs));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let manifest = manifest.ok_or("--manifest is required")?;
    Ok(Some(Args {
        manifest,
        fixtures,
        shell,
        work_dir,
        timeout,
    }))
}

fn read_json(path: &str, what: &str) -> Result<serde_json::Value, String> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading the {what} from stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("reading the {what} {path}: {e}"))?
    };
    serde_json::from_str(&text).map_err(|e| format!("the {what} {path} is not valid JSON: {e}"))
}

fn run(args: Args) -> Result<PodPhase, String> {
    let manifest = read_json(&args.manifest, "manifest")?;
    let mut opts = RunOptions::default()
        .shell(args.shell)
        .on_log(|container, line| {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "[{container}] {line}");
        });
    if let Some(path) = &args.fixtures {
        let fixtures = Fixtures::from_json(&read_json(path, "fixtures")?)
            .map_err(|e| format!("{path}: {e}"))?;
        opts = opts.fixtures(fixtures);
    }
    if let Some(dir) = args.work_dir {
        opts.work_dir = dir;
    }
    opts.timeout = args.timeout;
    let result = run_pod(&manifest, &opts).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{json}").map_err(|e| format!("writing the result: {e}"))?;
    Ok(result.phase)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sykli-pod-runner: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(PodPhase::Succeeded) => ExitCode::SUCCESS,
        Ok(PodPhase::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sykli-pod-runner: {e}");
            ExitCode::from(2)
        }
    }
}
