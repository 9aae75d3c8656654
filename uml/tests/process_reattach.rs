//! Finding a guest again after its `Guest` handle is gone (a daemon restart), for a guest
//! we launched and for one that is not our child at all.

mod process_common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use process_common::*;
use virtumld_uml::console;
use virtumld_uml::mconsole;
use virtumld_uml::process::{self, Error, ExitInfo, ExitReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_after_dropping_the_handle() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("reat");
    let image = build_image(dir.path()).await;
    let spec = spec(&image, "ra", dir.path(), &["con0"], &[]);
    let g = process::launch(&spec).await.expect("launch");
    let _guard = GuestGuard(g.pid);
    // What a daemon would persist.
    let (pid, start, umid, con0) = (
        g.pid,
        g.start_time,
        g.umid.clone(),
        g.pty("con0").map(|p| p.to_path_buf()),
    );
    drop(g);

    let devs = vec!["con0".to_string()];
    let g = process::reattach(pid, start, &umid, &spec.uml_dir, &devs)
        .await
        .expect("reattach");
    assert_eq!(g.pty("con0").map(|p| p.to_path_buf()), con0);
    assert!(
        g.is_child(),
        "still our child: the exit status stays available"
    );
    assert!(g.is_alive());

    // Wrong identities are refused.
    match process::reattach(pid, start + 1, &umid, &spec.uml_dir, &devs).await {
        Err(Error::Mismatch { .. }) => {}
        other => panic!("wrong start time: {other:?}"),
    }
    match process::reattach(pid, start, "other", &spec.uml_dir, &devs).await {
        Err(Error::Mismatch { .. }) => {}
        other => panic!("wrong umid: {other:?}"),
    }
    let me = std::process::id() as i32;
    let my_start = process::start_time_of(me).unwrap();
    match process::reattach(me, my_start, &umid, &spec.uml_dir, &devs).await {
        Err(Error::Mismatch { .. }) => {}
        other => panic!("not a guest: {other:?}"),
    }

    // The console still works through the pty found again.
    let pump = console::start(g.pty("con0").unwrap(), None).unwrap();
    let (mut seen, mut rx) = pump.subscribe();
    pump.write(b"echo again-$((3*3))\n").await.unwrap();
    read_until(&mut rx, &mut seen, "again-9", Duration::from_secs(15)).await;

    g.mconsole().halt().await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(20), g.wait_exit())
        .await
        .expect("exit");
    assert_eq!(info, ExitInfo::Exited(0));
    g.kill(Duration::from_secs(2)).await.unwrap();
    assert!(group_processes(pid).is_empty());
    match process::reattach(pid, start, &umid, &spec.uml_dir, &devs).await {
        Err(Error::NotRunning { .. }) => {}
        other => panic!("gone guest: {other:?}"),
    }
}

