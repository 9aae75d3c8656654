//! Results: `key value` lines (human summary on stdout, machine file with `--out`) and the
//! side-by-side comparison of two result files.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub struct Report {
    tag: String,
    rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(tag: &str) -> Report {
        Report {
            tag: tag.to_string(),
            rows: Vec::new(),
        }
    }

    pub fn num(&mut self, key: &str, v: f64) {
        let s = if v.is_finite() && v.abs() >= 100.0 {
            format!("{v:.0}")
        } else if v.is_finite() && v.abs() >= 1.0 {
            format!("{v:.2}")
        } else {
            format!("{v:.4}")
        };
        self.rows.push((key.to_string(), s));
    }

    pub fn opt(&mut self, key: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.num(key, v);
        }
    }

    pub fn int(&mut self, key: &str, v: u64) {
        self.rows.push((key.to_string(), v.to_string()));
    }

    pub fn text(&mut self, key: &str, v: &str) {
        self.rows
            .push((key.to_string(), v.replace(char::is_whitespace, "_")));
    }

    /// Prints the summary and appends the rows to `out` as `tag.key value`.
    pub fn emit(&self, out: Option<&Path>) -> std::io::Result<()> {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!("== {}", self.tag);
        for (k, v) in &self.rows {
            println!("  {k:<w$}  {v}");
        }
        if let Some(path) = out {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            for (k, v) in &self.rows {
                writeln!(f, "{}.{} {}", self.tag, k, v)?;
            }
        }
        Ok(())
    }
}

/// Which way is better for a metric, by its name's suffix.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

fn better(key: &str) -> Better {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.ends_with("_per_s") || last.ends_with("_held") {
        Better::Higher
    } else if last.ends_with("_us")
        || last.ends_with("_ms")
        || last.ends_with("_kib")
        || last.ends_with("_bytes")
        || last.ends_with("_per_1k")
    {
        Better::Lower
    } else {
        Better::Neither
    }
}

fn read_rows(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(2, ' ');
            Some((it.next()?.to_string(), it.next()?.trim().to_string()))
        })
        .collect())
}

/// Prints a table: metric, A, B, and how many times better B is than A (>1: B better).
pub fn compare(a: &Path, b: &Path, la: &str, lb: &str) -> std::io::Result<()> {
    let ra = read_rows(a)?;
    let rb = read_rows(b)?;
    let mb: HashMap<&str, &str> = rb.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ma: HashMap<&str, &str> = ra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut keys: Vec<&str> = ra.iter().map(|(k, _)| k.as_str()).collect();
    for (k, _) in &rb {
        if !ma.contains_key(k.as_str()) {
            keys.push(k);
        }
    }
    let kw = keys.iter().map(|k| k.len()).max().unwrap_or(6).max(6);
    let vw = 14;
    println!(
        "| {:<kw$} | {:>vw$} | {:>vw$} | {:>12} |",
        "metric",
        la,
        lb,
        format!("{lb} ×better")
    );
    println!(
        "|{}|{}:|{}:|{}:|",
        "-".repeat(kw + 2),
        "-".repeat(vw + 1),
        "-".repeat(vw + 1),
        "-".repeat(13)
    );
    for k in keys {
        let va = ma.get(k).copied().unwrap_or("-");
        let vb = mb.get(k).copied().unwrap_or("-");
        let ratio = match (va.parse::<f64>(), vb.parse::<f64>(), better(k)) {
            (Ok(x), Ok(y), Better::Higher) if x > 0.0 => format!("{:.2}", y / x),
            (Ok(x), Ok(y), Better::Lower) if y > 0.0 => format!("{:.2}", x / y),
            _ => String::new(),
        };
        println!("| {k:<kw$} | {va:>vw$} | {vb:>vw$} | {ratio:>12} |");
    }
    Ok(())
}

