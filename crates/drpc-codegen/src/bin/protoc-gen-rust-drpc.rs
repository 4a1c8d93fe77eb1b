//! The protoc plugin: `protoc --plugin=protoc-gen-rust-drpc=PATH
//! --rust-drpc_out=DIR file.proto` writes prost messages and DRPC service
//! code, one file per proto package.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut request = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut request) {
        eprintln!("protoc-gen-rust-drpc: reading the request: {e}");
        return ExitCode::FAILURE;
    }
    let response = match drpc_codegen::plugin::run(&request) {
        Ok(response) => response,
        Err(e) => {
            eprintln!("protoc-gen-rust-drpc: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::io::stdout().write_all(&response) {
        eprintln!("protoc-gen-rust-drpc: writing the response: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
