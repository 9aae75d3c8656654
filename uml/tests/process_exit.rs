//! How guests end, and how the exit is classified: an in-guest reboot (kernel has
//! `noreboot`), mconsole `halt`, a kernel panic. Each test boots its own guest.

mod process_common;

use std::time::Duration;

use process_common::*;
use virtumld_uml::console::{self, ConsolePump};
use virtumld_uml::process::{self, classify_exit, ExitInfo, ExitReason, Guest};

async fn boot(tag: &str, dir: &TestDir) -> (Guest, ConsolePump, GuestGuard) {
    process::become_subreaper().expect("subreaper");
    let image = build_image(dir.path()).await;
    let spec = spec(&image, tag, dir.path(), &["con0"], &[]);
    let g = process::launch(&spec).await.expect("launch");
    let guard = GuestGuard(g.pid);
    let pump = console::start(g.pty("con0").expect("con0"), None).expect("pump");
    let (mut seen, mut rx) = pump.subscribe();
    // Wait for a shell that runs commands, so init is fully up.
    pump.write(b"echo up-$((40+2))\n").await.unwrap();
    read_until(&mut rx, &mut seen, "up-42", Duration::from_secs(15)).await;
    (g, pump, guard)
}

async fn ended(g: &Guest, pump: &ConsolePump) -> (ExitInfo, ExitReason) {
    let info = tokio::time::timeout(Duration::from_secs(20), g.wait_exit())
        .await
        .expect("guest exits");
    // The pty hangs up once UML is gone; by then the last console line is in the tail.
    tokio::time::timeout(Duration::from_secs(5), pump.closed())
        .await
        .expect("pty hangup");
    let reason = classify_exit(&info, &pump.tail());
    g.kill(Duration::from_secs(2)).await.expect("cleanup");
    assert!(group_processes(g.pid).is_empty());
    (info, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_inside_the_guest_is_classified_as_reboot() {
    let dir = TestDir::new("reboot");
    let (g, pump, _guard) = boot("rb", &dir).await;
    pump.write(b"reboot\n").await.unwrap();
    let (info, reason) = ended(&g, &pump).await;
    assert_eq!(info, ExitInfo::Exited(0));
    assert_eq!(
        reason,
        ExitReason::Reboot,
        "tail: {}",
        String::from_utf8_lossy(&pump.tail())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mconsole_halt_exits_cleanly_without_a_marker() {
    let dir = TestDir::new("halt");
    let (g, pump, _guard) = boot("ht", &dir).await;
    g.mconsole().halt().await.unwrap();
    let (info, reason) = ended(&g, &pump).await;
    assert_eq!(info, ExitInfo::Exited(0));
    // Only the daemon knows it asked for a halt.
    assert_eq!(reason, ExitReason::Unknown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_panic_is_a_crash() {
    let dir = TestDir::new("panic");
    let (g, pump, _guard) = boot("pn", &dir).await;
    pump.write(b"echo c > /proc/sysrq-trigger\n").await.unwrap();
    let (info, reason) = ended(&g, &pump).await;
    assert_eq!(info, ExitInfo::Signaled(6), "UML panics die of SIGABRT");
    assert_eq!(reason, ExitReason::Crash);
    // Not asserted: the "Kernel panic" line is often lost. UML aborts right after
    // printing it, and closing the pty master makes the kernel discard what the pump has
    // not read yet. The signal alone makes it a crash.
    if !contains(&pump.tail(), "Kernel panic") {
        eprintln!("note: the panic line did not reach the console pump before the hangup");
    }
}
