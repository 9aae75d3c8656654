//! Where the daemon keeps everything, for system and session mode. `--root DIR` relocates the
//! system layout under DIR so tests and unprivileged users can run a full instance anywhere.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    System,
    Session,
}

impl Mode {
    /// The URI path a client must ask for: `uml:///system` or `uml:///session`.
    pub fn uri_path(self) -> &'static str {
        match self {
            Mode::System => "/system",
            Mode::Session => "/session",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Paths {
    pub config_file: PathBuf,
    /// Persistent domain definitions (`NAME.xml`), with `autostart/` links below.
    pub domain_config_dir: PathBuf,
    pub autostart_dir: PathBuf,
    /// Live status of running guests (`NAME.xml`).
    pub domain_state_dir: PathBuf,
    /// UML's own `uml_dir`: one `<umid>/` folder per running guest.
    pub uml_dir: PathBuf,
    pub log_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub pid_file: PathBuf,
    /// libvirt's PKI tree (`/etc/pki`, or `DIR/etc/pki` with `--root DIR`): the TLS
    /// defaults `libvirt/servercert.pem`, `libvirt/private/serverkey.pem`,
    /// `CA/cacert.pem` and `CA/cacrl.pem` live below it.
    pub pki_dir: PathBuf,
    /// Session mode: `~/.pki/libvirt`, looked at first for each of those files (by their
    /// bare names), as libvirtd does for unprivileged users.
    pub user_pki_dir: Option<PathBuf>,
}

impl Paths {
    /// The system layout below `root` (`/` for a real system instance).
    pub fn system(root: &Path) -> Paths {
        let etc = root.join("etc/libvirt");
        let run = root.join("run/libvirt");
        Paths {
            config_file: etc.join("virtumld.conf"),
            domain_config_dir: etc.join("uml"),
            autostart_dir: etc.join("uml/autostart"),
            domain_state_dir: run.join("uml"),
            uml_dir: run.join("uml-guest"),
            log_dir: root.join("var/log/libvirt/uml"),
            socket_dir: run.clone(),
            pid_file: run.join("virtumld.pid"),
            pki_dir: root.join("etc/pki"),
            user_pki_dir: None,
        }
    }

    /// The per-user layout, from the XDG variables as libvirt's clients compute them.
    pub fn session(env: &dyn Fn(&str) -> Option<String>) -> Paths {
        let home = PathBuf::from(env("HOME").unwrap_or_else(|| "/".into()));
        let xdg = |var: &str, fallback: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(fallback))
        };
        let config = xdg("XDG_CONFIG_HOME", ".config").join("libvirt");
        let cache = xdg("XDG_CACHE_HOME", ".cache").join("libvirt");
        // Clients look for the session socket in $XDG_RUNTIME_DIR/libvirt, else ~/.cache/libvirt.
        let runtime = env("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(|d| PathBuf::from(d).join("libvirt"))
            .unwrap_or_else(|| home.join(".cache/libvirt"));
        Paths {
            config_file: config.join("virtumld.conf"),
            domain_config_dir: config.join("uml"),
            autostart_dir: config.join("uml/autostart"),
            domain_state_dir: runtime.join("uml"),
            uml_dir: runtime.join("uml-guest"),
            log_dir: cache.join("uml/log"),
            socket_dir: runtime.clone(),
            pid_file: runtime.join("virtumld.pid"),
            pki_dir: PathBuf::from("/etc/pki"),
            user_pki_dir: Some(home.join(".pki/libvirt")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_layout_under_root() {
        let p = Paths::system(Path::new("/tmp/r"));
        assert_eq!(p.socket_dir, Path::new("/tmp/r/run/libvirt"));
        assert_eq!(p.domain_config_dir, Path::new("/tmp/r/etc/libvirt/uml"));
        assert_eq!(p.log_dir, Path::new("/tmp/r/var/log/libvirt/uml"));
        assert_eq!(p.config_file, Path::new("/tmp/r/etc/libvirt/virtumld.conf"));
        assert_eq!(p.pki_dir, Path::new("/tmp/r/etc/pki"));
        assert_eq!(p.user_pki_dir, None);
    }

    #[test]
    fn session_layout_follows_xdg() {
        let env = |k: &str| match k {
            "HOME" => Some("/home/u".to_string()),
            "XDG_RUNTIME_DIR" => Some("/run/user/1000".to_string()),
            _ => None,
        };
        let p = Paths::session(&env);
        assert_eq!(p.socket_dir, Path::new("/run/user/1000/libvirt"));
        assert_eq!(
            p.config_file,
            Path::new("/home/u/.config/libvirt/virtumld.conf")
        );
        assert_eq!(p.pki_dir, Path::new("/etc/pki"));
        assert_eq!(
            p.user_pki_dir.as_deref(),
            Some(Path::new("/home/u/.pki/libvirt"))
        );
        let no_runtime = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        assert_eq!(
            Paths::session(&no_runtime).socket_dir,
            Path::new("/home/u/.cache/libvirt")
        );
    }
}
