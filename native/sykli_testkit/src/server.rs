//! What the test servers that serve TCP connections themselves share ([`crate::git_server`],
//! [`crate::http_proxy`]): a listener on an ephemeral port of 127.0.0.1, an accept loop, a
//! thread per connection and a registry of the live ones, stopping on drop, and lingering
//! before a close.

use std::collections::HashMap;
use std::io::{self, Read};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long dropping a server waits for its connection threads to finish before leaving the
/// rest detached.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// After a response, the client's leftover input is read (and discarded) for at most this
/// long of idleness before the socket is closed, so that closing does not reset the
/// connection under a response the client has not read yet.
pub(crate) const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const LINGER_MAX_BYTES: u64 = 16 << 20;
const MAX_ACCEPT_ERRORS: u32 = 100;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a server keeps of a live connection: what stopping must end.
pub(crate) trait Conn: Send + 'static {
    /// For a connection just accepted, from a second handle on its socket.
    fn new(stream: TcpStream) -> Self;
    /// Ends it: the server is stopping.
    fn end(&self);
}

/// The connections being served, each by a thread of its own.
pub(crate) struct Conns<L> {
    stopping: AtomicBool,
    registry: Mutex<Registry<L>>,
    /// Notified whenever a connection thread ends.
    idle: Condvar,
}

pub(crate) struct Registry<L> {
    next_id: u64,
    /// The live connections, by id.
    pub(crate) live: HashMap<u64, L>,
    handles: Vec<JoinHandle<()>>,
}

impl<L: Conn> Conns<L> {
    pub(crate) fn new() -> Arc<Conns<L>> {
        Arc::new(Conns {
            stopping: AtomicBool::new(false),
            registry: Mutex::new(Registry {
                next_id: 0,
                live: HashMap::new(),
                handles: Vec::new(),
            }),
            idle: Condvar::new(),
        })
    }

    /// True once the server has begun to stop. Checked under [`Conns::lock`], it tells
    /// whether what is registered now will still be ended by the stop.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry<L>> {
        lock(&self.registry)
    }

    /// Serves `stream` on a thread of its own (`<name>-conn`), registered until the thread
    /// ends, however it ends. Threads that have ended are joined first.
    fn dispatch(self: &Arc<Self>, stream: TcpStream, name: &str, serve: &Arc<Serve>) {
        let Ok(registered) = stream.try_clone() else {
            return;
        };
        let id = {
            let mut registry = self.lock();
            let (done, running): (Vec<_>, Vec<_>) = mem::take(&mut registry.handles)
                .into_iter()
                .partition(|h| h.is_finished());
            registry.handles = running;
            for handle in done {
                let _ = handle.join();
            }
            let id = registry.next_id;
            registry.next_id += 1;
            registry.live.insert(id, L::new(registered));
            id
        };
        let conns = Arc::clone(self);
        let serve = Arc::clone(serve);
        let spawned = thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                let _guard = ConnGuard { conns: &conns, id };
                serve(stream, id);
            });
        match spawned {
            Ok(handle) => self.lock().handles.push(handle),
            Err(_) => {
                self.lock().live.remove(&id);
                self.idle.notify_all();
            }
        }
    }
}

/// Deregisters a connection when its thread ends, however it ends.
struct ConnGuard<'a, L: Conn> {
    conns: &'a Conns<L>,
    id: u64,
}

impl<L: Conn> Drop for ConnGuard<'_, L> {
    fn drop(&mut self) {
        self.conns.lock().live.remove(&self.id);
        self.conns.idle.notify_all();
    }
}

/// Serves one connection, given its id.
type Serve = dyn Fn(TcpStream, u64) + Send + Sync;

/// A listener on an ephemeral port of 127.0.0.1 whose connections are served by a thread
/// each. Dropping it stops it: the listener is closed, every live connection is ended and
/// the threads are joined (a thread still running after [`STOP_TIMEOUT`] is left detached).
pub(crate) struct Listener<L: Conn> {
    conns: Arc<Conns<L>>,
    addr: SocketAddr,
    /// A clone of the listener, to wake the accept loop on stop.
    waker: Option<TcpListener>,
    accept: Option<JoinHandle<()>>,
}

impl<L: Conn> Listener<L> {
    /// Listens, and serves every connection with `serve` on a thread of its own, registered in
    /// `conns`. Threads are named `<name>-accept` and `<name>-conn`.
    pub(crate) fn start(
        name: &str,
        conns: &Arc<Conns<L>>,
        serve: impl Fn(TcpStream, u64) + Send + Sync + 'static,
    ) -> io::Result<Listener<L>> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let waker = listener.try_clone()?;
        let accept_conns = Arc::clone(conns);
        let thread_name = name.to_string();
        let serve: Arc<Serve> = Arc::new(serve);
        let accept = thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(&accept_conns, listener, &thread_name, &serve))?;
        Ok(Listener {
            conns: Arc::clone(conns),
            addr,
            waker: Some(waker),
            accept: Some(accept),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.conns.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop: a connection of our own, and (should that fail) shutting
        // the listening socket down, which makes a blocked accept() return on Linux.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(waker) = &self.waker {
            // SAFETY: the descriptor is owned by `waker`, alive for the duration of the call.
            unsafe { libc::shutdown(waker.as_raw_fd(), libc::SHUT_RDWR) };
        }
        let _ = accept.join();
        self.waker = None; // the last handle on the listening socket: the port is free

        let mut registry = self.conns.lock();
        for live in registry.live.values() {
            live.end();
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !registry.live.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            registry = self
                .conns
                .idle
                .wait_timeout(registry, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let handles = mem::take(&mut registry.handles);
        drop(registry);
        for handle in handles {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl<L: Conn> Drop for Listener<L> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop<L: Conn>(
    conns: &Arc<Conns<L>>,
    listener: TcpListener,
    name: &str,
    serve: &Arc<Serve>,
) {
    let mut errors = 0;
    while !conns.stopping() {
        let accepted = listener.accept();
        if conns.stopping() {
            break;
        }
        match accepted {
            Ok((stream, _)) => {
                errors = 0;
                conns.dispatch(stream, name, serve);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                errors += 1;
                if errors >= MAX_ACCEPT_ERRORS {
                    break;
                }
            }
        }
    }
}

/// Ends a connection politely: no more output, then the client's leftover input is read and
/// discarded (bounded in time and size) so that closing does not reset the connection.
pub(crate) fn linger(input: &mut impl Read, stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    discard_input(input, stream);
}

/// The discarding half of [`linger`], for a connection whose output is already ended.
pub(crate) fn discard_input(input: &mut impl Read, stream: &TcpStream) {
    let _ = stream.set_read_timeout(Some(LINGER_TIMEOUT));
    let _ = io::copy(&mut input.take(LINGER_MAX_BYTES), &mut io::sink());
}
