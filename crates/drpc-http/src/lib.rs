//! Unary DRPC methods over plain HTTP, with JSON or protobuf bodies (Go's
//! `drpchttp`, Twirp's conventions).
//!
//! A [`Bridge`] answers `POST /package.Service/Method` by making that call
//! over DRPC and answering with its response:
//!
//! * **Bodies.** `Content-Type: application/json` takes and gives the
//!   message in [proto3's JSON mapping](https://protobuf.dev/programming-guides/json/)
//!   (lowerCamelCase names, 64-bit integers as strings, bytes as base64,
//!   enums by name); the mapping comes from the service's descriptors,
//!   which `drpc-codegen` emits when asked
//!   ([`Builder::service_descriptors`](https://docs.rs/drpc-codegen)'s
//!   `SVC_DESCRIPTOR_SET`), read with `prost-reflect`. An empty JSON body
//!   is the empty message. `application/protobuf` (or
//!   `application/x-protobuf`, or Go's `application/proto`) passes the
//!   encoded message through, descriptors or not. The response has the
//!   request's content type.
//! * **Errors** answer with `Content-Type: application/json` and
//!   `{"code":"not_found","msg":"…"}`: the code's snake-case name
//!   ([`code_name`]) and the server's message; the HTTP status comes from
//!   the code, by Twirp's table ([`http_status`]: `invalid_argument` 400,
//!   `unauthenticated` 401, `not_found` 404, `unimplemented` 501,
//!   `unavailable` 503, …). The bridge's own refusals use the same body:
//!   a method other than POST (405), a content type it does not know
//!   (415), a body over [`Bridge::max_message_size`] (413), JSON that
//!   does not match the message (400), a streaming method (501).
//! * **Metadata** comes from headers: Go's `X-Drpc-Metadata:
//!   urlencode(key)=urlencode(value)` ([`METADATA_HEADER`], repeatable),
//!   and one pair per header named with a configurable prefix
//!   ([`Bridge::metadata_prefix`], default [`DEFAULT_METADATA_PREFIX`]:
//!   `drpc-md-tenant: acme` is `tenant: acme`). `drpc-timeout: 250m`
//!   ([`TIMEOUT_HEADER`], gRPC's format) gives the call a deadline.
//! * **Cancellation.** When the HTTP client goes away, the server drops
//!   the bridge's future, and the DRPC call is cancelled with it.
//!
//! A bridge is a [`tower_service::Service`] of `http::Request`s, cheap to
//! clone, so it mounts where hyper and axum take services: an axum
//! `Router`'s `route_service` or `fallback_service`, hyper-util's
//! `TowerToHyperService`. It calls through any [`drpc_conn::Invoker`]: a
//! [`Channel`] to a DRPC server elsewhere (a
//! gateway), or, with [`Bridge::in_process`], a handler of this process
//! (a [`Mux`](drpc_mux::Mux)) served over an in-memory connection, so
//! that its interceptor and limits apply to HTTP calls as to any other.
//!
//! Only unary methods are served; Go's bridge also serves gRPC-web, which
//! this one does not.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use drpc_http::Bridge;
//! use drpc_mux::{Mux, Raw, RequestContext};
//! use drpc_server::ServerOptions;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let mut mux = Mux::new();
//! mux.unary("/echo.Echo/Say", Raw, |_ctx: RequestContext, req: Bytes| async move { Ok(req) });
//! let bridge = Bridge::in_process(mux, ServerOptions::new());
//!
//! // Mount it in an axum router (or serve it with hyper):
//! let app = axum::Router::new().route_service("/echo.Echo/{method}", bridge);
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # tokio::spawn(async move { axum::serve(listener, app).await });
//! let reply = reqwest::Client::new()
//!     .post(format!("http://{addr}/echo.Echo/Say"))
//!     .header("content-type", "application/protobuf")
//!     .body("hi")
//!     .send()
//!     .await?;
//! assert_eq!(reply.status(), 200);
//! assert_eq!(reply.bytes().await?, "hi");
//! # Ok(())
//! # }
//! ```

mod metadata;
mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use drpc_conn::{CallOptions, Channel, Endpoint, Invoker};
use drpc_mux::{Handler, MethodKind, Raw};
use drpc_server::{Server, ServerOptions};
use drpc_wire::Code;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

