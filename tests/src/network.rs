//! The pod network of one harness run: a Linux bridge on a private /24
//! picked at random inside 10.240.0.0/12, and the CNI configuration that
//! puts pods on it.
//!
//! The host has `.1` on the bridge, pods get `.2` to `.254`. Pods get no
//! routes besides their /24, and nothing is masqueraded, so pods reach each
//! other and the host's bridge address and nothing else.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Where Debian's containernetworking-plugins package installs the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Attempts at finding a /24 that no route or address on the host overlaps.
const SUBNET_ATTEMPTS: usize = 64;

/// A bridge network created for one run.
#[derive(Debug, Clone)]
pub struct BridgeNetwork {
    /// CNI network name, which also prefixes libcni's cache file names.
    pub name: String,
    /// Name of the bridge link on the host.
    pub bridge: String,
    /// First address of the /24.
    pub subnet: Ipv4Addr,
    /// The host's address on the bridge (`.1`).
    pub host_address: Ipv4Addr,
}

impl BridgeNetwork {
    /// Picks a free subnet, creates the bridge with the host address on it,
    /// and writes the CNI configuration into `conf_dir`. host-local keeps
    /// its address leases in `ipam_dir`.
    pub fn create(name: &str, bridge: &str, conf_dir: &Path, ipam_dir: &Path) -> Result<Self> {
        if bridge.len() > 15 {
            bail!("bridge name {bridge:?} is longer than the 15 bytes Linux allows");
        }
        if link_exists(bridge) {
            bail!("a link named {bridge} already exists");
        }
        let subnet = choose_subnet()?;
        let [a, b, c, _] = subnet.octets();
        let network = Self {
            name: name.to_string(),
            bridge: bridge.to_string(),
            subnet,
            host_address: Ipv4Addr::new(a, b, c, 1),
        };
        run_ip(&["link", "add", "name", bridge, "type", "bridge"])?;
        let host_cidr = format!("{}/24", network.host_address);
        run_ip(&["addr", "add", &host_cidr, "dev", bridge])?;
        run_ip(&["link", "set", bridge, "up"])?;
        network.write_cni_config(conf_dir, ipam_dir)?;
        Ok(network)
    }

    fn write_cni_config(&self, conf_dir: &Path, ipam_dir: &Path) -> Result<()> {
        let [a, b, c, _] = self.subnet.octets();
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{
                        "subnet": format!("{}/24", self.subnet),
                        "rangeStart": Ipv4Addr::new(a, b, c, 2).to_string(),
                        "rangeEnd": Ipv4Addr::new(a, b, c, 254).to_string(),
                        "gateway": self.host_address.to_string(),
                    }]],
                },
            }],
        });
        std::fs::create_dir_all(conf_dir)?;
        let path = conf_dir.join("10-parapet-test.conflist");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("failed to write {}", path.display()))
    }

    /// Files that libcni (vendored in containerd 1.6) caches per attachment
    /// under `/var/lib/cni/results`. CNI DEL removes them, so they remain only
    /// when a sandbox was never stopped.
    pub fn cache_files(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.name);
        std::fs::read_dir("/var/lib/cni/results")
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a link if it exists.
pub fn delete_link(name: &str) -> Result<()> {
    if link_exists(name) {
        run_ip(&["link", "del", name])?;
    }
    Ok(())
}

fn run_ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("failed to run ip")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Picks a random /24 in 10.240.0.0/12 that overlaps no IPv4 route or
/// address on the host.
fn choose_subnet() -> Result<Ipv4Addr> {
    let used_prefixes = host_prefixes()?;
    for _ in 0..SUBNET_ATTEMPTS {
        let [x, y] = crate::random_bytes::<2>();
        let candidate = Ipv4Addr::new(10, 240 | (x & 0x0f), y, 0);
        if !used_prefixes
            .iter()
            .any(|&(network, len)| overlaps((candidate, 24), (network, len)))
        {
            return Ok(candidate);
        }
    }
    bail!("found no free /24 in 10.240.0.0/12 after {SUBNET_ATTEMPTS} attempts")
}

/// Lists the IPv4 prefixes of every route (all tables) and address on the host.
fn host_prefixes() -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut prefixes = Vec::new();
    for args in [
        &["-4", "-o", "route", "show", "table", "all"][..],
        &["-4", "-o", "addr", "show"],
    ] {
        let output = Command::new("ip")
            .args(args)
            .output()
            .context("failed to run ip")?;
        let text = String::from_utf8_lossy(&output.stdout);
        prefixes.extend(text.split_whitespace().filter_map(parse_prefix));
    }
    Ok(prefixes)
}

fn parse_prefix(word: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, len) = match word.split_once('/') {
        Some((address, len)) => (address, len.parse().ok()?),
        None => (word, 32),
    };
    Some((address.parse().ok()?, len))
}

fn overlaps((a, a_len): (Ipv4Addr, u8), (b, b_len): (Ipv4Addr, u8)) -> bool {
    let len = a_len.min(b_len).min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_prefixes() {
        let subnet = (Ipv4Addr::new(10, 241, 7, 0), 24);
        assert!(overlaps(subnet, (Ipv4Addr::new(10, 0, 0, 0), 8)));
        assert!(overlaps(subnet, (Ipv4Addr::new(10, 241, 7, 9), 32)));
        assert!(overlaps(subnet, (Ipv4Addr::new(0, 0, 0, 0), 0)));
        assert!(!overlaps(subnet, (Ipv4Addr::new(10, 241, 8, 0), 24)));
        assert!(!overlaps(subnet, (Ipv4Addr::new(192, 0, 2, 0), 24)));
    }

    #[test]
    fn parse_prefix_words() {
        assert_eq!(
            parse_prefix("192.0.2.0/24"),
            Some((Ipv4Addr::new(192, 0, 2, 0), 24))
        );
        assert_eq!(
            parse_prefix("192.0.2.2"),
            Some((Ipv4Addr::new(192, 0, 2, 2), 32))
        );
        assert_eq!(parse_prefix("dev"), None);
        assert_eq!(parse_prefix("fd00::/64"), None);
    }
}
