//! Kubernetes name and label rules (pkg/apis/core/validation, apimachinery validation).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// A DNS-1123 label: lower-case alphanumerics and '-', alphanumeric at both ends, ≤ 63.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, ≤ 253.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_name_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63.
pub fn is_qualified_name(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name, 63),
        None => is_name_part(s, 63),
    }
}

/// A label value: empty, or ≤ 63 of alphanumerics, '-', '_', '.', alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s, 63)
}

/// An environment variable name as every supported Kubernetes version accepts it.
pub fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.as_bytes()[0].is_ascii_digit()
}

/// Lower-case DNS-label characters of `s`, runs of anything else collapsed to one '-',
/// at most `max` long, no '-' at either end.
pub fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(max).collect();
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The task name made into a valid label value (the full name goes in an annotation).
pub fn label_value(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while out.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.pop();
    }
    while out.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.remove(0);
    }
    out
}

/// Hex digits of SHA-256 that tell apart the task names a slug would confuse.
const HASH_HEX: usize = 10;

/// `sykli-<task>-<run id>`: a valid Job name (a DNS label, so the `job-name` label on its
/// pods is valid too) of at most 63 characters however long the task name is, and one of
/// its own for every task name of a run.
///
/// A task name that is its own slug (lower-case letters, digits, single inner '-') and fits
/// is kept as it is. Any other (a character changed or dropped, upper case, too long, empty)
/// becomes `<slug prefix>--<hash>`: the first 10 hex digits of the SHA-256 of the exact
/// name (and of the run id too when the run id is not its own slug of at most 20). A slug
/// never holds "--" nor starts with '-', so a kept name never equals a hashed one; two
/// hashed ones are equal only if their hashes are, which `job_name_collisions` refuses.
pub fn job_name(task: &str, run_id: &str) -> String {
    let run = slug(run_id, 20);
    let run_exact = run == run_id;
    let budget = 63 - "sykli-".len() - if run.is_empty() { 0 } else { run.len() + 1 };
    let task = if run_exact && !task.is_empty() && slug(task, budget) == task {
        task.to_string()
    } else {
        let hash = if run_exact {
            short_hash(&[task])
        } else {
            short_hash(&[task, run_id])
        };
        // Room for "--" and the hash; an empty prefix leaves "-<hash>", so the name reads
        // `sykli--<hash>-<run>` and still holds "--".
        let prefix = slug(task, budget - 2 - HASH_HEX);
        if prefix.is_empty() {
            format!("-{hash}")
        } else {
            format!("{prefix}--{hash}")
        }
    };
    if run.is_empty() {
        format!("sykli-{task}")
    } else {
        format!("sykli-{task}-{run}")
    }
}

/// Every two different tasks whose Jobs of run `run_id` would have the same name, each
/// pair as a problem naming both tasks and the Job (a name given twice is not one: that is
/// the pipeline's "defined twice"). Empty when every task has a Job name of its own.
pub fn job_name_collisions<'a>(
    tasks: impl IntoIterator<Item = &'a str>,
    run_id: &str,
) -> Vec<String> {
    let mut first: BTreeMap<String, &str> = BTreeMap::new();
    let mut problems = Vec::new();
    for task in tasks {
        let name = job_name(task, run_id);
        match first.get(&name) {
            Some(other) if *other != task => problems.push(format!(
                "tasks {other:?} and {task:?} would both run as Job {name}: rename one of them"
            )),
            Some(_) => {}
            None => {
                first.insert(name, task);
            }
        }
    }
    problems
}

