//! Fault injection and the request log.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::ApiError;
use crate::util::Rng;

/// What to break. Rates are probabilities in [0, 1]; draws come from one RNG (seeded by
/// `seed` when given), in request order, so a seeded run with the same requests is repeatable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub seed: Option<u64>,
    /// Verb (get, list, watch, create, update, patch, delete, deletecollection, or "*") →
    /// probability of an error response.
    pub error_rate: BTreeMap<String, f64>,
    /// 500 (InternalError, the default) or 503 (ServiceUnavailable).
    pub error_code: Option<u16>,
    /// Probability of 429 TooManyRequests with `Retry-After: 1`, for any verb.
    pub throttle_rate: f64,
    /// Added to every API request before it is handled.
    pub latency_ms: u64,
    /// Close every watch stream after this many events.
    pub watch_drop_after_events: Option<u64>,
    /// Probability, per event sent, of closing the watch stream after it.
    pub watch_drop_rate: f64,
    /// The next N watches start with an ERROR event (410 Expired) and end.
    pub next_watch_gone: u32,
}

impl Faults {
    pub fn check(&self) -> Result<(), String> {
        for (verb, r) in &self.error_rate {
            if !(0.0..=1.0).contains(r) {
                return Err(format!("error_rate[{verb}] must be within 0..1"));
            }
        }
        for (what, r) in [
            ("throttle_rate", self.throttle_rate),
            ("watch_drop_rate", self.watch_drop_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{what} must be within 0..1"));
            }
        }
        if let Some(c) = self.error_code {
            if c != 500 && c != 503 {
                return Err("error_code must be 500 or 503".into());
            }
        }
        Ok(())
    }
}

pub struct FaultState {
    pub faults: Faults,
    pub rng: Rng,
}

impl FaultState {
    pub fn new(faults: Faults) -> Self {
        let rng = faults.seed.map_or_else(Rng::from_entropy, Rng::new);
        FaultState { faults, rng }
    }

    pub fn set(&mut self, faults: Faults) {
        if let Some(seed) = faults.seed {
            self.rng = Rng::new(seed);
        }
        self.faults = faults;
    }

    /// Latency to add, then the error to answer with (if any) for a request of `verb`.
    pub fn draw(&mut self, verb: &str) -> (Duration, Option<ApiError>) {
        let f = &self.faults;
        let latency = Duration::from_millis(f.latency_ms);
        let rate = f
            .error_rate
            .get(verb)
            .or_else(|| f.error_rate.get("*"))
            .copied()
            .unwrap_or(0.0);
        if rate > 0.0 && self.rng.next_f64() < rate {
            let e = if f.error_code == Some(503) {
                ApiError::service_unavailable()
            } else {
                ApiError::internal("injected fault")
            };
            return (latency, Some(e));
        }
        if f.throttle_rate > 0.0 && self.rng.next_f64() < f.throttle_rate {
            return (latency, Some(ApiError::too_many_requests()));
        }
        (latency, None)
    }

    /// Whether the next watch is to fail with 410 (and counts it).
    pub fn take_watch_gone(&mut self) -> bool {
        if self.faults.next_watch_gone > 0 {
            self.faults.next_watch_gone -= 1;
            true
        } else {
            false
        }
    }

    /// After `sent` events on a watch: close it?
    pub fn drop_watch(&mut self, sent: u64) -> bool {
        if self
            .faults
            .watch_drop_after_events
            .is_some_and(|n| sent >= n)
        {
            return true;
        }
        self.faults.watch_drop_rate > 0.0 && self.rng.next_f64() < self.faults.watch_drop_rate
    }
}

/// One request, as the request log keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    pub status: u16,
    /// "sykli-admin", "sykli-readonly", "system:anonymous", or "" when unauthenticated.
    pub user: String,
    /// Until the response head (for streams: until the stream started).
    pub duration_ms: f64,
    pub watch: bool,
    /// Kubernetes verb (get, list, watch, create, delete, ...) or "" outside the resource API.
    pub verb: String,
    /// Whether the response was an injected fault.
    pub injected: bool,
}
