use anyhow::Context as _;

/// Generates the server side of the CRI protocol, for the fake runtimes of
/// the tests. The agent's crate generates the client side.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../agent/proto/cri.proto");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .generate_default_stubs(true)
        .compile_protos(&["../agent/proto/cri.proto"], &["../agent/proto"])
        .context(
            "compiling ../agent/proto/cri.proto (is protoc installed? run `cargo xtask setup`)",
        )
}
