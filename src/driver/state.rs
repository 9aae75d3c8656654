//! libvirt's domain states, their reasons, and lifecycle event numbers.

/// `virDomainState`.
pub mod domain_state {
    pub const RUNNING: i32 = 1;
    pub const PAUSED: i32 = 3;
    pub const SHUTOFF: i32 = 5;
}

/// `virDomainRunningReason`.
pub mod running {
    pub const BOOTED: i32 = 1;
    pub const UNPAUSED: i32 = 5;
}

/// `virDomainPausedReason`.
pub mod paused {
    pub const USER: i32 = 1;
}

/// `virDomainShutoffReason`.
pub mod shutoff {
    pub const UNKNOWN: i32 = 0;
    pub const SHUTDOWN: i32 = 1;
    pub const DESTROYED: i32 = 2;
    pub const CRASHED: i32 = 3;
    pub const FAILED: i32 = 6;
}

/// `virDomainEventType` and the details used with each.
pub mod event {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const SUSPENDED: i32 = 3;
    pub const RESUMED: i32 = 4;
    pub const STOPPED: i32 = 5;

    pub const DEFINED_ADDED: i32 = 0;
    pub const DEFINED_UPDATED: i32 = 1;
    pub const UNDEFINED_REMOVED: i32 = 0;
    pub const STARTED_BOOTED: i32 = 0;
    pub const SUSPENDED_PAUSED: i32 = 0;
    pub const RESUMED_UNPAUSED: i32 = 0;
    pub const STOPPED_SHUTDOWN: i32 = 0;
    pub const STOPPED_DESTROYED: i32 = 1;
    pub const STOPPED_CRASHED: i32 = 2;
    pub const STOPPED_FAILED: i32 = 5;
}

/// `virDomainEventID`: what a client registers for.
pub mod event_id {
    pub const LIFECYCLE: i32 = 0;
    pub const REBOOT: i32 = 1;
    /// One past the last event ID libvirt 9.0 defines.
    pub const LAST: i32 = 27;
}

/// A state and its reason, as `virDomainGetState` returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateReason {
    pub state: i32,
    pub reason: i32,
}

impl StateReason {
    pub const fn new(state: i32, reason: i32) -> Self {
        StateReason { state, reason }
    }
}
