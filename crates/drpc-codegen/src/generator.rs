//! The service code generator, plugged into prost-build.
//!
//! Each service's code is built as tokens with `quote!` and formatted with
//! `prettyplease`, as tonic-build does.

use heck::ToSnakeCase;
use proc_macro2::{Ident, Span, TokenStream};
use prost_build::{Comments, Method, Service};
use quote::{format_ident, quote};

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
    /// Every file compiled, without source info, when each service should
    /// carry the descriptors of its file and what that imports
    /// ([`Builder::service_descriptors`](crate::Builder::service_descriptors)).
    pub(crate) descriptors: Option<prost_types::FileDescriptorSet>,
}

impl std::fmt::Debug for DrpcServiceGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrpcServiceGenerator")
            .field("emit", &self.emit)
            .field("grpc", &self.grpc.is_some())
            .field("descriptors", &self.descriptors.is_some())
            .finish()
    }
}

impl prost_build::ServiceGenerator for DrpcServiceGenerator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        if let Some(tonic) = &mut self.grpc {
            tonic.generate(service.clone(), buf);
        }
        let code = service_code(&service, self.emit, self.grpc.is_some());
        buf.push_str(&format_code(code));
        if let Some(set) = &self.descriptors {
            buf.push_str(&format_code(descriptor_set_code(&service, set)));
        }
    }
}

/// The DRPC code of one service, as tokens.
fn service_code(service: &Service, emit: Emit, grpc: bool) -> TokenStream {
    let svc = ServiceNames::new(service);
    let rpcs: Vec<Rpc<'_>> = service
        .methods
        .iter()
        .map(|method| Rpc::new(&svc, method))
        .collect();
    let mut code = TokenStream::new();
    if emit.client {
        code.extend(client(&svc, &rpcs));
    }
    if emit.server {
        code.extend(server(&svc, &rpcs));
        if grpc {
            code.extend(grpc_adapter(&svc, &rpcs));
        }
    }
    code
}

/// Formats generated items with prettyplease.
fn format_code(code: TokenStream) -> String {
    match syn::parse2::<syn::File>(code) {
        Ok(file) => prettyplease::unparse(&file),
        // Only a bug in this generator gets here: every part of the tokens
        // is built by it, or parsed (types) before going in.
        Err(e) => panic!("drpc-codegen generated code that does not parse: {e}"),
    }
}

/// The names derived from one service.
struct ServiceNames<'a> {
    service: &'a Service,
    /// `package.Service`, or `Service` without a package.
    full_name: String,
    /// The prefix of the generated types: the service's name in Rust
    /// style, without the `_` prost appends to `Self`.
    rust: String,
    /// The service's name in snake case, for functions and constants.
    snake: String,
    /// Its comments, as doc lines.
    docs: Vec<String>,
}

impl<'a> ServiceNames<'a> {
    fn new(service: &'a Service) -> ServiceNames<'a> {
        let full_name = if service.package.is_empty() {
            service.proto_name.clone()
        } else {
            format!("{}.{}", service.package, service.proto_name)
        };
        ServiceNames {
            service,
            full_name,
            rust: service.name.trim_end_matches('_').to_owned(),
            snake: service.proto_name.to_snake_case(),
            docs: doc_lines(&service.comments),
        }
    }

    /// The RPC path of a method: exactly Go's and gRPC's
    /// `/package.Service/Method`, from the proto names.
    fn path(&self, method: &Method) -> String {
        format!("/{}/{}", self.full_name, method.proto_name)
    }
}

/// One method, with everything the generated code says about it.
struct Rpc<'a> {
    method: &'a Method,
    /// Its name in the client and the server trait.
    ident: Ident,
    /// The name of the client's variant with call options.
    with: Ident,
    /// `/package.Service/Method`.
    path: String,
    input: syn::Type,
    output: syn::Type,
    /// Its comments, as doc lines.
    docs: Vec<String>,
}

