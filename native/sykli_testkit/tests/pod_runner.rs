//! The pod runner, for real: every test runs bubblewrap sandboxes (as root, like CI) and asserts
//! exact outcomes.
//!
//! Note on `$$$$` in commands: Kubernetes expands `$(VAR)` in command/args and turns `$$` into
//! `$`, so a shell that should see `$$` needs `$$$$` in the manifest (as on a real cluster).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sykli_testkit::pod_runner::{
    run_pod, ContainerEvent, ContainerKind, ContainerResult, Fixtures, PodPhase, PodResult,
    RunOptions, RunnerError, Shell, StopHandle,
};
use tempfile::TempDir;

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the pod runner tests need root (bwrap without a user namespace, setpriv)"
    );
}

fn opts(dir: &TempDir) -> RunOptions {
    require_root();
    RunOptions::new(dir.path().join("work")).timeout(Duration::from_secs(120))
}

fn run(manifest: Value, opts: &RunOptions) -> PodResult {
    match run_pod(&manifest, opts) {
        Ok(r) => r,
        Err(e) => panic!("run_pod failed: {e}"),
    }
}

fn sh(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "ignored:latest", "command": ["sh", "-c", script]})
}

fn get<'a>(r: &'a PodResult, name: &str) -> &'a ContainerResult {
    r.container(name)
        .unwrap_or_else(|| panic!("no container {name} in {r:#?}"))
}

fn completed(r: &PodResult, name: &str) -> String {
    let c = get(r, name);
    assert_eq!(
        (c.exit_code, c.reason.as_deref()),
        (Some(0), Some("Completed")),
        "{c:#?}"
    );
    c.log.clone()
}

fn not_started(r: &PodResult, name: &str) {
    let c = get(r, name);
    assert!(!c.started, "{c:#?}");
    assert_eq!(c.exit_code, None, "{c:#?}");
    assert_eq!(c.reason, None, "{c:#?}");
    assert_eq!(c.log, "", "{c:#?}");
}

/// Processes on the host whose command line is exactly `argv`.
fn processes_with_cmdline(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn empty_dir_is_shared_by_init_and_main_containers() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "build-1"},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "workspace", "emptyDir": {}}],
                "initContainers": [{
                    "name": "clone", "image": "alpine/git",
                    "command": ["sh", "-c", "echo hello from init > /workspace/greeting"],
                    "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}]
                }],
                "containers": [{
                    "name": "task", "image": "debian",
                    "command": ["sh", "-c"],
                    "args": ["cat greeting && echo task was here > out"],
                    "workingDir": "/workspace",
                    "volumeMounts": [{"name": "workspace", "mountPath": "/workspace"}]
                }]
            }}}
        }),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(r.reason, None);
    assert_eq!(completed(&r, "clone"), "");
    assert_eq!(completed(&r, "task"), "hello from init\n");
    assert_eq!(get(&r, "clone").kind, ContainerKind::Init);
    assert_eq!(get(&r, "task").kind, ContainerKind::Main);
    let ws = r.volume("workspace").expect("workspace volume");
    assert_eq!(ws, dir.path().join("work/volumes/workspace"));
    assert_eq!(
        fs::read_to_string(ws.join("out")).expect("out"),
        "task was here\n"
    );
    // Created like the kubelet creates emptyDirs.
    let mode = fs::metadata(ws).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777);
}

#[test]
fn sub_path_binds_a_sub_directory_and_creates_it_in_an_empty_dir() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir).secret("keys", [("known_hosts", "github.com ssh-ed25519 AAAA\n")]);
    let r = run(
        json!({"containers": [
        {
            "name": "main",
            "command": ["sh", "-c",
                "echo top > /all/top-level && echo inside > /sub/file && ls -A /sub && \
                 cat /etc/ssh/ssh_known_hosts_from_secret && ls -A /all"],
            "volumeMounts": [
                {"name": "data", "mountPath": "/all"},
                {"name": "data", "mountPath": "/sub", "subPath": "nested/dir"},
                {"name": "keys", "mountPath": "/etc/ssh/ssh_known_hosts_from_secret",
                 "subPath": "known_hosts"}
            ]
        }],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "keys", "secret": {"secretName": "keys"}}
        ]}),
        &o,
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(
        completed(&r, "main"),
        "file\ngithub.com ssh-ed25519 AAAA\nnested\ntop-level\n"
    );
    let data = r.volume("data").expect("data");
    assert_eq!(
        fs::read_to_string(data.join("nested/dir/file")).expect("file"),
        "inside\n"
    );
    assert_eq!(
        fs::metadata(data.join("nested/dir"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777,
        0o777
    );
}

#[test]
fn sub_path_that_leaves_the_volume_is_refused() {
    let dir = TempDir::new().expect("tempdir");
    for bad in ["../etc", "/etc", "a/../../b"] {
        let err = run_pod(
            &json!({"containers": [{"name": "main", "command": ["true"],
                "volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": bad}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]}),
            &opts(&dir),
        )
        .expect_err(bad);
        assert!(
            matches!(&err, RunnerError::InvalidManifest(m) if m.contains("subPath")),
            "{bad}: {err}"
        );
    }
    // A symlink planted by an earlier container does not lead out either.
    let r = run(
        json!({"initContainers": [{"name": "plant", "command": ["ln", "-s", "/etc", "/d/escape"],
                "volumeMounts": [{"name": "data", "mountPath": "/d"}]}],
            "containers": [{"name": "main", "command": ["true"],
                "volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": "escape"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}]}),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    let main = get(&r, "main");
    assert_eq!(main.reason.as_deref(), Some("CreateContainerConfigError"));
    assert!(
        main.message
            .as_deref()
            .unwrap_or("")
            .contains("leaves the volume"),
        "{main:#?}"
    );
}

#[test]
fn secret_volume_honours_items_default_mode_and_item_modes() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir).secret(
        "git-creds",
        [
            ("username", "alice"),
            ("password", "s3cret"),
            ("unlisted", "never projected"),
        ],
    );
    let r = run(
        json!({"containers": [{
            "name": "main",
            "command": ["sh", "-c",
                "stat -c '%a %n' /creds/user/name /creds/pass && cat /creds/user/name && echo && \
                 cat /creds/pass && echo && ls -A /creds && \
                 (touch /creds/new 2>/dev/null && echo writable || echo read-only)"],
            "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]
        }],
        "volumes": [{"name": "creds", "secret": {
            "secretName": "git-creds",
            "defaultMode": 0o400,
            "items": [
                {"key": "username", "path": "user/name"},
                {"key": "password", "path": "pass", "mode": 0o440}
            ]
        }}]}),
        &o,
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(
        completed(&r, "main"),
        "400 /creds/user/name\n440 /creds/pass\nalice\ns3cret\npass\nuser\nread-only\n"
    );
}

#[test]
fn config_map_volume_projects_every_key_with_mode_0644() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir).config_map("app", [("app.conf", "a=1\n"), ("b.txt", "bee")]);
    let r = run(
        json!({"containers": [{
                "name": "main",
                "securityContext": {"runAsUser": 1000},
                "command": ["sh", "-c",
                    "stat -c '%a %U' /etc/app/app.conf /etc/app/b.txt && cat /etc/app/app.conf /etc/app/b.txt"],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}]
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "app"}}]}),
        &o,
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(completed(&r, "main"), "644 root\n644 root\na=1\nbee\n");
}

#[test]
fn optional_missing_objects_are_skipped() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [{
                "name": "main",
                "command": ["sh", "-c", "ls -A /s | wc -l && echo ${TOKEN-unset}"],
                "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef":
                    {"name": "absent", "key": "token", "optional": true}}}],
                "volumeMounts": [{"name": "s", "mountPath": "/s"}]
            }],
            "volumes": [{"name": "s", "secret": {"secretName": "absent", "optional": true}}]}),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(completed(&r, "main"), "0\nunset\n");
}

