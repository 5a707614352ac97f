//! Compiles `proto/ward/v1/*.proto` with protox (pure Rust), so a fresh
//! machine needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/ward/v1/identity.proto",
        "proto/ward/v1/envelope.proto",
        "proto/ward/v1/auth.proto",
        "proto/ward/v1/relay.proto",
        "proto/ward/v1/keyserver.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Keep byte fields as Vec<u8>: signed bodies are re-parsed from them.
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
