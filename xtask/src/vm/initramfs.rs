//! The guest's initramfs, as three gzip'd `newc` archives that the kernel
//! unpacks one after the other. The base contains the host programs the
//! tests run and is cached until one of those files changes. The second
//! contains one kernel's modules and is cached with the kernel. The small
//! per-build archive contains `/init`, the agent and the test binaries.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{kernels::Kernel, tree::Tree};

/// Debian's static busybox, which provides the shell and the tools of `/init`.
const BUSYBOX: &str = "/bin/busybox";

/// Host programs that the containerd harness of the tests runs, and `ldd`
/// with the shell it is written in, since the harness calls `ldd` too.
const HOST_PROGRAMS: [&str; 7] = [
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
    "/usr/bin/ctr",
    "/usr/sbin/ip",
    "/usr/bin/ldd",
    "/bin/bash",
];

/// Folder of the CNI plugins from Debian's containernetworking-plugins package.
const CNI_PLUGINS: &str = "/usr/lib/cni";

/// Modules that pods need (the CNI bridge, veth pairs and containerd's
/// overlayfs snapshotter), which the cloud kernels do not build in. Their
/// dependencies are added too.
const MODULES: [&str; 3] = ["bridge", "veth", "overlay"];

/// Folder of the modules in the guest, each named `<position>-<name>.ko` so
/// that loading them in name order loads dependencies first.
pub const GUEST_MODULE_DIR: &str = "/parapet-vm/modules";

/// Bumped whenever the base archive's contents change in a way the
/// fingerprint of its host files cannot see.
const BASE_LAYOUT_VERSION: u32 = 1;

/// Writes the base archive into `cache` unless the cached one was built
/// from the same host files. Returns its path.
pub fn base(cache: &Path) -> anyhow::Result<PathBuf> {
    let mut tree = Tree::default();
    for program in HOST_PROGRAMS {
        tree.program(Path::new(program))?;
    }
    tree.programs_in(Path::new(CNI_PLUGINS))?;
    tree.program(Path::new(BUSYBOX))?;
    for applet in busybox_applets()? {
        let applet = Path::new("/").join(applet);
        let (Some(dir), Some(name)) = (applet.parent(), applet.file_name()) else {
            continue;
        };
        let dir = tree.host_path(dir)?;
        let link = Path::new(&dir).join(name).to_string_lossy().into_owned();
        // A real program (bash, ip) wins over busybox's version of it.
        if !tree.contains(&link) {
            tree.symlink(&link, BUSYBOX);
        }
    }
    for dir in [
        "/proc", "/sys", "/dev", "/run", "/root", "/var/lib", "/newroot",
    ] {
        tree.directory(dir, 0o755);
    }
    tree.directory("/tmp", 0o1777);
    tree.char_device("/dev/console", 5, 1);
    tree.char_device("/dev/null", 1, 3);
    // containerd's CRI plugin copies these into every pod sandbox.
    tree.bytes("/etc/hosts", 0o644, "127.0.0.1 localhost\n::1 localhost\n");
    tree.bytes("/etc/resolv.conf", 0o644, "");
    tree.bytes("/etc/hostname", 0o644, "parapet-vm\n");
    tree.bytes("/etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n");
    tree.bytes("/etc/group", 0o644, "root:x:0:\n");

    let archive = cache.join("base.cpio.gz");
    let fingerprint = format!("layout {BASE_LAYOUT_VERSION}\n{}", tree.fingerprint()?);
    write_cached(&tree, &archive, &fingerprint)?;
    Ok(archive)
}

/// Writes the module archive of `kernel` next to its unpacked package,
/// unless an earlier run did. Returns its path.
pub fn modules(kernel: &Kernel, cache: &Path) -> anyhow::Result<PathBuf> {
    let mut tree = Tree::default();
    let index = ModuleIndex::read(&kernel.modules)?;
    for (position, name) in index.load_order(&MODULES)?.iter().enumerate() {
        let contents = index.contents(name)?;
        tree.bytes(
            &format!("{GUEST_MODULE_DIR}/{position:02}-{name}.ko"),
            0o644,
            contents,
        );
    }
    let archive = cache.join(format!("modules-{}.cpio.gz", kernel.release));
    write_cached(&tree, &archive, &MODULES.join(" "))?;
    Ok(archive)
}