#[test]
fn env_from_secrets_config_maps_fields_and_dependent_variables() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir)
        .secret("git", [("token", "s3cret")])
        .config_map("settings", [("LEVEL", "debug"), ("MODE", "fast")]);
    let r = run(
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "build-7", "namespace": "ci", "labels": {"app": "sykli"}},
            "spec": {"containers": [{
                "name": "main",
                "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "USER_NAME", "value": "alice"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "git", "key": "token"}}},
                    {"name": "URL", "value":
                        "https://$(USER_NAME):$(TOKEN)@git.example/$(UNDEFINED)/$$(TOKEN)/$(LATER)"},
                    {"name": "LATER", "value": "later"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "LEVEL", "value": "$(CFG_LEVEL)"}
                ],
                "command": ["sh", "-c"],
                "args": ["printf '%s\\n' \"$URL\" \"$POD/$NS/$APP/$LEVEL/$CFG_MODE\" \"$1\"",
                         "argv0", "$(USER_NAME) $(TOKEN)"]
            }]}
        }),
        &o,
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(
        completed(&r, "main"),
        "https://alice:s3cret@git.example/$(UNDEFINED)/$(TOKEN)/$(LATER)\n\
         build-7/ci/sykli/debug/fast\n\
         alice s3cret\n"
    );
}

#[test]
fn the_environment_starts_clean() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"metadata": {"name": "clean"}, "spec": {"containers": [
            {"name": "root", "command": ["/usr/bin/env"]},
            {"name": "user", "command": ["/usr/bin/env"], "securityContext": {"runAsUser": 1000},
             "env": [{"name": "EXTRA", "value": "1"}]},
            {"name": "home", "command": ["/usr/bin/env"], "env": [{"name": "HOME", "value": "/h"}]}
        ]}}),
        &opts(&dir),
    );
    let path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(
        completed(&r, "root"),
        format!("{path}\nHOSTNAME=clean\nHOME=/root\n")
    );
    assert_eq!(
        completed(&r, "user"),
        format!("{path}\nHOSTNAME=clean\nHOME=/\nEXTRA=1\n")
    );
    assert_eq!(
        completed(&r, "home"),
        format!("{path}\nHOSTNAME=clean\nHOME=/h\n")
    );
}

#[test]
fn a_missing_secret_key_is_a_config_error_and_stops_the_pod() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir).secret("git-creds", [("username", "alice")]);
    let r = run(
        json!({
            "initContainers": [{
                "name": "clone", "command": ["sh", "-c", "echo should not run"],
                "env": [{"name": "PASSWORD", "valueFrom":
                    {"secretKeyRef": {"name": "git-creds", "key": "password"}}}]
            }],
            "containers": [sh("main", "echo should not run either")]
        }),
        &o,
    );
    assert_eq!(r.phase, PodPhase::Failed);
    let clone = get(&r, "clone");
    assert!(!clone.started);
    assert_eq!(clone.exit_code, None);
    assert_eq!(clone.reason.as_deref(), Some("CreateContainerConfigError"));
    let msg = clone.message.as_deref().unwrap_or("");
    assert!(
        msg.contains("\"git-creds\"") && msg.contains("\"password\""),
        "{msg}"
    );
    assert_eq!(clone.log, "");
    not_started(&r, "main");
}

#[test]
fn a_missing_secret_or_key_for_a_volume_is_a_config_error_for_the_mounting_container() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir).secret("ssh", [("id_ed25519", "KEY")]);
    let r = run(
        json!({
            "containers": [
                {"name": "keyless", "command": ["true"],
                 "volumeMounts": [{"name": "ssh", "mountPath": "/ssh"}]},
                {"name": "unmounted", "command": ["true"]},
                {"name": "nosecret", "command": ["true"],
                 "volumeMounts": [{"name": "gone", "mountPath": "/gone"}]}
            ],
            "volumes": [
                {"name": "ssh", "secret": {"secretName": "ssh",
                    "items": [{"key": "known_hosts", "path": "known_hosts"}]}},
                {"name": "gone", "secret": {"secretName": "no-such-secret"}}
            ]
        }),
        &o,
    );
    assert_eq!(r.phase, PodPhase::Failed);
    for (name, needles) in [
        ("keyless", &["\"ssh\"", "\"known_hosts\""][..]),
        ("nosecret", &["\"no-such-secret\"", "not found"][..]),
    ] {
        let c = get(&r, name);
        assert!(!c.started);
        assert_eq!(c.reason.as_deref(), Some("CreateContainerConfigError"));
        let msg = c.message.as_deref().unwrap_or("");
        assert!(needles.iter().all(|n| msg.contains(n)), "{name}: {msg}");
    }
    completed(&r, "unmounted");
}

#[test]
fn run_as_user_writes_files_owned_by_that_uid() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [{
                "name": "main",
                "securityContext": {"runAsUser": 1000, "runAsGroup": 3000},
                "command": ["sh", "-c", "id -u && id -g && id -G && echo data > /data/written"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "volumes": [{"name": "data", "emptyDir": {}}]}),
        &opts(&dir),
    );
    assert_eq!(completed(&r, "main"), "1000\n3000\n3000\n");
    let meta = fs::metadata(r.volume("data").expect("data").join("written")).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1000, 3000));
}

#[test]
fn run_as_user_cannot_write_a_file_owned_by_another_uid() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({
            "initContainers": [{
                "name": "setup",
                "command": ["sh", "-c",
                    "echo original > /data/config && chown 2000:2000 /data/config && \
                     chmod 0644 /data/config && echo root > /data/root-owned && \
                     chmod 0644 /data/root-owned"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "containers": [
                {
                    "name": "user",
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                    "command": ["sh", "-c",
                        "grep CapEff /proc/self/status; \
                         echo changed >> /data/config || echo denied; \
                         chmod 0666 /data/config || echo chmod denied; \
                         echo changed >> /data/root-owned || echo denied too; exit 3"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                },
                {
                    "name": "root",
                    "command": ["sh", "-c", "grep CapEff /proc/self/status"]
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }),
        &opts(&dir),
    );
    let user = get(&r, "user");
    assert_eq!(user.exit_code, Some(3));
    assert_eq!(
        user.log,
        "CapEff:\t0000000000000000\n\
         sh: 1: cannot create /data/config: Permission denied\n\
         denied\n\
         chmod: changing permissions of '/data/config': Operation not permitted\n\
         chmod denied\n\
         sh: 1: cannot create /data/root-owned: Permission denied\n\
         denied too\n"
    );
    // Root in a container has the runtime's default capabilities, not all of them.
    assert_eq!(completed(&r, "root"), "CapEff:\t00000000a80425fb\n");
    let data = r.volume("data").expect("data");
    assert_eq!(
        fs::read_to_string(data.join("config")).expect("config"),
        "original\n"
    );
    let meta = fs::metadata(data.join("config")).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (2000, 0o644));
}

#[test]
fn read_only_root_filesystem_leaves_only_volumes_writable() {
    let dir = TempDir::new().expect("tempdir");
    let mount = json!([{"name": "data", "mountPath": "/data"}]);
    let r = run(
        json!({"containers": [
                {
                    "name": "ro",
                    "securityContext": {"readOnlyRootFilesystem": true},
                    "command": ["sh", "-c",
                        "touch /x; echo rc=$?; touch /tmp/x 2>/dev/null || echo tmp read-only; \
                         echo ok > /data/ro && echo volume writable"],
                    "volumeMounts": mount
                },
                {
                    "name": "rw",
                    "command": ["sh", "-c",
                        "touch /x && touch /tmp/x && echo root writable; \
                         echo ok > /data/rw && echo volume writable"],
                    "volumeMounts": mount
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]}),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(
        completed(&r, "ro"),
        "touch: cannot touch '/x': Read-only file system\nrc=1\ntmp read-only\nvolume writable\n"
    );
    assert_eq!(completed(&r, "rw"), "root writable\nvolume writable\n");
}

#[test]
fn exit_codes_propagate_and_main_containers_run_concurrently() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        mount_everywhere(
            json!({"containers": [
                    // Each waits for the other through FIFOs: only concurrent containers finish.
                    sh("ok", "echo ping > /sync/a && cat /sync/b"),
                    sh("bad", "cat /sync/a && echo pong > /sync/b && exit 42"),
                    sh("killed", "kill -9 $$$$")
                ],
                "initContainers": [sh("fifos", "mkfifo -m 0666 /sync/a /sync/b")],
                "volumes": [{"name": "sync", "emptyDir": {}}]}),
            json!([{"name": "sync", "mountPath": "/sync"}]),
        ),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    assert_eq!(completed(&r, "ok"), "pong\n");
    let bad = get(&r, "bad");
    assert_eq!(
        (bad.exit_code, bad.reason.as_deref(), bad.log.as_str()),
        (Some(42), Some("Error"), "ping\n")
    );
    let killed = get(&r, "killed");
    assert_eq!(
        (killed.exit_code, killed.reason.as_deref()),
        (Some(137), Some("Error"))
    );
}

#[test]
fn termination_messages_and_fallback_to_logs_on_error() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [
            sh("default-path", "echo 'built 3 targets' > /dev/termination-log"),
            {
                "name": "custom-path",
                "securityContext": {"readOnlyRootFilesystem": true, "runAsUser": 1000},
                "terminationMessagePath": "/var/run/sykli/result",
                "command": ["sh", "-c", "printf 'custom' > /var/run/sykli/result"]
            },
            {
                "name": "fallback",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "command": ["sh", "-c", "seq 1 100; exit 1"]
            },
            {
                "name": "fallback-with-message",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "command": ["sh", "-c", "echo noise; printf why > /dev/termination-log; exit 1"]
            },
            {
                "name": "fallback-on-success",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "command": ["sh", "-c", "echo fine"]
            },
            sh("file-policy", "echo only in the log; exit 1"),
            sh("big", "head -c 5000 /dev/zero | tr '\\0' x > /dev/termination-log")
        ]}),
        &opts(&dir),
    );
    let tm = |name: &str| get(&r, name).termination_message.clone();
    assert_eq!(tm("default-path"), "built 3 targets\n");
    assert_eq!(tm("custom-path"), "custom");
    let expected: String = (21..=100).map(|i| format!("{i}\n")).collect();
    assert_eq!(tm("fallback"), expected);
    assert_eq!(tm("fallback-with-message"), "why");
    assert_eq!(tm("fallback-on-success"), "");
    assert_eq!(tm("file-policy"), "");
    assert_eq!(tm("big"), "x".repeat(4096));
    // The fallback message's byte limit.
    let r = run(
        json!({"containers": [{
            "name": "long-lines",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "command": ["sh", "-c", "for i in 1 2 3 4 5; do head -c 1000 /dev/zero | tr '\\0' $$i; echo; done; exit 2"]
        }]}),
        &opts(&TempDir::new().expect("tempdir")),
    );
    let msg = &get(&r, "long-lines").termination_message;
    assert_eq!(msg.len(), 2048);
    assert!(msg.ends_with(&format!("{}\n", "5".repeat(1000))), "{msg}");
}

