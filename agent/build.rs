use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/cri.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/cri.proto"], &["proto"])
        .context("compiling proto/cri.proto (is protoc installed? run `cargo xtask setup`)")?;

    // The stable toolchain builds for the BPF target because .cargo/config.toml
    // sets RUSTC_BOOTSTRAP=1; see README.md.
    let kernel_programs = aya_build::Package {
        name: "parapet-ebpf",
        root_dir: "../agent-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([kernel_programs], aya_build::Toolchain::Custom("stable"))
        .context("building the kernel programs (run `cargo xtask setup` if bpf-linker or rust-src is missing)")
}
