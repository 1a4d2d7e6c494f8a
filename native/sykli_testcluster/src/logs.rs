//! Container logs as the kubelet keeps them: lines with their time stamps, per pod uid and
//! container, and a way to follow them as they are written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::util::now_rfc3339_nano;

#[derive(Default)]
pub struct ContainerLog {
    state: Mutex<LogState>,
    notify: Notify,
}

#[derive(Default)]
struct LogState {
    /// (RFC 3339 nano time stamp, line without its newline)
    lines: Vec<(String, String)>,
    done: bool,
}

impl ContainerLog {
    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, line: &str) {
        self.lock()
            .lines
            .push((now_rfc3339_nano(), line.to_string()));
        self.notify.notify_waiters();
    }

    /// The container has terminated: followers end once they have read everything.
    pub fn finish(&self) {
        self.lock().done = true;
        self.notify.notify_waiters();
    }

    /// Lines from index `from`, and whether the log is complete.
    pub fn read_from(&self, from: usize) -> (Vec<(String, String)>, bool) {
        let st = self.lock();
        (st.lines.get(from..).unwrap_or(&[]).to_vec(), st.done)
    }

    pub fn len(&self) -> usize {
        self.lock().lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until there are more than `seen` lines or the log is complete.
    pub async fn wait_beyond(&self, seen: usize) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.lines.len() > seen || st.done {
                    return;
                }
            }
            notified.await;
        }
    }
}

#[derive(Default)]
pub struct LogStore {
    logs: Mutex<HashMap<(String, String), Arc<ContainerLog>>>,
}

impl LogStore {
    /// The log of `container` in the pod with `uid`, created on first use.
    pub fn get(&self, uid: &str, container: &str) -> Arc<ContainerLog> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            logs.entry((uid.to_string(), container.to_string()))
                .or_default(),
        )
    }

    pub fn existing(&self, uid: &str, container: &str) -> Option<Arc<ContainerLog>> {
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.get(&(uid.to_string(), container.to_string())).cloned()
    }

    /// Forgets the logs of a pod (it was deleted); followers are released.
    pub fn remove_pod(&self, uid: &str) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<_> = logs.keys().filter(|(u, _)| u == uid).cloned().collect();
        for k in keys {
            if let Some(l) = logs.remove(&k) {
                l.finish();
            }
        }
    }
}
