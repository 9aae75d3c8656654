//! The console pump on a host pty pair: the test plays UML on the master side.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use virtumld_uml::console::{self, ConsoleLog, PumpEnd, RING_SIZE, TAIL_SIZE};

/// A pty pair; returns the master (what UML holds) and the slave's path.
fn pty_pair() -> (File, PathBuf) {
    let p = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(p.slave.as_fd()).expect("ttyname");
    // Only the pump keeps the slave open, as with a real guest.
    drop(p.slave);
    (File::from(p.master), path)
}

fn set_nonblocking(fd: &impl AsRawFd, on: bool) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).unwrap());
    let fl = if on {
        fl | OFlag::O_NONBLOCK
    } else {
        fl - OFlag::O_NONBLOCK
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(fl)).unwrap();
}

/// Reads from the master until `n` bytes arrived or `timeout` passes.
fn read_master(master: &mut File, n: usize, timeout: Duration) -> Vec<u8> {
    set_nonblocking(master, true);
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < n && std::time::Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(k) if k > 0 => out.extend_from_slice(&buf[..k]),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    set_nonblocking(master, false);
    out
}

/// Waits until the pump has read `n` bytes. Closing the master (UML exiting) makes the
/// kernel hang up the slave and discard input the pump has not read yet, so a test that
/// closes the master right after writing must wait for this first.
async fn pumped(pump: &console::ConsolePump, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pump.total_bytes() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pump read {} of {n} bytes",
            pump.total_bytes()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A scratch directory, removed on drop (also when the test fails).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("vu-con-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Scratch(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_pass_unmangled_both_ways() {
    let (mut master, path) = pty_pair();
    let pump = console::start(&path, None).expect("start");
    let (recent, mut rx) = pump.subscribe();
    assert!(recent.is_empty());

    // Guest output with bytes a cooked tty would change or swallow.
    let out = b"line1\nline2\r\n\x03\x04\x1a\x7f\xff\x00tail";
    master.write_all(out).unwrap();
    let mut got = Vec::new();
    while got.len() < out.len() {
        got.extend_from_slice(
            &tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(got, out);
    // Raw mode: nothing was echoed back to the guest.
    assert!(read_master(&mut master, 1, Duration::from_millis(200)).is_empty());

    // Keystrokes: no "\n" → "\r\n" translation, control characters pass.
    let keys = b"echo hi\n\x03\x1d\r";
    pump.write(keys).await.unwrap();
    assert_eq!(
        read_master(&mut master, keys.len(), Duration::from_secs(5)),
        keys
    );
    assert_eq!(pump.total_bytes(), out.len() as u64);
    assert_eq!(pump.recent(), out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_tail_and_subscribers() {
    let (mut master, path) = pty_pair();
    let pump = console::start(&path, None).expect("start");
    let (_, mut fast) = pump.subscribe();
    let (_, mut slow) = pump.subscribe();

    // 1 MiB of numbered output from a "guest" thread (the master blocks when full).
    let total = 1024 * 1024;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    let writer = std::thread::spawn(move || master.write_all(&data).map(|_| master));

    // The fast subscriber sees every byte in order...
    let mut got = Vec::with_capacity(total);
    while got.len() < total {
        match tokio::time::timeout(Duration::from_secs(10), fast.recv())
            .await
            .expect("data")
        {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => panic!("fast subscriber: {e}"),
        }
    }
    assert!(got == expect, "fast subscriber saw every byte in order");
    let _master = writer.join().unwrap().unwrap();

    // ...the one that never read lags (is told how much it lost) instead of stalling
    // the pump or growing without bound.
    match slow.recv().await {
        Err(RecvError::Lagged(n)) => assert!(n > 0),
        other => panic!("expected a lag, got {other:?}"),
    }
    // After the lag it gets the most recent chunks, which end with the stream's end.
    let mut rest = Vec::new();
    while let Ok(b) = slow.try_recv() {
        rest.extend_from_slice(&b);
    }
    assert!(!rest.is_empty() && expect.ends_with(&rest));

    // Ring and tail hold the last bytes.
    let (recent, _) = pump.subscribe();
    assert_eq!(recent.len(), RING_SIZE);
    assert_eq!(recent, expect[total - RING_SIZE..]);
    assert_eq!(pump.tail(), expect[total - TAIL_SIZE..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_ends_the_stream() {
    let (mut master, path) = pty_pair();
    let pump = console::start(&path, None).expect("start");
    let (_, mut rx) = pump.subscribe();
    master.write_all(b"reboot: System halted\r\n").unwrap();
    pumped(&pump, 23).await;
    // The guest exits: UML's side of the pty closes.
    drop(master);
    tokio::time::timeout(Duration::from_secs(5), pump.closed())
        .await
        .expect("pump ends");
    assert_eq!(pump.end(), Some(PumpEnd::Hangup));
    let mut got = Vec::new();
    loop {
        match rx.recv().await {
            Ok(b) => got.extend_from_slice(&b),
            Err(RecvError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        got, b"reboot: System halted\r\n",
        "output written before the hangup is kept"
    );
    assert_eq!(pump.tail(), b"reboot: System halted\r\n");
    // Late subscribers get the history and an ended stream; writes fail.
    let (recent, mut late) = pump.subscribe();
    assert_eq!(recent, b"reboot: System halted\r\n");
    assert!(matches!(late.recv().await, Err(RecvError::Closed)));
    assert!(pump.write(b"x").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_subscriptions() {
    let (_master, path) = pty_pair();
    let pump = console::start(&path, None).expect("start");
    let (_, mut rx) = pump.subscribe();
    pump.stop();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap(),
        Err(RecvError::Closed)
    ));
    assert_eq!(pump.end(), Some(PumpEnd::Stopped));
    pump.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_append_and_truncate() {
    let scratch = scratch("log");
    let dir = &scratch.0;
    let log = dir.join("sub/console.log");
    for (append, expect) in [(true, &b"old\nfirst"[..]), (false, &b"second"[..])] {
        if append {
            std::fs::create_dir_all(log.parent().unwrap()).unwrap();
            std::fs::write(&log, b"old\n").unwrap();
        }
        let (mut master, path) = pty_pair();
        let pump = console::start(
            &path,
            Some(ConsoleLog {
                path: log.clone(),
                append,
            }),
        )
        .unwrap();
        let text: &[u8] = if append { b"first" } else { b"second" };
        master.write_all(text).unwrap();
        pumped(&pump, text.len() as u64).await;
        drop(master);
        tokio::time::timeout(Duration::from_secs(5), pump.closed())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), expect);
    }
    // A log the pump creates is private to the daemon's user.
    let fresh = dir.join("new/fresh.log");
    let (_master, path) = pty_pair();
    let pump = console::start(
        &path,
        Some(ConsoleLog {
            path: fresh.clone(),
            append: true,
        }),
    )
    .unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&fresh).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    drop(pump);
}

#[tokio::test]
async fn refuses_what_is_not_a_pty() {
    for p in [
        "/dev/null",
        "/etc/passwd",
        "/dev/pts/ptmx",
        "relative/pts/1",
    ] {
        assert!(console::start(p, None).is_err(), "{p}");
    }
    // A /dev/pts path that does not exist.
    assert!(console::start("/dev/pts/999999", None).is_err());
}