impl<'a> Rpc<'a> {
    fn new(svc: &ServiceNames<'_>, method: &'a Method) -> Rpc<'a> {
        let names = MethodNames::new(&method.proto_name);
        Rpc {
            method,
            ident: ident(&names.ident),
            with: ident(&names.with),
            path: svc.path(method),
            input: rust_type(&method.input_type),
            output: rust_type(&method.output_type),
            docs: doc_lines(&method.comments),
        }
    }

    fn shape(&self) -> (bool, bool) {
        (self.method.client_streaming, self.method.server_streaming)
    }

    /// The method's kind, as named by `drpc_mux::MethodKind`.
    fn kind(&self) -> Ident {
        let kind = match self.shape() {
            (false, false) => "Unary",
            (false, true) => "ServerStreaming",
            (true, false) => "ClientStreaming",
            (true, true) => "Bidi",
        };
        Ident::new(kind, Span::call_site())
    }

    /// The doc comment of the method: `headline`, then the proto comments.
    fn doc(&self, headline: String) -> TokenStream {
        let mut lines = vec![headline];
        if !self.docs.is_empty() {
            lines.push(String::new());
            lines.extend(self.docs.iter().cloned());
        }
        doc(&lines)
    }
}

/// The Rust names of a method.
#[derive(Debug, PartialEq, Eq)]
struct MethodNames {
    /// Its name in the client and the server trait: prost's and tonic's
    /// (snake case; `r#` before a keyword that may be raw, `_` after
    /// `self`, `super`, `crate`, `extern` and `Self`, which may not be), or
    /// with `_rpc` appended where it would clash with the client's own
    /// `new`, `get_ref` and `into_inner`.
    ident: String,
    /// The client's variant with call options: the bare word, then `_with`
    /// (`say_with`, `type_with`, `self_with`), never a double underscore.
    with: String,
}

impl MethodNames {
    fn new(proto_name: &str) -> MethodNames {
        let mut snake = proto_name.to_snake_case();
        if snake.is_empty() {
            // `rpc _`: heck keeps no letter of it.
            snake.push_str("rpc");
        }
        let ident = if matches!(snake.as_str(), "new" | "get_ref" | "into_inner") {
            format!("{snake}_rpc")
        } else {
            sanitize_identifier(&snake)
        };
        let bare = ident.strip_prefix("r#").unwrap_or(&ident);
        let with = format!("{}_with", bare.trim_end_matches('_'));
        MethodNames { ident, with }
    }
}

/// prost-build's `sanitize_identifier`, which tonic's names come from: a
/// raw identifier for a keyword that may be one, a `_` suffix for those
/// that may not, a `_` prefix before a digit.
fn sanitize_identifier(ident: &str) -> String {
    match ident {
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if"
        | "impl" | "in" | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref"
        | "return" | "static" | "struct" | "trait" | "true" | "type" | "unsafe" | "use"
        | "where" | "while" | "dyn" | "abstract" | "become" | "box" | "do" | "final" | "macro"
        | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async" | "await"
        | "try" | "gen" => format!("r#{ident}"),
        "_" | "super" | "self" | "Self" | "extern" | "crate" => format!("{ident}_"),
        s if s.starts_with(|c: char| c.is_ascii_digit()) => format!("_{ident}"),
        _ => ident.to_owned(),
    }
}

/// An identifier, raw if written `r#name`.
fn ident(name: &str) -> Ident {
    match name.strip_prefix("r#") {
        Some(raw) => Ident::new_raw(raw, Span::call_site()),
        None => Ident::new(name, Span::call_site()),
    }
}

/// A Rust type as prost names it (`Msg`, `super::v1::Msg`, `()`...).
fn rust_type(name: &str) -> syn::Type {
    syn::parse_str(name)
        .unwrap_or_else(|e| panic!("prost named a message type {name:?}, not a Rust type: {e}"))
}

/// The rustdoc lines of proto comments (leading, then trailing), as
/// prost-build writes them (URLs and brackets escaped, indented code kept
/// as text), each starting with its space.
fn doc_lines(comments: &Comments) -> Vec<String> {
    let comments = Comments {
        leading_detached: Vec::new(),
        leading: comments.leading.clone(),
        trailing: comments.trailing.clone(),
    };
    let mut text = String::new();
    comments.append_with_indent(0, &mut text);
    text.lines()
        .filter_map(|line| line.strip_prefix("///"))
        .map(str::to_owned)
        .collect()
}

