//! The protoc plugin, as a library: a `CodeGeneratorRequest` in, a
//! `CodeGeneratorResponse` out.
//!
//! Parameters (`--rust-drpc_opt=...`, comma separated, the last of a
//! name winning):
//!
//! * `client=true|false`: generate clients (default `true`);
//! * `server=true|false`: generate server traits (default `true`).
//!
//! Anything else (another name, another value, a name without a value) is
//! refused: protoc fails with an error naming the parameter and what it
//! accepts. gRPC adapters come only from the build API
//! ([`Builder::grpc_adapter`](crate::Builder)).

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
    let emit = match parse_parameters(request.parameter()) {
        Ok(emit) => emit,
        Err(e) => {
            response.error = Some(e);
            return response;
        }
    };
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
    config.service_generator(Box::new(DrpcServiceGenerator {
        emit,
        grpc: None,
        descriptors: None,
    }));
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

/// The parameters the plugin knows, with the values each accepts.
const PARAMETERS: &str = "client=true|false, server=true|false";

/// Reads the plugin's parameters, strictly: the error names the parameter
/// at fault and what is accepted.
fn parse_parameters(parameters: &str) -> Result<Emit, String> {
    let mut emit = Emit {
        client: true,
        server: true,
    };
    for param in parameters
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), value.trim()),
            None => (param, ""),
        };
        let field = match name {
            "client" => &mut emit.client,
            "server" => &mut emit.server,
            _ => {
                return Err(format!(
                    "unknown parameter {name:?} in {param:?}; accepted: {PARAMETERS}"
                ));
            }
        };
        *field = match value {
            "true" => true,
            "false" => false,
            "" => {
                return Err(format!(
                    "parameter {name:?} needs a value: {name}=true or {name}=false"
                ));
            }
            _ => {
                return Err(format!(
                    "invalid value {value:?} for parameter {name:?}: accepted values are true and false"
                ));
            }
        };
    }
    Ok(emit)
}

/// Runs the plugin on encoded request bytes, returning the encoded
/// response (what the binary does with stdin and stdout).
pub fn run(request: &[u8]) -> Result<Vec<u8>, crate::Error> {
    let request = CodeGeneratorRequest::decode(request)?;
    Ok(generate(request).encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emit(client: bool, server: bool) -> Emit {
        Emit { client, server }
    }

    #[test]
    fn booleans_are_true_or_false() {
        assert_eq!(parse_parameters(""), Ok(emit(true, true)));
        assert_eq!(parse_parameters("client=false"), Ok(emit(false, true)));
        assert_eq!(
            parse_parameters(" server = false , client=true,"),
            Ok(emit(true, false))
        );
        // The last one wins, as protoc joins repeated `--rust-drpc_opt`s.
        assert_eq!(
            parse_parameters("server=false,server=true"),
            Ok(emit(true, true))
        );
    }

    #[test]
    fn other_values_are_refused_by_name() {
        for value in ["no", "yes", "0", "1", "False", "off", "tru"] {
            let err = parse_parameters(&format!("client={value}")).expect_err(value);
            assert!(
                err.contains(&format!("{value:?}"))
                    && err.contains("\"client\"")
                    && err.contains("true and false"),
                "{err}"
            );
        }
        let err = parse_parameters("server").expect_err("no value");
        assert!(err.contains("server=true or server=false"), "{err}");
        let err = parse_parameters("server=").expect_err("empty value");
        assert!(err.contains("needs a value"), "{err}");
    }

    #[test]
    fn unknown_names_are_refused() {
        for param in ["bogus=1", "grpc=true", "Client=false", "clients"] {
            let err = parse_parameters(&format!("client=false,{param}")).expect_err(param);
            assert!(err.starts_with("unknown parameter"), "{err}");
            assert!(err.contains(PARAMETERS), "{err}");
        }
    }

    #[test]
    fn errors_reach_the_response() {
        let response = generate(CodeGeneratorRequest {
            parameter: Some("client=no".into()),
            ..Default::default()
        });
        let error = response.error.expect("an error");
        assert!(
            error.contains("\"no\"") && error.contains("\"client\""),
            "{error}"
        );
        assert!(response.file.is_empty());
    }
}
