//! Interceptors: one check run before every call, whichever protocol
//! carried it.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use drpc_wire::CodedError;

use crate::RequestContext;

type CheckFn = dyn Fn(&mut RequestContext) -> Result<(), CodedError> + Send + Sync;

/// A check run before the handler of every call, with the call's
/// [`RequestContext`]: it can read the metadata, the path and the peer,
/// reject the call with an error (sent to the client with its code, as a
/// handler's would be), or add values to the context's
/// [extensions](RequestContext::extensions_mut) for the handler to read.
///
/// One value serves both protocols, with the same behaviour: give it to
/// the [`Mux`](crate::Mux)
/// ([`Mux::with_interceptor`](crate::Mux::with_interceptor)), which runs
/// it for every call to a registered path, before its `tower`
/// [layers](crate::Mux::layer); the gRPC adapter built from that mux
/// (`EchoGrpcAdapter::from_mux(service, &mux)`, with `drpc-mux`'s `grpc`
/// feature) runs it too, with the method's path, before the same layers
/// and the implementation. (Given to tonic's interceptor hook of the
/// generated server instead, `EchoServer::with_interceptor(adapter,
/// interceptor)`, it runs after the adapter's own, never in place of it.)
///
/// Paths given to [`Interceptor::skip`] are not intercepted, on either
/// side (a health check, say). A call to a path no route serves is not
/// intercepted either: it fails with Unimplemented, as gRPC's does.
///
/// Clones share the check.
///
/// ```
/// use drpc_mux::{CodedError, Interceptor, Mux, RequestContext};
///
/// #[derive(Debug)]
/// struct User(String);
///
/// let auth = Interceptor::new(|ctx: &mut RequestContext| {
///     let token = ctx
///         .metadata()
///         .get("authorization")
///         .ok_or_else(|| CodedError::unauthenticated("no token"))?;
///     let user = User(token.trim_start_matches("Bearer ").to_owned());
///     ctx.extensions_mut().insert(user);
///     Ok(())
/// })
/// .skip("/grpc.health.v1.Health/Check");
///
/// let mut mux = Mux::new();
/// mux.with_interceptor(auth.clone());
/// assert!(auth.intercepts("/a.B/C"));
/// assert!(!auth.intercepts("/grpc.health.v1.Health/Check"));
/// ```
#[derive(Clone)]
pub struct Interceptor {
    check: Arc<CheckFn>,
    /// Shared by clones; copied on write by [`Interceptor::skip`].
    skipped: Arc<HashSet<String, foldhash::fast::RandomState>>,
}

#[cfg(feature = "grpc")]
impl Interceptor {
    /// Whether `other` is a clone of this interceptor (the same check and
    /// the same skipped paths).
    pub(crate) fn is_same(&self, other: &Interceptor) -> bool {
        Arc::ptr_eq(&self.check, &other.check) && Arc::ptr_eq(&self.skipped, &other.skipped)
    }
}

impl fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut skipped: Vec<_> = self.skipped.iter().collect();
        skipped.sort();
        f.debug_struct("Interceptor")
            .field("skipped", &skipped)
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// An interceptor running `check` before every call.
    pub fn new<F>(check: F) -> Interceptor
    where
        F: Fn(&mut RequestContext) -> Result<(), CodedError> + Send + Sync + 'static,
    {
        Interceptor {
            check: Arc::new(check),
            skipped: Arc::default(),
        }
    }

    /// Opts the method at `rpc` (`/package.Service/Method`) out: its calls
    /// go to the handler unchecked, over both protocols.
    pub fn skip(mut self, rpc: &str) -> Interceptor {
        Arc::make_mut(&mut self.skipped).insert(rpc.to_owned());
        self
    }

    /// Whether calls to `rpc` are checked (it was not
    /// [skipped](Interceptor::skip)).
    pub fn intercepts(&self, rpc: &str) -> bool {
        self.skipped.is_empty() || !self.skipped.contains(rpc)
    }

    /// Runs the check on `ctx`, unless its path was
    /// [skipped](Interceptor::skip). The [`Mux`](crate::Mux) and the gRPC
    /// adapter call this once per call, before the handler.
    pub fn intercept(&self, ctx: &mut RequestContext) -> Result<(), CodedError> {
        if self.intercepts(ctx.rpc()) {
            (self.check)(ctx)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpc_wire::{Code, Metadata};
    use tokio_util::sync::CancellationToken;

    fn ctx(rpc: &str) -> RequestContext {
        RequestContext::new(
            rpc.into(),
            1,
            Metadata::new(),
            None,
            CancellationToken::new(),
        )
    }

    #[test]
    fn skipped_paths_are_not_checked_and_clones_share_the_check() {
        let i = Interceptor::new(|ctx| {
            ctx.extensions_mut().insert(7u8);
            Err(CodedError::unauthenticated("no"))
        })
        .skip("/a.B/Open");
        let copy = i.clone().skip("/a.B/Other");
        assert!(i.intercepts("/a.B/Other"), "skip copies on write");
        let mut open = ctx("/a.B/Open");
        assert!(copy.intercept(&mut open).is_ok());
        assert!(open.extensions().is_empty());
        let mut closed = ctx("/a.B/C");
        let err = i.intercept(&mut closed).expect_err("rejected");
        assert_eq!(err.kind(), Code::Unauthenticated);
        assert_eq!(closed.extensions().get::<u8>(), Some(&7));
        assert_eq!(
            format!("{copy:?}"),
            r#"Interceptor { skipped: ["/a.B/Open", "/a.B/Other"], .. }"#
        );
    }
}