/// `#[doc]` attributes, one per line: prettyplease writes them as `///`.
/// Each line but an empty one starts with its space, as after `///`.
fn doc(lines: &[String]) -> TokenStream {
    quote! { #(#[doc = #lines])* }
}

/// The doc comment of an item of a service: `headline`, the service's
/// comments, then `tail`.
fn service_doc(svc: &ServiceNames<'_>, headline: String, tail: &[&str]) -> TokenStream {
    let mut lines = vec![headline];
    if !svc.docs.is_empty() {
        lines.push(String::new());
        lines.extend(svc.docs.iter().cloned());
    }
    if !tail.is_empty() {
        lines.push(String::new());
        lines.extend(tail.iter().map(|line| (*line).to_owned()));
    }
    doc(&lines)
}

/// `SvcDrpcClient<C>`: one method per RPC, and its `_with` variant.
fn client(svc: &ServiceNames<'_>, rpcs: &[Rpc<'_>]) -> TokenStream {
    let name = format_ident!("{}DrpcClient", svc.rust);
    let doc = service_doc(
        svc,
        format!(" DRPC client of `{}`.", svc.full_name),
        &[
            " Generic over the connection: a [`::drpc_conn::Conn`], or any",
            " [`::drpc_conn::Invoker`] wrapping one.",
        ],
    );
    let methods = rpcs.iter().map(client_method);
    quote! {
        #doc
        #[derive(Debug, Clone)]
        pub struct #name<C> {
            inner: C,
        }

        impl<C: ::drpc_conn::Invoker> #name<C> {
            /// A client making its calls through `inner`.
            pub fn new(inner: C) -> Self {
                Self { inner }
            }

            /// The connection underneath.
            pub fn get_ref(&self) -> &C {
                &self.inner
            }

            /// Gives the connection back.
            pub fn into_inner(self) -> C {
                self.inner
            }

            #(#methods)*
        }
    }
}

fn client_method(rpc: &Rpc<'_>) -> TokenStream {
    let Rpc {
        ident,
        with,
        path,
        input,
        output,
        ..
    } = rpc;
    let what = match rpc.shape() {
        (false, false) => "unary: one request, one response",
        (false, true) => "server streaming: one request, a stream of responses",
        (true, false) => "client streaming: send requests, then `close_and_recv` the response",
        (true, true) => "bidirectional: the sending half and the stream of responses",
    };
    let doc = rpc.doc(format!(" `{path}` ({what})."));
    // rustdoc resolves `Self::type`, not `Self::r#type`.
    let link = match ident.to_string().strip_prefix("r#") {
        Some(bare) => format!("[`Self::{ident}`](Self::{bare})"),
        None => format!("[`Self::{ident}`]"),
    };
    let with_doc = format!(" As {link}, with call options (metadata, deadline, cancellation).");
    let error = quote!(::drpc_conn::Error);
    let options = quote!(&::drpc_conn::CallOptions::new());
    match rpc.shape() {
        (false, false) => quote! {
            #doc
            pub async fn #ident(&self, request: &#input) -> ::core::result::Result<#output, #error> {
                self.#with(request, #options).await
            }

            #[doc = #with_doc]
            pub async fn #with(
                &self,
                request: &#input,
                options: &::drpc_conn::CallOptions,
            ) -> ::core::result::Result<#output, #error> {
                self.inner.invoke(&::drpc_conn::Prost, #path, request, options).await
            }
        },
        (false, true) => {
            let ret = quote! {
                ::core::result::Result<::drpc_conn::Responses<#output, ::drpc_conn::Prost>, #error>
            };
            quote! {
                #doc
                pub async fn #ident(&self, request: &#input) -> #ret {
                    self.#with(request, #options).await
                }

                #[doc = #with_doc]
                pub async fn #with(
                    &self,
                    request: &#input,
                    options: &::drpc_conn::CallOptions,
                ) -> #ret {
                    let mut call = self
                        .inner
                        .open::<#input, #output, _>(::drpc_conn::Prost, #path, options)
                        .await?;
                    call.send(request).await?;
                    call.close_send()?;
                    Ok(::drpc_conn::Responses::new(call.split().1))
                }
            }
        }
        (true, false) => {
            let ret = quote! {
                ::core::result::Result<
                    ::drpc_conn::ClientStream<#input, #output, ::drpc_conn::Prost>,
                    #error,
                >
            };
            quote! {
                #doc
                pub async fn #ident(&self) -> #ret {
                    self.#with(#options).await
                }

                #[doc = #with_doc]
                pub async fn #with(&self, options: &::drpc_conn::CallOptions) -> #ret {
                    self.inner.open(::drpc_conn::Prost, #path, options).await
                }
            }
        }
        (true, true) => {
            let ret = quote! {
                ::core::result::Result<
                    (
                        ::drpc_conn::ClientSender<#input, ::drpc_conn::Prost>,
                        ::drpc_conn::Responses<#output, ::drpc_conn::Prost>,
                    ),
                    #error,
                >
            };
            quote! {
                #doc
                pub async fn #ident(&self) -> #ret {
                    self.#with(#options).await
                }

                #[doc = #with_doc]
                pub async fn #with(&self, options: &::drpc_conn::CallOptions) -> #ret {
                    let call = self
                        .inner
                        .open::<#input, #output, _>(::drpc_conn::Prost, #path, options)
                        .await?;
                    let (sender, receiver) = call.split();
                    Ok((sender, ::drpc_conn::Responses::new(receiver)))
                }
            }
        }
    }
}

