//! The contents of one initramfs archive, keyed by path in the guest.
//!
//! Host files keep their host paths. A directory on the way may be a
//! symlink on the host, such as `/bin` to `usr/bin` on a merged-`/usr`
//! Debian. The archive then gets the same symlink, and the file goes to
//! the resolved path, so every path valid on the host is valid in the guest.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufWriter, Write as _},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::cpio;

/// Symlinks followed while resolving one host path before giving up.
const MAX_SYMLINKS: u32 = 40;

enum Entry {
    Directory { permissions: u32 },
    HostFile(PathBuf),
    Bytes { permissions: u32, contents: Vec<u8> },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Default)]
pub struct Tree {
    /// Absolute guest paths; sorted order puts every parent before its children.
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    pub fn directory(&mut self, path: &str, permissions: u32) {
        self.insert(path, Entry::Directory { permissions });
    }

    pub fn bytes(&mut self, path: &str, permissions: u32, contents: impl Into<Vec<u8>>) {
        let contents = contents.into();
        self.insert(
            path,
            Entry::Bytes {
                permissions,
                contents,
            },
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry::Symlink(target.to_string()));
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.insert(path, Entry::CharDevice { major, minor });
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }

    /// Adds a host file or directory (not its contents) at its host path,
    /// with every symlink met on the way. Returns the resolved guest path.
    pub fn host_path(&mut self, path: &Path) -> anyhow::Result<String> {
        self.mirror(path, 0)
            .with_context(|| format!("failed to add {} to the initramfs", path.display()))
    }

    /// Adds a host program and the shared libraries `ldd` names for it,
    /// the dynamic loader included.
    pub fn program(&mut self, path: &Path) -> anyhow::Result<()> {
        self.host_path(path)?;
        for library in shared_libraries(path)? {
            self.host_path(&library)?;
        }
        Ok(())
    }

    /// Adds every file directly inside a host directory, with its libraries.
    pub fn programs_in(&mut self, dir: &Path) -> anyhow::Result<()> {
        let entries =
            fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_file() {
                self.program(&path)?;
            }
        }
        Ok(())
    }

    /// Describes every host file in the tree by path, size and modification
    /// time, so that a changed host program invalidates a cached archive.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        for entry in self.entries.values() {
            if let Entry::HostFile(path) = entry {
                let metadata = fs::metadata(path)
                    .with_context(|| format!("failed to stat {}", path.display()))?;
                text.push_str(&format!(
                    "{} {} {}\n",
                    path.display(),
                    metadata.len(),
                    metadata.mtime()
                ));
            }
        }
        Ok(text)
    }

    /// Writes the tree as a gzip-compressed `newc` archive to `output`.
    pub fn write_gzip(&self, output: &Path) -> anyhow::Result<()> {
        let file = fs::File::create(output)
            .with_context(|| format!("failed to create {}", output.display()))?;
        let mut gzip = Command::new("gzip")
            .args(["-1", "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("failed to start gzip")?;
        let stdin = gzip.stdin.take().context("gzip has no stdin")?;
        let mut writer = cpio::Writer::new(BufWriter::new(stdin));
        for (path, entry) in &self.entries {
            match entry {
                Entry::Directory { permissions } => writer.directory(path, *permissions)?,
                Entry::Bytes {
                    permissions,
                    contents,
                } => writer.file(path, *permissions, contents)?,
                Entry::Symlink(target) => writer.symlink(path, target)?,
                Entry::CharDevice { major, minor } => {
                    writer.char_device(path, 0o666, (*major, *minor))?
                }
                Entry::HostFile(host) => {
                    let contents = fs::read(host)
                        .with_context(|| format!("failed to read {}", host.display()))?;
                    let permissions = fs::metadata(host)?.permissions().mode() & 0o7777;
                    writer.file(path, permissions, &contents)?;
                }
            }
        }
        writer.finish()?.flush()?;
        let status = gzip.wait().context("failed to wait for gzip")?;
        if !status.success() {
            bail!("gzip failed writing {}: {status}", output.display());
        }
        Ok(())
    }

    /// Inserts `entry` and a directory entry for each missing parent.
    fn insert(&mut self, path: &str, entry: Entry) {
        for ancestor in Path::new(path).ancestors().skip(1) {
            if ancestor == Path::new("/") || ancestor.as_os_str().is_empty() {
                break;
            }
            let ancestor = ancestor.to_string_lossy().into_owned();
            self.entries
                .entry(ancestor)
                .or_insert(Entry::Directory { permissions: 0o755 });
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// Walks `path` on the host one component at a time, adding each
    /// symlink it meets and continuing at the symlink's target.
    fn mirror(&mut self, path: &Path, symlinks: u32) -> anyhow::Result<String> {
        if symlinks > MAX_SYMLINKS {
            bail!("more than {MAX_SYMLINKS} symlinks");
        }
        if !path.is_absolute() {
            bail!("not an absolute path");
        }
        let components: Vec<Component> = path.components().collect();
        let mut resolved = PathBuf::from("/");
        for (index, component) in components.iter().enumerate() {
            match component {
                Component::RootDir | Component::CurDir => continue,
                Component::ParentDir => {
                    resolved.pop();
                    continue;
                }
                Component::Normal(name) => resolved.push(name),
                Component::Prefix(_) => bail!("unexpected path prefix"),
            }
            let metadata = fs::symlink_metadata(&resolved)
                .with_context(|| format!("failed to stat {}", resolved.display()))?;
            let guest_path = resolved.to_string_lossy().into_owned();
            if metadata.is_symlink() {
                let target = fs::read_link(&resolved)?;
                self.symlink(&guest_path, &target.to_string_lossy());
                let mut next = resolved
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
                    .join(target);
                next.extend(&components[index + 1..]);
                return self.mirror(&next, symlinks + 1);
            }
            let last = index + 1 == components.len();
            if last && !metadata.is_dir() {
                self.insert(&guest_path, Entry::HostFile(resolved.clone()));
            } else if !self.contains(&guest_path) {
                self.directory(&guest_path, 0o755);
            }
        }
        Ok(resolved.to_string_lossy().into_owned())
    }
}

/// Lists the absolute paths of the shared objects `ldd` names for
/// `binary`, the dynamic loader included. A static binary needs none.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("failed to run ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr);
        if error.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), error.trim());
    }
    // Lines read "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
    // "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso.so.1 has no file.
    let libraries = text
        .lines()
        .filter_map(|line| match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        })
        .filter(|path| path.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    Ok(libraries)
}