pub use metadata::{DEFAULT_METADATA_PREFIX, METADATA_HEADER, TIMEOUT_HEADER};
pub use status::{code_name, http_status};

use status::Failure;

/// The largest request body the bridge reads by default: 4 MiB, Go's
/// `drpchttp` limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 << 20;

/// The size of the in-memory pipe of [`Bridge::in_process`]: what one
/// write can hand the server before it reads.
const IN_PROCESS_PIPE: usize = 256 << 10;

/// What an answer's body is.
pub type ResponseBody = Full<Bytes>;

/// Why descriptors given to [`Bridge::descriptors`] were refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not an encoded `FileDescriptorSet` whose files
    /// resolve, or they contradict descriptors given before.
    #[error("reading the service descriptors: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
}

/// One method the descriptors describe.
#[derive(Debug, Clone)]
struct MethodTypes {
    kind: MethodKind,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

/// The bridge's settings, shared by its clones.
#[derive(Debug, Clone)]
struct Config {
    pool: DescriptorPool,
    methods: HashMap<String, MethodTypes>,
    metadata_prefix: Option<String>,
    max_message_size: usize,
}

/// Serves unary DRPC methods over HTTP: see [the crate documentation](crate).
pub struct Bridge<I> {
    invoker: Arc<I>,
    config: Arc<Config>,
}

impl<I> Clone for Bridge<I> {
    fn clone(&self) -> Self {
        Bridge {
            invoker: self.invoker.clone(),
            config: self.config.clone(),
        }
    }
}

impl<I> fmt::Debug for Bridge<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<&str> = self.config.methods.keys().map(String::as_str).collect();
        methods.sort_unstable();
        f.debug_struct("Bridge")
            .field("methods", &methods)
            .field("metadata_prefix", &self.config.metadata_prefix)
            .field("max_message_size", &self.config.max_message_size)
            .finish_non_exhaustive()
    }
}

impl Bridge<Channel> {
    /// A bridge to `handler`, served by a [`Server`] with `options` over
    /// in-memory connections of this process: the handler sees HTTP calls
    /// as DRPC calls, through its interceptor and the server's limits.
    /// Its peer is [`PeerAddr::Unknown`](drpc_mux::PeerAddr::Unknown).
    ///
    /// The server's idle and first-byte timeouts are turned off: the
    /// bridge's connection is its own. Must be called within a Tokio
    /// runtime, which runs the server's side of each connection.
    pub fn in_process(handler: impl Handler, options: ServerOptions) -> Bridge<Channel> {
        let options = options.idle_timeout(None).handshake_timeout(None);
        Bridge::for_server(Server::with_options(handler, options))
    }

    /// A bridge to a server of this process that also serves DRPC
    /// elsewhere (a listener, a shared port): its calls arrive over an
    /// in-memory connection that `server` serves like any other (it does
    /// not count against `max_connections`), so that its handler,
    /// interceptor, limits, timeouts and shutdown apply to HTTP calls as
    /// well. When the server closes that connection (its idle timeout,
    /// say), the next call opens another; once it shuts down, calls are
    /// answered 503.
    ///
    /// Must be called within a Tokio runtime, which runs the server's side
    /// of each connection.
    pub fn for_server(server: Server) -> Bridge<Channel> {
        let endpoint = Endpoint::from_connector("in-process", move || {
            let (client, transport) = tokio::io::duplex(IN_PROCESS_PIPE);
            let server = server.clone();
            tokio::spawn(async move { server.serve_connection(transport).await });
            std::future::ready(Ok(client))
        });
        Bridge::new(Channel::new(endpoint))
    }
}