#[test]
fn busybox_shell_runs_scripts_under_busybox_and_host_shell_under_dash() {
    let script = "readlink /proc/$$$$/exe; command -v ls; command -v git";
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [
            sh("sh", script),
            {"name": "bin-sh", "command": ["/bin/sh", "-c", script]}
        ]}),
        &opts(&dir).shell(Shell::Busybox),
    );
    let expected = "/usr/bin/busybox\n/sykli-busybox/bin/ls\n/sykli-busybox/bin/git\n";
    assert_eq!(completed(&r, "sh"), expected);
    assert_eq!(completed(&r, "bin-sh"), expected);
    let link = dir.path().join("work/busybox-bin/git");
    let target = fs::read_link(&link).expect("git link");
    assert!(
        target == Path::new("/usr/bin/git") || target == Path::new("/usr/local/bin/git"),
        "{target:?}"
    );

    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [sh("sh", "readlink /proc/$$$$/exe; command -v ls")]}),
        &opts(&dir).shell(Shell::Host),
    );
    assert_eq!(completed(&r, "sh"), "/usr/bin/dash\n/usr/bin/ls\n");
    assert!(!dir.path().join("work/busybox-bin").exists());
}

#[test]
fn a_failing_init_container_stops_the_pod() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({
            "initContainers": [
                sh("first", "echo first"),
                sh("broken", "echo cannot clone >&2; exit 5"),
                sh("never", "echo never")
            ],
            "containers": [sh("main", "echo never")]
        }),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    assert_eq!(completed(&r, "first"), "first\n");
    let broken = get(&r, "broken");
    assert_eq!(
        (
            broken.exit_code,
            broken.reason.as_deref(),
            broken.log.as_str()
        ),
        (Some(5), Some("Error"), "cannot clone\n")
    );
    not_started(&r, "never");
    not_started(&r, "main");
    let names: Vec<&str> = r.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["first", "broken", "never", "main"]);
}

#[test]
fn a_native_sidecar_runs_alongside_and_is_killed_when_the_main_containers_exit() {
    let dir = TempDir::new().expect("tempdir");
    // A duration no other test uses, to find the process afterwards.
    let sleep_arg = "1000.0421";
    let started = Instant::now();
    let r = run(
        mount_everywhere(
            json!({
                "initContainers": [
                    sh("fifo", "mkfifo -m 0666 /shared/ready"),
                    {
                        "name": "proxy", "restartPolicy": "Always",
                        "command": ["sh", "-c",
                            format!("echo up > /shared/ready; exec sleep {sleep_arg}")]
                    },
                    // Runs while the sidecar is up: it blocks until the sidecar writes.
                    sh("after-sidecar", "cat /shared/ready > /shared/seen")
                ],
                "containers": [sh("main", "cat /shared/seen")],
                "volumes": [{"name": "shared", "emptyDir": {}}]
            }),
            json!([{"name": "shared", "mountPath": "/shared"}]),
        ),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(completed(&r, "after-sidecar"), "");
    assert_eq!(completed(&r, "main"), "up\n");
    let proxy = get(&r, "proxy");
    assert_eq!(proxy.kind, ContainerKind::Sidecar);
    assert!(proxy.started);
    // SIGTERM, as a runtime stops a container.
    assert_eq!(
        (proxy.exit_code, proxy.reason.as_deref()),
        (Some(143), Some("Error"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        processes_with_cmdline(&["sleep", sleep_arg]),
        Vec::<i32>::new()
    );
}

#[test]
fn the_deadline_kills_the_pod() {
    let dir = TempDir::new().expect("tempdir");
    let sleep_arg = "1000.0777";
    let started = Instant::now();
    let r = run(
        json!({"containers": [
            {"name": "stuck", "command": ["sleep", sleep_arg]},
            sh("quick", "echo done")
        ]}),
        &opts(&dir).timeout(Duration::from_millis(1500)),
    );
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert_eq!(r.phase, PodPhase::Failed);
    assert_eq!(r.reason.as_deref(), Some("DeadlineExceeded"));
    let stuck = get(&r, "stuck");
    assert_eq!(
        (stuck.exit_code, stuck.reason.as_deref()),
        (Some(137), Some("DeadlineExceeded"))
    );
    assert_eq!(completed(&r, "quick"), "done\n");
    assert_eq!(
        processes_with_cmdline(&["sleep", sleep_arg]),
        Vec::<i32>::new()
    );
}

#[test]
fn the_jobs_active_deadline_seconds_is_the_default_timeout() {
    require_root();
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "slow"},
            "spec": {"activeDeadlineSeconds": 1, "template": {"spec": {
                "initContainers": [{"name": "stuck", "command": ["sleep", "1000.0778"]}],
                "containers": [sh("main", "echo never")]}}}}),
        &RunOptions::new(dir.path()),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    assert_eq!(r.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(get(&r, "stuck").reason.as_deref(), Some("DeadlineExceeded"));
    not_started(&r, "main");
}

#[test]
fn log_lines_are_delivered_live() {
    let dir = TempDir::new().expect("tempdir");
    let work = dir.path().join("work");
    let fifo = work.join("volumes/sync/go");
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen2 = Arc::clone(&seen);
    // The container blocks on a FIFO that only the log callback opens: the pod can only
    // finish if "waiting" reaches the callback while the container still runs.
    let o = opts(&dir).on_log(move |container, line| {
        seen2
            .lock()
            .expect("lock")
            .push((container.to_string(), line.to_string()));
        if line == "waiting" {
            fs::write(&fifo, "go\n").expect("write fifo");
        }
    });
    let r = run(
        json!({
            "initContainers": [{"name": "fifo", "command": ["mkfifo", "-m", "0666", "/sync/go"],
                "volumeMounts": [{"name": "sync", "mountPath": "/sync"}]}],
            "containers": [{"name": "main",
                "command": ["sh", "-c", "echo waiting; read word < /sync/go; echo got $word >&2"],
                "volumeMounts": [{"name": "sync", "mountPath": "/sync"}]}],
            "volumes": [{"name": "sync", "emptyDir": {}}]
        }),
        &o,
    );
    assert_eq!(completed(&r, "main"), "waiting\ngot go\n");
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            ("main".to_string(), "waiting".to_string()),
            ("main".to_string(), "got go".to_string())
        ]
    );
}