/// A guest started by someone else (`setsid -f`, so it is not our child: its parent
/// exits at once and it is reparented to this subreaper, whose reaper discards the status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_to_a_guest_that_is_not_our_child() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("foreign");
    let image = build_image(dir.path()).await;
    let f = files(dir.path(), "fg");
    std::fs::create_dir_all(&f.uml_dir).unwrap();
    let notify = UnixDatagram::bind(&f.notify).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("fg.log")).unwrap();
    let t0 = Instant::now();
    let starter = process::spawn_reaped(
        Command::new("setsid")
            .arg("-f")
            .args(argv(&image, "fg", &f, &[]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .expect("setsid");
    assert_eq!(starter.wait().await, ExitInfo::Exited(0));
    let notify = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 600];
        let n = notify.recv(&mut buf).expect("UML announces its mconsole");
        mconsole::parse_notify(&buf[..n]).expect("notification")
    })
    .await
    .unwrap();
    assert_eq!(notify.kind, mconsole::NotifyKind::Socket);
    let pid: i32 = std::fs::read_to_string(f.uml_dir.join("fg/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _guard = GuestGuard(pid);
    let start = process::start_time_of(pid).unwrap();
    assert_eq!(process::umid_in_use(&f.uml_dir, "fg"), Some(pid));

    // Mconsole is up; the console lines register shortly after: reattach asks once, so
    // give it a moment.
    let devs = vec!["con0".to_string()];
    let g = loop {
        match process::reattach(pid, start, "fg", &f.uml_dir, &devs).await {
            Ok(g) if g.pty("con0").is_some() => break g,
            Ok(_) | Err(Error::Mconsole(_)) if t0.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("reattach: {other:?}"),
        }
    };
    assert!(!g.is_child());
    let pump = console::start(g.pty("con0").unwrap(), None).unwrap();
    let (mut seen, mut rx) = pump.subscribe();
    pump.write(b"echo foreign-$((5*5))\n").await.unwrap();
    read_until(&mut rx, &mut seen, "foreign-25", Duration::from_secs(15)).await;
    assert!(g.cpu_time_ns() > 0);

    // Power it off from inside: exit is seen through the pidfd, status unknown, and the
    // console tail still tells what happened.
    pump.write(b"poweroff\n").await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(20), g.wait_exit())
        .await
        .expect("exit");
    assert_eq!(info, ExitInfo::Unknown);
    tokio::time::timeout(Duration::from_secs(5), pump.closed())
        .await
        .expect("hangup");
    assert_eq!(
        process::classify_exit(&info, &pump.tail()),
        ExitReason::Poweroff
    );
    g.kill(Duration::from_secs(2)).await.unwrap();
    assert!(group_processes(pid).is_empty());
    assert_no_zombies_soon().await;
}

/// A session leader of our own, as a guest is spawned, that never answers on a mconsole.
fn session_leader() -> process::ReapedChild {
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdin(Stdio::null());
    // SAFETY: runs in the forked child before exec and only calls setsid, which is
    // async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    process::spawn_reaped(&mut cmd).expect("spawn sleep")
}

/// The two halves of finding again a guest whose start was cut short, without a kernel: a
/// process that never answers on its mconsole stands for a guest that never becomes ready.
/// The quick half refuses wrong identities at once; the slow half gives up when the start's
/// time is up, or as soon as the process ends, and leaves the killing to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_guest_that_never_becomes_ready() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("starting");
    let uml_dir = dir.path().join("uml");
    let child = session_leader();
    let _guard = GuestGuard(child.pid);
    let (pid, start) = (child.pid, process::start_time_of(child.pid).unwrap());

    match process::find_starting(pid, start + 1, "st", &uml_dir) {
        Err(Error::Mismatch { .. }) => {}
        other => panic!("wrong start time: {other:?}"),
    }
    let me = std::process::id() as i32;
    let my_start = process::start_time_of(me).unwrap();
    match process::find_starting(me, my_start, "st", &uml_dir) {
        Err(Error::Mismatch { .. }) => {}
        other => panic!("not a session leader: {other:?}"),
    }

    // Never ready: given up once `ready_timeout` has passed since the process started.
    let g = process::find_starting(pid, start, "st", &uml_dir).expect("find_starting");
    let t = Instant::now();
    match process::finish_starting(&g, &[], Duration::from_secs(1)).await {
        Err(Error::Startup { .. }) => {}
        other => panic!("never ready: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(g.is_alive(), "finish_starting kills nothing");
    g.kill(Duration::from_millis(200)).await.expect("kill");
    assert!(!g.is_alive());
    assert!(group_processes(pid).is_empty());

    // Ends while waited for: reported at once, not at the deadline.
    let child = session_leader();
    let _guard = GuestGuard(child.pid);
    let (pid, start) = (child.pid, process::start_time_of(child.pid).unwrap());
    let g = process::find_starting(pid, start, "st", &uml_dir).expect("find_starting");
    let t = Instant::now();
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        child.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    };
    let (result, ()) = tokio::join!(
        process::finish_starting(&g, &[], Duration::from_secs(30)),
        killer
    );
    match result {
        Err(Error::NotRunning { .. }) => {}
        other => panic!("ended: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(child.wait().await, ExitInfo::Signaled(nix::libc::SIGKILL));
    match process::find_starting(pid, start, "st", &uml_dir) {
        Err(Error::NotRunning { .. }) => {}
        other => panic!("gone: {other:?}"),
    }
}