fn lookup(rows: &[(String, String)], key: &str) -> Option<f64> {
    rows.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// The first key present in `rows` among those ending in `suffix` and starting with `prefix`.
fn find_key(rows: &[(String, String)], prefix: &str, suffix: &str) -> Option<String> {
    rows.iter()
        .map(|(k, _)| k)
        .find(|k| k.starts_with(prefix) && k.ends_with(suffix))
        .cloned()
}

/// The floor's verdict on a target, appended to its line: a target the floor misses too
/// is out of reach on this machine, whatever the server does.
fn floor_note(figure: String, met: bool) -> String {
    let verdict = if met { "meets" } else { "misses" };
    format!("; floor {figure} (the floor {verdict} it)")
}

/// Checks the performance targets against a libvirtd (`a`) and a virtumld (`b`)
/// result file written by tools/bench-vs-libvirtd, and prints one line per target; with
/// `floor` (`rpcbench floor` measured in the same rounds), the floor's own verdict too.
pub fn targets(a: &Path, b: &Path, floor: Option<&Path>) -> std::io::Result<()> {
    let l = read_rows(a)?;
    let v = read_rows(b)?;
    let f = floor.map(read_rows).transpose()?.unwrap_or_default();
    for (what, val, ok) in check_targets(&l, &v, &f) {
        let verdict = match ok {
            Some(true) => "MET   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        println!("{verdict} {what}: {val}");
    }
    Ok(())
}

type Rows = [(String, String)];

/// One line per target: what, the figures, and met (None when a figure is missing).
fn check_targets(l: &Rows, v: &Rows, f: &Rows) -> Vec<(String, String, Option<bool>)> {
    let mut lines: Vec<(String, String, Option<bool>)> = Vec::new();
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
    // 1. server CPU per simple call.
    for key in [
        "version_16x16.server_cpu_us",
        "info_16x16.server_cpu_us",
        "version_1x1.server_cpu_us",
    ] {
        let (x, y) = (lookup(l, key), lookup(v, key));
        let floor = lookup(f, key).map_or(String::new(), |z| {
            floor_note(format!("{z:.1} us"), z <= 10.0)
        });
        lines.push((
            format!("server CPU per call <= 10 us ({key})"),
            format!("virtumld {} us, libvirtd {} us{floor}", fmt(y), fmt(x)),
            y.map(|y| y <= 10.0),
        ));
    }
    // 2./3./4. ratios against libvirtd.
    let ratio_of = |x: Option<f64>, y: Option<f64>, higher: bool| match (x, y) {
        (Some(x), Some(y)) if higher && x > 0.0 => Some(y / x),
        (Some(x), Some(y)) if !higher && y > 0.0 => Some(x / y),
        _ => None,
    };
    for (what, key, higher) in [
        (
            ">= 5x libvirtd replies/s",
            "version_16x16.replies_per_s",
            true,
        ),
        (">= 5x libvirtd replies/s", "info_16x16.replies_per_s", true),
        (
            "p99 >= 5x lower at equal load",
            "version_16x16.p99_us",
            false,
        ),
        ("p99 >= 5x lower at equal load", "info_16x16.p99_us", false),
        ("p99 >= 5x lower at equal load", "version_1x1.p99_us", false),
        (
            "p99 >= 5x lower at equal load",
            "version_2000rps.p99_us",
            false,
        ),
        (
            "p99 >= 5x lower at equal load",
            "info_2000rps.p99_us",
            false,
        ),
        (
            "open+close >= 5x libvirtd's rate",
            "open_1.opens_per_s",
            true,
        ),
        (
            "open+close >= 5x libvirtd's rate",
            "open_4.opens_per_s",
            true,
        ),
    ] {
        let (x, y) = (lookup(l, key), lookup(v, key));
        let r = ratio_of(x, y, higher);
        let floor = ratio_of(x, lookup(f, key), higher).map_or(String::new(), |z| {
            floor_note(format!("ratio {z:.2}"), z >= 5.0)
        });
        lines.push((
            format!("{what} ({key})"),
            format!(
                "virtumld {}, libvirtd {}, ratio {:.2}{floor}",
                fmt(y),
                fmt(x),
                r.unwrap_or(f64::NAN)
            ),
            r.map(|r| r >= 5.0),
        ));
    }
    // 5. idle RSS.
    let rss = lookup(v, "start.idle_rss_kib");
    lines.push((
        "idle RSS <= 10 MB (fresh daemon)".into(),
        format!(
            "virtumld {} KiB, libvirtd {} KiB",
            fmt(rss),
            fmt(lookup(l, "start.idle_rss_kib"))
        ),
        rss.map(|r| r <= 10.0 * 1024.0),
    ));
    // 6./7. idle connections.
    if let Some(k) = find_key(v, "idle_", ".per_conn_bytes") {
        let (x, y) = (lookup(l, &k), lookup(v, &k));
        lines.push((
            format!("memory per idle connection <= libvirtd's ({k})"),
            format!("virtumld {} B, libvirtd {} B", fmt(y), fmt(x)),
            match (x, y) {
                (Some(x), Some(y)) => Some(y <= x),
                _ => None,
            },
        ));
        let tag = k.trim_end_matches(".per_conn_bytes");
        let held = lookup(v, &format!("{tag}.conns_held"));
        let want = lookup(v, &format!("{tag}.conns_requested"));
        let p99 = lookup(v, &format!("{tag}.canary_p99_us"));
        lines.push((
            format!("{} idle connections held, canary p99 < 1 ms", fmt(want)),
            format!(
                "virtumld held {} with canary p99 {} us; libvirtd held {} with p99 {} us",
                fmt(held),
                fmt(p99),
                fmt(lookup(l, &format!("{tag}.conns_held"))),
                fmt(lookup(l, &format!("{tag}.canary_p99_us")))
            ),
            match (held, want, p99) {
                (Some(h), Some(w), Some(p)) if w >= 10_000.0 => Some(h >= w && p < 1000.0),
                _ => None,
            },
        ));
    }
    // 8./9. many domains.
    if let Some(k) = find_key(v, "list_", ".domains_listed")
        .into_iter()
        .chain(v.iter().map(|(k, _)| k.clone()))
        .filter(|k| k.starts_with("list_") && k.ends_with(".domains_listed"))
        .max_by_key(|k| lookup(v, k).unwrap_or(0.0) as u64)
    {
        let tag = k.trim_end_matches(".domains_listed");
        let n = lookup(v, &k).unwrap_or(0.0);
        let p50 = lookup(v, &format!("{tag}.p50_us"));
        let p99 = lookup(v, &format!("{tag}.p99_us"));
        lines.push((
            format!("CONNECT_LIST_ALL_DOMAINS with {n:.0} domains < 20 ms"),
            format!(
                "virtumld p50 {} us p99 {} us; libvirtd p50 {} us p99 {} us",
                fmt(p50),
                fmt(p99),
                fmt(lookup(l, &format!("{tag}.p50_us"))),
                fmt(lookup(l, &format!("{tag}.p99_us")))
            ),
            p99.filter(|_| n >= 10_000.0).map(|p| p < 20_000.0),
        ));
    }
    if let Some(k) = find_key(v, "start_", ".list_ready_ms") {
        let ms = lookup(v, &k);
        let tag = k.trim_end_matches(".list_ready_ms");
        let n = lookup(v, &format!("{tag}.domains_listed")).unwrap_or(0.0);
        lines.push((
            format!("daemon start with {n:.0} definitions < 1 s"),
            format!(
                "virtumld answered after {} ms and listed them all after {} ms",
                fmt(lookup(v, &format!("{tag}.handshake_ready_ms"))),
                fmt(ms)
            ),
            ms.filter(|_| n >= 10_000.0).map(|m| m < 1000.0),
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<(String, String)> {
        text.split_whitespace()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|kv| (kv[0].to_string(), kv[1].to_string()))
            .collect()
    }

    /// The line of `key` has this verdict and its figures end so.
    fn check(lines: &[(String, String, Option<bool>)], key: &str, met: bool, ends: &str) {
        let (_, val, ok) = lines
            .iter()
            .find(|(what, ..)| what.contains(key))
            .expect(key);
        assert_eq!(*ok, Some(met), "{key}");
        assert!(val.ends_with(ends), "{key}: {val}");
    }

    #[test]
    fn a_target_line_carries_the_floors_own_verdict_when_the_floor_was_measured() {
        let l = rows("version_1x1.server_cpu_us 70 open_4.opens_per_s 2000 open_1.opens_per_s 900");
        let v =
            rows("version_1x1.server_cpu_us 27 open_4.opens_per_s 9000 open_1.opens_per_s 4600");
        let f = rows("version_1x1.server_cpu_us 24 open_4.opens_per_s 11000");
        let lines = check_targets(&l, &v, &f);
        check(
            &lines,
            "(version_1x1.server_cpu_us)",
            false,
            "; floor 24.0 us (the floor misses it)",
        );
        check(
            &lines,
            "(open_4.opens_per_s)",
            false,
            "; floor ratio 5.50 (the floor meets it)",
        );
        // No floor figure, no note.
        check(&lines, "(open_1.opens_per_s)", true, "ratio 5.11");
        assert!(check_targets(&l, &v, &[])
            .iter()
            .all(|(_, val, _)| !val.contains("floor")));
    }
}