#[test]
fn an_image_entrypoint_runs_when_the_container_sets_no_command_and_host_aliases_resolve() {
    let dir = TempDir::new().expect("tempdir");
    let opts = opts(&dir).image_entrypoint("entry:1", ["sh", "-c", "echo entry:$0"]);
    let r = run(
        json!({"hostname": "web-0",
        "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["cache", "db"]}],
        "containers": [
            {"name": "svc", "image": "entry:1", "args": ["given-args"]},
            // The image's entrypoint is only a default: a command wins.
            {"name": "own", "image": "entry:1", "command": ["echo", "own"]},
            sh("hosts", "getent hosts cache; getent hosts db; getent hosts web-0; grep -c . /etc/hosts")
        ]}),
        &opts,
    );
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(completed(&r, "svc"), "entry:given-args\n");
    assert_eq!(completed(&r, "own"), "own\n");
    let hosts: Vec<Vec<String>> = completed(&r, "hosts")
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(hosts[0], ["127.0.0.1", "cache", "db"]);
    assert_eq!(hosts[1], ["127.0.0.1", "cache", "db"]);
    assert_eq!(hosts[2][1], "web-0");
    // The kubelet's file (header, loopback, the hostname, the alias), not the host's.
    assert_eq!(hosts[3], ["6"]);
}

#[test]
fn config_errors_without_a_command_or_with_run_as_non_root() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"securityContext": {"runAsNonRoot": true},
        "containers": [
            {"name": "no-command", "image": "busybox", "args": ["echo", "hi"],
             "securityContext": {"runAsUser": 1000}},
            {"name": "root", "command": ["true"]},
            {"name": "explicit-root", "command": ["true"], "securityContext": {"runAsUser": 0}},
            {"name": "fine", "command": ["id", "-u"], "securityContext": {"runAsUser": 1000}}
        ]}),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    for (name, needle) in [
        ("no-command", "no entrypoint the pod runner knows"),
        ("root", "runAsNonRoot and the container would run as root"),
        (
            "explicit-root",
            "runAsNonRoot and the container would run as root",
        ),
    ] {
        let c = get(&r, name);
        assert_eq!(
            c.reason.as_deref(),
            Some("CreateContainerConfigError"),
            "{c:#?}"
        );
        assert!(
            c.message.as_deref().unwrap_or("").contains(needle),
            "{c:#?}"
        );
        assert!(!c.started);
    }
    assert_eq!(completed(&r, "fine"), "1000\n");
}

#[test]
fn a_command_that_cannot_be_executed_is_a_start_error() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [{"name": "main", "command": ["no-such-binary-anywhere"]}]}),
        &opts(&dir),
    );
    let c = get(&r, "main");
    assert_eq!(
        (c.exit_code, c.reason.as_deref(), c.log.as_str()),
        (Some(128), Some("StartError"), "")
    );
    assert!(
        c.message
            .as_deref()
            .unwrap_or("")
            .contains("no-such-binary-anywhere"),
        "{c:#?}"
    );
}

#[test]
fn fs_group_owns_volumes_and_joins_the_processes() {
    let dir = TempDir::new().expect("tempdir");
    let o = opts(&dir).secret("s", [("k", "v")]);
    let r = run(
        json!({"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000},
            "containers": [{"name": "main",
                "command": ["sh", "-c", "id -G && echo hi > /data/f && stat -c '%a %g' /data /s/k && cat /s/k"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                 {"name": "s", "mountPath": "/s"}]}],
            "volumes": [{"name": "data", "emptyDir": {}},
                        {"name": "s", "secret": {"secretName": "s", "defaultMode": 0o400}}]}),
        &o,
    );
    assert_eq!(completed(&r, "main"), "1000 2000\n2777 2000\n440 2000\nv\n");
    let meta = fs::metadata(r.volume("data").expect("data").join("f")).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1000, 2000));
}

