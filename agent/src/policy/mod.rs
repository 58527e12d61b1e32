//! Runtime policies: reading and validating `RuntimePolicy` documents,
//! choosing the policies that apply to a workload, combining the policies of
//! one workload, and turning network rules into the kernel's form.
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
//!   filesystem:                 # optional; absent = writes not restricted
//!     readOnly: true            # required; false = writes not restricted
//!     writablePaths:            # optional, only with readOnly: true
//!       - /tmp                  # writable, with everything below it
//!       - /var/run/postgresql
//!   exec:                       # optional; absent = programs not restricted
//!     allow:                    # optional; present, even empty = only these
//!       - /usr/lib/postgresql/15/bin/postgres
//!     deny:                     # optional; these never run
//!       - /bin/busybox
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
//! An IPv6 prefix covers IPv6 peers only: `::/0` allows no IPv4 peer,
//! although the kernel compares IPv4 peers as IPv4-mapped IPv6 addresses.
//! An IPv4-mapped prefix (`::ffff:0:0/96` and longer) is read as the IPv4
//! prefix it stands for.
//!
//! Paths in `writablePaths`, `allow` and `deny` must be absolute, at most
//! [`MAX_PATH_BYTES`] bytes long, without a NUL byte, a `.` or `..`
//! component, a repeated `/` or a trailing `/`. A path that breaks a rule is
//! rejected, never rewritten. No list may contain a path twice.
//! `writablePaths` may not contain `/` or two paths of which one is inside
//! the other, and has at most [`MAX_WRITABLE_PATHS`] entries. `exec` needs
//! `allow` or a non-empty `deny`, `allow` and `deny` may not share a path,
//! neither may contain `/`, and each has at most [`MAX_EXEC_LIST_PATHS`]
//! entries. An exec entry names one program file: `deny: [/usr/bin]` does
//! not deny the programs in `/usr/bin`.
//!
//! Unknown fields and duplicate keys are errors, so that a typo can never
//! switch enforcement off. A field that takes a string rejects a plain
//! number, boolean or tagged value (`42`, `true`, `!x name`): quote it. A
//! file has at most [`MAX_FILE_BYTES`] bytes, lists and mappings nest at
//! most 128 levels deep, and a file has at most a million nodes once its
//! aliases (`*name`) are expanded, which bounds the work a small file can
//! cause. Every error names the file, the line and the
//! column (1-based, columns counted in characters), and the field path where
//! one exists: see [`PolicyError`].
//!
//! # Several policies on one workload: the stricter verdict wins
//!
//! When several policies select one workload, every one of them is checked
//! for each operation:
//!
//! - A policy restricts an operation only if it has a section for it. A
//!   policy without `network.egress` does not restrict connections at all,
//!   one without `filesystem` or with `readOnly: false` does not restrict
//!   writes, and one without `exec` does not restrict programs.
//! - An operation is allowed only if every policy that restricts it allows it.
//! - If any policy in `enforce` mode refuses it, the operation is denied.
//! - If only policies in `audit` mode refuse it, the operation goes through
//!   and is reported with the verdict `Audit`.
//!
//! Adding a policy can therefore only narrow what a workload may do, never
//! widen it. The kernel applies this rule by checking every policy slot of a
//! cgroup; [`evaluate_egress`] states the same rule in plain Rust, over the
//! same [`NetRule::matches`](parapet_common::net::NetRule::matches).
//!
//! For writes, a read-only policy allows a write only at or below one of its
//! `writablePaths`. A path is therefore writable without any report only
//! when every read-only policy lists it or one of its ancestors, and
//! [`read_only_plan`] computes these paths for one workload. Writes that
//! only audit-mode policies refuse go through and are reported, so the plan
//! also lists the paths writable under every enforce-mode read-only policy.
//!
//! For programs, a policy with an `exec` section refuses a program that its
//! `deny` list names (the same file, or the same path) and, when it has an
//! `allow` list, a program that is not the same file as one of its entries.
//! "The same file" means the same device and inode, so a hard link under
//! another name matches and a copy does not. A program runs only if every
//! policy with an `allow` list allows it and no `deny` list names it.
//! [`evaluate_exec`] states this rule in plain Rust, and [`exec_plan`] keeps
//! the `exec` sections per policy for the kernel's policy slots.
//!
//! NOTE: no kernel program enforces `filesystem` or `exec` yet. Policies
//! with these sections load, and only their `network` section is enforced.

mod load;
mod merge;
mod model;
mod net;
mod paths;
mod schema;
mod select;
mod nesting;
mod yaml;

pub use load::{
    CheckReport, FileContents, FileReport, PolicyError, Position, check_files, check_sources, load_dir,
    load_file, load_files, parse_bytes, parse_str, read_dir_files,
};
pub use merge::{
    ExecDecision, ExecEntry, ExecPlan, PolicyExec, ReadOnlyPlan, evaluate_exec, exec_plan,
    read_only_plan,
};
pub use model::{
    EgressRule, ExecPolicy, FilesystemPolicy, Mode, NetworkPolicy, Peer, Policy, PortRange,
    Protocol, Selector,
};
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

// A new set is written into free kernel policy slots while the set it
// replaces still holds its own, so the slots must fit two full sets.
const _: () = assert!(2 * MAX_POLICIES <= parapet_common::MAX_POLICY_SLOTS as usize);

/// Maximum number of entries in `spec.filesystem.writablePaths`.
pub const MAX_WRITABLE_PATHS: usize = 64;

/// Maximum number of entries in each of `spec.exec.allow` and
/// `spec.exec.deny`.
pub const MAX_EXEC_LIST_PATHS: usize = 256;

/// Maximum length in bytes of a path in a policy: Linux's `PATH_MAX` (4096)
/// less the terminating NUL byte.
pub const MAX_PATH_BYTES: usize = 4095;