impl<I: Invoker + 'static> Bridge<I> {
    /// A bridge making its calls through `invoker` (a
    /// [`Channel`], a [`Conn`](drpc_conn::Conn)),
    /// with no descriptors yet: protobuf bodies only, until
    /// [`Bridge::descriptors`] adds JSON.
    pub fn new(invoker: I) -> Bridge<I> {
        Bridge {
            invoker: Arc::new(invoker),
            config: Arc::new(Config {
                pool: DescriptorPool::new(),
                methods: HashMap::new(),
                metadata_prefix: Some(DEFAULT_METADATA_PREFIX.to_owned()),
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            }),
        }
    }

    /// Adds the services of `file_descriptor_set` (an encoded
    /// `FileDescriptorSet`, as `drpc-codegen` emits in
    /// `SVC_DESCRIPTOR_SET`): their unary methods then take and give JSON,
    /// and their streaming methods are refused with 501 instead of being
    /// called. Can be called once per service; files already added are
    /// skipped.
    pub fn descriptors(mut self, file_descriptor_set: &[u8]) -> Result<Bridge<I>, Error> {
        let config = Arc::make_mut(&mut self.config);
        config
            .pool
            .decode_file_descriptor_set(file_descriptor_set)?;
        for service in config.pool.services() {
            for method in service.methods() {
                let kind = match (method.is_client_streaming(), method.is_server_streaming()) {
                    (false, false) => MethodKind::Unary,
                    (false, true) => MethodKind::ServerStreaming,
                    (true, false) => MethodKind::ClientStreaming,
                    (true, true) => MethodKind::Bidi,
                };
                let path = format!("/{}/{}", service.full_name(), method.name());
                config.methods.insert(
                    path,
                    MethodTypes {
                        kind,
                        input: method.input(),
                        output: method.output(),
                    },
                );
            }
        }
        Ok(self)
    }

    /// The prefix of headers that each carry one metadata pair, the rest
    /// of the header's name as key (default [`DEFAULT_METADATA_PREFIX`],
    /// `drpc-md-`), or `None` for Go's [`METADATA_HEADER`] alone (which
    /// is always read). Header names are lower case, so keys are too.
    pub fn metadata_prefix(mut self, prefix: Option<&str>) -> Bridge<I> {
        Arc::make_mut(&mut self.config).metadata_prefix = prefix.map(str::to_ascii_lowercase);
        self
    }

    /// The largest request body read, in bytes (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`], 4 MiB); a larger one is answered 413
    /// without calling the method.
    pub fn max_message_size(mut self, bytes: usize) -> Bridge<I> {
        Arc::make_mut(&mut self.config).max_message_size = bytes;
        self
    }

    /// The paths the descriptors describe as unary methods, sorted: those
    /// that take JSON.
    pub fn json_methods(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self
            .config
            .methods
            .iter()
            .filter(|(_, m)| m.kind == MethodKind::Unary)
            .map(|(path, _)| path.as_str())
            .collect();
        paths.sort_unstable();
        paths
    }

    /// Answers one HTTP request; errors are answers too.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.answer(request).await {
            Ok(response) => response,
            Err(failure) => {
                tracing::debug!(
                    code = %code_name(failure.code),
                    status = failure.status.as_u16(),
                    message = %failure.message,
                    "drpc-http request failed"
                );
                let mut response = Response::new(Full::new(failure.body()));
                *response.status_mut() = failure.status;
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
                if failure.status == StatusCode::METHOD_NOT_ALLOWED {
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("POST"));
                }
                response
            }
        }
    }

    async fn answer<B>(&self, request: Request<B>) -> Result<Response<ResponseBody>, Failure>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.method() != Method::POST {
            return Err(Failure::new(
                Code::Unimplemented,
                format!(
                    "method {} is not served: call RPCs with POST",
                    request.method()
                ),
            )
            .with_status(StatusCode::METHOD_NOT_ALLOWED));
        }
        let format = Format::of(request.headers())?;
        let path = request.uri().path().to_owned();
        let types = self.config.methods.get(&path);
        if let Some(types) = types
            && types.kind != MethodKind::Unary
        {
            return Err(Failure::new(
                Code::Unimplemented,
                format!(
                    "{path} is a {:?} method: only unary methods are served over HTTP",
                    types.kind
                ),
            ));
        }
        // JSON goes through the method's message types; protobuf as is.
        let codec = match format {
            Format::Json => Codec::Json(types.ok_or_else(|| {
                Failure::new(
                    Code::Unimplemented,
                    format!("no descriptors for {path}: JSON needs them (protobuf bodies do not)"),
                )
            })?),
            Format::Protobuf(content_type) => Codec::Protobuf(content_type),
        };
        let opts = self.call_options(request.headers())?;
        let body = read_body(request.into_body(), self.config.max_message_size).await?;
        let message = match &codec {
            Codec::Json(types) => json_to_protobuf(&types.input, &body)?,
            Codec::Protobuf(_) => body,
        };
        let reply: Bytes = self
            .invoker
            .invoke(&Raw, &path, &message, &opts)
            .await
            .map_err(|err| Failure::from_call(&err))?;
        let (body, content_type) = match codec {
            Codec::Json(types) => (
                protobuf_to_json(&types.output, reply)?,
                HeaderValue::from_static(JSON),
            ),
            Codec::Protobuf(content_type) => (reply, content_type),
        };
        let mut response = Response::new(Full::new(body));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        Ok(response)
    }

    fn call_options(&self, headers: &http::HeaderMap) -> Result<CallOptions, Failure> {
        let invalid =
            |e: metadata::MetadataHeaderError| Failure::new(Code::InvalidArgument, e.to_string());
        let pairs = metadata::from_headers(headers, self.config.metadata_prefix.as_deref())
            .map_err(invalid)?;
        let mut opts = CallOptions::new();
        for (key, value) in pairs {
            opts = opts.metadata(key, value);
        }
        if let Some(timeout) = metadata::timeout(headers).map_err(invalid)? {
            opts = opts.timeout(timeout);
        }
        Ok(opts)
    }
}

