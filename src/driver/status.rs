//! The live status file of a running guest (`run/libvirt/uml/NAME.xml`): what a restarted
//! daemon needs to find the guest again. One line of attributes, then the live definition:
//!
//! ```text
//! <domstatus state='1' reason='1' id='3' pid='1234' start_time='5678' umid='demo' lines='console0:4:/dev/pts/3' ready='1'>
//! <domain type='uml'>…</domain>
//! </domstatus>
//! ```
//!
//! It is first written, with `ready='0'`, right after the guest's process is spawned and
//! before it has booted, so that a daemon killed during a start leaves the guest known to
//! its successor; it is rewritten with `ready='1'` once the start has completed. The
//! successor completes such a start in the background, the domain meanwhile as during any
//! start (`Driver::adopt_start`), so a guest still booting does not delay its listening. A
//! file without `ready` (older daemons wrote it only when ready) counts as ready.

use std::path::PathBuf;

use crate::driver::state::StateReason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: StateReason,
    pub id: i32,
    pub pid: i32,
    pub start_time: u64,
    pub umid: String,
    /// Console lines: alias, the guest's spare pty master descriptor, the pty path.
    pub lines: Vec<SavedLine>,
    /// The live domain XML.
    pub xml: String,
    /// False while the start that wrote it has not completed (the guest may still boot).
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedLine {
    pub alias: String,
    pub guest_fd: i32,
    pub path: PathBuf,
}

const OPEN: &str = "<domstatus ";
const CLOSE: &str = "</domstatus>";

impl Status {
    pub fn to_text(&self) -> String {
        format!(
            "{OPEN}state='{}' reason='{}' id='{}' pid='{}' start_time='{}' umid='{}' lines='{}' ready='{}'>\n{}{}{CLOSE}\n",
            self.state.state,
            self.state.reason,
            self.id,
            self.pid,
            self.start_time,
            crate::xml_escape(&self.umid),
            self.lines
                .iter()
                .map(|l| format!("{}:{}:{}", l.alias, l.guest_fd, l.path.display()))
                .collect::<Vec<_>>()
                .join(";"),
            u8::from(self.ready),
            self.xml,
            if self.xml.ends_with('\n') { "" } else { "\n" },
        )
    }

    pub fn parse(text: &str) -> Option<Status> {
        let (first, rest) = text.split_once('\n')?;
        let attrs = first.strip_prefix(OPEN)?.strip_suffix('>')?;
        let xml = rest.trim_end().strip_suffix(CLOSE)?.to_string();
        let get = |key: &str| -> Option<&str> {
            let start = attrs.find(&format!("{key}='"))? + key.len() + 2;
            let end = attrs[start..].find('\'')? + start;
            Some(&attrs[start..end])
        };
        let umid = get("umid")?;
        // umids are chosen by the daemon from a safe alphabet: nothing to unescape.
        if umid.contains('&') {
            return None;
        }
        // Aliases and /dev/pts paths have no ':', ';' or quote in them.
        let mut lines = Vec::new();
        for item in get("lines")?.split(';').filter(|i| !i.is_empty()) {
            let mut parts = item.splitn(3, ':');
            let alias = parts.next()?.to_string();
            let guest_fd = parts.next()?.parse().ok()?;
            let path = PathBuf::from(parts.next()?);
            lines.push(SavedLine {
                alias,
                guest_fd,
                path,
            });
        }
        Some(Status {
            lines,
            state: StateReason::new(get("state")?.parse().ok()?, get("reason")?.parse().ok()?),
            id: get("id")?.parse().ok()?,
            pid: get("pid")?.parse().ok()?,
            start_time: get("start_time")?.parse().ok()?,
            umid: umid.to_string(),
            xml,
            ready: match get("ready") {
                None | Some("1") => true,
                Some("0") => false,
                Some(_) => return None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_garbage() {
        let s = Status {
            state: StateReason::new(1, 1),
            id: 7,
            pid: 1234,
            start_time: 99,
            umid: "demo".into(),
            lines: vec![SavedLine {
                alias: "console0".into(),
                guest_fd: 4,
                path: "/dev/pts/3".into(),
            }],
            xml: "<domain type='uml'>\n  <name>demo</name>\n</domain>\n".into(),
            ready: true,
        };
        let text = s.to_text();
        assert_eq!(Status::parse(&text), Some(s.clone()));
        let starting = Status {
            ready: false,
            ..s.clone()
        };
        assert_eq!(Status::parse(&starting.to_text()), Some(starting));
        // Written before `ready` existed: a finished start.
        let old = text.replace(" ready='1'", "");
        assert_eq!(Status::parse(&old), Some(s));
        assert_eq!(Status::parse(&text.replace("ready='1'", "ready='x'")), None);
        assert_eq!(Status::parse(""), None);
        assert_eq!(Status::parse(&text[..text.len() / 2]), None);
        assert_eq!(Status::parse("<domstatus state='x'>\n</domstatus>"), None);
    }
}
