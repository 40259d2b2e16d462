//! Condition types and reasons (standard `metav1.Condition` shape) used in weft's statuses.

pub const READY: &str = "Ready";
pub const RECONCILED: &str = "Reconciled";
pub const UNSUPPORTED: &str = "Unsupported";
pub const DEGRADED: &str = "Degraded";
/// On every revision while a root rotation is under way (`weft ca rotate`); reason = phase.
pub const ROOT_ROTATION: &str = "RootRotation";
pub const RESOLVED: &str = "Resolved";
pub const IN_USE: &str = "InUse";
