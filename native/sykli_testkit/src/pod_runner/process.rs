//! Running one sandbox: spawning bwrap, streaming its output, learning the exit code of the
//! command inside it, and signalling it.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use super::events::{ContainerEvent, EventSink};
use super::sandbox::BWRAP;
use super::stop::Wake;
use super::LogSink;

/// Shared between the thread that waits for a sandbox and the threads that may signal it.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: Mutex<ControlState>,
}

#[derive(Debug, Default)]
struct ControlState {
    /// bwrap's pid, which is also its process group (the sandbox's pid-1 reaper is in it).
    pid: Option<i32>,
    /// Set (under the lock) before bwrap is reaped, so a signal never hits a recycled pid.
    exited: bool,
    /// The sandbox's init process (bwrap's `child-pid`), parent of the command.
    init_pid: Option<i32>,
    /// Killed before it could even start.
    cancelled: bool,
    /// Killed because the pod's deadline passed.
    deadline_killed: bool,
    /// The last signal the runner sent (SIGTERM to stop, SIGKILL to kill).
    signal_sent: Option<i32>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILLs the whole sandbox (bwrap's process group; `--die-with-parent` takes the rest).
    pub fn kill(&self, deadline: bool) {
        let mut st = self.lock();
        if st.exited {
            return;
        }
        if deadline {
            st.deadline_killed = true;
        }
        st.signal_sent = Some(libc::SIGKILL);
        match st.pid {
            // SAFETY: plain kill(2) on a process group we created and have not reaped.
            Some(pid) => unsafe {
                libc::kill(-pid, libc::SIGKILL);
            },
            None => st.cancelled = true,
        }
    }

    /// Sends SIGTERM to the container's command (what a runtime sends to a container's pid 1).
    pub fn terminate(&self) {
        let mut st = self.lock();
        if st.exited {
            return;
        }
        let Some(pid) = st.pid else {
            st.cancelled = true;
            return;
        };
        st.signal_sent = Some(libc::SIGTERM);
        let targets = st.init_pid.map(children_of).unwrap_or_default();
        if targets.is_empty() {
            // The command is not running yet (or already gone): bwrap dies of SIGTERM and takes
            // the sandbox with it.
            // SAFETY: kill(2) on our unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        for t in targets {
            // SAFETY: kill(2) on a process inside the sandbox, whose init is still alive.
            unsafe {
                libc::kill(t, libc::SIGTERM);
            }
        }
    }
}

/// Gives a child about to exec an empty signal mask, as a runtime starts a container: a mask
/// blocked in the runner (its signal thread's SIGTERM) would otherwise reach the container's
/// command through bwrap, and a `trap` on TERM would never run. Async-signal-safe.
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: sigemptyset fills a set we own; sigprocmask(2) changes this (child) thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The pids whose parent is `ppid` (there is no /proc/PID/task/TID/children on every kernel).
fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may contain anything up to the last ')'.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let _state = fields.next();
        if fields.next().and_then(|p| p.parse::<i32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// How a sandbox ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The command's exit code as bwrap reported it (128+N for a signal); None when the command
    /// never ran (bwrap failed to set up or exec) or the sandbox was killed.
    pub exit_code: Option<i32>,
    /// bwrap's own exit status (code or 128+signal).
    pub bwrap_status: Option<i32>,
    pub spawn_error: Option<String>,
    pub deadline_killed: bool,
    /// The last signal the runner sent the sandbox, if any.
    pub signal_sent: Option<i32>,
    pub log: String,
    /// When bwrap was spawned (None if it never was).
    pub started_at: Option<SystemTime>,
    /// When the sandbox was seen to exit.
    pub finished_at: Option<SystemTime>,
}

/// Starts the sandbox on a thread of its own (which then waits for it, so bwrap's parent-death
/// signal is tied to a thread that lives as long as the sandbox) and reports `index` on `done`
/// when it has ended. `on_event` hears `Started` once bwrap runs, before any log line.
pub(crate) fn start(
    name: String,
    args: Vec<OsString>,
    on_log: Option<LogSink>,
    on_event: Option<EventSink>,
    index: usize,
    done: Sender<Wake>,
) -> io::Result<(Arc<Control>, JoinHandle<Outcome>)> {
    let control = Arc::new(Control::default());
    let ctl = Arc::clone(&control);
    let handle = thread::Builder::new()
        .name(format!("pod-runner-{name}"))
        .spawn(move || {
            let outcome = supervise(&name, args, on_log, on_event, &ctl);
            let _ = done.send(Wake::Ended(index));
            outcome
        })?;
    Ok((control, handle))
}

fn failed(e: String) -> Outcome {
    Outcome {
        exit_code: None,
        bwrap_status: None,
        spawn_error: Some(e),
        deadline_killed: false,
        signal_sent: None,
        log: String::new(),
        started_at: None,
        finished_at: None,
    }
}

fn supervise(
    name: &str,
    args: Vec<OsString>,
    on_log: Option<LogSink>,
    on_event: Option<EventSink>,
    ctl: &Arc<Control>,
) -> Outcome {
    let (log_r, log_w) = match io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let (status_r, status_w) = match io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let log_w2 = match log_w.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let status_fd = status_w.as_raw_fd();
    let mut cmd = Command::new(BWRAP);
    cmd.arg("--json-status-fd")
        .arg(status_fd.to_string())
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_w)
        .stderr(log_w2)
        .process_group(0);
    // SAFETY: the closure only makes async-signal-safe calls (fcntl, prctl, sigprocmask).
    unsafe {
        cmd.pre_exec(move || {
            // Hand the status pipe to bwrap (pipes are created close-on-exec).
            if libc::fcntl(status_fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            unblock_all_signals()?;
            // If the runner dies, so does bwrap (and with it the sandbox).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    // Register the pid under the lock so a concurrent kill either sees it or cancels us.
    let spawned = {
        let mut st = ctl.lock();
        if st.cancelled {
            let deadline = st.deadline_killed;
            drop(st);
            let mut o = failed("the pod ended before the container started".into());
            o.deadline_killed = deadline;
            return o;
        }
        match cmd.spawn() {
            Ok(child) => {
                st.pid = i32::try_from(child.id()).ok();
                Ok(child)
            }
            Err(e) => Err(e),
        }
    };
    // Our copies of the write ends must go, or the readers never see EOF.
    drop(cmd);
    drop(status_w);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {BWRAP}: {e}")),
    };
    let started_at = SystemTime::now();
    // Before the log reader exists, so the event precedes every line of the container.
    if let Some(sink) = &on_event {
        sink(&ContainerEvent::Started {
            container: name.to_string(),
            at: started_at,
        });
    }

    let container = name.to_string();
    let log_thread = thread::spawn(move || read_log(log_r, &container, on_log));
    let status_ctl = Arc::clone(ctl);
    let status_thread = thread::spawn(move || read_status(status_r, &status_ctl));

    // Wait without reaping, mark exited, then reap.
    let pid = child.id() as libc::id_t;
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child; WNOWAIT leaves it to be reaped by Child::wait.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    let finished_at = SystemTime::now();
    let (deadline_killed, signal_sent) = {
        let mut st = ctl.lock();
        st.exited = true;
        (st.deadline_killed, st.signal_sent)
    };
    let bwrap_status = child.wait().ok().and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().or_else(|| s.signal().map(|n| 128 + n))
    });
    let log = log_thread.join().unwrap_or_default();
    let exit_code = status_thread.join().unwrap_or(None);
    Outcome {
        exit_code,
        bwrap_status,
        spawn_error: None,
        deadline_killed,
        signal_sent,
        log,
        started_at: Some(started_at),
        finished_at: Some(finished_at),
    }
}

/// Reads the container's output line by line, passing each line on as it arrives.
fn read_log(pipe: io::PipeReader, container: &str, on_log: Option<LogSink>) -> String {
    let mut reader = BufReader::new(pipe);
    let mut log = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                let line = String::from_utf8_lossy(&buf);
                if let Some(sink) = &on_log {
                    sink(container, &line);
                }
                log.push_str(&line);
                log.push('\n');
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    log
}

/// Reads bwrap's JSON status documents: `child-pid` (the sandbox's init, recorded on `ctl`) and
/// `exit-code` (the command's exit code, returned).
fn read_status(pipe: io::PipeReader, ctl: &Control) -> Option<i32> {
    let mut exit_code = None;
    let stream = serde_json::Deserializer::from_reader(BufReader::new(pipe))
        .into_iter::<serde_json::Value>();
    for doc in stream {
        let Ok(doc) = doc else {
            break;
        };
        if let Some(pid) = doc.get("child-pid").and_then(serde_json::Value::as_i64) {
            ctl.lock().init_pid = i32::try_from(pid).ok();
        }
        if let Some(code) = doc.get("exit-code").and_then(serde_json::Value::as_i64) {
            exit_code = i32::try_from(code).ok();
        }
    }
    exit_code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_child_processes() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let me = i32::try_from(std::process::id()).expect("pid");
        let kids = children_of(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
    }
}
