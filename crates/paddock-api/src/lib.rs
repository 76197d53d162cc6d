//! Paddock's API types (`paddock.io/v1alpha1`): the resources a user and the
//! agents exchange, with their validation and defaulting rules. No I/O here.

pub mod cluster;
pub mod host;
pub mod image;
pub mod machine;
pub mod meta;
pub mod quantity;
pub mod validation;
pub mod version;

pub use cluster::{
    Cluster, ClusterInitialization, ClusterPhase, ClusterSpec, ClusterStatus, ControlPlaneSpec,
    NodePool,
};
pub use host::{Host, HostPhase, HostSpec, HostStatus};
pub use image::{ImageMinimum, MachineImage, MachineImageSpec, MachineSize};
pub use machine::{Machine, MachinePhase, MachineRole, MachineSpec, MachineStatus, NodeStatus};
pub use quantity::{Cpu, Memory};
pub use validation::{FieldError, FieldErrorKind, Validate};
pub use version::KubeVersion;

/// The API group of Paddock's own resources.
pub const GROUP: &str = "paddock.io";
/// The one served version of that group.
pub const VERSION: &str = "v1alpha1";
/// `group/version`, as written in `apiVersion`.
pub const API_VERSION: &str = "paddock.io/v1alpha1";

/// Label put on every Machine naming the Cluster it belongs to.
pub const LABEL_CLUSTER: &str = "paddock.io/cluster";
/// Label naming the Machine's role (`control-plane` or `worker`).
pub const LABEL_ROLE: &str = "paddock.io/role";
/// Label naming the node pool of a worker Machine.
pub const LABEL_POOL: &str = "paddock.io/pool";
