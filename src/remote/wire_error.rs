//! Building libvirt-shaped errors: the message starts with the text libvirt puts in front
//! of each error code, so clients print what a libvirt user is used to reading.

use virtumld_protocol::error::{code, domain, RemoteError};

/// The prefix libvirt formats in front of an error's detail, by code.
fn prefix(c: i32) -> Option<&'static str> {
    Some(match c {
        code::INTERNAL_ERROR => "internal error",
        code::NO_SUPPORT => "this function is not supported by the connection driver",
        code::INVALID_ARG => "invalid argument",
        code::OPERATION_FAILED => "operation failed",
        code::XML_ERROR => "XML error",
        code::OPERATION_DENIED => "operation forbidden",
        code::NO_DOMAIN => "Domain not found",
        code::AUTH_FAILED => "authentication failed",
        code::OPERATION_INVALID => "Requested operation is not valid",
        code::CONFIG_UNSUPPORTED => "unsupported configuration",
        code::OPERATION_TIMEOUT => "Timed out during operation",
        code::ARGUMENT_UNSUPPORTED => "argument unsupported",
        code::OPERATION_UNSUPPORTED => "Operation not supported",
        code::NO_DOMAIN_METADATA => "metadata not found",
        code::XML_DETAIL => "XML error",
        code::NO_CONNECT => "no connection driver available for",
        _ => return None,
    })
}

/// An error raised by this daemon's driver code (domain VIR_FROM_UML).
pub fn new(c: i32, detail: impl AsRef<str>) -> RemoteError {
    let detail = detail.as_ref();
    let message = match prefix(c) {
        Some(p) if c == code::NO_CONNECT => format!("{p} {detail}"),
        Some(p) => format!("{p}: {detail}"),
        None => detail.to_string(),
    };
    RemoteError::new(c, domain::UML, message)
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

    pub fn operation_invalid(detail: impl AsRef<str>) -> RemoteError {
        new(code::OPERATION_INVALID, detail)
    }

    /// Unsupported flag bits, worded as libvirt's flag check words them.
    pub fn unsupported_flags(info: &ProcInfo, flags: u64) -> RemoteError {
        new(
            code::INVALID_ARG,
            format!("{}: unsupported flags (0x{flags:x})", info.api),
        )
    }
}

/// Converts a backend error into the wire form; implemented by each backend error type.
pub trait Fail {
    fn to_remote(&self) -> RemoteError;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_libvirts_prefixes() {
        let e = new(code::NO_DOMAIN, "no domain with matching name 'x'");
        assert_eq!(
            e.message.as_deref(),
            Some("Domain not found: no domain with matching name 'x'")
        );
        assert_eq!((e.code, e.domain, e.level), (42, domain::UML, 2));
        let e = new(code::NO_CONNECT, "qemu:///system");
        assert_eq!(
            e.message.as_deref(),
            Some("no connection driver available for qemu:///system")
        );
    }
}
