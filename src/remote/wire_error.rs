//! Building libvirt-shaped errors for the wire.

use virtumld_protocol::error::{domain, format_message, RemoteError};

/// An error raised by this daemon's UML driver (domain VIR_FROM_UML), with libvirt's prefix.
pub fn new(c: i32, detail: impl AsRef<str>) -> RemoteError {
    RemoteError::new(c, domain::UML, format_message(c, detail.as_ref()))
}

pub mod error {
    use super::new;
    use virtumld_protocol::error::{code, RemoteError};
    use virtumld_protocol::procedures::ProcInfo;

    pub fn no_support(info: &ProcInfo) -> RemoteError {
        new(code::NO_SUPPORT, info.api)
    }

    pub fn invalid_arg(detail: impl AsRef<str>) -> RemoteError {
        new(code::INVALID_ARG, detail)
    }

    pub fn internal(detail: impl AsRef<str>) -> RemoteError {
        new(code::INTERNAL_ERROR, detail)
    }

    /// Unsupported flag bits, worded as libvirt's flag check words them.
    pub fn unsupported_flags(info: &ProcInfo, flags: u64) -> RemoteError {
        new(
            code::INVALID_ARG,
            format!("{}: unsupported flags (0x{flags:x})", info.api),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtumld_protocol::error::code;

    #[test]
    fn messages_carry_libvirts_prefixes() {
        let e = new(code::NO_DOMAIN, "no domain with matching name 'x'");
        assert_eq!(
            e.message.as_deref(),
            Some("Domain not found: no domain with matching name 'x'")
        );
        assert_eq!((e.code, e.domain, e.level), (42, domain::UML, 2));
        assert_eq!(e.str1, e.message);
    }
}