/// `SvcDrpcServer`, `SVC_DRPC_METHODS`, `SvcDrpcDescription` and
/// `register_svc_drpc`.
fn server(svc: &ServiceNames<'_>, rpcs: &[Rpc<'_>]) -> TokenStream {
    let trait_name = format_ident!("{}DrpcServer", svc.rust);
    let desc = format_ident!("{}DrpcDescription", svc.rust);
    let methods_const = format_ident!("{}_DRPC_METHODS", svc.snake.to_uppercase());
    let register_fn = format_ident!("register_{}_drpc", svc.snake);
    let full = &svc.full_name;

    let trait_doc = service_doc(
        svc,
        format!(" Server side of `{full}`."),
        &[
            " Implement the methods you serve; the others answer code 12",
            &format!(" (Unimplemented). Register with [`{register_fn}`]."),
        ],
    );
    let trait_methods = rpcs.iter().map(server_method);
    let descs = rpcs.iter().map(|rpc| {
        let (path, kind) = (&rpc.path, rpc.kind());
        quote!(::drpc_mux::MethodDesc { rpc: #path, kind: ::drpc_mux::MethodKind::#kind })
    });
    let registrations = rpcs.iter().map(registration);
    // A service without methods registers nothing.
    let mux_used = rpcs.is_empty().then(|| quote!(let _ = mux;));
    let methods_doc = format!(" The methods of `{full}`, in declaration order.");
    let desc_doc = format!(" Describes `{full}` to a [`::drpc_mux::Mux`], serving it with `S`.");
    let register_doc = format!(" Registers `server` as the implementation of `{full}` in `mux`.");

    quote! {
        #trait_doc
        pub trait #trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #methods_doc]
        pub const #methods_const: &[::drpc_mux::MethodDesc] = &[#(#descs),*];

        #[doc = #desc_doc]
        #[derive(Debug)]
        pub struct #desc<S>(pub ::std::sync::Arc<S>);

        impl<S: #trait_name> ::drpc_mux::Description for #desc<S> {
            fn methods(&self) -> &'static [::drpc_mux::MethodDesc] {
                #methods_const
            }

            fn register(self: ::std::sync::Arc<Self>, mux: &mut ::drpc_mux::Mux) {
                #mux_used
                #(#registrations)*
            }
        }

        #[doc = #register_doc]
        pub fn #register_fn<S: #trait_name>(
            mux: &mut ::drpc_mux::Mux,
            server: ::std::sync::Arc<S>,
        ) {
            mux.register(::std::sync::Arc::new(#desc(server)));
        }
    }
}

/// A method of the server trait, defaulting to Unimplemented.
fn server_method(rpc: &Rpc<'_>) -> TokenStream {
    let Rpc {
        ident,
        input,
        output,
        ..
    } = rpc;
    let doc = rpc.doc(format!(" `{}` ({}).", rpc.path, rpc.kind()));
    let future = |out: TokenStream| {
        quote! {
            impl ::core::future::Future<
                Output = ::core::result::Result<#out, ::drpc_mux::CodedError>,
            > + ::core::marker::Send
        }
    };
    let (params, names, ret) = match rpc.shape() {
        (false, false) => (
            quote!(request: #input),
            quote!(request),
            future(quote!(#output)),
        ),
        (false, true) => (
            quote!(request: #input, responses: impl ::drpc_mux::ResponseSink<#output>),
            quote!(request, responses),
            future(quote!(())),
        ),
        (true, false) => (
            quote!(requests: impl ::drpc_mux::RequestStream<#input>),
            quote!(requests),
            future(quote!(#output)),
        ),
        (true, true) => (
            quote! {
                requests: impl ::drpc_mux::RequestStream<#input>,
                responses: impl ::drpc_mux::ResponseSink<#output>
            },
            quote!(requests, responses),
            future(quote!(())),
        ),
    };
    quote! {
        #doc
        fn #ident(&self, ctx: ::drpc_mux::RequestContext, #params) -> #ret {
            let _ = (ctx, #names);
            async {
                ::core::result::Result::Err(::drpc_mux::CodedError::new(
                    ::drpc_mux::UNIMPLEMENTED,
                    "Unimplemented",
                ))
            }
        }
    }
}

/// One route of `Description::register`.
fn registration(rpc: &Rpc<'_>) -> TokenStream {
    let Rpc {
        ident,
        path,
        input,
        output,
        ..
    } = rpc;
    let (register, args, call) = match rpc.shape() {
        (false, false) => (quote!(unary), quote!(request: #input), quote!(request)),
        (false, true) => (
            quote!(server_streaming),
            quote!(request: #input, responses: ::drpc_mux::ServerSender<#output, ::drpc_mux::Prost>),
            quote!(request, responses),
        ),
        (true, false) => (
            quote!(client_streaming),
            quote!(requests: ::drpc_mux::ServerReceiver<#input, ::drpc_mux::Prost>),
            quote!(requests),
        ),
        (true, true) => (
            quote!(bidi),
            quote! {
                requests: ::drpc_mux::ServerReceiver<#input, ::drpc_mux::Prost>,
                responses: ::drpc_mux::ServerSender<#output, ::drpc_mux::Prost>
            },
            quote!(requests, responses),
        ),
    };
    quote! {
        let server = self.0.clone();
        mux.#register(
            #path,
            ::drpc_mux::Prost,
            move |ctx: ::drpc_mux::RequestContext, #args| {
                let server = server.clone();
                async move { server.#ident(ctx, #call).await }
            },
        );
    }
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
fn grpc_adapter(svc: &ServiceNames<'_>, rpcs: &[Rpc<'_>]) -> TokenStream {
    // tonic's names come from prost's (`Self_` for a service `Self`).
    let tonic_name = &svc.service.name;
    let adapter = format_ident!("{}GrpcAdapter", svc.rust);
    let server_trait = format_ident!("{}DrpcServer", svc.rust);
    let module = format_ident!("{}_server", tonic_snake(tonic_name));
    let tonic_trait = ident(tonic_name);
    let adapter_doc = [
        format!(" Serves a [`{server_trait}`] implementation over gRPC:"),
        format!(
            " `{module}::{tonic_name}Server::new({adapter}::from_mux(server, &mux))` \
             in a tonic router."
        ),
        String::new(),
        " Needs `drpc-mux` with its `grpc` feature, `tonic` and `tonic-prost`.".to_owned(),
        String::new(),
        " Every call goes through the adapter's `drpc_mux::Middleware`: the".to_owned(),
        " interceptor, then the `tower` layers, then the implementation. Built".to_owned(),
        format!(" with [`{adapter}::from_mux`], they are those of the DRPC `Mux`"),
        " serving the same implementation, so that both protocols enforce the".to_owned(),
        format!(" same checks; [`{adapter}::new`] has none."),
    ];
    let adapter_doc = doc(&adapter_doc);
    let methods = rpcs.iter().map(grpc_method);
    quote! {
        #adapter_doc
        #[derive(Debug)]
        pub struct #adapter<S> {
            server: ::std::sync::Arc<S>,
            middleware: ::drpc_mux::Middleware,
        }

        impl<S: #server_trait> #adapter<S> {
            /// Serves `server`, with no interceptor and no layers.
            pub fn new(server: ::std::sync::Arc<S>) -> Self {
                Self::with_middleware(server, ::drpc_mux::Middleware::new())
            }

            /// Serves `server` through the interceptor and the layers
            /// configured on `mux` ([`::drpc_mux::Mux::middleware`]), as
            /// the mux serves DRPC calls. Build it once `mux` is
            /// configured: what is added to `mux` later does not reach it.
            pub fn from_mux(server: ::std::sync::Arc<S>, mux: &::drpc_mux::Mux) -> Self {
                Self::with_middleware(server, mux.middleware().clone())
            }

            /// Serves `server` through `middleware`.
            pub fn with_middleware(
                server: ::std::sync::Arc<S>,
                middleware: ::drpc_mux::Middleware,
            ) -> Self {
                Self { server, middleware }
            }
        }

        #[::tonic::async_trait]
        impl<S: #server_trait> #module::#tonic_trait for #adapter<S> {
            #(#methods)*
        }
    }
}

/// One method of tonic's server trait, calling the DRPC one.
fn grpc_method(rpc: &Rpc<'_>) -> TokenStream {
    let Rpc {
        ident,
        path,
        input,
        output,
        ..
    } = rpc;
    // tonic names its methods as prost does.
    let tonic_method = self::ident(&rpc.method.name);
    let stream_type = format_ident!("{}Stream", rpc.method.proto_name);
    let result =
        |out: TokenStream| quote!(::core::result::Result<::tonic::Response<#out>, ::tonic::Status>);
    match rpc.shape() {
        (false, false) => {
            let ret = result(quote!(#output));
            quote! {
                async fn #tonic_method(&self, request: ::tonic::Request<#input>) -> #ret {
                    let server = self.server.clone();
                    ::drpc_mux::grpc::unary(
                        &self.middleware,
                        #path,
                        request,
                        move |ctx, request| async move { server.#ident(ctx, request).await },
                    )
                    .await
                }
            }
        }
        (true, false) => {
            let ret = result(quote!(#output));
            quote! {
                async fn #tonic_method(
                    &self,
                    request: ::tonic::Request<::tonic::Streaming<#input>>,
                ) -> #ret {
                    let server = self.server.clone();
                    ::drpc_mux::grpc::client_streaming(
                        &self.middleware,
                        #path,
                        request,
                        move |ctx, requests| async move { server.#ident(ctx, requests).await },
                    )
                    .await
                }
            }
        }
        (false, true) => {
            let ret = result(quote!(Self::#stream_type));
            quote! {
                type #stream_type = ::drpc_mux::grpc::GrpcResponses<#output>;

                async fn #tonic_method(&self, request: ::tonic::Request<#input>) -> #ret {
                    let server = self.server.clone();
                    ::drpc_mux::grpc::spawn_responses(
                        &self.middleware,
                        #path,
                        request,
                        move |ctx, request, responses| async move {
                            server.#ident(ctx, request, responses).await
                        },
                    )
                    .await
                }
            }
        }
        (true, true) => {
            let ret = result(quote!(Self::#stream_type));
            quote! {
                type #stream_type = ::drpc_mux::grpc::GrpcResponses<#output>;

                async fn #tonic_method(
                    &self,
                    request: ::tonic::Request<::tonic::Streaming<#input>>,
                ) -> #ret {
                    let server = self.server.clone();
                    ::drpc_mux::grpc::spawn_responses(
                        &self.middleware,
                        #path,
                        request,
                        move |ctx, requests, responses| async move {
                            server
                                .#ident(ctx, ::drpc_mux::grpc::GrpcRequests::new(requests), responses)
                                .await
                        },
                    )
                    .await
                }
            }
        }
    }
}

/// `SVC_DESCRIPTOR_SET`: the encoded `FileDescriptorSet` of the file that
/// declares `service` and every file it imports, transitively (each after
/// those it imports), what a bridge needs to map the service's messages to
/// and from JSON at run time (`drpc-http`, with `prost-reflect`).
fn descriptor_set_code(service: &Service, all: &prost_types::FileDescriptorSet) -> TokenStream {
    use prost::Message;
    let declares = |file: &&prost_types::FileDescriptorProto| {
        file.package() == service.package
            && file.service.iter().any(|s| s.name() == service.proto_name)
    };
    let mut wanted: Vec<&str> = Vec::new();
    if let Some(file) = all.file.iter().find(declares) {
        let mut pending = vec![file.name()];
        while let Some(name) = pending.pop() {
            if wanted.contains(&name) {
                continue;
            }
            wanted.push(name);
            if let Some(file) = all.file.iter().find(|f| f.name() == name) {
                pending.extend(file.dependency.iter().map(String::as_str));
            }
        }
    }
    // `all` lists a file after its imports; keeping its order keeps that.
    let set = prost_types::FileDescriptorSet {
        file: all
            .file
            .iter()
            .filter(|f| wanted.contains(&f.name()))
            .cloned()
            .collect(),
    };
    let bytes = proc_macro2::Literal::byte_string(&set.encode_to_vec());
    let svc = ServiceNames::new(service);
    let name = format_ident!("{}_DESCRIPTOR_SET", svc.snake.to_uppercase());
    let doc = format!(
        " The protobuf descriptors of `{}`: an encoded `FileDescriptorSet` of the \
         file declaring it and of every file that file imports, for mapping its \
         messages to and from JSON at run time (`drpc_http::Bridge::descriptors`).",
        svc.full_name
    );
    quote! {
        #[doc = #doc]
        pub const #name: &[u8] = #bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(proto_name: &str) -> (String, String) {
        let names = MethodNames::new(proto_name);
        (names.ident, names.with)
    }

    #[test]
    fn method_names_are_snake_case_like_prost() {
        for (proto, ident, with) in [
            ("Method1", "method1", "method1_with"),
            ("SayHello", "say_hello", "say_hello_with"),
            ("HTTPGet", "http_get", "http_get_with"),
            (
                "streamingOutputCall",
                "streaming_output_call",
                "streaming_output_call_with",
            ),
            ("already_snake", "already_snake", "already_snake_with"),
            ("Foo__Bar", "foo_bar", "foo_bar_with"),
            ("_Private", "private", "private_with"),
        ] {
            assert_eq!(names(proto), (ident.into(), with.into()), "{proto}");
        }
    }

    #[test]
    fn keywords_are_raw_or_suffixed_as_tonic_does() {
        for (proto, ident, with) in [
            ("Type", "r#type", "type_with"),
            ("Async", "r#async", "async_with"),
            ("Move", "r#move", "move_with"),
            ("Gen", "r#gen", "gen_with"),
            ("Self", "self_", "self_with"),
            ("Super", "super_", "super_with"),
            ("Crate", "crate_", "crate_with"),
            ("Extern", "extern_", "extern_with"),
            // The client's own methods.
            ("New", "new_rpc", "new_rpc_with"),
            ("GetRef", "get_ref_rpc", "get_ref_rpc_with"),
            ("IntoInner", "into_inner_rpc", "into_inner_rpc_with"),
            ("_", "rpc", "rpc_with"),
        ] {
            assert_eq!(names(proto), (ident.into(), with.into()), "{proto}");
            // Each is a valid identifier.
            let _ = self::ident(ident);
            let _ = self::ident(with);
        }
    }

    #[test]
    fn method_names_match_prost_which_tonic_uses() {
        // Outside the clashes with the client's methods, the name is
        // prost's `Method::name`, which tonic's trait methods carry.
        for proto in ["Type", "Self", "Async", "SayHello", "HTTPGet", "Foo__Bar"] {
            let prost = sanitize_identifier(&proto.to_snake_case());
            assert_eq!(MethodNames::new(proto).ident, prost);
        }
    }

    #[test]
    fn service_names_have_no_double_underscores() {
        let service = |proto_name: &str, name: &str| Service {
            name: name.into(),
            proto_name: proto_name.into(),
            package: String::new(),
            comments: Comments::default(),
            methods: Vec::new(),
            options: Default::default(),
        };
        let s = service("Foo__Bar", "FooBar");
        let svc = ServiceNames::new(&s);
        assert_eq!(
            (svc.snake.as_str(), svc.rust.as_str()),
            ("foo_bar", "FooBar")
        );
        let s = service("Self", "Self_");
        let svc = ServiceNames::new(&s);
        assert_eq!((svc.snake.as_str(), svc.rust.as_str()), ("self", "Self"));
    }

    #[test]
    fn proto_comments_become_doc_lines() {
        let comments = Comments {
            leading_detached: vec![vec![" detached".into()]],
            leading: vec![" Leading, see [docs].".into(), "".into(), " More.".into()],
            trailing: vec![" Trailing.".into()],
        };
        let lines = doc_lines(&comments);
        assert_eq!(
            lines,
            [" Leading, see \\[docs\\].", "", " More.", "", " Trailing."]
        );
    }
}
