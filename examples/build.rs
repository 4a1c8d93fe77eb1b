//! Generates the Greeter messages, client and server trait.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    drpc_codegen::configure().compile_protos(&["proto/greeter.proto"], &["proto"])?;
    Ok(())
}
