//! The command-line contract (tests and the stock client's autospawn rely on it):
//! `virtumld [--system | --session] [--root DIR] [--config FILE] [--listen]
//!           [--timeout SECS] [--pid-file FILE] [--verbose]`.

use std::path::PathBuf;

use crate::paths::Mode;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub mode: Option<Mode>,
    pub root: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub listen: bool,
    pub timeout: Option<u64>,
    pub pid_file: Option<PathBuf>,
    pub verbose: bool,
}

pub const USAGE: &str = "\
Usage: virtumld [OPTIONS]

A libvirt-protocol daemon for User Mode Linux guests.

Options:
  --system           serve uml:///system (the default when run as root)
  --session          serve uml:///session (the default otherwise)
  --root DIR         place every path under DIR, with the system layout
  -f, --config FILE  configuration file (libvirtd.conf syntax)
  -l, --listen       enable the TCP/TLS listeners the configuration asks for
  -t, --timeout SECS exit after SECS seconds with no client and no running guest
  -p, --pid-file FILE
  -v, --verbose      log at debug level (RUST_LOG overrides)
  -h, --help
  -V, --version
";

#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(Options),
    Help,
    Version,
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut o = Options::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("option {name} needs {what}"))
        };
        match name.as_str() {
            "--system" => o.mode = Some(Mode::System),
            "--session" => o.mode = Some(Mode::Session),
            "--root" => o.root = Some(PathBuf::from(value("a directory")?)),
            "-f" | "--config" => o.config = Some(PathBuf::from(value("a file")?)),
            "-l" | "--listen" => o.listen = true,
            "-t" | "--timeout" => {
                let v = value("a number of seconds")?;
                o.timeout = Some(
                    v.parse()
                        .map_err(|_| format!("invalid timeout '{v}': expected seconds"))?,
                );
            }
            "-p" | "--pid-file" => o.pid_file = Some(PathBuf::from(value("a file")?)),
            "-v" | "--verbose" => o.verbose = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            // Accepted for compatibility with libvirtd's command line.
            "-d" | "--daemon" => {}
            _ => return Err(format!("unknown option '{arg}'\n\n{USAGE}")),
        }
    }
    Ok(Parsed::Run(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn contract() {
        let Parsed::Run(o) = run(&[
            "--session",
            "--root",
            "/r",
            "--listen",
            "--timeout=120",
            "--pid-file",
            "/p",
            "-f",
            "/c",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(o.mode, Some(Mode::Session));
        assert_eq!(o.root, Some(PathBuf::from("/r")));
        assert!(o.listen);
        assert_eq!(o.timeout, Some(120));
        assert_eq!(o.config, Some(PathBuf::from("/c")));
        assert_eq!(run(&["--help"]), Ok(Parsed::Help));
        assert!(run(&["--timeout"]).is_err());
        assert!(run(&["--timeout", "x"]).is_err());
        assert!(run(&["--bogus"]).is_err());
    }
}
