//! Generates `proto/service.proto` with drpc-codegen (protox, no system
//! `protoc`): the prost messages plus the DRPC client and server trait.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    drpc_codegen::configure()
        // `buf` fields as `bytes::Bytes`: decoding from the received buffer
        // does not copy, and echoing a payload back is a reference count.
        .prost_config(|config| {
            config.bytes(["."]);
        })
        .compile_protos(&["proto/service.proto"], &["proto"])?;
    Ok(())
}
