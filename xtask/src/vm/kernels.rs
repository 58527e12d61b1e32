//! Stock Debian cloud kernels, fetched with `apt-get download` and unpacked
//! with `dpkg-deb -x` into a cache under `target/vm/kernels`. Both series
//! are built with BPF LSM, BTF and a serial console; their verifiers
//! differ, so the guest tests run on each.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::setup::run_command;

/// A family of kernel packages whose names differ only in one number: the
/// ABI number for 6.1 (`linux-image-6.1.0-57-cloud-amd64-unsigned`), the
/// stable release for 6.12 (`linux-image-6.12.118+deb12-cloud-amd64-unsigned`).
pub struct Series {
    pub name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

impl Series {
    /// Returns the number in `package` if it names a package of this series.
    fn number_in(&self, package: &str) -> Option<u32> {
        let number = package
            .strip_prefix(self.prefix)?
            .strip_suffix(self.suffix)?;
        number.parse().ok()
    }
}

/// Debian 12 carries 6.1 in its main archive and in bookworm-security, and
/// the 6.12 backport only in bookworm-security.
pub const SERIES: [Series; 2] = [
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
    },
];

/// An unpacked kernel package.
pub struct Kernel {
    pub series: &'static str,
    pub package: String,
    /// The kernel release, as `uname -r` prints it and `/lib/modules` names it.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `/lib/modules/<release>` inside the unpacked package.
    pub modules: PathBuf,
}

/// Marks a completely unpacked package in the cache.
const UNPACKED_MARKER: &str = ".unpacked";

/// Returns the newest kernel of `series` in the apt lists, downloading and
/// unpacking it into `cache` unless an earlier run did.
pub fn fetch(series: &Series, cache: &Path) -> anyhow::Result<Kernel> {
    let mut package = newest_package(series)?;
    let mut dir = cache.join(&package);
    if !dir.join(UNPACKED_MARKER).exists() {
        eprintln!("vm-test: downloading {package}");
        fs::create_dir_all(cache)?;
        if let Err(error) = download(&package, cache) {
            // A package that stale apt lists still name may have left the
            // security archive; fresh lists name its successor.
            eprintln!("vm-test: {error:#}; updating the apt lists and retrying");
            run_command(Command::new("apt-get").args(["update", "-q"]))?;
            package = newest_package(series)?;
            dir = cache.join(&package);
            download(&package, cache)?;
        }
        unpack(&package, cache, &dir)?;
        fs::write(dir.join(UNPACKED_MARKER), "")?;
        remove_older(series, &package, cache)?;
    }
    kernel_in(series, package, &dir)
}

/// Removes the cached packages of `series` other than `current`.
fn remove_older(series: &Series, current: &str, cache: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(cache)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != current && series.number_in(&name).is_some() {
            eprintln!("vm-test: removing the older {name} from the cache");
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

/// Finds the package of `series` with the highest number in its name.
fn newest_package(series: &Series) -> anyhow::Result<String> {
    let pattern = format!(
        "^{}[0-9]+{}$",
        regex_escape(series.prefix),
        regex_escape(series.suffix)
    );
    let output = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("failed to run apt-cache search")?;
    if !output.status.success() {
        bail!(
            "apt-cache search {pattern} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let newest = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((series.number_in(name)?, name.to_string())))
        .max();
    match newest {
        Some((_, name)) => Ok(name),
        None => bail!(
            "no package named {}<number>{} in the configured apt sources; \
             Debian 12 has them in bookworm-security \
             (deb.debian.org/debian-security): configure it and run apt-get update",
            series.prefix,
            series.suffix
        ),
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = matches!(
                c,
                '.' | '+' | '*' | '?' | '[' | ']' | '(' | ')' | '^' | '$' | '\\'
            );
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

fn download(package: &str, cache: &Path) -> anyhow::Result<()> {
    run_command(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(cache),
    )
}

/// Unpacks the downloaded `.deb` of `package` into `dir` and deletes it.
fn unpack(package: &str, cache: &Path, dir: &Path) -> anyhow::Result<()> {
    let prefix = format!("{package}_");
    let deb = fs::read_dir(cache)?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .with_context(|| {
            format!(
                "apt-get download left no {prefix}*.deb in {}",
                cache.display()
            )
        })?;
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
    fs::remove_file(&deb)?;
    Ok(())
}

fn kernel_in(series: &Series, package: String, dir: &Path) -> anyhow::Result<Kernel> {
    let modules_root = dir.join("lib/modules");
    let release = fs::read_dir(&modules_root)
        .with_context(|| format!("failed to read {}", modules_root.display()))?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{} is empty", modules_root.display()))?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    Ok(Kernel {
        series: series.name,
        package,
        modules: modules_root.join(&release),
        release,
        vmlinuz,
    })
}

#[cfg(test)]
mod tests {
    use super::regex_escape;

    #[test]
    fn escape_of_package_name_parts() {
        assert_eq!(regex_escape("linux-image-6.12."), "linux-image-6\\.12\\.");
        assert_eq!(regex_escape("+deb12-cloud"), "\\+deb12-cloud");
    }
}
