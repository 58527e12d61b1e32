//! `cargo xtask setup`: installs what a fresh Debian machine with only the
//! Rust toolchain lacks. Every step checks first, so a second run changes
//! nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages the build and the end-to-end tests need.
const DEBIAN_PACKAGES: &[&str] = &[
    "busybox-static",
    "containerd",
    "containernetworking-plugins",
    "iproute2",
    // promtool for the alert rule tests, and the server the end-to-end
    // test runs on loopback. Where systemd runs, the package also starts
    // its own service on port 9090.
    "prometheus",
    "protobuf-compiler",
    "qemu-system-x86",
    // For the virtual environment that contains kubernetes-validate.
    "python3-venv",
    "runc",
    "xz-utils",
];

/// The bpf-linker release that links with LLVM 21 to 23; built against the
/// LLVM that ships inside the Rust toolchain, so that both use one LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    debian_packages()?;
    bpf_linker()?;
    cargo_fuzz()?;
    Ok(())
}

/// Runs `command`, failing with its name when it fails.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("failed to start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to start {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        command_output("rustc", &["--print", "sysroot"])?.trim(),
    ))
}

/// The toolchain's standard library source, for `-Z build-std=core`.
fn rust_src() -> anyhow::Result<()> {
    let library = sysroot()?.join("lib/rustlib/src/rust/library/core");
    if library.is_dir() {
        return Ok(());
    }
    eprintln!("setup: adding the rust-src component");
    run_command(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            let installed = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .map(|output| {
                    String::from_utf8_lossy(&output.stdout).contains("install ok installed")
                })
                .unwrap_or(false);
            !installed
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_command(Command::new("apt-get").arg("update").arg("-q"))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if works {
        return Ok(());
    }
    let verbose = command_output("rustc", &["-vV"])?;
    let llvm_version = verbose
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    let major = llvm_version
        .split('.')
        .next()
        .context("rustc -vV printed an LLVM version without a major number")?;
    let prefix = llvm_prefix(&sysroot()?.join("lib"))?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the toolchain's LLVM {llvm_version}"
    );
    let mut install = Command::new("cargo");
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix);
    for minor in 0..=9 {
        install.env(format!("LLVM_SYS_{major}{minor}_PREFIX"), &prefix);
    }
    run_command(&mut install)
}

/// The cargo-fuzz release that `cargo xtask fuzz` runs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz, built with the versions of its dependencies that
/// its release pinned. It runs on the stable toolchain: `cargo xtask fuzz`
/// sets RUSTC_BOOTSTRAP=1 for the `-Z` flags it passes.
fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| {
            output.status.success()
                && String::from_utf8_lossy(&output.stdout).trim()
                    == format!("cargo-fuzz {CARGO_FUZZ_VERSION}")
        });
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    run_command(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// Makes a folder that looks like an LLVM install to bpf-linker's build: a
/// `lib/` with `libLLVM.so` and the library's own soname, both linking to
/// the `libLLVM` that the Rust toolchain ships. bpf-linker finds it there
/// at run time too, through the rpath its build records.
fn llvm_prefix(toolchain_lib: &Path) -> anyhow::Result<PathBuf> {
    let library = std::fs::read_dir(toolchain_lib)
        .with_context(|| format!("failed to read {}", toolchain_lib.display()))?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The `libLLVM-NN-rust-*.so` name is a linker script; the
            // `libLLVM.so.NN*` one is the shared library itself.
            name.starts_with("libLLVM.so.")
        })
        .with_context(|| format!("no libLLVM.so.* in {}", toolchain_lib.display()))?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = home.join("parapet-llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("failed to create {}", lib.display()))?;
    let soname = library
        .file_name()
        .context("libLLVM path without a file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link).with_context(|| {
            format!("failed to link {} to {}", link.display(), library.display())
        })?;
    }
    Ok(prefix)
}
