//! The service code generator, plugged into prost-build.

use std::fmt::Write as _;

use prost_build::{Method, Service};

/// What to generate for each service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Emit {
    pub(crate) client: bool,
    pub(crate) server: bool,
}

/// Writes DRPC clients and server traits next to prost's messages, and
/// optionally tonic's code plus an adapter serving the DRPC server trait
/// over gRPC.
pub(crate) struct DrpcServiceGenerator {
    pub(crate) emit: Emit,
    /// tonic's own generator, when gRPC adapters are wanted.
    pub(crate) grpc: Option<Box<dyn prost_build::ServiceGenerator>>,
}

impl std::fmt::Debug for DrpcServiceGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrpcServiceGenerator")
            .field("emit", &self.emit)
            .field("grpc", &self.grpc.is_some())
            .finish()
    }
}

impl prost_build::ServiceGenerator for DrpcServiceGenerator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        let svc = ServiceNames::new(&service);
        if let Some(tonic) = &mut self.grpc {
            tonic.generate(service.clone(), buf);
        }
        if self.emit.client {
            client(&service, &svc, buf);
        }
        if self.emit.server {
            server(&service, &svc, buf);
            if self.grpc.is_some() {
                grpc_adapter(&service, &svc, buf);
            }
        }
    }
}

/// The names derived from one service.
struct ServiceNames {
    /// `package.Service`, or `Service` without a package.
    full_name: String,
    /// `Service` in Rust style.
    rust: String,
    /// `service` in snake case, for functions and constants.
    snake: String,
}

impl ServiceNames {
    fn new(service: &Service) -> ServiceNames {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        ServiceNames {
            full_name,
            rust: service.name.clone(),
            snake: to_snake(&service.proto_name),
        }
    }

    /// The RPC path of a method: exactly Go's and gRPC's
    /// `/package.Service/Method`, from the proto names.
    fn path(&self, method: &Method) -> String {
        format!("/{}/{}", self.full_name, method.proto_name)
    }
}

/// A method's Rust name, without `r#`, with a suffix when it would clash
/// with a keyword or with the generated helpers.
fn method_ident(method: &Method) -> String {
    let bare = method.name.trim_start_matches("r#");
    let snake = to_snake(bare);
    if is_keyword(&snake) || matches!(snake.as_str(), "new" | "get_ref" | "into_inner") {
        format!("{snake}_rpc")
    } else {
        snake
    }
}

fn is_keyword(s: &str) -> bool {
    matches!(
        s,
        "as" | "break"
            | "const"
            | "continue"
            | "crate"
            | "else"
            | "enum"
            | "extern"
            | "false"
            | "fn"
            | "for"
            | "if"
            | "impl"
            | "in"
            | "let"
            | "loop"
            | "match"
            | "mod"
            | "move"
            | "mut"
            | "pub"
            | "ref"
            | "return"
            | "self"
            | "static"
            | "struct"
            | "super"
            | "trait"
            | "true"
            | "type"
            | "unsafe"
            | "use"
            | "where"
            | "while"
            | "async"
            | "await"
            | "dyn"
            | "abstract"
            | "become"
            | "box"
            | "do"
            | "final"
            | "macro"
            | "override"
            | "priv"
            | "typeof"
            | "unsized"
            | "virtual"
            | "yield"
            | "try"
            | "gen"
    )
}

/// `FooBar` / `fooBar` / `foo_bar` → `foo_bar`.
pub(crate) fn to_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower =
                i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_uppercase();
            if i > 0 && !out.ends_with('_') && (prev_lower || (prev_upper && next_lower)) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The shape of a method.
fn shape(method: &Method) -> &'static str {
    match (method.client_streaming, method.server_streaming) {
        (false, false) => "Unary",
        (false, true) => "ServerStreaming",
        (true, false) => "ClientStreaming",
        (true, true) => "Bidi",
    }
}

fn comments(method_or_service: &prost_build::Comments, indent: u8, buf: &mut String) {
    method_or_service.append_with_indent(indent, buf);
}

