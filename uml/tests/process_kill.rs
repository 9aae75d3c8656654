//! Killing a running guest: the whole process group goes, nothing is left as a zombie,
//! and the disk image is free again (UML helpers that survive keep its flock, and the next
//! boot would fail with "Failed to lock … err = 11"). One test in this binary, so the
//! zombie check sees no other test's children.

mod process_common;

use std::time::{Duration, Instant};

use process_common::*;
use virtumld_uml::console;
use virtumld_uml::process::{self, ExitInfo, Guest};

async fn boot(spec: &process::LaunchSpec) -> Guest {
    let t0 = Instant::now();
    let g = process::launch(spec).await.expect("launch");
    eprintln!("boot-to-ready: {} ms", elapsed_ms(t0));
    g
}

/// The guest really is up: its console gives a shell that runs commands.
async fn shell_works(g: &Guest, tag: &str) {
    let pump = console::start(g.pty("con0").expect("con0"), None).expect("pump");
    let (mut seen, mut rx) = pump.subscribe();
    pump.write(format!("echo ok-{tag}-$((2+3))\n").as_bytes())
        .await
        .unwrap();
    read_until(
        &mut rx,
        &mut seen,
        &format!("ok-{tag}-5"),
        Duration::from_secs(15),
    )
    .await;
}

async fn assert_all_gone(g: &Guest) {
    assert_eq!(
        group_processes(g.pid),
        Vec::<i32>::new(),
        "survivors in the group"
    );
    assert!(g.processes().is_empty());
    assert!(!g.is_alive());
    assert_no_zombies_soon().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leaves_nothing_and_the_image_can_boot_again() {
    process::become_subreaper().expect("subreaper");
    let dir = TestDir::new("kill");
    let image = build_image(dir.path()).await;
    let spec = spec(&image, "k", dir.path(), &["con0"], &[]);

    // 1. SIGTERM is enough for a healthy guest.
    let g = boot(&spec).await;
    let _guard = GuestGuard(g.pid);
    shell_works(&g, "a").await;
    let members = g.processes();
    assert!(members.len() >= 2, "UML forks helpers: {members:?}");
    let t0 = Instant::now();
    g.kill(Duration::from_secs(5)).await.expect("kill");
    eprintln!("kill (SIGTERM): {} ms", elapsed_ms(t0));
    assert_all_gone(&g).await;
    // Our own child: its status is known (UML exits on SIGTERM or dies of it).
    let info = g.wait_exit().await;
    eprintln!("status after SIGTERM: {info}");
    assert!(
        matches!(info, ExitInfo::Exited(_) | ExitInfo::Signaled(_)),
        "{info:?}"
    );
    for pid in members {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{pid} left"
        );
    }

    // 2. Same image, same umid: boots and runs (no lock held by a leftover helper).
    let g = boot(&spec).await;
    let _guard2 = GuestGuard(g.pid);
    shell_works(&g, "b").await;
    // No grace: SIGKILL to the whole group at once.
    let t0 = Instant::now();
    g.kill(Duration::ZERO).await.expect("kill");
    eprintln!("kill (SIGKILL): {} ms", elapsed_ms(t0));
    assert_all_gone(&g).await;
    assert_eq!(g.wait_exit().await, ExitInfo::Signaled(9));

    // 3. And once more after the SIGKILL.
    let g = boot(&spec).await;
    let _guard3 = GuestGuard(g.pid);
    shell_works(&g, "c").await;
    let log = std::fs::read_to_string(&spec.log_file).unwrap();
    assert!(!log.contains("Failed to lock"), "{log}");
    assert_eq!(
        log.matches("virtumld: starting").count(),
        3,
        "log is appended to"
    );
    g.kill(Duration::from_secs(5)).await.expect("kill");
    assert_all_gone(&g).await;
    // kill is idempotent.
    g.kill(Duration::from_secs(1)).await.expect("second kill");
    assert!(my_zombies().is_empty());
}