/// Writes the per-build archive: `/init` and the given programs with their
/// shared libraries, at their host paths.
pub fn build(init: &str, programs: &[PathBuf], output: &Path) -> anyhow::Result<()> {
    let mut tree = Tree::default();
    tree.bytes("/init", 0o755, init);
    for program in programs {
        tree.program(program)?;
    }
    tree.write_gzip(output)
}

/// Joins archives into one file for QEMU's `-initrd`, which takes one.
pub fn join(parts: &[PathBuf], output: &Path) -> anyhow::Result<()> {
    let mut joined = fs::File::create(output)
        .with_context(|| format!("failed to create {}", output.display()))?;
    for part in parts {
        let mut file =
            fs::File::open(part).with_context(|| format!("failed to open {}", part.display()))?;
        std::io::copy(&mut file, &mut joined)?;
    }
    joined.flush()?;
    Ok(())
}

/// Writes `tree` to `archive` unless `archive` exists with a fingerprint
/// file equal to `fingerprint`.
fn write_cached(tree: &Tree, archive: &Path, fingerprint: &str) -> anyhow::Result<()> {
    let fingerprint_file = archive.with_extension("fingerprint");
    let cached = fs::read_to_string(&fingerprint_file).ok();
    if archive.exists() && cached.as_deref() == Some(fingerprint) {
        return Ok(());
    }
    eprintln!("vm-test: writing {}", archive.display());
    let _ = fs::remove_file(&fingerprint_file);
    tree.write_gzip(archive)?;
    fs::write(&fingerprint_file, fingerprint)?;
    Ok(())
}

/// Lists busybox's applets as paths relative to the root (`usr/bin/wget`).
fn busybox_applets() -> anyhow::Result<Vec<String>> {
    let output = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("failed to run {BUSYBOX} --list-full"))?;
    if !output.status.success() {
        bail!("{BUSYBOX} --list-full failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|applet| !applet.is_empty())
        .map(str::to_string)
        .collect())
}

/// The loadable modules of one unpacked kernel, by name.
struct ModuleIndex {
    /// Module name (with `_`, as the kernel spells it) and file path.
    files: Vec<(String, PathBuf)>,
}

impl ModuleIndex {
    /// Reads `modules.order`, which lists every loadable module's path
    /// (relative to `dir`, ending in `.ko` even where the file is `.ko.xz`).
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let order = dir.join("modules.order");
        let text = fs::read_to_string(&order)
            .with_context(|| format!("failed to read {}", order.display()))?;
        let files = text
            .lines()
            .filter_map(|line| {
                let path = dir.join(line.trim());
                let name = path.file_stem()?.to_string_lossy().replace('-', "_");
                Some((name, path))
            })
            .collect();
        Ok(Self { files })
    }

    /// Returns the uncompressed module file, decompressing `.ko.xz` with `xz`.
    fn contents(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let path = self
            .files
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, path)| path)
            .with_context(|| format!("kernel module {name} not found in modules.order"))?;
        if path.exists() {
            return fs::read(path).with_context(|| format!("failed to read {}", path.display()));
        }
        let compressed = path.with_extension("ko.xz");
        let output = Command::new("xz")
            .arg("-dc")
            .arg(&compressed)
            .output()
            .context("failed to run xz (install xz-utils)")?;
        if !output.status.success() {
            bail!(
                "xz -dc {} failed: {}",
                compressed.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output.stdout)
    }

    /// Returns `wanted` with their dependencies, each after everything it
    /// depends on.
    fn load_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut order = Vec::new();
        for name in wanted {
            self.visit(name, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(&self, name: &str, order: &mut Vec<String>, depth: u32) -> anyhow::Result<()> {
        if depth > 16 {
            bail!("kernel module dependencies nest deeper than 16 at {name}");
        }
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        for dependency in depends(&self.contents(name)?) {
            self.visit(&dependency, order, depth + 1)?;
        }
        order.push(name.to_string());
        Ok(())
    }
}

/// Reads the `depends=` entry of a module's `.modinfo` section: the
/// comma-separated names of the modules it needs loaded first.
fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module.windows(KEY.len()).position(|window| window == KEY) else {
        return Vec::new();
    };
    let value = &module[start + KEY.len()..];
    let end = value
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::depends;

    #[test]
    fn depends_of_modinfo() {
        let module = b"\x7fELF...\0license=GPL\0depends=stp,llc\0intree=Y\0";
        assert_eq!(depends(module), ["stp", "llc"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }
}
