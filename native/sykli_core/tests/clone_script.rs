//! The clone script is a constant shipped in every Job: lint it as the shells that run it.

use std::io::Write;
use std::process::{Command, Stdio};

use sykli_core::source::git_clone::CLONE_SCRIPT;
use sykli_testkit::validate::venv_bin;

fn check(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(CLONE_SCRIPT.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

#[test]
fn shellcheck_finds_nothing_for_posix_sh_and_dash() {
    for dialect in ["sh", "dash"] {
        check(Command::new(venv_bin("shellcheck")).args([
            "--shell",
            dialect,
            "--severity",
            "style",
            "-",
        ]));
    }
}

#[test]
fn dash_and_busybox_ash_parse_it() {
    check(Command::new("dash").arg("-n"));
    check(Command::new("busybox").args(["sh", "-n"]));
}

#[test]
fn it_uses_no_value_except_through_quoted_variables() {
    // Every SYKLI_ variable is read into a quoted context or a plain assignment.
    for line in CLONE_SCRIPT
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        assert!(!line.contains("eval "), "{line}");
        for (i, _) in line.match_indices("$SYKLI_") {
            let before = &line[..i];
            let quoted = before.matches('"').count() % 2 == 1;
            let assignment = before.trim_end().ends_with('=') && !before.trim().contains(' ');
            assert!(quoted || assignment, "unquoted use: {line}");
        }
    }
}
