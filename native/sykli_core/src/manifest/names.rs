//! Kubernetes name and label rules (pkg/apis/core/validation, apimachinery validation).

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

/// `sykli-<task>-<run id>`: a valid Job name (a DNS label, so the `job-name` label on its
/// pods is valid too) that stays unique per run however long the task name is.
pub fn job_name(task: &str, run_id: &str) -> String {
    let run = slug(run_id, 20);
    let budget = 63 - "sykli-".len() - 1 - run.len();
    let task = slug(task, budget);
    match (task.is_empty(), run.is_empty()) {
        (true, true) => "sykli".into(),
        (true, false) => format!("sykli-{run}"),
        (false, true) => format!("sykli-{task}"),
        (false, false) => format!("sykli-{task}-{run}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_dns_labels_of_at_most_63() {
        for task in [
            "build",
            "Build & Test!",
            "a".repeat(200).as_str(),
            "--",
            "ünïcode/task",
            "",
        ] {
            let name = job_name(task, "k3x9q");
            assert!(is_dns_label(&name), "{name}");
            assert!(name.ends_with("-k3x9q"), "{name}");
        }
        assert_eq!(job_name("Build & Test", "ab12"), "sykli-build-test-ab12");
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
