//! The mconsole client against a fake mconsole that answers with crafted (and hostile)
//! datagrams. The real guest is exercised in the process_* tests.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use virtumld_uml::mconsole::{self, Mconsole, MconsoleError, ParseError};

fn chunk(err: i32, more: i32, text: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&err.to_ne_bytes());
    v.extend_from_slice(&more.to_ne_bytes());
    v.extend_from_slice(&(text.len() as u32 + 1).to_ne_bytes());
    v.extend_from_slice(text);
    v.push(0);
    v
}

struct Fake {
    dir: PathBuf,
    path: PathBuf,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fake mconsole on a thread; it checks each request's header and answers by command.
fn fake(tag: &str) -> Fake {
    let dir = std::env::temp_dir().join(format!("vu-mc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mconsole");
    let sock = UnixDatagram::bind(&path).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let req = &buf[..n];
            let word = |i: usize| u32::from_ne_bytes(req[i..i + 4].try_into().unwrap());
            assert_eq!(word(0), mconsole::MAGIC);
            assert_eq!(word(4), mconsole::VERSION);
            assert_eq!(word(8) as usize, n - 12, "len counts exactly the command");
            let cmd = String::from_utf8(req[12..].to_vec()).unwrap();
            let replies: Vec<Vec<u8>> = match cmd.as_str() {
                "version" => vec![chunk(0, 0, b"fake 6.1")],
                "multi" => vec![
                    chunk(0, 1, b"one,"),
                    chunk(0, 1, b"two,"),
                    chunk(0, 0, b"three"),
                ],
                "big" => {
                    let mut v: Vec<Vec<u8>> = (0..3).map(|_| chunk(0, 1, &[b'x'; 511])).collect();
                    v.push(chunk(0, 0, b"end"));
                    v
                }
                "fail" => vec![chunk(-22, 0, b"Device is already open")],
                "fail-later" => vec![chunk(1, 1, b"first "), chunk(0, 0, b"second")],
                "short" => vec![vec![0, 0, 0, 0, 0]],
                "no-nul" => {
                    // len 3 covers "abc" only: no terminating NUL.
                    let mut c = chunk(0, 0, b"abc");
                    c.pop();
                    c[8..12].copy_from_slice(&3u32.to_ne_bytes());
                    vec![c]
                }
                "len-past-end" => {
                    let mut c = chunk(0, 0, b"abc");
                    c[8..12].copy_from_slice(&100u32.to_ne_bytes());
                    vec![c]
                }
                "oversized" => {
                    let mut c = chunk(0, 0, &[b'y'; 600]);
                    c[8..12].copy_from_slice(&601u32.to_ne_bytes());
                    vec![c]
                }
                "flood" => (0..1000).map(|_| chunk(0, 1, &[b'z'; 511])).collect(),
                "silent" => vec![],
                "stall" => vec![chunk(0, 1, b"part")],
                // A guest that answers, but late (one that did not get a CPU for a while).
                "slow" => {
                    std::thread::sleep(Duration::from_millis(700));
                    vec![chunk(0, 1, b"late "), chunk(0, 0, b"answer")]
                }
                _ => vec![chunk(1, 0, b"Unknown command")],
            };
            let Some(to) = from.as_pathname().map(|p| p.to_path_buf()) else {
                // The client autobinds to an abstract address.
                for r in replies {
                    if sock.send_to_addr(&r, &from).is_err() {
                        break;
                    }
                }
                continue;
            };
            for r in replies {
                let _ = sock.send_to(&r, &to);
            }
        }
    });
    Fake { dir, path }
}

#[tokio::test]
async fn replies_are_reassembled_and_errors_surface() {
    let f = fake("ok");
    let mc = Mconsole::new(&f.path).with_timeout(Duration::from_millis(500));
    assert_eq!(mc.version().await.unwrap(), "fake 6.1");
    assert_eq!(mc.command("multi").await.unwrap(), "one,two,three");
    let big = mc.command("big").await.unwrap();
    assert_eq!(big.len(), 3 * 511 + 3);
    match mc.command("fail").await {
        Err(MconsoleError::Remote { err, message }) => {
            assert_eq!((err, message.as_str()), (-22, "Device is already open"))
        }
        other => panic!("{other:?}"),
    }
    // err is only set on the first chunk, the message is the whole reply.
    match mc.command("fail-later").await {
        Err(MconsoleError::Remote { err: 1, message }) => assert_eq!(message, "first second"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        mc.command("nonsense").await,
        Err(MconsoleError::Remote { err: 1, .. })
    ));
    // Concurrent commands each get their own reply.
    let (a, b, c) = tokio::join!(
        mc.command("version"),
        mc.command("multi"),
        mc.command("version")
    );
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        (
            "fake 6.1".to_string(),
            "one,two,three".to_string(),
            "fake 6.1".to_string()
        )
    );
}