#[test]
fn persistent_volume_claims_and_host_paths_bind_host_directories() {
    let dir = TempDir::new().expect("tempdir");
    let cache = dir.path().join("cache");
    fs::create_dir(&cache).expect("cache");
    fs::write(cache.join("hit"), "cached\n").expect("hit");
    let host = dir.path().join("host");
    let o = opts(&dir).pvc("build-cache", &cache);
    let r = run(
        json!({"containers": [{"name": "main",
            "command": ["sh", "-c", "cat /cache/hit && echo new > /host/file && \
                ((echo x > /cache-ro/y) 2>/dev/null || echo ro claim)"],
            "volumeMounts": [{"name": "cache", "mountPath": "/cache"},
                             {"name": "cache-ro", "mountPath": "/cache-ro"},
                             {"name": "host", "mountPath": "/host"}]}],
        "volumes": [
            {"name": "cache", "persistentVolumeClaim": {"claimName": "build-cache"}},
            {"name": "cache-ro", "persistentVolumeClaim": {"claimName": "build-cache", "readOnly": true}},
            {"name": "host", "hostPath": {"path": host.to_str().expect("utf8"), "type": "DirectoryOrCreate"}}
        ]}),
        &o,
    );
    assert_eq!(completed(&r, "main"), "cached\nro claim\n");
    assert_eq!(r.volume("cache"), Some(cache.as_path()));
    assert_eq!(
        fs::read_to_string(host.join("file")).expect("file"),
        "new\n"
    );

    // An unknown claim fails the container that mounts it.
    let r = run(
        json!({"containers": [{"name": "main", "command": ["true"],
                "volumeMounts": [{"name": "c", "mountPath": "/c"}]}],
            "volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "unbound"}}]}),
        &opts(&TempDir::new().expect("tempdir")),
    );
    let c = get(&r, "main");
    assert_eq!(c.reason.as_deref(), Some("CreateContainerConfigError"));
    assert!(c.message.as_deref().unwrap_or("").contains("\"unbound\""));
}

#[test]
fn unsupported_volume_types_and_invalid_manifests_are_runner_errors() {
    let dir = TempDir::new().expect("tempdir");
    let err = run_pod(
        &json!({"containers": [{"name": "main", "command": ["true"]}],
            "volumes": [{"name": "nfs-share", "nfs": {"server": "x", "path": "/"}}]}),
        &opts(&dir),
    )
    .expect_err("nfs");
    assert!(
        matches!(&err, RunnerError::UnsupportedVolume { volume, kind }
            if volume == "nfs-share" && kind == "nfs"),
        "{err}"
    );
    assert!(err.to_string().contains("nfs"));
    // Volumes are fresh for every pod: a work dir cannot be reused.
    let pod = json!({"containers": [{"name": "main", "command": ["true"]}],
        "volumes": [{"name": "v", "emptyDir": {}}]});
    let reused = TempDir::new().expect("tempdir");
    assert!(run(pod.clone(), &opts(&reused)).succeeded());
    let err = run_pod(&pod, &opts(&reused)).expect_err("reused work dir");
    assert!(err.to_string().contains("earlier run"), "{err}");
    for bad in [
        json!({"kind": "Service", "spec": {}}),
        json!({"containers": []}),
        json!({"containers": [{"name": "a", "command": ["true"]}, {"name": "a", "command": ["true"]}]}),
        json!({"containers": [{"name": "a", "command": ["true"],
            "volumeMounts": [{"name": "undefined", "mountPath": "/x"}]}]}),
        json!({"containers": [{"name": "a", "command": ["true"],
            "env": [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}),
        json!({"containers": [{"name": "a", "command": ["true"],
            "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}]}]}),
        json!({"containers": [{"name": "a", "command": ["true"],
            "volumeMounts": [{"name": "v", "mountPath": "relative"}]}],
            "volumes": [{"name": "v", "emptyDir": {}}]}),
        json!({"containers": [{"name": "a", "command": ["true"]}],
            "volumes": [{"name": "v", "emptyDir": {}, "secret": {"secretName": "s"}}]}),
    ] {
        let err = run_pod(&bad, &opts(&dir)).expect_err("invalid");
        assert!(matches!(err, RunnerError::InvalidManifest(_)), "{err}");
    }
}

#[test]
fn the_binary_runs_a_manifest_with_fixtures() {
    require_root();
    let dir = TempDir::new().expect("tempdir");
    let manifest = dir.path().join("job.json");
    let fixtures = dir.path().join("fixtures.json");
    fs::write(
        &manifest,
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "cli"},
            "spec": {"template": {"spec": {
                "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}],
                "containers": [{"name": "main",
                    "command": ["sh", "-c", "echo $TOKEN; cat /cfg/greeting"],
                    "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "git", "key": "token"}}}],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}]}}}})
        .to_string(),
    )
    .expect("manifest");
    fs::write(
        &fixtures,
        json!({"secrets": {"git": {"token": "czNjcmV0"}},
               "configMaps": {"settings": {"greeting": "hello\n"}}})
        .to_string(),
    )
    .expect("fixtures");
    let bin = env!("CARGO_BIN_EXE_sykli-pod-runner");
    let work = dir.path().join("work");
    let out = Command::new(bin)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--fixtures")
        .arg(&fixtures)
        .arg("--work-dir")
        .arg(&work)
        .args(["--timeout", "60"])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "[main] s3cret\n[main] hello\n");
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(result["phase"], "Succeeded");
    assert_eq!(result["work_dir"], work.to_str().expect("utf8"));
    assert_eq!(result["containers"][0]["name"], "main");
    assert_eq!(result["containers"][0]["kind"], "main");
    assert_eq!(result["containers"][0]["exit_code"], 0);
    assert_eq!(result["containers"][0]["log"], "s3cret\nhello\n");
    assert_eq!(
        result["volumes"]["cfg"],
        work.join("volumes/cfg").to_str().expect("utf8")
    );

    // A failing pod exits 1, in a fresh temp work dir when none is given.
    fs::write(
        &manifest,
        json!({"containers": [{"name": "main", "command": ["sh", "-c", "exit 9"]}]}).to_string(),
    )
    .expect("manifest");
    let out = Command::new(bin)
        .arg("--manifest")
        .arg(&manifest)
        .args(["--shell", "busybox"])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(1));
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(result["phase"], "Failed");
    assert_eq!(result["containers"][0]["exit_code"], 9);
    let tmp_work = Path::new(result["work_dir"].as_str().expect("work_dir"));
    assert!(tmp_work.is_dir(), "{tmp_work:?}");
    assert!(tmp_work.join("busybox-bin/sh").exists());
    fs::remove_dir_all(tmp_work).expect("clean up");

    // A pod that cannot be run exits 2 with the reason on stderr; so do bad arguments.
    fs::write(
        &manifest,
        json!({"containers": [{"name": "main", "command": ["true"]}],
            "volumes": [{"name": "v", "awsElasticBlockStore": {}}]})
        .to_string(),
    )
    .expect("manifest");
    let out = Command::new(bin)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--work-dir")
        .arg(dir.path().join("work2"))
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("awsElasticBlockStore"));
    let out = Command::new(bin)
        .args(["--shell", "zsh"])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(2));
}

/// Gives every container of `pod` the same volume mounts.
fn mount_everywhere(mut pod: Value, mounts: Value) -> Value {
    for key in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = pod.get_mut(key) {
            for c in cs {
                c["volumeMounts"] = mounts.clone();
            }
        }
    }
    pod
}

#[test]
fn sidecars_are_stopped_when_a_later_init_container_fails() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        mount_everywhere(
            json!({
                "initContainers": [
                    sh("fifo", "mkfifo -m 0666 /shared/ready"),
                    {"name": "proxy", "restartPolicy": "Always",
                     "command": ["sh", "-c", "echo up > /shared/ready; exec sleep 1000.0422"]},
                    sh("broken", "cat /shared/ready; exit 4")
                ],
                "containers": [sh("main", "echo never")],
                "volumes": [{"name": "shared", "emptyDir": {}}]
            }),
            json!([{"name": "shared", "mountPath": "/shared"}]),
        ),
        &opts(&dir),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    assert_eq!(get(&r, "broken").exit_code, Some(4));
    assert_eq!(get(&r, "broken").log, "up\n");
    let proxy = get(&r, "proxy");
    assert_eq!(
        (proxy.exit_code, proxy.reason.as_deref()),
        (Some(143), Some("Error"))
    );
    not_started(&r, "main");
    assert_eq!(
        processes_with_cmdline(&["sleep", "1000.0422"]),
        Vec::<i32>::new()
    );
}

#[test]
fn a_sidecar_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = TempDir::new().expect("tempdir");
    let started = Instant::now();
    let r = run(
        mount_everywhere(
            json!({
                "terminationGracePeriodSeconds": 1,
                "initContainers": [
                    sh("fifo", "mkfifo -m 0666 /shared/ready"),
                    {"name": "stubborn", "restartPolicy": "Always",
                     "command": ["sh", "-c",
                        "trap '' TERM; echo up > /shared/ready; exec sleep 1000.0423"]}
                ],
                "containers": [sh("main", "cat /shared/ready")],
                "volumes": [{"name": "shared", "emptyDir": {}}]
            }),
            json!([{"name": "shared", "mountPath": "/shared"}]),
        ),
        &opts(&dir),
    );
    let elapsed = started.elapsed();
    assert_eq!(r.phase, PodPhase::Succeeded, "{r:#?}");
    assert_eq!(completed(&r, "main"), "up\n");
    let stubborn = get(&r, "stubborn");
    assert_eq!(
        (stubborn.exit_code, stubborn.reason.as_deref()),
        (Some(137), Some("Error"))
    );
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert_eq!(
        processes_with_cmdline(&["sleep", "1000.0423"]),
        Vec::<i32>::new()
    );
}

// ---------------------------------------------------------------------------------------
// The runner as a kubelet drives it: `--events`, SIGTERM, `exec`.

const BIN: &str = env!("CARGO_BIN_EXE_sykli-pod-runner");
/// How long any single event may take to arrive: a bound, never a synchronization.
const EVENT_BOUND: Duration = Duration::from_secs(60);

/// Writes `manifest` and `fixtures` into `dir` (manifest.json, fixtures.json) and returns the
/// runner's common arguments for them, with the work dir `dir/work`.
fn runner_files(dir: &Path, manifest: &Value, fixtures: &Value) -> Vec<String> {
    require_root();
    let m = dir.join("manifest.json");
    let f = dir.join("fixtures.json");
    fs::write(&m, manifest.to_string()).expect("manifest");
    fs::write(&f, fixtures.to_string()).expect("fixtures");
    let path = |p: PathBuf| p.to_str().expect("utf8").to_string();
    vec![
        "--manifest".into(),
        path(m),
        "--fixtures".into(),
        path(f),
        "--work-dir".into(),
        path(dir.join("work")),
    ]
}

/// `sykli-pod-runner --events` running in the background, its stdout parsed line by line.
struct EventRunner {
    child: Child,
    lines: Receiver<String>,
    events: Vec<Value>,
}

impl EventRunner {
    fn start(args: &[String]) -> EventRunner {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--events")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the runner");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        EventRunner {
            child,
            lines,
            events: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// The next event; None once stdout has ended.
    fn next(&mut self) -> Option<Value> {
        match self.lines.recv_timeout(EVENT_BOUND) {
            Ok(line) => {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
                assert!(event.is_object(), "{line}");
                self.events.push(event.clone());
                Some(event)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no event for {EVENT_BOUND:?}: {:#?}", self.events)
            }
        }
    }

    /// Reads events until the log line `line` of `container` has arrived.
    fn until_log(&mut self, container: &str, line: &str) {
        while let Some(e) = self.next() {
            if e["event"] == "log" && e["container"] == container && e["line"] == line {
                return;
            }
        }
        panic!(
            "stdout ended before {container}'s {line:?}: {:#?}",
            self.events
        );
    }

    /// Reads the rest and waits for the runner: (exit status, every event).
    fn finish(mut self) -> (ExitStatus, Vec<Value>) {
        while self.next().is_some() {}
        let status = self.child.wait().expect("wait for the runner");
        (status, self.events)
    }
}

/// The events of `container`, in order.
fn events_of<'a>(events: &'a [Value], container: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["container"] == container)
        .collect()
}

/// The index of the first event of kind `event` of `container`.
fn position(events: &[Value], event: &str, container: &str) -> usize {
    events
        .iter()
        .position(|e| e["event"] == event && e["container"] == container)
        .unwrap_or_else(|| panic!("no {event} event for {container}: {events:#?}"))
}

/// The `terminated` event of `container`.
fn terminated<'a>(events: &'a [Value], container: &str) -> &'a Value {
    &events[position(events, "terminated", container)]
}

/// An RFC 3339 UTC time with nanoseconds, as the protocol sends it.
fn assert_time(v: &Value) {
    let t = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let b = t.as_bytes();
    let digits = [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..29];
    assert!(
        b.len() == 30
            && digits
                .iter()
                .all(|r| b[r.clone()].iter().all(u8::is_ascii_digit))
            && (b[4], b[7], b[10], b[13], b[16], b[19], b[29])
                == (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{t:?}"
    );
}

/// Checks the per-container order (started, logs, terminated, nothing after) and returns the
/// container's log lines.
fn container_story(events: &[Value], container: &str) -> Vec<String> {
    let mine = events_of(events, container);
    assert_eq!(mine[0]["event"], "started", "{container}: {mine:#?}");
    assert_time(&mine[0]["at"]);
    let last = mine.last().expect("events");
    assert_eq!(last["event"], "terminated", "{container}: {mine:#?}");
    assert_eq!(last["startedAt"], mine[0]["at"], "{container}");
    assert_time(&last["finishedAt"]);
    // Fixed-width UTC times compare as strings.
    assert!(last["finishedAt"].as_str() >= last["startedAt"].as_str());
    mine[1..mine.len() - 1]
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "log", "{container}: {mine:#?}");
            assert_time(&e["at"]);
            e["line"].as_str().expect("line").to_string()
        })
        .collect()
}

#[test]
fn events_stream_container_states_and_logs_live_and_end_with_the_result() {
    let dir = TempDir::new().expect("tempdir");
    let mut spec = mount_everywhere(
        json!({
            "volumes": [{"name": "ws", "emptyDir": {}},
                        {"name": "creds", "secret": {"secretName": "missing"}}],
            "initContainers": [sh("prepare", "echo preparing; echo ready > /ws/flag")],
            "containers": [
                sh("ok", "cat /ws/flag; echo done"),
                sh("bad", "echo oops >&2; printf '\\377x\\n'; \
                    printf 'custom message' > /dev/termination-log; exit 3"),
                {"name": "broken", "command": ["true"]}
            ]
        }),
        json!([{"name": "ws", "mountPath": "/ws"}]),
    );
    spec["containers"][2]["volumeMounts"] = json!([{"name": "creds", "mountPath": "/creds"}]);
    let mut args = runner_files(
        dir.path(),
        &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "events", "namespace": "ci"}, "spec": spec}),
        &json!({}),
    );
    args.extend(["--timeout".to_string(), "60".to_string()]);

    let (status, events) = EventRunner::start(&args).finish();
    assert_eq!(status.code(), Some(1), "{events:#?}");

    assert_eq!(container_story(&events, "prepare"), ["preparing"]);
    assert_eq!(container_story(&events, "ok"), ["ready", "done"]);
    // Not UTF-8: converted lossily.
    assert_eq!(container_story(&events, "bad"), ["oops", "\u{fffd}x"]);
    // The init container ended before any main container started.
    let init_done = position(&events, "terminated", "prepare");
    for main in ["ok", "bad"] {
        assert!(
            init_done < position(&events, "started", main),
            "{events:#?}"
        );
    }
    let t = terminated(&events, "prepare");
    assert_eq!(
        (
            &t["exitCode"],
            &t["reason"],
            &t["message"],
            &t["terminationMessage"]
        ),
        (&json!(0), &json!("Completed"), &Value::Null, &json!(""))
    );
    let t = terminated(&events, "ok");
    assert_eq!(
        (&t["exitCode"], &t["reason"]),
        (&json!(0), &json!("Completed"))
    );
    let t = terminated(&events, "bad");
    assert_eq!(
        (&t["exitCode"], &t["reason"], &t["terminationMessage"]),
        (&json!(3), &json!("Error"), &json!("custom message"))
    );
    // A container that could not be created: terminated only, never started.
    let broken = events_of(&events, "broken");
    assert_eq!(broken.len(), 1, "{broken:#?}");
    let t = broken[0];
    assert_eq!(t["event"], "terminated");
    assert_eq!(
        (&t["exitCode"], &t["reason"], &t["startedAt"]),
        (
            &json!(128),
            &json!("CreateContainerConfigError"),
            &Value::Null
        )
    );
    assert!(
        t["message"]
            .as_str()
            .expect("message")
            .contains("\"missing\""),
        "{t}"
    );
    assert_time(&t["finishedAt"]);

    // Last: the result, exactly as the runner serializes it without --events.
    let last = events.last().expect("events");
    assert_eq!(last["event"], "result");
    assert_eq!(last.as_object().expect("object").len(), 2);
    let result = &last["result"];
    assert_eq!(result["phase"], "Failed");
    assert_eq!(result["containers"][1]["name"], "ok");
    assert_eq!(result["containers"][1]["log"], "ready\ndone\n");
    assert_eq!(result["containers"][2]["exit_code"], 3);
    assert_eq!(
        result["work_dir"],
        dir.path().join("work").to_str().expect("utf8")
    );
    assert_eq!(events.iter().filter(|e| e["event"] == "result").count(), 1);
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child of this test that has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid}");
}

