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
            failure: StartupFailure::Died(ExitInfo::Exited(1)),
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
async fn death_before_ready_carries_status_and_log() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("died");
    let spec = fake_spec(dir.path(), "d", "echo boom-$VU_MARK >&2; exit 3");
    let err = process::launch(&spec).await.expect_err("must fail");
    match &err {
        Error::Startup {
            failure: StartupFailure::Died(ExitInfo::Exited(3)),
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
