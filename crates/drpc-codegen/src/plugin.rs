//! The protoc plugin, as a library: a `CodeGeneratorRequest` in, a
//! `CodeGeneratorResponse` out.
//!
//! Parameters (`--rust-drpc_opt=...`, comma separated): `client=false`,
//! `server=false`.

use prost::Message;
use prost_build::Module;
use prost_types::compiler::code_generator_response::{Feature, File};
use prost_types::compiler::{CodeGeneratorRequest, CodeGeneratorResponse};

use crate::generator::{DrpcServiceGenerator, Emit};

/// Generates one file per proto package of the files protoc asked for:
/// prost messages plus the DRPC service code. Errors are reported in the
/// response, as protoc expects.
pub fn generate(request: CodeGeneratorRequest) -> CodeGeneratorResponse {
    let mut response = CodeGeneratorResponse {
        supported_features: Some(Feature::Proto3Optional as u64),
        ..Default::default()
    };
    let mut emit = Emit {
        client: true,
        server: true,
    };
    for param in request
        .parameter()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match param.split_once('=') {
            Some(("client", v)) => emit.client = v != "false",
            Some(("server", v)) => emit.server = v != "false",
            _ => {
                response.error = Some(format!("unknown parameter {param:?}"));
                return response;
            }
        }
    }
    let requests: Vec<_> = request
        .proto_file
        .iter()
        .filter(|f| {
            request
                .file_to_generate
                .iter()
                .any(|g| Some(g.as_str()) == f.name.as_deref())
        })
        .map(|f| (Module::from_protobuf_package_name(f.package()), f.clone()))
        .collect();
    let mut config = prost_build::Config::new();
    config.service_generator(Box::new(DrpcServiceGenerator { emit, grpc: None }));
    match config.generate(requests) {
        Ok(modules) => {
            let mut files: Vec<File> = modules
                .into_iter()
                .map(|(module, content)| File {
                    name: Some(module.to_file_name_or("_")),
                    content: Some(content),
                    ..Default::default()
                })
                .collect();
            files.sort_by(|a, b| a.name.cmp(&b.name));
            response.file = files;
        }
        Err(e) => response.error = Some(e.to_string()),
    }
    response
}

/// Runs the plugin on encoded request bytes, returning the encoded
/// response (what the binary does with stdin and stdout).
pub fn run(request: &[u8]) -> Result<Vec<u8>, crate::Error> {
    let request = CodeGeneratorRequest::decode(request)?;
    Ok(generate(request).encode_to_vec())
}
