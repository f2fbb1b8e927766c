//! Compiles the `.proto` files without a system `protoc`: protox parses them in pure Rust,
//! tonic-prost-build generates messages and services, pbjson-build the proto3 JSON mapping.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/ficus/sessions/v1/sessions.proto",
    "proto/ficus/traffic/v1/traffic.proto",
    "proto/ficus/analysis/v1/analysis.proto",
    "proto/ficus/planner/v1/planner.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let descriptor_bytes = descriptors.encode_to_vec();
    fs::write(out.join("ficus_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new().register_descriptors(&descriptor_bytes)?.build(&[".ficus"])?;
    Ok(())
}
