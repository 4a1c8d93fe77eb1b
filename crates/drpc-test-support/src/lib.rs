//! Fixtures shared by the tests of the workspace's crates, so that each
//! is written once (h2's `h2-support` is the model).
//!
//! Use it as a dev-dependency only (`drpc-test-support.workspace = true`
//! under `[dev-dependencies]`), never as a normal dependency: it is not
//! published, and it panics on any failure, as test code does.
//!
//! - [`pki`]: a certificate authority, the identities it signs, and the
//!   rustls server and client configurations made from them.

pub mod pki;