fn client(service: &Service, svc: &ServiceNames, buf: &mut String) {
    let name = format!("{}DrpcClient", svc.rust);
    let _ = writeln!(buf, "/// DRPC client of `{}`.", svc.full_name);
    if !service.comments.leading.is_empty() {
        buf.push_str("///\n");
        comments(&service.comments, 0, buf);
    }
    let _ = writeln!(
        buf,
        "///\n/// Generic over the connection: a [`::drpc_conn::Conn`], or any\n\
         /// [`::drpc_conn::Invoker`] wrapping one.\n\
         #[derive(Debug, Clone)]\n\
         pub struct {name}<C> {{\n    inner: C,\n}}\n\n\
         impl<C: ::drpc_conn::Invoker> {name}<C> {{\n\
         \x20   /// A client making its calls through `inner`.\n\
         \x20   pub fn new(inner: C) -> Self {{\n        Self {{ inner }}\n    }}\n\n\
         \x20   /// The connection underneath.\n\
         \x20   pub fn get_ref(&self) -> &C {{\n        &self.inner\n    }}\n\n\
         \x20   /// Gives the connection back.\n\
         \x20   pub fn into_inner(self) -> C {{\n        self.inner\n    }}"
    );
    for method in &service.methods {
        let ident = method_ident(method);
        let path = svc.path(method);
        let (input, output) = (&method.input_type, &method.output_type);
        let doc = |buf: &mut String, what: &str| {
            buf.push('\n');
            let _ = writeln!(buf, "    /// `{path}` ({what}).");
            if !method.comments.leading.is_empty() {
                buf.push_str("    ///\n");
                comments(&method.comments, 1, buf);
            }
        };
        match (method.client_streaming, method.server_streaming) {
            (false, false) => {
                doc(buf, "unary: one request, one response");
                let _ = writeln!(
                    buf,
                    "    pub async fn {ident}(&self, request: &{input}) -> ::core::result::Result<{output}, ::drpc_conn::Error> {{\n\
                     \x20       self.{ident}_with(request, &::drpc_conn::CallOptions::new()).await\n    }}\n\n\
                     \x20   /// As [`Self::{ident}`], with call options (metadata, deadline, cancellation).\n\
                     \x20   pub async fn {ident}_with(&self, request: &{input}, options: &::drpc_conn::CallOptions) -> ::core::result::Result<{output}, ::drpc_conn::Error> {{\n\
                     \x20       self.inner.invoke(&::drpc_conn::Prost, \"{path}\", request, options).await\n    }}"
                );
            }
            (false, true) => {
                doc(buf, "server streaming: one request, a stream of responses");
                let _ = writeln!(
                    buf,
                    "    pub async fn {ident}(&self, request: &{input}) -> ::core::result::Result<::drpc_conn::Responses<{output}, ::drpc_conn::Prost>, ::drpc_conn::Error> {{\n\
                     \x20       self.{ident}_with(request, &::drpc_conn::CallOptions::new()).await\n    }}\n\n\
                     \x20   /// As [`Self::{ident}`], with call options (metadata, deadline, cancellation).\n\
                     \x20   pub async fn {ident}_with(&self, request: &{input}, options: &::drpc_conn::CallOptions) -> ::core::result::Result<::drpc_conn::Responses<{output}, ::drpc_conn::Prost>, ::drpc_conn::Error> {{\n\
                     \x20       let mut call = self.inner.open::<{input}, {output}, _>(::drpc_conn::Prost, \"{path}\", options).await?;\n\
                     \x20       call.send(request).await?;\n\
                     \x20       call.close_send()?;\n\
                     \x20       Ok(::drpc_conn::Responses::new(call.split().1))\n    }}"
                );
            }
            (true, false) => {
                doc(
                    buf,
                    "client streaming: send requests, then `close_and_recv` the response",
                );
                let _ = writeln!(
                    buf,
                    "    pub async fn {ident}(&self) -> ::core::result::Result<::drpc_conn::ClientStream<{input}, {output}, ::drpc_conn::Prost>, ::drpc_conn::Error> {{\n\
                     \x20       self.{ident}_with(&::drpc_conn::CallOptions::new()).await\n    }}\n\n\
                     \x20   /// As [`Self::{ident}`], with call options (metadata, deadline, cancellation).\n\
                     \x20   pub async fn {ident}_with(&self, options: &::drpc_conn::CallOptions) -> ::core::result::Result<::drpc_conn::ClientStream<{input}, {output}, ::drpc_conn::Prost>, ::drpc_conn::Error> {{\n\
                     \x20       self.inner.open(::drpc_conn::Prost, \"{path}\", options).await\n    }}"
                );
            }
            (true, true) => {
                doc(
                    buf,
                    "bidirectional: the sending half and the stream of responses",
                );
                let _ = writeln!(
                    buf,
                    "    pub async fn {ident}(&self) -> ::core::result::Result<(::drpc_conn::ClientSender<{input}, ::drpc_conn::Prost>, ::drpc_conn::Responses<{output}, ::drpc_conn::Prost>), ::drpc_conn::Error> {{\n\
                     \x20       self.{ident}_with(&::drpc_conn::CallOptions::new()).await\n    }}\n\n\
                     \x20   /// As [`Self::{ident}`], with call options (metadata, deadline, cancellation).\n\
                     \x20   pub async fn {ident}_with(&self, options: &::drpc_conn::CallOptions) -> ::core::result::Result<(::drpc_conn::ClientSender<{input}, ::drpc_conn::Prost>, ::drpc_conn::Responses<{output}, ::drpc_conn::Prost>), ::drpc_conn::Error> {{\n\
                     \x20       let call = self.inner.open::<{input}, {output}, _>(::drpc_conn::Prost, \"{path}\", options).await?;\n\
                     \x20       let (sender, receiver) = call.split();\n\
                     \x20       Ok((sender, ::drpc_conn::Responses::new(receiver)))\n    }}"
                );
            }
        }
    }
    buf.push_str("}\n\n");
}