/// The first [`HASH_HEX`] hex digits of the SHA-256 of `parts`, separated by a NUL byte
/// (which no name holds).
fn short_hash(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update([0u8]);
        }
        hash.update(part.as_bytes());
    }
    hash.finalize()[..HASH_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `sykli-sync-<claim slug>-<hash>`: the receiver pod of the claim `claim`, a DNS label.
/// The hash of the exact claim name is always there: claims that slug alike (`a.b` and
/// `a-b`, two long names cut to one prefix) never share a receiver, and a pod created
/// beforehand under the name of the slug alone is not taken for one.
pub fn receiver_name(claim: &str) -> String {
    let budget = 63 - "sykli-sync-".len() - 1 - HASH_HEX;
    let prefix = slug(claim, budget);
    let hash = short_hash(&[claim]);
    if prefix.is_empty() {
        format!("sykli-sync-{hash}")
    } else {
        format!("sykli-sync-{prefix}-{hash}")
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn receivers_are_named_by_the_hash_of_the_exact_claim() {
        let long = "c".repeat(200);
        let longer = format!("{long}x");
        let names: Vec<String> = ["src", "a.b", "a-b", "A-B", &long, &longer]
            .iter()
            .map(|c| receiver_name(c))
            .collect();
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for n in &names {
            assert!(
                n.len() <= 63 && slug(n, 63) == *n,
                "{n:?} is not a DNS label"
            );
        }
        assert!(names[0].starts_with("sykli-sync-src-") && names[0] != "sykli-sync-src");
        assert_eq!(receiver_name("src"), names[0], "the name is stable");
    }
    use super::*;

    /// Task names that every run id below must keep apart: look-alikes under slugging,
    /// case, truncation, emptiness, and names shaped like another's hashed form.
    fn tricky_task_names() -> Vec<String> {
        let mut names: Vec<String> = [
            "build",
            "Build",
            "BUILD",
            "build ",
            " build",
            "Build & Test!",
            "build-test",
            "build--test",
            "test unit",
            "test/unit",
            "test_unit",
            "test.unit",
            "test-unit",
            "test  unit",
            "A",
            "a",
            "--",
            "-",
            "",
            " ",
            "ünïcode/task",
            "unicode/task",
            "ùnicode/task",
            "0123456789",
            "x>}>^",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.push("a".repeat(200));
        names.push("a".repeat(201));
        names.push(format!("{}-one", "p".repeat(60)));
        names.push(format!("{}-two", "p".repeat(60)));
        // Every string of up to three characters from a small alphabet.
        let alphabet = ['a', 'A', '1', '-', ' ', '/', '_', 'é'];
        let mut short = vec![String::new()];
        for _ in 0..3 {
            short = short
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            names.extend(short.iter().cloned());
        }
        // The hashed form of others, given as task names of their own.
        for t in ["test/unit", "Build & Test!", "", "--"] {
            let name = job_name(t, "k3x9q");
            let part = &name["sykli-".len()..name.len() - "-k3x9q".len()];
            names.push(part.to_string());
        }
        names.sort();
        names.dedup();
        names
    }

    const RUNS: [&str; 7] = [
        "k3x9q",
        "k3x9q-a2",
        "k3x9q-a12",
        "",
        "Run_ID.7",
        "a-very-long-ci-build-id-0123456789",
        "a-very-long-ci-build-id-0123456789-a2",
    ];

    #[test]
    fn job_names_are_dns_labels_of_at_most_63() {
        for run in RUNS {
            for task in tricky_task_names() {
                let name = job_name(&task, run);
                assert!(
                    is_dns_label(&name) && is_dns_subdomain(&name) && name.len() <= 63,
                    "{task:?} {run:?}: {name}"
                );
                // The pods' `batch.kubernetes.io/job-name` label holds it too.
                assert!(is_label_value(&name), "{name}");
                assert!(name.starts_with("sykli-"), "{name}");
                let run = slug(run, 20);
                assert!(
                    run.is_empty() || name.ends_with(&format!("-{run}")),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn different_task_names_never_share_a_job_name() {
        let tasks = tricky_task_names();
        for run in RUNS {
            let mut seen: BTreeMap<String, &str> = BTreeMap::new();
            for task in &tasks {
                let name = job_name(task, run);
                if let Some(other) = seen.insert(name.clone(), task) {
                    panic!("{other:?} and {task:?} of run {run:?} both give {name}");
                }
            }
        }
        assert_ne!(job_name("test unit", "r1"), job_name("test/unit", "r1"));
        assert_ne!(job_name("A", "r1"), job_name("a", "r1"));
        let long = "p".repeat(60);
        let (one, two) = (format!("{long}-one"), format!("{long}-two"));
        assert_ne!(job_name(&one, "r1"), job_name(&two, "r1"));
        assert_ne!(job_name(&one, "k3x9q-a12"), job_name(&two, "k3x9q-a12"));
    }

    #[test]
    fn names_that_are_their_own_slug_keep_todays_job_name() {
        assert_eq!(job_name("build", "r1x2"), "sykli-build-r1x2");
        assert_eq!(job_name("build", "r1x2-a2"), "sykli-build-r1x2-a2");
        assert_eq!(job_name("test-unit", "k3x9q"), "sykli-test-unit-k3x9q");
        assert_eq!(job_name("compile", "f1"), "sykli-compile-f1");
        assert_eq!(job_name("a", "r1"), "sykli-a-r1");
        assert_eq!(job_name("0123456789", "r1"), "sykli-0123456789-r1");
        assert_eq!(job_name("build", ""), "sykli-build");
        // As long as it fits: 63 = "sykli-" + 51 + "-k3x9q".
        let fits = "b".repeat(51);
        assert_eq!(job_name(&fits, "k3x9q"), format!("sykli-{fits}-k3x9q"));
        let longer = "b".repeat(52);
        assert_ne!(job_name(&longer, "k3x9q"), format!("sykli-{longer}-k3x9q"));
    }

    #[test]
    fn a_lossy_slug_gets_a_hash_of_the_exact_name() {
        // SHA-256("Build & Test") starts cc1ca47d20, ("test unit") ca83947ca2,
        // ("test/unit") d5b50c58fd.
        assert_eq!(
            job_name("Build & Test", "ab12"),
            "sykli-build-test--cc1ca47d20-ab12"
        );
        assert_eq!(
            job_name("test unit", "r1"),
            "sykli-test-unit--ca83947ca2-r1"
        );
        assert_eq!(
            job_name("test/unit", "r1"),
            "sykli-test-unit--d5b50c58fd-r1"
        );
        // Stable: the same name, run after run, attempt after attempt.
        assert_eq!(
            job_name("test/unit", "r1-a2"),
            "sykli-test-unit--d5b50c58fd-r1-a2"
        );
        // Nothing readable left: the hash alone, after "sykli--".
        let name = job_name("ü/é", "r1");
        assert!(
            name.starts_with("sykli--") && name.ends_with("-r1"),
            "{name}"
        );
        assert_eq!(name.len(), "sykli--".len() + 10 + "-r1".len());
        // Truncated: as much of the slug as fits beside the hash.
        let name = job_name(&format!("{}-one", "p".repeat(60)), "k3x9q-a12");
        assert_eq!(name.len(), 63);
        assert!(
            name.starts_with("sykli-pppp") && name.ends_with("-k3x9q-a12"),
            "{name}"
        );
        // A name shaped like a hashed one is hashed itself, never taken as it is.
        let part = "test-unit--d5b50c58fd";
        assert_ne!(job_name(part, "r1"), job_name("test/unit", "r1"));
        assert_ne!(job_name(part, "r1"), format!("sykli-{part}-r1"));
    }

    #[test]
    fn a_run_id_that_slugging_changes_is_hashed_with_the_task() {
        // Truncated to 20, these attempts' ids would read the same.
        let run = "a-very-long-ci-build-id-0123456789";
        let a2 = job_name("build", &format!("{run}-a2"));
        let a3 = job_name("build", &format!("{run}-a3"));
        assert_ne!(a2, a3);
        assert_ne!(job_name("build", "Run1"), job_name("build", "run1"));
        assert_eq!(job_name("build", "run1"), "sykli-build-run1");
    }

    #[test]
    fn colliding_job_names_are_named_with_both_tasks() {
        assert!(
            job_name_collisions(["test unit", "test/unit", "test-unit", "A", "a", "a"], "r1")
                .is_empty()
        );
        // Found by search: both slug to "x", their SHA-256 share the first 10 hex digits
        // (abb4179871), so only the check keeps them apart.
        let (one, two) = ("x>}>^", "x!(.)*");
        assert_eq!(job_name(one, "r1"), job_name(two, "r1"));
        let problems = job_name_collisions(["build", one, two], "r1");
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.contains(&format!("{one:?}")) && p.contains(&format!("{two:?}")),
            "{p}"
        );
        assert!(
            p.contains(&job_name(one, "r1")) && p.contains("rename one"),
            "{p}"
        );
    }

    #[test]
    fn label_rules() {
        assert!(is_qualified_name("sykli.io/task"));
        assert!(is_qualified_name("app.kubernetes.io/managed-by"));
        assert!(!is_qualified_name("-bad"));
        assert!(!is_qualified_name("Bad.Prefix/x"));
        assert!(is_label_value("") && is_label_value("a.b_c-d"));
        assert!(!is_label_value("a b") && !is_label_value(&"x".repeat(64)));
        assert_eq!(label_value("build: the app!"), "build--the-app");
        assert!(is_label_value(&label_value(&"é".repeat(100))));
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("RUST_LOG") && is_env_name("a.b-c") && is_env_name("_x"));
        assert!(
            !is_env_name("1X") && !is_env_name("A=B") && !is_env_name("A B") && !is_env_name("")
        );
    }
}
