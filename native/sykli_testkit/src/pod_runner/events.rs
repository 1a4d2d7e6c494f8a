//! Live container events (what a kubelet turns into container states) and the time format
//! they travel in.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Receives [`ContainerEvent`]s as they happen, from the runner's threads (concurrently for
/// different containers; for one container, `Started` before its log lines, `Terminated`
/// after them).
pub type EventSink = Arc<dyn Fn(&ContainerEvent) + Send + Sync>;

/// A change of a container's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// The container's process was started (before any of its log lines).
    Started { container: String, at: SystemTime },
    /// The container's result is final: its process exited (after its last log line), or it
    /// could not be created. A container that never got its turn has no event.
    Terminated {
        container: String,
        /// The exit code (128+N for signal N); 128 when the command never ran (no code
        /// exists, and 128 is what runtimes report for a StartError).
        exit_code: i32,
        /// As [`super::ContainerResult::reason`]: "Completed", "Error", "DeadlineExceeded",
        /// "StartError", "CreateContainerConfigError".
        reason: String,
        message: Option<String>,
        termination_message: String,
        /// None when its process never started.
        started_at: Option<SystemTime>,
        finished_at: SystemTime,
    },
}

/// `t` in RFC 3339, UTC, with nanoseconds (always nine digits): `2026-12-07T12:00:00.123456789Z`.
/// Times before 1970 (a clock set back) are clamped to the epoch.
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> String {
        rfc3339_nanos(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn formats_rfc3339_with_nanoseconds_in_utc() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            at(1_796_644_800, 123_456_789),
            "2026-12-07T12:00:00.123456789Z"
        );
        assert_eq!(at(1_709_251_199, 5), "2024-02-29T23:59:59.000000005Z");
        assert_eq!(at(951_868_800, 0), "2000-03-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000000Z"
        );
    }
}