fn server(service: &Service, svc: &ServiceNames, buf: &mut String) {
    let trait_name = format!("{}DrpcServer", svc.rust);
    let desc = format!("{}DrpcDescription", svc.rust);
    let methods_const = format!("{}_DRPC_METHODS", svc.snake.to_uppercase());
    let unimplemented = "::core::result::Result::Err(::drpc_mux::CodedError::new(::drpc_mux::UNIMPLEMENTED, \"Unimplemented\"))";

    let _ = writeln!(buf, "/// Server side of `{}`.", svc.full_name);
    if !service.comments.leading.is_empty() {
        buf.push_str("///\n");
        comments(&service.comments, 0, buf);
    }
    let _ = writeln!(
        buf,
        "///\n/// Implement the methods you serve; the others answer code 12\n\
         /// (Unimplemented). Register with [`register_{snake}_drpc`].\n\
         pub trait {trait_name}: ::core::marker::Send + ::core::marker::Sync + 'static {{",
        snake = svc.snake
    );
    let future = |out: &str| {
        format!(
            "impl ::core::future::Future<Output = ::core::result::Result<{out}, ::drpc_mux::CodedError>> + ::core::marker::Send"
        )
    };
    for (i, method) in service.methods.iter().enumerate() {
        if i > 0 {
            buf.push('\n');
        }
        let ident = method_ident(method);
        let (input, output) = (&method.input_type, &method.output_type);
        let _ = writeln!(buf, "    /// `{}` ({}).", svc.path(method), shape(method));
        if !method.comments.leading.is_empty() {
            buf.push_str("    ///\n");
            comments(&method.comments, 1, buf);
        }
        let (params, names, ret) = match (method.client_streaming, method.server_streaming) {
            (false, false) => (format!("request: {input}"), "request", future(output)),
            (false, true) => (
                format!("request: {input}, responses: impl ::drpc_mux::ResponseSink<{output}>"),
                "request, responses",
                future("()"),
            ),
            (true, false) => (
                format!("requests: impl ::drpc_mux::RequestStream<{input}>"),
                "requests",
                future(output),
            ),
            (true, true) => (
                format!(
                    "requests: impl ::drpc_mux::RequestStream<{input}>, responses: impl ::drpc_mux::ResponseSink<{output}>"
                ),
                "requests, responses",
                future("()"),
            ),
        };
        let _ = writeln!(
            buf,
            "    fn {ident}(&self, ctx: ::drpc_mux::RequestContext, {params}) -> {ret} {{\n\
             \x20       let _ = (ctx, {names});\n\
             \x20       async {{ {unimplemented} }}\n    }}"
        );
    }
    buf.push_str("}\n\n");

    let _ = writeln!(
        buf,
        "/// The methods of `{full}`, in declaration order.\n\
         pub const {methods_const}: &[::drpc_mux::MethodDesc] = &[",
        full = svc.full_name
    );
    for method in &service.methods {
        let _ = writeln!(
            buf,
            "    ::drpc_mux::MethodDesc {{ rpc: \"{}\", kind: ::drpc_mux::MethodKind::{} }},",
            svc.path(method),
            shape(method)
        );
    }
    buf.push_str("];\n\n");

    let _ = writeln!(
        buf,
        "/// Describes `{full}` to a [`::drpc_mux::Mux`], serving it with `S`.\n\
         #[derive(Debug)]\n\
         pub struct {desc}<S>(pub ::std::sync::Arc<S>);\n\n\
         impl<S: {trait_name}> ::drpc_mux::Description for {desc}<S> {{\n\
         \x20   fn methods(&self) -> &'static [::drpc_mux::MethodDesc] {{\n        {methods_const}\n    }}\n\n\
         \x20   fn register(self: ::std::sync::Arc<Self>, mux: &mut ::drpc_mux::Mux) {{",
        full = svc.full_name
    );
    for method in &service.methods {
        let ident = method_ident(method);
        let path = svc.path(method);
        let (input, output) = (&method.input_type, &method.output_type);
        let (register, args, call) = match (method.client_streaming, method.server_streaming) {
            (false, false) => ("unary", format!("request: {input}"), "request"),
            (false, true) => (
                "server_streaming",
                format!(
                    "request: {input}, responses: ::drpc_mux::ServerSender<{output}, ::drpc_mux::Prost>"
                ),
                "request, responses",
            ),
            (true, false) => (
                "client_streaming",
                format!("requests: ::drpc_mux::ServerReceiver<{input}, ::drpc_mux::Prost>"),
                "requests",
            ),
            (true, true) => (
                "bidi",
                format!(
                    "requests: ::drpc_mux::ServerReceiver<{input}, ::drpc_mux::Prost>, responses: ::drpc_mux::ServerSender<{output}, ::drpc_mux::Prost>"
                ),
                "requests, responses",
            ),
        };
        let _ = writeln!(
            buf,
            "        let server = self.0.clone();\n\
             \x20       mux.{register}(\"{path}\", ::drpc_mux::Prost, move |ctx: ::drpc_mux::RequestContext, {args}| {{\n\
             \x20           let server = server.clone();\n\
             \x20           async move {{ server.{ident}(ctx, {call}).await }}\n\
             \x20       }});"
        );
    }
    let _ = writeln!(
        buf,
        "    }}\n}}\n\n\
         /// Registers `server` as the implementation of `{full}` in `mux`.\n\
         pub fn register_{snake}_drpc<S: {trait_name}>(mux: &mut ::drpc_mux::Mux, server: ::std::sync::Arc<S>) {{\n\
         \x20   mux.register(::std::sync::Arc::new({desc}(server)));\n}}\n",
        full = svc.full_name,
        snake = svc.snake
    );
}

