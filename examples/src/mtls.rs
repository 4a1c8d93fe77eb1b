//! Mutual TLS: the Greeter served over TLS to clients with a certificate
//! only, and the server telling who called from the client's certificate.
//!
//! At startup it makes a CA and, signed by it, a certificate for the
//! server (`localhost`) and one for a client (`greeter-client`), with
//! `rcgen`; real deployments load theirs from files. The server requires
//! client certificates the CA vouches for (`WebPkiClientVerifier`) and
//! serves with `Server::serve_tls`; the handler reads the client's chain
//! from its context (`PeerCertificates`). A client dials with
//! `Endpoint::tls` (drpc-conn's `tls-ring` feature); a client without a
//! certificate is refused.
//!
//! Run it with `cargo run -p drpc-examples --bin mtls`.

use std::sync::Arc;
use std::time::Duration;

use drpc_conn::{CallOptions, Endpoint};
use drpc_mux::{CodedError, Mux, RequestContext};
use drpc_server::tls::rustls;
use drpc_server::tls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use drpc_server::tls::rustls::server::WebPkiClientVerifier;
use drpc_server::{PeerCertificates, Server};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The generated code: messages, `GreeterDrpcClient`, `GreeterDrpcServer`.
pub mod greeter {
    include!(concat!(env!("OUT_DIR"), "/greeter.v1.rs"));
}

use greeter::*;

/// A Greeter that greets its callers by the name in their certificate.
struct Greeter;

impl GreeterDrpcServer for Greeter {
    async fn say_hello(
        &self,
        ctx: RequestContext,
        request: HelloRequest,
    ) -> Result<HelloReply, CodedError> {
        // Set by `serve_tls` when the client presented certificates (with
        // this server's verifier, always: it refuses clients without).
        let chain = ctx
            .peer()
            .extensions()
            .get::<PeerCertificates>()
            .ok_or_else(|| CodedError::new(16, "no client certificate"))?;
        let cn = chain
            .end_entity()
            .and_then(|cert| subject_common_name(cert))
            .unwrap_or_else(|| "?".into());
        println!(
            "server: call from {} with a chain of {} certificates, CN={cn}",
            ctx.peer().addr(),
            chain.chain().len(),
        );
        Ok(HelloReply {
            message: format!("Hello, {}! You are {cn}.", request.name),
        })
    }
}

/// The subject's common name of a certificate, found the minimal way (an
/// example needs no X.509 parser; use one, such as `x509-parser`, for
/// real): the last attribute with the common name's OID (2.5.4.3), as the
/// subject comes after the issuer, and a short string.
fn subject_common_name(cert: &CertificateDer<'_>) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let der: &[u8] = cert;
    let at = der.windows(CN_OID.len()).rposition(|w| w == CN_OID)?;
    let value = der.get(at + CN_OID.len()..)?;
    // A UTF8String, PrintableString or IA5String under 128 bytes.
    let (&[tag, len], rest) = value.split_first_chunk::<2>()?;
    if !matches!(tag, 0x0c | 0x13 | 0x16) || len >= 0x80 {
        return None;
    }
    let text = rest.get(..usize::from(len))?;
    String::from_utf8(text.to_vec()).ok()
}

/// rustls' ring provider, named rather than taken from the process
/// default. (Deprecated since rustls 0.23.48 for its lack of post-quantum
/// key exchange; aws-lc-rs has it, but needs cmake to build.)
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its private key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A certificate authority, made up for the example.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "example CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate named `cn`, valid for the DNS `names`, for `usage`.
    fn issue(
        &self,
        cn: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<Identity> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    fn roots(&self) -> anyhow::Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone())?;
        Ok(Arc::new(roots))
    }
}

/// A client configuration trusting `ca`, with `identity` if given.
fn client_config(ca: &Ca, identity: Option<Identity>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(ca.roots()?);
    Ok(Arc::new(match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key)?,
        None => builder.with_no_client_auth(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One CA for both sides here; each side may have its own.
    let ca = Ca::new()?;
    let server_identity = ca.issue(
        "greeter-server",
        &["localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let client_identity = ca.issue("greeter-client", &[], ExtendedKeyUsagePurpose::ClientAuth)?;

    // Server: TLS, requiring a client certificate signed by the CA.
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots()?, provider()).build()?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_identity.chain, server_identity.key)?;
    let mut mux = Mux::new();
    register_greeter_drpc(&mut mux, Arc::new(Greeter));
    let server = Server::new(mux);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_tls(listener, Arc::new(server_config)).await }
    });
    println!("server listening on {addr} (mutual TLS)");

    // Client: a channel whose connections are TLS, with its certificate.
    let endpoint = |identity: Option<Identity>| -> anyhow::Result<Endpoint> {
        Ok(Endpoint::tcp(addr.to_string()).tls(
            ServerName::try_from("localhost")?,
            client_config(&ca, identity)?,
        ))
    };
    let client = GreeterDrpcClient::new(endpoint(Some(client_identity))?.connect_lazy());
    let reply = client
        .say_hello(&HelloRequest {
            name: "world".into(),
        })
        .await?;
    println!("client: {}", reply.message);

    // Without a certificate: refused in the handshake (with TLS 1.3 the
    // client learns it at its first call).
    let anonymous = GreeterDrpcClient::new(endpoint(None)?.connect_lazy());
    let refused = anonymous
        .say_hello_with(
            &HelloRequest {
                name: "nobody".into(),
            },
            &CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .is_err();
    println!("client without a certificate refused: {refused}");

    server.shutdown(Duration::from_secs(1)).await;
    serving.await??;
    println!("server stopped");
    Ok(())
}
