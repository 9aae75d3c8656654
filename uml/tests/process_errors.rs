//! Failed starts: the error says why and quotes the log, and the failed guest's whole
//! process group is killed and reaped.

mod process_common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use process_common::*;
use virtumld_uml::process::{self, Error, ExitInfo, LaunchSpec, StartupFailure};

fn fake_spec(dir: &Path, umid: &str, script: &str) -> LaunchSpec {
    let f = files(dir, umid);
    let argv: Vec<OsString> = vec![
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
        format!("umid={umid}").into(),
        format!("uml_dir={}", f.uml_dir.display()).into(),
        format!("mconsole=notify:{}", f.notify.display()).into(),
    ];
    LaunchSpec {
        argv,
        env: vec![("VU_MARK".into(), "from-env".into())],
        uml_dir: f.uml_dir,
        umid: umid.into(),
        notify_socket: f.notify,
        log_file: f.log,
        pty_devices: vec!["con0".into()],
        ready_timeout: Duration::from_secs(10),
        inherit_fds: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_uml_dying_early_reports_its_log() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("early");
    let image = build_image(dir.path()).await;
    // Too little memory: linux.uml exits with status 1 before mconsole comes up.
    let spec = spec(&image, "early", dir.path(), &["con0"], &["mem=100K"]);
    match process::launch(&spec).await {
        Err(Error::Startup {
            failure:
                StartupFailure::Died {
                    exit: ExitInfo::Exited(1),
                    ..
                },
            log_tail,
            ..
        }) => assert!(log_tail.contains("Too few physical memory"), "{log_tail}"),
        other => panic!("expected an early death, got {other:?}"),
    }
    assert!(!spec.notify_socket.exists());
    let log = std::fs::read_to_string(&spec.log_file).unwrap();
    assert!(log.starts_with("20") && log.lines().next().unwrap().contains("mem=100K"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_uml_panicking_during_boot_reports_the_panic() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("panic");
    let image = build_image(dir.path()).await;
    // No init: the kernel panics at the end of boot. The pty grace for ssl0 keeps the
    // start from completing before that (almost always: both outcomes are checked).
    let spec = spec(
        &image,
        "bp",
        dir.path(),
        &["con0", "ssl0"],
        &["ssl0=pts", "init=/nonexistent"],
    );
    match process::launch(&spec).await {
        Err(Error::Startup {
            failure: StartupFailure::Died { exit, panic },
            ..
        }) => {
            assert_eq!(exit, ExitInfo::Signaled(6));
            let panic = panic.expect("UML announces its panic on the notify socket");
            assert!(
                panic.contains("Requested init /nonexistent failed"),
                "{panic}"
            );
        }
        Ok(g) => {
            let _guard = GuestGuard(g.pid);
            eprintln!("note: the guest became ready before its init failed");
            let exit = tokio::time::timeout(Duration::from_secs(15), g.wait_exit())
                .await
                .expect("exit");
            assert_eq!(exit, ExitInfo::Signaled(6));
            g.kill(Duration::from_secs(2)).await.unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_no_zombies_soon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_before_ready_carries_status_and_log() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("died");
    let spec = fake_spec(dir.path(), "d", "echo boom-$VU_MARK >&2; exit 3");
    let err = process::launch(&spec).await.expect_err("must fail");
    match &err {
        Error::Startup {
            failure:
                StartupFailure::Died {
                    exit: ExitInfo::Exited(3),
                    panic: None,
                },
            log_tail,
            ..
        } => assert!(log_tail.contains("boom-from-env"), "{log_tail}"),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("exit status 3") && text.contains("boom-from-env"),
        "{text}"
    );
    assert_no_zombies_soon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_group() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("tmo");
    let pidfile = dir.path().join("leader.pid");
    let script = format!(
        "echo $$ > {}; echo waiting-forever; sleep 30 & sleep 31 & wait",
        pidfile.display()
    );
    let mut spec = fake_spec(dir.path(), "t", &script);
    spec.ready_timeout = Duration::from_millis(700);
    let t0 = Instant::now();
    match process::launch(&spec).await {
        Err(Error::Startup {
            failure: StartupFailure::Timeout(_),
            log_tail,
            ..
        }) => assert!(log_tail.contains("waiting-forever"), "{log_tail}"),
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let leader: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(group_processes(leader).is_empty(), "sleeps survived");
    assert_no_zombies_soon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_start_kills_the_guest() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("cancel");
    let pidfile = dir.path().join("leader.pid");
    let script = format!("echo $$ > {}; sleep 30 & exec sleep 31", pidfile.display());
    let spec = fake_spec(dir.path(), "c", &script);
    // The caller gives up (e.g. its client went away) while launch waits for readiness.
    let r = tokio::time::timeout(Duration::from_millis(500), process::launch(&spec)).await;
    assert!(r.is_err(), "launch cannot have succeeded");
    let leader: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let t0 = Instant::now();
    while !group_processes(leader).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "cancelled guest survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!spec.notify_socket.exists());
    assert_no_zombies_soon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_before_spawning() {
    let dir = TestDir::new("bad");
    let good = fake_spec(dir.path(), "b", "exit 0");

    let mut s = good.clone();
    s.argv
        .retain(|w| !w.to_string_lossy().starts_with("mconsole="));
    assert!(matches!(
        process::launch(&s).await,
        Err(Error::InvalidSpec(_))
    ));

    let mut s = good.clone();
    s.umid = "../b".into();
    assert!(matches!(
        process::launch(&s).await,
        Err(Error::InvalidSpec(_))
    ));

    let mut s = good.clone();
    s.notify_socket = dir.path().join("x".repeat(120));
    assert!(matches!(
        process::launch(&s).await,
        Err(Error::InvalidSpec(_))
    ));

    // A regular file where the notify socket goes is not deleted.
    std::fs::write(&good.notify_socket, b"keep").unwrap();
    assert!(matches!(
        process::launch(&good).await,
        Err(Error::InvalidSpec(_))
    ));
    assert_eq!(std::fs::read(&good.notify_socket).unwrap(), b"keep");
    std::fs::remove_file(&good.notify_socket).unwrap();

    let mut s = good.clone();
    s.argv[0] = "/nonexistent/linux.uml".into();
    assert!(matches!(process::launch(&s).await, Err(Error::Io { .. })));
}