/// tonic's snake case for module names (`naive_snake_case`).
fn tonic_snake(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c.to_ascii_lowercase());
        if chars
            .peek()
            .is_some_and(|next| next.is_ascii_uppercase() && !c.is_ascii_uppercase())
        {
            out.push('_');
        }
    }
    out
}

/// `SvcGrpcAdapter<S>`: tonic's server trait implemented on top of the
/// DRPC server trait, so that one implementation serves both protocols.
fn grpc_adapter(service: &Service, svc: &ServiceNames, buf: &mut String) {
    let adapter = format!("{}GrpcAdapter", svc.rust);
    let server_trait = format!("{}DrpcServer", svc.rust);
    let module = format!("{}_server", tonic_snake(&service.name));
    let _ = writeln!(
        buf,
        "/// Serves a [`{server_trait}`] implementation over gRPC:\n\
         /// `{module}::{rust}Server::new({adapter}(server))` in a tonic router.\n\
         #[derive(Debug)]\n\
         pub struct {adapter}<S>(pub ::std::sync::Arc<S>);\n\n\
         #[::tonic::async_trait]\n\
         impl<S: {server_trait}> {module}::{rust} for {adapter}<S> {{",
        rust = svc.rust
    );
    let result =
        |out: &str| format!("::core::result::Result<::tonic::Response<{out}>, ::tonic::Status>");
    for method in &service.methods {
        let tonic_name = &method.name;
        let ident = method_ident(method);
        let path = svc.path(method);
        let (input, output) = (&method.input_type, &method.output_type);
        let stream_type = format!("{}Stream", method.proto_name);
        match (method.client_streaming, method.server_streaming) {
            (false, false) => {
                let _ = writeln!(
                    buf,
                    "    async fn {tonic_name}(&self, request: ::tonic::Request<{input}>) -> {ret} {{\n\
                     \x20       let ctx = ::drpc_mux::grpc::context(\"{path}\", &request);\n\
                     \x20       ::drpc_mux::grpc::reply(self.0.{ident}(ctx, request.into_inner()).await)\n    }}",
                    ret = result(output)
                );
            }
            (true, false) => {
                let _ = writeln!(
                    buf,
                    "    async fn {tonic_name}(&self, request: ::tonic::Request<::tonic::Streaming<{input}>>) -> {ret} {{\n\
                     \x20       let ctx = ::drpc_mux::grpc::context(\"{path}\", &request);\n\
                     \x20       let requests = ::drpc_mux::grpc::GrpcRequests::new(request.into_inner());\n\
                     \x20       ::drpc_mux::grpc::reply(self.0.{ident}(ctx, requests).await)\n    }}",
                    ret = result(output)
                );
            }
            (false, true) => {
                let _ = writeln!(
                    buf,
                    "    type {stream_type} = ::drpc_mux::grpc::GrpcResponses<{output}>;\n\n\
                     \x20   async fn {tonic_name}(&self, request: ::tonic::Request<{input}>) -> {ret} {{\n\
                     \x20       let server = self.0.clone();\n\
                     \x20       ::core::result::Result::Ok(::tonic::Response::new(::drpc_mux::grpc::spawn_responses(\"{path}\", request, move |ctx, request, responses| async move {{\n\
                     \x20           server.{ident}(ctx, request, responses).await\n\
                     \x20       }})))\n    }}",
                    ret = result(&format!("Self::{stream_type}"))
                );
            }
            (true, true) => {
                let _ = writeln!(
                    buf,
                    "    type {stream_type} = ::drpc_mux::grpc::GrpcResponses<{output}>;\n\n\
                     \x20   async fn {tonic_name}(&self, request: ::tonic::Request<::tonic::Streaming<{input}>>) -> {ret} {{\n\
                     \x20       let server = self.0.clone();\n\
                     \x20       ::core::result::Result::Ok(::tonic::Response::new(::drpc_mux::grpc::spawn_responses(\"{path}\", request, move |ctx, requests, responses| async move {{\n\
                     \x20           server.{ident}(ctx, ::drpc_mux::grpc::GrpcRequests::new(requests), responses).await\n\
                     \x20       }})))\n    }}",
                    ret = result(&format!("Self::{stream_type}"))
                );
            }
        }
    }
    buf.push_str("}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_like_prost() {
        assert_eq!(to_snake("Method1"), "method1");
        assert_eq!(to_snake("SayHello"), "say_hello");
        assert_eq!(to_snake("HTTPGet"), "http_get");
        assert_eq!(to_snake("streamingOutputCall"), "streaming_output_call");
        assert_eq!(to_snake("already_snake"), "already_snake");
    }
}
