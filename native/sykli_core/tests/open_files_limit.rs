//! Connecting raises the soft limit of open files to the hard limit (at most 65536): a thousand tasks'
//! live logs need more than the usual 1024. Its own test binary: it changes a limit of the
//! whole process.

fn limits() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    (lim.rlim_cur, lim.rlim_max)
}

#[tokio::test]
async fn connecting_raises_the_soft_limit_of_open_files_to_the_hard_limit() {
    let (_, hard) = limits();
    assert!(hard > 256, "the hard limit here is {hard}: nothing to show");
    let low = libc::rlimit {
        rlim_cur: 256,
        rlim_max: hard,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    assert_eq!(limits(), (256, hard));

    // Any connect raises it, even one that fails on its kubeconfig.
    let missing = tempfile::tempdir().unwrap().path().join("no-kubeconfig");
    let err = sykli_core::cluster::Cluster::connect(&sykli_core::cluster::ConnectOptions {
        kubeconfig: Some(missing),
        ..Default::default()
    })
    .await
    .err()
    .expect("no kubeconfig there");
    assert_eq!(err.kind(), "config");
    let raised = hard.min(sykli_core::cluster::OPEN_FILES_WANTED);
    assert_eq!(limits(), (raised, hard));
    assert_eq!(sykli_core::cluster::raise_open_files_limit(), Some(raised));
}
