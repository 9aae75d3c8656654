//! Boots a real UML guest and walks its life: ready, ptys, console, mconsole
//! stop/go, stats, `cad` → clean poweroff, and nothing left behind.

mod process_common;

use std::time::{Duration, Instant};

use process_common::*;
use virtumld_uml::console::{self, ConsoleLog, PumpEnd};
use virtumld_uml::mconsole::MconsoleError;
use virtumld_uml::process::{self, classify_exit, Error, ExitInfo, ExitReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_console_stop_go_cad_poweroff() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("life");
    let image = build_image(dir.path()).await;
    let umid = "life";
    let spec = spec(&image, umid, dir.path(), &["con0", "ssl0"], &["ssl0=pts"]);

    let t0 = Instant::now();
    let guest = process::launch(&spec).await.expect("launch");
    let _guard = GuestGuard(guest.pid);
    eprintln!(
        "boot-to-ready (incl. {:?} ssl0 grace): {} ms",
        process::PTY_GRACE,
        elapsed_ms(t0)
    );

    // Identity, directories, log header.
    assert!(guest.is_child());
    assert!(guest.is_alive());
    assert_eq!(process::start_time_of(guest.pid), Some(guest.start_time));
    assert_eq!(
        guest.mconsole_path,
        spec.uml_dir.join(umid).join("mconsole")
    );
    assert_eq!(process::umid_in_use(&spec.uml_dir, umid), Some(guest.pid));
    assert!(
        !spec.notify_socket.exists(),
        "notify socket is removed once ready"
    );
    let log = std::fs::read_to_string(&spec.log_file).expect("log");
    assert!(log
        .lines()
        .next()
        .unwrap()
        .contains("virtumld: starting /usr/bin/linux.uml mem=64M"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&spec.log_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A second start with the same umid is refused before anything is spawned.
    match process::launch(&spec).await {
        Err(Error::UmidInUse { pid, .. }) => assert_eq!(pid, guest.pid),
        other => panic!("expected UmidInUse, got {other:?}"),
    }

    // ptys: the console has one; the serial line was never opened by the guest.
    let con0 = guest.pty("con0").expect("con0 pty").to_path_buf();
    assert!(con0.starts_with("/dev/pts/"), "{con0:?}");
    assert_eq!(guest.pty("ssl0"), None);
    let mc = guest.mconsole();
    assert_eq!(
        mc.config_get("con0").await.unwrap(),
        format!("pts:{}", con0.display())
    );
    assert_eq!(
        guest.query_pty("con0").await.unwrap().as_deref(),
        Some(con0.as_path())
    );
    assert!(mc.version().await.unwrap().contains("6.1"));
    match mc.command("no-such-command").await {
        Err(MconsoleError::Remote { err, .. }) => assert_ne!(err, 0),
        other => panic!("expected a remote error, got {other:?}"),
    }

    // Console: banner, then a command's output read back.
    let con_log = dir.path().join("console.log");
    let pump = console::start(
        &con0,
        Some(ConsoleLog {
            path: con_log.clone(),
            append: false,
        }),
    )
    .expect("pump");
    let (recent, mut rx) = pump.subscribe();
    let mut seen = recent;
    read_until(
        &mut rx,
        &mut seen,
        "virtumld-guest: ready",
        Duration::from_secs(15),
    )
    .await;
    pump.write(b"echo hi-$((6*7))\n").await.unwrap();
    read_until(&mut rx, &mut seen, "hi-42", Duration::from_secs(10)).await;

    // stop: the guest runs nothing, yet mconsole still answers; go resumes it.
    assert_eq!(mc.command("stop").await.unwrap(), "stopped");
    assert!(mc.version().await.is_ok(), "mconsole answers while stopped");
    pump.write(b"echo paused-$((1+1))\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    while let Ok(b) = rx.try_recv() {
        seen.extend_from_slice(&b);
    }
    assert!(!contains(&seen, "paused-2"), "guest ran while stopped");
    mc.go().await.unwrap();
    read_until(&mut rx, &mut seen, "paused-2", Duration::from_secs(10)).await;

    // Stats.
    assert!(guest.cpu_time_ns() > 0);
    assert!(guest.rss_kib() > 0);
    let meminfo = mc.proc_file("meminfo").await.unwrap();
    assert!(meminfo.contains("MemTotal:"), "{meminfo}");
    assert!(guest.processes().len() >= 2, "UML runs helper processes");

    // cad → the guest's init powers off → exit status 0 with "System halted".
    let t1 = Instant::now();
    mc.cad().await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(20), guest.wait_exit())
        .await
        .expect("guest exits after cad");
    eprintln!("cad-to-exit: {} ms", elapsed_ms(t1));
    assert_eq!(info, ExitInfo::Exited(0));
    tokio::time::timeout(Duration::from_secs(5), pump.closed())
        .await
        .expect("pty hangs up");
    assert_eq!(pump.end(), Some(PumpEnd::Hangup));
    assert_eq!(classify_exit(&info, &pump.tail()), ExitReason::Poweroff);
    assert!(!guest.is_alive());
    // wait_exit again: immediate, same answer.
    assert_eq!(guest.wait_exit().await, ExitInfo::Exited(0));
    // Subscribers see the end of the stream.
    loop {
        match rx.recv().await {
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let logged = std::fs::read(&con_log).unwrap();
    assert!(contains(&logged, "virtumld-guest: ready") && contains(&logged, "hi-42"));

    // Nothing left: no process of the group, no zombie, no umid directory.
    guest
        .kill(Duration::from_secs(2))
        .await
        .expect("kill after exit is a no-op");
    assert_eq!(group_processes(guest.pid), Vec::<i32>::new());
    assert_no_zombies_soon().await;
    assert!(!spec.uml_dir.join(umid).exists());
    assert_eq!(process::umid_in_use(&spec.uml_dir, umid), None);
}
