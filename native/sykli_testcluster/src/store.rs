//! The object store: every object of every type, one global resourceVersion counter (as etcd's
//! revision), a bounded event history per type for watches, and the watchers themselves.
//!
//! Writes happen under one lock and are sent to the watchers of the type under that lock, so
//! every watcher sees the events of its type in resourceVersion order, and a watch started from
//! resourceVersion N is replayed exactly the events after N.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::resources::{Res, ALL};
use crate::status::ApiError;
use crate::util::{new_uid, now_rfc3339, Rng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the history.
#[derive(Debug)]
pub struct StoredEvent {
    pub rv: u64,
    pub kind: EventType,
    pub object: Arc<Value>,
    /// The object before a modification (to turn MODIFIED into ADDED/DELETED for a watcher
    /// whose selector it enters or leaves, as the watch cache does).
    pub prev: Option<Arc<Value>>,
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub enum WatchMsg {
    Event(Arc<StoredEvent>),
    /// Everything of the type up to this resourceVersion has been sent.
    Bookmark(u64),
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub enum WatchFrom {
    /// Synthetic ADDED events for the current objects, then changes (resourceVersion unset or
    /// "0").
    Current,
    /// The changes after this resourceVersion.
    After(u64),
}

pub type Key = (String, String);

struct Inner {
    rv: u64,
    objects: BTreeMap<Res, BTreeMap<Key, Arc<Value>>>,
    history: BTreeMap<Res, VecDeque<Arc<StoredEvent>>>,
    /// The highest resourceVersion evicted from each type's history.
    evicted_upto: BTreeMap<Res, u64>,
    watchers: BTreeMap<Res, Vec<(u64, mpsc::UnboundedSender<WatchMsg>)>>,
    next_watcher: u64,
    rng: Rng,
}

pub struct Store {
    inner: Mutex<Inner>,
    history_limit: usize,
    changed: watch::Sender<u64>,
}

/// A registered watch: the replay (events to send first), then the live channel.
pub struct WatchStart {
    pub id: u64,
    pub initial: Vec<Arc<StoredEvent>>,
    pub rx: mpsc::UnboundedReceiver<WatchMsg>,
    /// The resourceVersion the initial events were read at.
    pub rv: u64,
}

impl Store {
    pub fn new(history_limit: usize, rng: Rng) -> Self {
        let (changed, _) = watch::channel(0);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                objects: ALL.iter().map(|r| (*r, BTreeMap::new())).collect(),
                history: ALL.iter().map(|r| (*r, VecDeque::new())).collect(),
                evicted_upto: ALL.iter().map(|r| (*r, 0)).collect(),
                watchers: BTreeMap::new(),
                next_watcher: 1,
                rng,
            }),
            history_limit: history_limit.max(1),
            changed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notified after every write (the value is the resourceVersion).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Wakes the controllers without a write.
    pub fn poke(&self) {
        let rv = self.lock().rv;
        self.changed.send_replace(rv);
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.lock().rng)
    }

    fn record(&self, inner: &mut Inner, res: Res, ev: StoredEvent) {
        let ev = Arc::new(ev);
        let hist = inner.history.get_mut(&res).expect("type");
        hist.push_back(Arc::clone(&ev));
        while hist.len() > self.history_limit {
            if let Some(old) = hist.pop_front() {
                inner.evicted_upto.insert(res, old.rv);
            }
        }
        if let Some(ws) = inner.watchers.get_mut(&res) {
            ws.retain(|(_, tx)| tx.send(WatchMsg::Event(Arc::clone(&ev))).is_ok());
        }
        self.changed.send_replace(inner.rv);
    }

    fn key_of(obj: &Value) -> Key {
        let meta = &obj["metadata"];
        (
            meta["namespace"].as_str().unwrap_or("").to_string(),
            meta["name"].as_str().unwrap_or("").to_string(),
        )
    }

    /// Stores a new object (its metadata.name and namespace set), giving it uid,
    /// resourceVersion and creationTimestamp.
    pub fn create(&self, res: Res, mut obj: Value) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = Self::key_of(&obj);
        if inner.objects[&res].contains_key(&key) {
            return Err(ApiError::already_exists(res.qualified(), &key.1));
        }
        inner.rv += 1;
        let rv = inner.rv;
        let meta = obj
            .as_object_mut()
            .and_then(|o| o.get_mut("metadata"))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::internal("object without metadata"))?;
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            let uid = new_uid(&mut inner.rng);
            meta.insert("uid".into(), json!(uid));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        let stored = Arc::new(obj);
        inner
            .objects
            .get_mut(&res)
            .expect("type")
            .insert(key, Arc::clone(&stored));
        self.record(
            &mut inner,
            res,
            StoredEvent {
                rv,
                kind: EventType::Added,
                object: Arc::clone(&stored),
                prev: None,
            },
        );
        Ok((*stored).clone())
    }

    /// A fresh uid (for objects whose defaults depend on it before they are stored).
    pub fn new_uid(&self) -> String {
        new_uid(&mut self.lock().rng)
    }

    pub fn get(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects[&res]
            .get(&(ns.to_string(), name.to_string()))
            .map(|v| (**v).clone())
    }

    /// Every object of the type (in `ns`, or everywhere with None), and the resourceVersion.
    pub fn list(&self, res: Res, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner.objects[&res]
            .iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| Arc::clone(v))
            .collect();
        (items, inner.rv)
    }

    /// The objects of the type as they were at resourceVersion `rv`, rebuilt by undoing the
    /// history's later events; 410 Expired when the history no longer reaches back to `rv`.
    pub fn list_at(
        &self,
        res: Res,
        ns: Option<&str>,
        rv: u64,
    ) -> Result<Vec<Arc<Value>>, ApiError> {
        let inner = self.lock();
        let evicted = inner.evicted_upto[&res];
        if rv < evicted {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({evicted})"
            )));
        }
        let mut map: BTreeMap<Key, Arc<Value>> = inner.objects[&res].clone();
        for ev in inner.history[&res].iter().rev().take_while(|e| e.rv > rv) {
            let key = Self::key_of(&ev.object);
            match (ev.kind, &ev.prev) {
                (EventType::Added, _) => {
                    map.remove(&key);
                }
                (EventType::Modified | EventType::Deleted, Some(prev)) => {
                    map.insert(key, Arc::clone(prev));
                }
                (_, None) => {}
            }
        }
        Ok(map
            .into_iter()
            .filter(|((n, _), _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v)
            .collect())
    }

    /// Changes an object in place: `f` edits a copy and returns Ok(true) if anything is to be
    /// written. `expected_rv` (an update's metadata.resourceVersion) must be current.
    pub fn update(
        &self,
        res: Res,
        ns: &str,
        name: &str,
        expected_rv: Option<&str>,
        f: impl FnOnce(&mut Value) -> Result<bool, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(cur) = inner.objects[&res].get(&key).cloned() else {
            return Err(ApiError::not_found(res.qualified(), name));
        };
        if let Some(rv) = expected_rv.filter(|r| !r.is_empty()) {
            if cur["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(ApiError::conflict(
                    res.qualified(),
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
        }
        let mut next = (*cur).clone();
        if !f(&mut next)? || next == *cur {
            return Ok((*cur).clone());
        }
        inner.rv += 1;
        let rv = inner.rv;
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        let stored = Arc::new(next);
        inner
            .objects
            .get_mut(&res)
            .expect("type")
            .insert(key, Arc::clone(&stored));
        self.record(
            &mut inner,
            res,
            StoredEvent {
                rv,
                kind: EventType::Modified,
                object: Arc::clone(&stored),
                prev: Some(cur),
            },
        );
        Ok((*stored).clone())
    }

    /// Removes an object; the DELETED event carries the deletion's resourceVersion.
    pub fn delete(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let mut inner = self.lock();
        let key = (ns.to_string(), name.to_string());
        let prev = inner.objects.get_mut(&res).expect("type").remove(&key)?;
        inner.rv += 1;
        let rv = inner.rv;
        let mut last = (*prev).clone();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        let last = Arc::new(last);
        self.record(
            &mut inner,
            res,
            StoredEvent {
                rv,
                kind: EventType::Deleted,
                object: Arc::clone(&last),
                prev: Some(prev),
            },
        );
        Some((*last).clone())
    }

    /// Registers a watcher of `res`. An `After` older than the history is 410 Expired, worded
    /// as the watch cache words it.
    pub fn watch(&self, res: Res, from: WatchFrom) -> Result<WatchStart, ApiError> {
        let mut inner = self.lock();
        let initial: Vec<Arc<StoredEvent>> = match from {
            WatchFrom::Current => inner.objects[&res]
                .values()
                .map(|o| {
                    Arc::new(StoredEvent {
                        rv: inner.rv,
                        kind: EventType::Added,
                        object: Arc::clone(o),
                        prev: None,
                    })
                })
                .collect(),
            WatchFrom::After(rv) => {
                let evicted = inner.evicted_upto[&res];
                if rv < evicted {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({evicted})"
                    )));
                }
                inner.history[&res]
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect()
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let id = inner.next_watcher;
        inner.next_watcher += 1;
        inner.watchers.entry(res).or_default().push((id, tx));
        Ok(WatchStart {
            id,
            initial,
            rx,
            rv: inner.rv,
        })
    }

    /// Queues a bookmark for watcher `id`: ordered after every event already sent to it.
    pub fn request_bookmark(&self, res: Res, id: u64) {
        let inner = self.lock();
        let rv = inner.rv;
        if let Some((_, tx)) = inner
            .watchers
            .get(&res)
            .and_then(|ws| ws.iter().find(|(i, _)| *i == id))
        {
            let _ = tx.send(WatchMsg::Bookmark(rv));
        }
    }

    pub fn unwatch(&self, res: Res, id: u64) {
        if let Some(ws) = self.lock().watchers.get_mut(&res) {
            ws.retain(|(i, _)| *i != id);
        }
    }

    /// The oldest resourceVersion a watch of `res` can start after.
    pub fn oldest_watchable(&self, res: Res) -> u64 {
        self.lock().evicted_upto[&res]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default"}})
    }

    #[test]
    fn history_is_bounded_and_old_versions_expire() {
        let store = Store::new(3, Rng::new(1));
        let first = store.create(Res::ConfigMap, obj("a")).unwrap();
        let first_rv: u64 = first["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        for i in 0..5 {
            store.create(Res::ConfigMap, obj(&format!("b{i}"))).unwrap();
        }
        let err = store
            .watch(Res::ConfigMap, WatchFrom::After(first_rv))
            .err()
            .unwrap();
        assert_eq!(err.code, 410);
        assert!(err.message.starts_with("too old resource version"));
        let rv = store.current_rv();
        let w = store
            .watch(Res::ConfigMap, WatchFrom::After(rv - 2))
            .unwrap();
        assert_eq!(w.initial.len(), 2);
    }

    #[test]
    fn lists_at_an_older_version_undo_later_events() {
        let store = Store::new(10, Rng::new(1));
        store.create(Res::ConfigMap, obj("a")).unwrap();
        let rv = store.current_rv();
        store.create(Res::ConfigMap, obj("b")).unwrap();
        store
            .update(Res::ConfigMap, "default", "a", None, |o| {
                o["data"] = json!({"k": "v"});
                Ok(true)
            })
            .unwrap();
        store.delete(Res::ConfigMap, "default", "a");
        let then = store.list_at(Res::ConfigMap, None, rv).unwrap();
        assert_eq!(then.len(), 1);
        assert_eq!(then[0]["metadata"]["name"], "a");
        assert!(then[0].get("data").is_none());
        assert_eq!(store.list(Res::ConfigMap, None).0.len(), 1);
    }

    #[test]
    fn conflicts_on_stale_resource_version() {
        let store = Store::new(10, Rng::new(1));
        store.create(Res::ConfigMap, obj("a")).unwrap();
        let e = store
            .update(Res::ConfigMap, "default", "a", Some("1"), |_| Ok(true))
            .err()
            .unwrap();
        assert_eq!(e.code, 409);
        assert_eq!(e.reason, "Conflict");
    }
}
