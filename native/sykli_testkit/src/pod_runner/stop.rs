//! Stopping a running pod from outside (what the kubelet does when a pod is deleted).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

/// What wakes a pod's supervising loop.
pub(crate) enum Wake {
    /// Container `index` has ended.
    Ended(usize),
    /// [`StopHandle::stop`] was called.
    Stop,
}

/// Stops the pods run with it ([`super::RunOptions::stop`]): every running container gets
/// SIGTERM, SIGKILL after the pod's `terminationGracePeriodSeconds` (default 30), no further
/// container starts, and [`super::run_pod`] returns the result (Failed unless every init and
/// main container had already succeeded). Cheap to clone; [`StopHandle::stop`] may be called
/// from any thread, before or during the run.
#[derive(Clone, Default)]
pub struct StopHandle {
    inner: Arc<StopState>,
}

#[derive(Default)]
struct StopState {
    stopped: AtomicBool,
    pods: Mutex<Vec<Sender<Wake>>>,
}

impl StopHandle {
    pub fn new() -> Self {
        StopHandle::default()
    }

    /// Asks the pods to stop (again: no effect).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        let pods = self.inner.pods.lock().unwrap_or_else(|e| e.into_inner());
        for tx in pods.iter() {
            let _ = tx.send(Wake::Stop);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Wakes `tx` on [`StopHandle::stop`], or at once if that was called already.
    pub(crate) fn register(&self, tx: Sender<Wake>) {
        let mut pods = self.inner.pods.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: a concurrent stop() either sees `tx` or set the flag first.
        if self.is_stopped() {
            let _ = tx.send(Wake::Stop);
        }
        pods.push(tx);
    }
}

impl fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopHandle")
            .field("stopped", &self.is_stopped())
            .finish()
    }
}
