//! Just enough of /proc. Every value read here is untrusted (processes come and go, a
//! command name may contain anything): parsing returns `None` instead of panicking.

use std::fs;

/// The fields of `/proc/PID/stat` this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z`, `T`, `t`, `X`, …
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Clock ticks.
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    /// Clock ticks after boot (field 22): with the pid, identifies a process.
    pub starttime: u64,
    /// Resident pages.
    pub rss: u64,
}

impl Stat {
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    pub fn cpu_ticks(&self) -> u64 {
        self.utime
            .saturating_add(self.stime)
            .saturating_add(self.cutime)
            .saturating_add(self.cstime)
    }
}

/// Parses the content of `/proc/PID/stat`.
pub fn parse_stat(s: &str) -> Option<Stat> {
    // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split at the
    // last ')'.
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    if close < open {
        return None;
    }
    let pid: i32 = s.get(..open)?.trim().parse().ok()?;
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| -> Option<&str> { rest.get(n.checked_sub(3)?).copied() };
    let num = |n: usize| -> Option<u64> { field(n)?.parse().ok() };
    let int = |n: usize| -> Option<i32> { field(n)?.parse().ok() };
    let state = field(3)?.chars().next()?;
    Some(Stat {
        pid,
        state,
        ppid: int(4)?,
        pgrp: int(5)?,
        session: int(6)?,
        utime: num(14)?,
        stime: num(15)?,
        // cutime/cstime are signed in the kernel's format; never negative in practice.
        cutime: field(16)?.parse::<i64>().ok()?.max(0) as u64,
        cstime: field(17)?.parse::<i64>().ok()?.max(0) as u64,
        starttime: num(22)?,
        rss: field(24)?.parse::<i64>().ok()?.max(0) as u64,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Every process currently visible in /proc.
pub fn all_stats() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        read_stat(pid)
    })
    .collect()
}

/// The processes of a guest: its process group, or anything still in its session (the
/// guest is started with setsid, so both ids equal the main pid).
pub fn group_members(pgid: i32) -> Vec<Stat> {
    if pgid <= 0 {
        return Vec::new();
    }
    all_stats()
        .into_iter()
        .filter(|s| s.pgrp == pgid || s.session == pgid)
        .collect()
}

/// The argument words of a process (`/proc/PID/cmdline` split at NULs). `None` when it
/// cannot be read; empty for a zombie or a kernel thread.
pub fn read_cmdline(pid: i32) -> Option<Vec<Vec<u8>>> {
    if pid <= 0 {
        return None;
    }
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(split_cmdline(&raw))
}

fn split_cmdline(raw: &[u8]) -> Vec<Vec<u8>> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
}

/// The value of the last word starting with `key` (e.g. `b"umid="`), skipping `argv[0]`;
/// the last, because UML lets a later word override an earlier one.
pub fn arg_value<'a>(argv: &'a [Vec<u8>], key: &[u8]) -> Option<&'a [u8]> {
    argv.iter().skip(1).rev().find_map(|w| w.strip_prefix(key))
}

/// How long ago a process with this start time (`/proc/PID/stat` field 22) started.
pub fn age(starttime: u64) -> Option<std::time::Duration> {
    let up = fs::read_to_string("/proc/uptime").ok()?;
    let now: f64 = up.split_whitespace().next()?.parse().ok()?;
    let started = starttime as f64 / clock_ticks_per_sec() as f64;
    std::time::Duration::try_from_secs_f64((now - started).max(0.0)).ok()
}

fn sysconf_or(var: nix::unistd::SysconfVar, default: u64) -> u64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => default,
    }
}

pub fn clock_ticks_per_sec() -> u64 {
    sysconf_or(nix::unistd::SysconfVar::CLK_TCK, 100)
}

pub fn page_size() -> u64 {
    sysconf_or(nix::unistd::SysconfVar::PAGE_SIZE, 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let line = "6082 (linux.uml) S 6078 6082 6082 0 -1 4194560 5 0 0 0 7 3 2 1 20 0 1 0 \
                    123456 1234 56 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            (s.pid, s.state, s.ppid, s.pgrp, s.session),
            (6082, 'S', 6078, 6082, 6082)
        );
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (7, 3, 2, 1));
        assert_eq!((s.starttime, s.rss), (123456, 56));
        assert_eq!(s.cpu_ticks(), 13);
        // A hostile comm.
        let line = "7 (a) Z 1 (b) R) Z 1 7 7 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 99 1 2";
        let s = parse_stat(line).unwrap();
        assert!(s.is_zombie());
        assert_eq!(s.starttime, 99);
        for bad in [
            "",
            "1",
            "1 (x",
            "x (y) S",
            "1 (y) S 1 2",
            ") 1 (",
            "1 (x) S a b c",
        ] {
            assert!(parse_stat(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn splits_cmdlines() {
        let argv = split_cmdline(b"/k\0umid=a\0uml_dir=/r\0umid=b\0");
        assert_eq!(argv.len(), 4);
        assert_eq!(arg_value(&argv, b"umid="), Some(&b"b"[..]));
        assert_eq!(arg_value(&argv, b"uml_dir="), Some(&b"/r"[..]));
        assert_eq!(arg_value(&argv, b"mem="), None);
        // argv[0] is the program, never a value.
        assert_eq!(arg_value(&split_cmdline(b"umid=x\0"), b"umid="), None);
        assert!(split_cmdline(b"").is_empty());
        assert_eq!(split_cmdline(b"a\0\0b").len(), 3);
        let me = read_cmdline(std::process::id() as i32).unwrap();
        assert!(!me.is_empty());
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id() as i32;
        let s = read_stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.starttime > 0);
        assert!(read_stat(0).is_none());
        assert!(age(s.starttime).is_some_and(|a| a.as_secs() < 24 * 3600 * 365));
        assert!(read_stat(-1).is_none());
    }
}