#[tokio::test]
async fn hostile_replies_are_errors() {
    let f = fake("hostile");
    let mc = Mconsole::new(&f.path).with_timeout(Duration::from_millis(500));
    let malformed = |r: Result<String, MconsoleError>| match r {
        Err(MconsoleError::Malformed { source, .. }) => source,
        other => panic!("{other:?}"),
    };
    assert_eq!(malformed(mc.command("short").await), ParseError::Short(5));
    assert_eq!(
        malformed(mc.command("no-nul").await),
        ParseError::MissingNul
    );
    assert!(matches!(
        malformed(mc.command("len-past-end").await),
        ParseError::LenPastEnd { .. }
    ));
    assert!(matches!(
        malformed(mc.command("oversized").await),
        ParseError::LenTooLarge { .. }
    ));
    // Endless `more` chunks: cut at the reply bound.
    match mc.clone().with_max_reply(16 * 1024).command("flood").await {
        Err(MconsoleError::ReplyTooLarge { max, .. }) => assert_eq!(max, 16 * 1024),
        other => panic!("{other:?}"),
    }
    // No reply, or a reply that promises more and stops: bounded by the timeout.
    for cmd in ["silent", "stall"] {
        let t0 = std::time::Instant::now();
        assert!(
            matches!(mc.command(cmd).await, Err(MconsoleError::Timeout { .. })),
            "{cmd}"
        );
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn bad_requests_and_missing_sockets() {
    let mc = Mconsole::new("/nonexistent/vu/mconsole");
    assert!(matches!(mc.version().await, Err(MconsoleError::Io { .. })));
    let f = fake("bad");
    let mc = Mconsole::new(&f.path);
    assert!(matches!(
        mc.command(&"x".repeat(512)).await,
        Err(MconsoleError::CommandTooLong(512))
    ));
    assert!(matches!(
        mc.command("a\0b").await,
        Err(MconsoleError::CommandHasNul)
    ));
    // Arguments that would change the command are refused before sending.
    for dev in ["", "con0=null", "con0 x", "../x"] {
        assert!(
            matches!(mc.config_get(dev).await, Err(MconsoleError::BadArgument(_))),
            "{dev:?}"
        );
    }
    assert!(matches!(
        mc.sysrq(' ').await,
        Err(MconsoleError::BadArgument(_))
    ));
    assert!(matches!(
        mc.proc_file("meminfo x").await,
        Err(MconsoleError::BadArgument(_))
    ));
    // 511 bytes is the longest command: it reaches the server (which does not know it).
    assert!(matches!(
        mc.command(&"x".repeat(511)).await,
        Err(MconsoleError::Remote { .. })
    ));
}

#[tokio::test]
async fn a_request_kept_after_its_timeout_still_gets_the_late_reply() {
    let f = fake("late");
    let mc = Mconsole::new(&f.path).with_timeout(Duration::from_millis(200));
    // The bounded form gives up...
    assert!(matches!(
        mc.command("slow").await,
        Err(MconsoleError::Timeout { .. })
    ));
    // ...while a request in flight can be waited for again after a wait that was cut
    // short: the reply is not lost with the first wait.
    let mut pending = mc.send("slow").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(100), pending.reply())
            .await
            .is_err(),
        "the fake answers after 700 ms"
    );
    let late = tokio::time::timeout(Duration::from_secs(5), pending.reply())
        .await
        .expect("the late reply arrives");
    assert_eq!(late.unwrap(), "late answer");
    assert_eq!(pending.path(), f.path.as_path());
    // A remote error is reported through a kept request too.
    let mut pending = mc.send("fail").await.unwrap();
    assert!(matches!(
        pending.reply().await,
        Err(MconsoleError::Remote { err: -22, .. })
    ));
}
