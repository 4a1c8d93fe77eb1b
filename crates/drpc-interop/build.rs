//! Generates `proto/service.proto` with drpc-codegen (protox, no system
//! `protoc`): the prost messages plus the DRPC client and server trait.
//! With the `grpc` feature, also tonic's client and server of the same
//! service, in `OUT_DIR/tonic/service.rs`, on the same messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = drpc_codegen::configure();
    // With `grpc`, also the adapter serving the DRPC implementation over
    // gRPC (and tonic's code it stands on), for `serve --shared-port`.
    #[cfg(feature = "grpc")]
    let config = config.grpc_adapter(true);
    config
        // `buf` fields as `bytes::Bytes`: decoding from the received buffer
        // does not copy, and echoing a payload back is a reference count.
        .prost_config(|config| {
            config.bytes(["."]);
        })
        // `SERVICE_DESCRIPTOR_SET`, for the HTTP/JSON route of
        // `serve --shared-port`.
        .service_descriptors(true)
        .compile_protos(&["proto/service.proto"], &["proto"])?;
    #[cfg(feature = "grpc")]
    tonic_service()?;
    Ok(())
}

/// tonic's own code (tonic-prost-build, nothing of DRPC), for the gRPC
/// server and client that the benchmarks compare against. The messages are
/// those of `crate::pb`, so both stacks encode the very same types.
#[cfg(feature = "grpc")]
fn tonic_service() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("tonic");
    std::fs::create_dir_all(&out_dir)?;
    let fds = protox::compile(["proto/service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .out_dir(out_dir)
        .extern_path(".service.In", "crate::pb::In")
        .extern_path(".service.Out", "crate::pb::Out")
        .compile_fds(fds)?;
    Ok(())
}
