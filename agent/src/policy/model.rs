//! The validated policy model: what a loaded `RuntimePolicy` contains.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use parapet_common::net::{MAX_NET_RULES, PROTOCOL_TCP, PROTOCOL_UDP};

use super::load::Position;

/// Policy mode: `Enforce` blocks and reports an operation that the rules do
/// not allow, `Audit` only reports it.
pub use parapet_common::Mode;

/// One loaded and validated `RuntimePolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// `metadata.name`, unique across the loaded set.
    pub name: String,
    /// File the policy was read from.
    pub source: PathBuf,
    /// Position of `metadata.name` in `source`.
    pub position: Position,
    pub selector: Selector,
    pub mode: Mode,
    /// `spec.filesystem`, or `None` when the policy does not restrict writes.
    pub filesystem: Option<FilesystemPolicy>,
    /// `spec.exec`, or `None` when the policy does not restrict programs.
    pub exec: Option<ExecPolicy>,
    /// `spec.network`, or `None` when the policy does not mention the network.
    pub network: Option<NetworkPolicy>,
}

impl Policy {
    /// Returns a short hash of the policy's content, in hex: its name,
    /// selector, mode and rules, as this agent parsed them. Layout,
    /// comments and the file it came from do not change it, so nodes that
    /// run the same policy show the same hash.
    pub fn content_hash(&self) -> String {
        use sha2::Digest as _;
        let content = format!(
            "{:?}",
            (&self.name, &self.selector, self.mode, &self.filesystem, &self.exec, &self.network)
        );
        let digest = sha2::Sha256::digest(content.as_bytes());
        digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
    }
}

/// The workloads a policy applies to: `spec.selector`.
///
/// Policies read from files always set `namespace` or a non-empty
/// `match_labels`. A selector built by hand with neither selects nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Namespace of the pod, or `None` to match every namespace.
    pub namespace: Option<String>,
    /// Pod labels that must all be present with these values.
    pub match_labels: BTreeMap<String, String>,
    /// Container names, or `None` to select every container of the pod and
    /// the pod itself.
    pub containers: Option<Vec<String>>,
}

/// `spec.filesystem` of a policy.
///
/// Policies read from files always satisfy the rules of the module
/// documentation: `writable_paths` is empty unless `read_only` is true, and
/// its entries are valid absolute paths, none of them `/`, none inside
/// another, at most [`MAX_WRITABLE_PATHS`](super::MAX_WRITABLE_PATHS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilesystemPolicy {
    /// `readOnly`: when true, only `writable_paths` accept writes.
    pub read_only: bool,
    /// `writablePaths`, in file order: directories or files that stay
    /// writable, with everything below them.
    pub writable_paths: Vec<PathBuf>,
}

/// `spec.exec` of a policy.
///
/// Policies read from files always have an `allow` list or a non-empty
/// `deny` list, valid absolute paths, no path twice and no path in both
/// lists, and at most [`MAX_EXEC_LIST_PATHS`](super::MAX_EXEC_LIST_PATHS)
/// paths per list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecPolicy {
    /// `allow`: the only programs that may run, or `None` when the policy
    /// has no allow list. An empty list lets no program run.
    pub allow: Option<Vec<PathBuf>>,
    /// `deny`: programs that may never run.
    pub deny: Vec<PathBuf>,
}

/// `spec.network` of a policy.
///
/// The constructor enforces the kernel limit of [`MAX_NET_RULES`] rules per
/// policy, so every value converts to the kernel form without loss.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    egress: Option<Vec<EgressRule>>,
}

impl NetworkPolicy {
    /// Creates the network section of a policy. `egress: None` leaves
    /// connections unrestricted, `Some` allows only the listed peers (none
    /// for an empty list).
    ///
    /// Returns the kernel rule count as the error when the rules need more
    /// than [`MAX_NET_RULES`] kernel rules.
    pub fn new(egress: Option<Vec<EgressRule>>) -> Result<Self, usize> {
        let count = egress.as_deref().map_or(0, kernel_rule_count);
        if count > MAX_NET_RULES {
            return Err(count);
        }
        Ok(Self { egress })
    }

    /// Egress rules, in file order: the index of a rule in this slice is the
    /// rule number reported in events and counters. `None` when the policy
    /// does not restrict egress.
    pub fn egress(&self) -> Option<&[EgressRule]> {
        self.egress.as_deref()
    }

    /// Number of kernel rules the egress rules expand to.
    pub fn kernel_rule_count(&self) -> usize {
        self.egress.as_deref().map_or(0, kernel_rule_count)
    }
}

/// Number of kernel rules `rules` expand to: peers × port entries of each
/// rule, where a rule without `ports` counts as one port entry.
pub(super) fn kernel_rule_count(rules: &[EgressRule]) -> usize {
    rules
        .iter()
        .map(|rule| rule.to.len() * rule.ports.as_ref().map_or(1, Vec::len))
        .sum()
}

/// One entry of `spec.network.egress`: the peers in `to` are allowed on the
/// ports in `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// One or more peers.
    pub to: Vec<Peer>,
    /// Allowed ports, or `None` to allow every port over TCP and UDP.
    pub ports: Option<Vec<PortRange>>,
}

/// One peer of an egress rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `cidr:`, with no host bits set. IPv4-mapped IPv6 prefixes of length
    /// 96 or more are stored as the IPv4 prefix they cover.
    Cidr(IpNet),
    /// `address:`. IPv4-mapped IPv6 addresses are stored as IPv4.
    Address(IpAddr),
}

impl Peer {
    /// Returns the addresses this peer covers as one prefix (`/32` or `/128`
    /// for a single address).
    pub fn network(&self) -> IpNet {
        match *self {
            Peer::Cidr(net) => net,
            Peer::Address(addr) => IpNet::from(addr),
        }
    }
}

/// One entry of an egress rule's `ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// `port`, at least 1.
    pub start: u16,
    /// `endPort`, or `port` when absent; never less than `start`.
    pub end: u16,
    /// `None` allows TCP and UDP.
    pub protocol: Option<Protocol>,
}

/// Transport protocol of a port entry or a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Returns the IP protocol number, as the kernel rules store it.
    pub fn number(self) -> u32 {
        match self {
            Protocol::Tcp => PROTOCOL_TCP,
            Protocol::Udp => PROTOCOL_UDP,
        }
    }
}