#[test]
fn sigterm_stops_the_pod_as_a_kubelet_stops_a_deleted_one() {
    let dir = TempDir::new().expect("tempdir");
    let args = runner_files(
        dir.path(),
        &mount_everywhere(
            json!({
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "out", "emptyDir": {}}],
                "initContainers": [
                    sh("setup", "echo set up"),
                    {"name": "helper", "restartPolicy": "Always",
                     "command": ["sh", "-c", "echo helper-up; exec sleep 1000.0431"]}
                ],
                "containers": [
                    sh("trapper", "trap 'echo bye > /out/trapped; exit 3' TERM; \
                        echo trapper-ready; sleep 1000.0432 & wait"),
                    sh("stubborn", "trap '' TERM; echo stubborn-ready; exec sleep 1000.0433")
                ]
            }),
            json!([{"name": "out", "mountPath": "/out"}]),
        ),
        &json!({}),
    );
    let mut runner = EventRunner::start(&args);
    runner.until_log("trapper", "trapper-ready");
    if !runner
        .events
        .iter()
        .any(|e| e["event"] == "log" && e["line"] == "stubborn-ready")
    {
        runner.until_log("stubborn", "stubborn-ready");
    }
    let signalled = Instant::now();
    signal(runner.pid(), libc::SIGTERM);
    let (status, events) = runner.finish();
    let elapsed = signalled.elapsed();
    assert_eq!(status.code(), Some(1), "{events:#?}");
    // The stubborn container was killed after the grace period, not before.
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");

    for (name, code, reason) in [
        ("setup", 0, "Completed"),
        // The trap ran and chose the exit code.
        ("trapper", 3, "Error"),
        // SIGKILL after terminationGracePeriodSeconds.
        ("stubborn", 137, "Error"),
        // The sidecar is stopped after the main containers, with SIGTERM.
        ("helper", 143, "Error"),
    ] {
        container_story(&events, name);
        let t = terminated(&events, name);
        assert_eq!(
            (&t["exitCode"], &t["reason"]),
            (&json!(code), &json!(reason)),
            "{name}: {t}"
        );
    }
    assert!(
        position(&events, "terminated", "stubborn") < position(&events, "terminated", "helper"),
        "{events:#?}"
    );
    assert_eq!(
        fs::read_to_string(dir.path().join("work/volumes/out/trapped")).expect("trap output"),
        "bye\n"
    );
    let last = events.last().expect("events");
    assert_eq!(last["event"], "result");
    assert_eq!(last["result"]["phase"], "Failed");
    assert_eq!(
        last["result"]["message"],
        "the pod was stopped before its containers finished"
    );
    for arg in ["1000.0431", "1000.0432", "1000.0433"] {
        assert_eq!(processes_with_cmdline(&["sleep", arg]), Vec::<i32>::new());
    }
}

#[test]
fn a_stop_starts_no_further_container() {
    let dir = TempDir::new().expect("tempdir");
    let stop = StopHandle::new();
    let on_log_stop = stop.clone();
    let events: Arc<Mutex<Vec<ContainerEvent>>> = Arc::default();
    let seen = Arc::clone(&events);
    let o = opts(&dir)
        .stop(stop.clone())
        .on_log(move |_, line| {
            if line == "waiting" {
                on_log_stop.stop();
            }
        })
        .on_event(move |e| seen.lock().expect("lock").push(e.clone()));
    let r = run(
        json!({
            "initContainers": [sh("wait", "echo waiting; exec sleep 1000.0434")],
            "containers": [sh("never", "echo never")]
        }),
        &o,
    );
    assert!(stop.is_stopped());
    assert_eq!(r.phase, PodPhase::Failed, "{r:#?}");
    let wait = get(&r, "wait");
    assert_eq!(
        (wait.exit_code, wait.reason.as_deref()),
        (Some(143), Some("Error"))
    );
    not_started(&r, "never");
    let events = events.lock().expect("lock");
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| match e {
            ContainerEvent::Started { container, .. } => (container.as_str(), "started"),
            ContainerEvent::Terminated { container, .. } => (container.as_str(), "terminated"),
        })
        .collect();
    assert_eq!(names, [("wait", "started"), ("wait", "terminated")]);
    match &events[1] {
        ContainerEvent::Terminated {
            exit_code,
            started_at,
            finished_at,
            ..
        } => {
            assert_eq!(*exit_code, 143);
            assert!(started_at.is_some_and(|s| s <= *finished_at));
        }
        other => panic!("{other:?}"),
    }

    // Stopped before the run: nothing starts at all.
    let r = run(
        json!({"containers": [sh("main", "echo never")]}),
        &opts(&TempDir::new().expect("tempdir")).stop(stop),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    not_started(&r, "main");
}

