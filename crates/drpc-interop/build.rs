//! Compiles `proto/service.proto` with protox (no system `protoc`) and
//! generates the prost messages into `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/service.proto");
    let fds = protox::compile(["proto/service.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // `buf` fields as `bytes::Bytes`: decoding from the received buffer
    // does not copy, and echoing a payload back is a reference count.
    config.bytes(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
