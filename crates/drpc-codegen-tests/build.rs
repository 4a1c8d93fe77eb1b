//! Generates the test services with the build-script API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = "../drpc-codegen/tests/protos";
    drpc_codegen::configure()
        .grpc_adapter(true)
        .compile_protos(
            &[
                format!("{protos}/echo.proto"),
                format!("{protos}/bare.proto"),
            ],
            &[protos],
        )?;
    Ok(())
}
