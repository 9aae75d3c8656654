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
        self.rows.push((key.to_string(), v.replace(char::is_whitespace, "_")));
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
    println!("|{}|{}:|{}:|{}:|", "-".repeat(kw + 2), "-".repeat(vw + 1), "-".repeat(vw + 1), "-".repeat(13));
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