#[test]
fn a_killed_runner_takes_its_sandboxes_with_it() {
    let dir = TempDir::new().expect("tempdir");
    let hold = dir.path().join("hold");
    fs::create_dir(&hold).expect("hold dir");
    let fifo = hold.join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    // The container keeps the FIFO's write end open: EOF on our read end means every process
    // of the sandbox is gone.
    let (eof_tx, eof) = mpsc::channel();
    let reading = fifo.clone();
    std::thread::spawn(move || {
        let mut f = fs::File::open(&reading).expect("open the fifo");
        let mut rest = Vec::new();
        let _ = f.read_to_end(&mut rest);
        let _ = eof_tx.send(());
    });
    let args = runner_files(
        dir.path(),
        &json!({"containers": [{"name": "main",
            "command": ["sh", "-c", "exec 3> /hold/fifo; echo holding; exec sleep 1000.0435"],
            "volumeMounts": [{"name": "hold", "mountPath": "/hold"}]}],
            "volumes": [{"name": "hold", "hostPath": {"path": hold.to_str().expect("utf8")}}]}),
        &json!({}),
    );
    let mut runner = EventRunner::start(&args);
    runner.until_log("main", "holding");
    signal(runner.pid(), libc::SIGKILL);
    let status = runner.child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    eof.recv_timeout(EVENT_BOUND)
        .expect("the sandbox outlived the runner");
    assert_eq!(
        processes_with_cmdline(&["sleep", "1000.0435"]),
        Vec::<i32>::new()
    );
}

/// `sykli-pod-runner exec` for the pod of `args` (runner_files), into `container`, with a
/// status file `status` and the extra `flags`.
fn exec_command(
    args: &[String],
    container: &str,
    status: &Path,
    flags: &[&str],
    command: &[&str],
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("exec")
        .args(args)
        .args(["--container", container, "--status-file"])
        .arg(status)
        .args(flags)
        .arg("--")
        .args(command);
    cmd
}

fn read_status(path: &Path) -> Value {
    let text = fs::read_to_string(path).expect("status file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("status file {text:?}: {e}"))
}

/// A pseudo-terminal: (main side, replica side), both close-on-exec.
fn open_pty() -> (fs::File, fs::File) {
    use std::os::fd::FromRawFd;
    let (mut main, mut replica) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the out-parameters.
    let r = unsafe {
        libc::openpty(
            &mut main,
            &mut replica,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    for fd in [main, replica] {
        // SAFETY: fcntl(2) on the descriptors openpty just gave us.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    // SAFETY: fresh descriptors nothing else owns.
    unsafe { (fs::File::from_raw_fd(main), fs::File::from_raw_fd(replica)) }
}

#[test]
fn exec_runs_a_command_in_a_new_sandbox_of_a_running_container() {
    let dir = TempDir::new().expect("tempdir");
    let args = runner_files(
        dir.path(),
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "ci"},
        "spec": {
            "volumes": [{"name": "vol", "emptyDir": {}},
                        {"name": "info", "downwardAPI": {"items": [
                            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}],
            "initContainers": [{"name": "fifo",
                "command": ["sh", "-c", "mkfifo -m 0666 /vol/go && echo x-content > /vol/x"],
                "volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}],
            "containers": [
                {"name": "main", "command": ["sh", "-c", "echo main-ready; read word < /vol/go; echo got $word"],
                 "env": [{"name": "GREETING",
                          "valueFrom": {"secretKeyRef": {"name": "greet", "key": "text"}}}],
                 "volumeMounts": [{"name": "vol", "mountPath": "/vol"},
                                  {"name": "info", "mountPath": "/info"}]},
                // Cannot be created (nor exec'd into): runAsNonRoot without a user.
                {"name": "locked", "command": ["true"],
                 "securityContext": {"runAsNonRoot": true}}
            ]
        }}),
        &json!({"secrets": {"greet": {"text": "aGVsbG8="}}}),
    );
    let mut runner = EventRunner::start(&args);
    runner.until_log("main", "main-ready");

    // Output, stderr, the exit code and the status file; the container's volumes and env.
    let status = dir.path().join("status-1.json");
    let out = exec_command(
        &args,
        "main",
        &status,
        &[],
        &[
            "sh",
            "-c",
            "cat /vol/x /info/name; echo; echo $GREETING; echo err >&2; exit 7",
        ],
    )
    .output()
    .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "x-content\nweb-0\nhello\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(read_status(&status), json!({"exitCode": 7}));

    // stdin is the command's.
    let status = dir.path().join("status-2.json");
    let mut child = exec_command(&args, "main", &status, &[], &["cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("exec cat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"echoed through\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("exec cat");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echoed through\n");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(read_status(&status), json!({"exitCode": 0}));

    // No such container, and a container that cannot take the command: an error, no exit code.
    for (container, needle) in [("nope", "\"nope\""), ("locked", "runAsNonRoot")] {
        let status = dir.path().join(format!("status-{container}.json"));
        let out = exec_command(&args, container, &status, &[], &["true"])
            .output()
            .expect("exec");
        assert_eq!(out.status.code(), Some(2), "{container}");
        let s = read_status(&status);
        let error = s["error"].as_str().unwrap_or_else(|| panic!("{s}"));
        assert!(error.contains(needle), "{container}: {error}");
        assert_eq!(s.as_object().expect("object").len(), 1, "{s}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
    }

    // --tty: the terminal the caller gives is the command's.
    let (mut main, replica) = open_pty();
    let status = dir.path().join("status-tty.json");
    let mut cmd = exec_command(
        &args,
        "main",
        &status,
        &["--tty"],
        &["sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"],
    );
    cmd.stdin(replica.try_clone().expect("dup"))
        .stdout(replica.try_clone().expect("dup"))
        .stderr(replica);
    let mut child = cmd.spawn().expect("exec --tty");
    // Our copies of the replica must go, or reading the main side never ends.
    drop(cmd);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match main.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            // EIO: every replica descriptor is closed.
            Err(_) => break,
        }
    }
    assert_eq!(child.wait().expect("wait").code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&seen), "on-a-tty\r\n");
    assert_eq!(read_status(&status), json!({"exitCode": 0}));

    // SIGTERM to the exec runner kills the sandbox.
    let status = dir.path().join("status-term.json");
    let mut child = exec_command(
        &args,
        "main",
        &status,
        &[],
        &["sh", "-c", "echo started; exec sleep 1000.0436"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("exec sleep");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "started\n");
    signal(i32::try_from(child.id()).expect("pid"), libc::SIGTERM);
    assert_eq!(child.wait().expect("wait").code(), Some(137));
    assert_eq!(read_status(&status), json!({"exitCode": 137}));
    // EOF: the sandbox's last process (which held our pipe) is gone.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    assert_eq!(rest, "");
    assert_eq!(
        processes_with_cmdline(&["sleep", "1000.0436"]),
        Vec::<i32>::new()
    );

    // The pod itself was untouched by all this.
    fs::write(dir.path().join("work/volumes/vol/go"), "go\n").expect("release main");
    let (status, events) = runner.finish();
    assert_eq!(status.code(), Some(1), "locked failed the pod: {events:#?}");
    let result = &events.last().expect("events")["result"];
    assert_eq!(result["containers"][1]["log"], "main-ready\ngot go\n");
    assert_eq!(result["containers"][1]["exit_code"], 0);
}

// ---------------------------------------------------------------------------------------
// Projected and downwardAPI volumes.

const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The volume the API server's ServiceAccount admission adds to every pod.
fn kube_api_access() -> Value {
    json!({"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                    "path": "namespace"}]}}
    ]}})
}

/// A container as the admission leaves it: the service account volume mounted read-only.
fn with_sa_mount(mut c: Value) -> Value {
    c["volumeMounts"] =
        json!([{"name": "kube-api-access-x7k2p", "mountPath": SA_MOUNT, "readOnly": true}]);
    c
}

fn sa_fixtures() -> Fixtures {
    Fixtures::from_json(&json!({
        "configMaps": {"kube-root-ca.crt": {"ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}},
        "serviceAccountTokens": {"kube-api-access-x7k2p/token": "eyJhbGciOiJSUzI1NiJ9.pod-token.sig"}
    }))
    .expect("fixtures")
}

/// `(mode, uid, gid)` of `path`.
fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn projected_and_downward_api_volumes_are_written_as_a_kubelet_writes_them() {
    let dir = TempDir::new().expect("tempdir");
    let mut main = with_sa_mount(sh(
        "main",
        &format!(
            "cd {SA_MOUNT} && cat token; echo; cat namespace; echo; ls -A; \
             (touch new 2>/dev/null && echo writable || echo read-only); \
             cat /podinfo/labels; echo; cat /podinfo/nested/name /podinfo/app"
        ),
    ));
    main["volumeMounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"name": "podinfo", "mountPath": "/podinfo"}));
    let r = run(
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "ci", "uid": "6f1c2f0e-8a0b-4c55-9d1e-1f0e2c3b4a59",
                     "labels": {"tier": "front", "app": "web"},
                     "annotations": {"note": "say \"hi\"\nbye"}},
        "spec": {
            "containers": [main],
            "volumes": [kube_api_access(), {"name": "podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                {"path": "nested/name", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}, "mode": 0o400}
            ]}}]
        }}),
        &opts(&dir).fixtures(sa_fixtures()),
    );
    assert_eq!(
        completed(&r, "main"),
        "eyJhbGciOiJSUzI1NiJ9.pod-token.sig\nci\nca.crt\nnamespace\ntoken\nread-only\n\
         app=\"web\"\ntier=\"front\"\nweb-0web\n"
    );
    let sa = r.volume("kube-api-access-x7k2p").expect("volume");
    // defaultMode 420 for every file, the token's included (no fsGroup, no single runAsUser).
    for (file, content) in [
        ("token", "eyJhbGciOiJSUzI1NiJ9.pod-token.sig"),
        ("namespace", "ci"),
        (
            "ca.crt",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        ),
    ] {
        assert_eq!(fs::read_to_string(sa.join(file)).expect(file), content);
        assert_eq!(mode_owner(&sa.join(file)), (0o644, 0, 0), "{file}");
    }
    let info = r.volume("podinfo").expect("volume");
    assert_eq!(
        fs::read_to_string(info.join("annotations")).expect("annotations"),
        "note=\"say \\\"hi\\\"\\nbye\""
    );
    assert_eq!(
        fs::read_to_string(info.join("uid")).expect("uid"),
        "6f1c2f0e-8a0b-4c55-9d1e-1f0e2c3b4a59"
    );
    assert_eq!(mode_owner(&info.join("labels")).0, 0o644);
    assert_eq!(mode_owner(&info.join("app")).0, 0o400);
    assert_eq!(mode_owner(&info.join("nested")).0, 0o755);
}

#[test]
fn service_account_tokens_follow_the_pods_run_as_user_and_fs_group() {
    // Every container runs as 1000: the token is 0600 and theirs (the kubelet's FsUser).
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"securityContext": {"runAsUser": 1000},
            "initContainers": [with_sa_mount(sh("init", &format!("cat {SA_MOUNT}/token; echo")))],
            "containers": [with_sa_mount(sh("main", &format!("stat -c '%a %u' {SA_MOUNT}/token")))],
            "volumes": [kube_api_access()]}),
        &opts(&dir).fixtures(sa_fixtures()),
    );
    assert_eq!(
        completed(&r, "init"),
        "eyJhbGciOiJSUzI1NiJ9.pod-token.sig\n"
    );
    assert_eq!(completed(&r, "main"), "600 1000\n");
    let sa = r.volume("kube-api-access-x7k2p").expect("volume");
    assert_eq!(mode_owner(&sa.join("token")), (0o600, 1000, 0));
    assert_eq!(mode_owner(&sa.join("ca.crt")), (0o644, 0, 0));

    // Two users and an fsGroup: 0600 made 0640 by the ownership pass, readable by the group.
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"securityContext": {"fsGroup": 2000},
            "containers": [
                with_sa_mount(json!({"name": "a", "command": ["cat", format!("{SA_MOUNT}/token")],
                    "securityContext": {"runAsUser": 1000}})),
                with_sa_mount(json!({"name": "b", "command": ["cat", format!("{SA_MOUNT}/token")],
                    "securityContext": {"runAsUser": 1001}}))
            ],
            "volumes": [kube_api_access()]}),
        &opts(&dir).fixtures(sa_fixtures()),
    );
    assert_eq!(completed(&r, "a"), "eyJhbGciOiJSUzI1NiJ9.pod-token.sig\n");
    assert_eq!(completed(&r, "b"), "eyJhbGciOiJSUzI1NiJ9.pod-token.sig\n");
    let sa = r.volume("kube-api-access-x7k2p").expect("volume");
    assert_eq!(mode_owner(&sa.join("token")), (0o640, 0, 2000));
    assert_eq!(mode_owner(&sa.join("namespace")), (0o644, 0, 2000));
}

