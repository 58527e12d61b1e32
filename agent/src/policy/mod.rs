//! Runtime policies: reading and validating `RuntimePolicy` documents,
//! choosing the policies that apply to a workload, and turning network rules
//! into the kernel's form.
//!
//! # Schema
//!
//! A policy file is YAML and may contain several documents separated by
//! `---`. Empty documents are skipped. Every other document must be:
//!
//! ```yaml
//! apiVersion: parapet.dev/v1alpha1
//! kind: RuntimePolicy
//! metadata:
//!   name: records-db            # DNS-1123 label, unique across the loaded set
//! spec:
//!   selector:                   # namespace, matchLabels or both
//!     namespace: clinic
//!     matchLabels: {app: records-db}
//!     containers: [postgres]    # optional; absent = every container of the pod
//!   mode: enforce               # enforce | audit
//!   network:                    # optional; absent = egress not restricted
//!     egress:                   # present, even empty or null = only these peers
//!       - to:                   # one or more peers
//!           - cidr: 10.96.0.0/12
//!           - address: 10.1.2.3
//!         ports:                # optional; absent = every port, TCP and UDP
//!           - port: 5432
//!             endPort: 5440     # optional, >= port
//!             protocol: TCP     # TCP | UDP; absent = both
//! ```
//!
//! An IPv6 prefix that covers `::ffff:0:0/96`, such as `::/0`, also covers
//! every IPv4 peer, because the kernel compares IPv4 peers as IPv4-mapped
//! IPv6 addresses.
//!
//! Unknown fields and duplicate keys are errors, so that a typo can never
//! switch enforcement off. Every error names the file, the line and the
//! column (1-based, columns counted in characters), and the field path where
//! one exists: see [`PolicyError`].
//!
//! # Several policies on one workload: the stricter verdict wins
//!
//! When several policies select one workload, every one of them is checked
//! for each operation:
//!
//! - A policy restricts an operation only if it has a section for it. A
//!   policy without `network.egress` does not restrict connections at all.
//! - An operation is allowed only if every policy that restricts it allows it.
//! - If any policy in `enforce` mode refuses it, the operation is denied.
//! - If only policies in `audit` mode refuse it, the operation goes through
//!   and is reported with the verdict `Audit`.
//!
//! Adding a policy can therefore only narrow what a workload may do, never
//! widen it. The kernel applies this rule by checking every policy slot of a
//! cgroup; [`evaluate_egress`] states the same rule in plain Rust, over the
//! same [`NetRule::matches`](parapet_common::net::NetRule::matches).

mod load;
mod model;
mod net;
mod schema;
mod select;
mod yaml;

pub use load::{
    CheckReport, FileReport, PolicyError, Position, check_files, load_dir, load_file, parse_str,
};
pub use model::{EgressRule, Mode, NetworkPolicy, Peer, Policy, PortRange, Protocol, Selector};
pub use net::{Decision, evaluate_egress, ip_from_kernel, kernel_addr, net_policy};
pub use select::{PodLabels, Workload, select};

/// The only `apiVersion` this agent reads.
pub const API_VERSION: &str = "parapet.dev/v1alpha1";

/// The only `kind` this agent reads.
pub const KIND: &str = "RuntimePolicy";

/// Maximum size of one policy file in bytes (1 MiB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Maximum number of policies in the loaded set, across all files.
pub const MAX_POLICIES: usize = 256;
