//! `DefError`: why a domain definition was refused, with the libvirt error number the daemon
//! puts on the wire.
//!
//! Codes follow what libvirt's own domain parser raises for the same mistake, so that `virsh`
//! prints what users already know:
//! - not well-formed XML: libxml2's complaint is raised as `VIR_ERR_XML_DETAIL` with the pseudo
//!   file name `(domain_definition)` and a line number; we do the same;
//! - missing or bad values, and XML we refuse to read at all (DOCTYPE, too big, too deep):
//!   `VIR_ERR_XML_ERROR`, libvirt's code for "invalid XML" (it also uses it for a `/` in a name);
//! - a missing `<name>`: `VIR_ERR_NO_NAME`, as libvirt;
//! - a domain type, OS type, arch or machine this hypervisor does not offer: libvirt finds no
//!   matching guest in its capabilities and raises `VIR_ERR_INVALID_ARG` ("could not find
//!   capabilities for …"); we keep that wording;
//! - an unknown unit suffix: `VIR_ERR_INVALID_ARG` ("unknown suffix"), as libvirt's scaler;
//! - valid libvirt XML that UML cannot honour: `VIR_ERR_CONFIG_UNSUPPORTED`, naming the element
//!   or attribute.

/// `VIR_ERR_INTERNAL_ERROR`
pub const VIR_ERR_INTERNAL_ERROR: i32 = 1;
/// `VIR_ERR_INVALID_ARG`
pub const VIR_ERR_INVALID_ARG: i32 = 8;
/// `VIR_ERR_NO_NAME`
pub const VIR_ERR_NO_NAME: i32 = 21;
/// `VIR_ERR_XML_ERROR`
pub const VIR_ERR_XML_ERROR: i32 = 27;
/// `VIR_ERR_XML_DETAIL`
pub const VIR_ERR_XML_DETAIL: i32 = 35;
/// `VIR_ERR_CONFIG_UNSUPPORTED`
pub const VIR_ERR_CONFIG_UNSUPPORTED: i32 = 67;

/// Why a domain definition (or the command line built from it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefError {
    /// The document is not well-formed XML (`VIR_ERR_XML_DETAIL`).
    #[error("(domain_definition):{line}: {message}")]
    Syntax { line: usize, message: String },
    /// Well-formed, but invalid or refused as a document (`VIR_ERR_XML_ERROR`).
    #[error("XML error: {0}")]
    Xml(String),
    /// Valid libvirt XML that the UML driver cannot honour (`VIR_ERR_CONFIG_UNSUPPORTED`).
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
    /// A value no capability matches, or an unknown unit (`VIR_ERR_INVALID_ARG`).
    #[error("invalid argument: {0}")]
    InvalidArg(String),
    /// No `<name>`, or an empty one (`VIR_ERR_NO_NAME`).
    #[error("missing name information")]
    NoName,
    /// Something outside the XML failed, e.g. no randomness for a UUID, or the daemon passed an
    /// unusable environment to the command-line builder (`VIR_ERR_INTERNAL_ERROR`).
    #[error("internal error: {0}")]
    Internal(String),
}

impl DefError {
    /// libvirt's `virErrorNumber` for this error.
    pub fn vir_code(&self) -> i32 {
        match self {
            DefError::Syntax { .. } => VIR_ERR_XML_DETAIL,
            DefError::Xml(_) => VIR_ERR_XML_ERROR,
            DefError::Unsupported(_) => VIR_ERR_CONFIG_UNSUPPORTED,
            DefError::InvalidArg(_) => VIR_ERR_INVALID_ARG,
            DefError::NoName => VIR_ERR_NO_NAME,
            DefError::Internal(_) => VIR_ERR_INTERNAL_ERROR,
        }
    }
}

/// "`<child>` … is not supported by the UML driver", worded after where it appeared.
pub(crate) fn unsupported_element(parent: &str, child: &str) -> DefError {
    DefError::Unsupported(match parent {
        "devices" => format!("<{child}> devices are not supported by the UML driver"),
        "domain" => format!("<{child}> is not supported by the UML driver"),
        _ => format!("<{child}> in <{parent}> is not supported by the UML driver"),
    })
}

pub(crate) fn unsupported_attr(element: &str, attr: &str) -> DefError {
    DefError::Unsupported(format!(
        "attribute '{attr}' of <{element}> is not supported by the UML driver"
    ))
}

pub(crate) fn unsupported_value(element: &str, attr: &str, value: &str, hint: &str) -> DefError {
    DefError::Unsupported(format!(
        "{attr}='{value}' on <{element}> is not supported by the UML driver{hint}"
    ))
}