impl<I, B> tower_service::Service<Request<B>> for Bridge<I>
where
    I: Invoker + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let bridge = self.clone();
        Box::pin(async move { Ok(bridge.handle(request).await) })
    }
}

const JSON: &str = "application/json";

/// The content types of protobuf bodies: the registered one, the common
/// `x-` form, and Go's `drpchttp`'s.
const PROTOBUF_TYPES: [&str; 3] = [
    "application/protobuf",
    "application/x-protobuf",
    "application/proto",
];

/// The body formats, by request content type.
#[derive(Debug)]
enum Format {
    Json,
    /// The encoded message; the request's content type, to answer with.
    Protobuf(HeaderValue),
}

/// How one request's bodies are read and written.
enum Codec<'a> {
    /// Proto3 JSON, through the method's message types.
    Json(&'a MethodTypes),
    /// The encoded message as is, answered with the request's content type.
    Protobuf(HeaderValue),
}

impl Format {
    fn of(headers: &http::HeaderMap) -> Result<Format, Failure> {
        let value = headers.get(header::CONTENT_TYPE);
        let essence = value.and_then(|v| v.to_str().ok()).map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let protobuf = PROTOBUF_TYPES
            .iter()
            .find(|t| essence.as_deref() == Some(**t));
        match (essence.as_deref(), protobuf) {
            (Some(JSON), _) => Ok(Format::Json),
            (_, Some(protobuf)) => Ok(Format::Protobuf(HeaderValue::from_static(protobuf))),
            (other, None) => Err(Failure::new(
                Code::InvalidArgument,
                format!(
                    "unsupported content type {:?}: send application/json or application/protobuf",
                    other.unwrap_or("")
                ),
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)),
        }
    }
}

async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, Failure>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(Failure::new(
            Code::ResourceExhausted,
            format!("request body larger than the limit of {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(err) => Err(Failure::new(
            Code::InvalidArgument,
            format!("reading the request body: {err}"),
        )),
    }
}

/// The JSON request as the encoded message; an empty body is the empty
/// message. Unknown fields are refused, as proto3's JSON mapping asks of
/// parsers by default.
fn json_to_protobuf(input: &MessageDescriptor, json: &[u8]) -> Result<Bytes, Failure> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::new());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize_with_options(
        input.clone(),
        &mut deserializer,
        &DeserializeOptions::new(),
    )
    .and_then(|message| deserializer.end().map(|()| message))
    .map_err(|err| {
        Failure::new(
            Code::InvalidArgument,
            format!("the request is not a JSON {}: {err}", input.full_name()),
        )
    })?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// The encoded response in proto3's JSON mapping.
fn protobuf_to_json(output: &MessageDescriptor, reply: Bytes) -> Result<Bytes, Failure> {
    let message = DynamicMessage::decode(output.clone(), reply).map_err(|err| {
        Failure::new(
            Code::Internal,
            format!("the response is not a {}: {err}", output.full_name()),
        )
    })?;
    serde_json::to_vec(&message)
        .map(Bytes::from)
        .map_err(|err| Failure::new(Code::Internal, format!("writing the JSON response: {err}")))
}
