//! The protoc plugin, run by a real (vendored) protoc, writes the same code
//! as the build-script API.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test protos, all compiled by both.
const PROTOS: [&str; 4] = [
    "echo.proto",
    "bare.proto",
    "keywords.proto",
    "self_service.proto",
];

fn protos_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drpc-codegen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn plugin_output_matches_the_build_api() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let plugin = env!("CARGO_BIN_EXE_protoc-gen-rust-drpc");
    let protos = protos_dir();

    let by_plugin = scratch("plugin");
    let status = Command::new(protoc)
        .arg(format!("--plugin=protoc-gen-rust-drpc={plugin}"))
        .arg(format!("--rust-drpc_out={}", by_plugin.display()))
        .arg(format!("-I{}", protos.display()))
        .args(PROTOS)
        .status()?;
    assert!(status.success(), "protoc failed: {status}");

    let by_builder = scratch("builder");
    drpc_codegen::configure()
        .out_dir(&by_builder)
        .compile_protos(&PROTOS.map(|p| protos.join(p)), &[&protos])?;

    for file in [
        "test.echo.v1.rs",
        "_.rs",
        "test.keywords.v1.rs",
        "test.keywords.service.rs",
    ] {
        let plugin_code = read(&by_plugin, file);
        assert_eq!(plugin_code, read(&by_builder, file), "{file} differs");
        assert!(
            plugin_code.contains("pub trait"),
            "{file} has a server trait"
        );
    }
    let echo = read(&by_plugin, "test.echo.v1.rs");
    for expected in [
        "pub struct EchoDrpcClient<C>",
        "pub trait EchoDrpcServer",
        "\"/test.echo.v1.Echo/Say\"",
        "/// Say returns the request.",
        "/// Its comments become rustdoc.",
        "pub fn register_echo_drpc",
    ] {
        assert!(echo.contains(expected), "missing {expected:?}");
    }
    assert!(read(&by_plugin, "_.rs").contains("\"/Bare/Ping\""));
    let keywords = read(&by_plugin, "test.keywords.v1.rs");
    for expected in [
        "pub async fn r#type(",
        "pub async fn type_with(",
        "pub async fn self_(",
        "pub async fn self_with(",
    ] {
        assert!(keywords.contains(expected), "missing {expected:?}");
    }
    Ok(())
}

#[test]
fn plugin_options_select_client_or_server() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let plugin = env!("CARGO_BIN_EXE_protoc-gen-rust-drpc");
    let protos = protos_dir();
    let out = scratch("client-only");
    let status = Command::new(&protoc)
        .arg(format!("--plugin=protoc-gen-rust-drpc={plugin}"))
        .arg(format!("--rust-drpc_out={}", out.display()))
        .arg("--rust-drpc_opt=server=false")
        .arg(format!("-I{}", protos.display()))
        .arg("bare.proto")
        .status()?;
    assert!(status.success());
    let code = read(&out, "_.rs");
    assert!(code.contains("BareDrpcClient") && !code.contains("BareDrpcServer"));

    let bad = Command::new(protoc)
        .arg(format!("--plugin=protoc-gen-rust-drpc={plugin}"))
        .arg(format!("--rust-drpc_out={}", out.display()))
        .arg("--rust-drpc_opt=bogus=1")
        .arg(format!("-I{}", protos.display()))
        .arg("bare.proto")
        .output()?;
    assert!(!bad.status.success(), "an unknown option is refused");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("unknown parameter \"bogus\""), "{stderr}");
    assert!(stderr.contains("client=true|false"), "{stderr}");
    Ok(())
}

#[test]
fn plugin_refuses_values_it_does_not_know() -> anyhow::Result<()> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let plugin = env!("CARGO_BIN_EXE_protoc-gen-rust-drpc");
    let protos = protos_dir();
    let out = scratch("bad-value");
    // `no` used to read as true: anything but `true` or `false` is an error.
    let bad = Command::new(protoc)
        .arg(format!("--plugin=protoc-gen-rust-drpc={plugin}"))
        .arg(format!("--rust-drpc_out={}", out.display()))
        .arg("--rust-drpc_opt=client=no")
        .arg(format!("-I{}", protos.display()))
        .arg("bare.proto")
        .output()?;
    assert!(!bad.status.success(), "client=no is refused");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("invalid value \"no\" for parameter \"client\"")
            && stderr.contains("true and false"),
        "{stderr}"
    );
    assert!(!out.join("_.rs").exists(), "nothing written");
    Ok(())
}
