//! Compiles `proto/` with protox (pure Rust: no protoc on the machines).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): a build script compiled
    // for one checkout is reused by another sharing the target directory.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "interlock/raft/v1/raft.proto",
        "interlock/v1/cluster.proto",
        "interlock/v1/kv.proto",
        "interlock/v1/controller.proto",
        "interlock/v1/admin.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    // The descriptor set also feeds gRPC reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("interlock_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
