//! The build-script API watches every file the proto compiler read: what
//! `compile_protos` prints for cargo is `Compiled::rerun_if_changed` of
//! what `compile` returns.

use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drpc-codegen-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(root: &Path, file: &str, text: &str) -> PathBuf {
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("dirs");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn imports_are_watched_transitively_across_include_paths() -> anyhow::Result<()> {
    let root = scratch("imports");
    let api = write(
        &root,
        "proto/api/v1/api.proto",
        r#"syntax = "proto3";
        package api.v1;
        import "common/types.proto";
        import "google/protobuf/empty.proto";
        service Api {
          rpc Get(common.Id) returns (google.protobuf.Empty);
        }"#,
    );
    let types = write(
        &root,
        "vendor/common/types.proto",
        r#"syntax = "proto3";
        package common;
        import "common/base.proto";
        message Id { common.Base base = 1; }"#,
    );
    let base = write(
        &root,
        "vendor/common/base.proto",
        r#"syntax = "proto3";
        package common;
        message Base { string name = 1; }"#,
    );
    // In an include path, but imported by nothing.
    write(
        &root,
        "vendor/common/unused.proto",
        r#"syntax = "proto3"; message Unused {}"#,
    );
    let out = root.join("out");
    std::fs::create_dir_all(&out)?;

    let compiled = drpc_codegen::configure()
        .out_dir(&out)
        .compile(&[&api], &[root.join("proto"), root.join("vendor")])?;

    // Each file after those it imports; `google/protobuf/empty.proto` is
    // protox's built-in copy, not a file.
    assert_eq!(compiled.inputs, [base.clone(), types.clone(), api.clone()]);
    let lines: Vec<String> = compiled.rerun_if_changed().collect();
    assert_eq!(
        lines,
        [&base, &types, &api].map(|p| format!("cargo:rerun-if-changed={}", p.display()))
    );

    // And the code was written, one file per package.
    let code = std::fs::read_to_string(out.join("api.v1.rs"))?;
    assert!(code.contains("pub struct ApiDrpcClient<C>"));
    assert!(code.contains("\"/api.v1.Api/Get\""));
    assert!(out.join("common.rs").exists());
    Ok(())
}

#[test]
fn listed_imports_are_watched_once() -> anyhow::Result<()> {
    let root = scratch("listed");
    let a = write(
        &root,
        "a.proto",
        r#"syntax = "proto3"; import "b.proto"; message A { B b = 1; }"#,
    );
    let b = write(&root, "b.proto", r#"syntax = "proto3"; message B {}"#);
    let out = root.join("out");
    std::fs::create_dir_all(&out)?;
    let compiled = drpc_codegen::configure()
        .out_dir(&out)
        .compile(&[&a, &b], &[&root])?;
    assert_eq!(compiled.inputs, [b, a]);
    Ok(())
}