#[test]
fn a_projected_volume_without_its_token_or_objects_fails_the_containers_that_mount_it() {
    let dir = TempDir::new().expect("tempdir");
    let r = run(
        json!({"containers": [with_sa_mount(sh("main", "echo never")), sh("other", "echo ran")],
            "volumes": [kube_api_access()]}),
        // The CA config map, but no token.
        &opts(&dir).config_map("kube-root-ca.crt", [("ca.crt", "CA")]),
    );
    assert_eq!(r.phase, PodPhase::Failed);
    let main = get(&r, "main");
    assert!(!main.started);
    assert_eq!(main.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(
        main.message.as_deref(),
        Some(
            "container \"main\": volume \"kube-api-access-x7k2p\": no service account token for \
             path \"token\" (add \"kube-api-access-x7k2p/token\" to the fixtures' \
             serviceAccountTokens)"
        )
    );
    assert_eq!(completed(&r, "other"), "ran\n");

    // Neither: both reasons; an optional missing source is no reason.
    let dir = TempDir::new().expect("tempdir");
    let mut volume = kube_api_access();
    volume["projected"]["sources"]
        .as_array_mut()
        .expect("sources")
        .push(json!({"secret": {"name": "extra", "optional": true}}));
    let r = run(
        json!({"containers": [with_sa_mount(sh("main", "echo never"))], "volumes": [volume]}),
        &opts(&dir),
    );
    let msg = get(&r, "main").message.clone().unwrap_or_default();
    assert!(
        msg.contains("configmap \"kube-root-ca.crt\" not found"),
        "{msg}"
    );
    assert!(msg.contains("\"kube-api-access-x7k2p/token\""), "{msg}");
    assert!(!msg.contains("extra"), "{msg}");

    // What the API server refuses, and a source the runner does not implement.
    for (volume, unsupported) in [
        (
            json!({"name": "p", "projected": {"sources": [
            {"serviceAccountToken": {"path": "t", "expirationSeconds": 60}}]}}),
            false,
        ),
        (
            json!({"name": "p", "projected": {"sources": [
            {"serviceAccountToken": {"path": "t"}},
            {"downwardAPI": {"items": [{"path": "t", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}),
            false,
        ),
        (
            json!({"name": "p", "projected": {"sources": [
            {"serviceAccountToken": {"path": "../t"}}]}}),
            false,
        ),
        (
            json!({"name": "p", "downwardAPI": {"items": [{"path": "x"}]}}),
            false,
        ),
        (
            json!({"name": "p", "projected": {"sources": [
            {"clusterTrustBundle": {"name": "b", "path": "b.pem"}}]}}),
            true,
        ),
    ] {
        let err = run_pod(
            &json!({"containers": [{"name": "main", "command": ["true"]}], "volumes": [volume]}),
            &opts(&TempDir::new().expect("tempdir")),
        )
        .expect_err("refused");
        if unsupported {
            assert!(
                matches!(&err, RunnerError::Unsupported(m) if m.contains("clusterTrustBundle")),
                "{err}"
            );
        } else {
            assert!(matches!(err, RunnerError::InvalidManifest(_)), "{err}");
        }
        assert!(err.to_string().contains("\"p\""), "{err}");
    }
}
