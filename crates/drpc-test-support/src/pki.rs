//! TLS fixtures: a certificate authority made with `rcgen`, server and
//! client identities it signs, and rustls configurations with the ring
//! provider.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The name the certificate of [`Pki::server_identity`] is for.
pub const SERVER_NAME: &str = "localhost";

/// A CA that signs certificates.
#[derive(Debug)]
pub struct Pki {
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// The end-entity certificate, then the CA's.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's key.
    pub key: PrivateKeyDer<'static>,
}

impl Pki {
    /// A new CA, with a fresh key and a self-signed certificate whose
    /// common name is `name`.
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).expect("CA certificate");
        Pki {
            ca: ca.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names`, for a server or a client, with the CA's
    /// certificate after its own in the chain.
    pub fn issue(&self, cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Identity {
        let key = KeyPair::generate().expect("key");
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Identity {
            chain: vec![cert.der().clone(), self.ca.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A server certificate for [`SERVER_NAME`] (common name `server`).
    pub fn server_identity(&self) -> Identity {
        self.issue(
            "server",
            &[SERVER_NAME],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate of common name `name`, for no DNS name.
    pub fn client_identity(&self, name: &str) -> Identity {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Roots that trust this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        roots
    }
}

/// rustls' ring provider, named rather than taken from the process
/// default, which rustls cannot choose if a build has both providers.
/// (Deprecated since rustls 0.23.48 for its lack of post-quantum key
/// exchange; aws-lc-rs has it, but needs cmake to build.)
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting `identity`; with `client_roots`,
/// clients must present a certificate these roots vouch for.
pub fn server_config(identity: Identity, client_roots: Option<RootCertStore>) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_roots {
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .expect("verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(identity.chain, identity.key)
            .expect("server config"),
    )
}

/// A client configuration trusting `pki`, presenting `identity` if given.
pub fn client_config(pki: &Pki, identity: Option<Identity>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pki.roots());
    Arc::new(match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .expect("client config"),
        None => builder.with_no_client_auth(),
    })
}
