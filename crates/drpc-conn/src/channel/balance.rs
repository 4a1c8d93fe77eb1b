//! Calls spread over many endpoints: power of two choices on the calls in
//! flight, failing endpoints left out until they reconnect.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tower::discover::{Change, Discover};

use super::Connectivity;
use super::endpoint::Endpoint;
use super::subchannel::{CallKind, Lease, Subchannel};
use crate::Error;

/// The endpoints of a balanced channel.
pub(crate) struct Balancer {
    /// A snapshot, replaced whole on every change.
    subs: RwLock<Arc<Vec<Arc<Subchannel>>>>,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
}

impl Balancer {
    pub(crate) fn new(changed: Arc<Notify>, shutdown: CancellationToken) -> Arc<Balancer> {
        Arc::new(Balancer {
            subs: RwLock::new(Arc::new(Vec::new())),
            changed,
            shutdown,
        })
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Subchannel>>> {
        self.subs
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<Subchannel>>)) {
        {
            let mut subs = self
                .subs
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut next = Vec::clone(&subs);
            f(&mut next);
            *subs = Arc::new(next);
        }
        self.changed.notify_waiters();
    }

    /// Adds an endpoint.
    pub(crate) fn insert(&self, endpoint: Endpoint) -> Arc<Subchannel> {
        let sub = Subchannel::new(endpoint, self.changed.clone(), self.shutdown.child_token());
        let added = sub.clone();
        self.update(|subs| subs.push(added));
        sub
    }

    /// Takes an endpoint out; calls in flight on it go on.
    pub(crate) fn remove(&self, sub: &Arc<Subchannel>) {
        sub.shutdown();
        self.update(|subs| subs.retain(|s| !Arc::ptr_eq(s, sub)));
    }

    pub(crate) fn endpoints(&self) -> Vec<(String, Connectivity)> {
        self.snapshot()
            .iter()
            .map(|s| (s.address().to_owned(), s.connectivity()))
            .collect()
    }

    /// The best state of any endpoint.
    pub(crate) fn connectivity(&self) -> Connectivity {
        self.snapshot()
            .iter()
            .map(|s| s.connectivity())
            .max_by_key(|c| match c {
                Connectivity::Ready => 3,
                Connectivity::Connecting => 2,
                Connectivity::TransientFailure => 1,
                Connectivity::Idle => 0,
            })
            .unwrap_or(Connectivity::Idle)
    }

    /// A connection for a call: power of two choices among the endpoints
    /// with a connection, else among those connecting (every idle endpoint
    /// starts connecting). An endpoint that fails before the call was sent
    /// is left out and another picked; with none left the call fails fast
    /// (or, `wait_for_ready`, waits for one).
    pub(crate) async fn acquire(
        &self,
        kind: CallKind,
        wait_for_ready: bool,
    ) -> Result<Lease, Error> {
        // Endpoints that failed this call, with why.
        let mut excluded: Vec<(Arc<Subchannel>, Error)> = Vec::new();
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let subs = self.snapshot();
            let usable = |s: &Arc<Subchannel>| !excluded.iter().any(|(x, _)| Arc::ptr_eq(x, s));
            let pick = p2c(&subs, &usable);
            match pick {
                Some(sub) => match sub.acquire(kind, false).await {
                    Ok(lease) => return Ok(lease),
                    // Nothing was sent: another endpoint may take it.
                    Err(e) if e.is_unavailable() => excluded.push((sub, e)),
                    Err(e) => return Err(e),
                },
                None if wait_for_ready && !self.shutdown.is_cancelled() => {
                    tokio::select! {
                        _ = notified => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                    excluded.clear();
                }
                None => return Err(unavailable(&subs, &excluded)),
            }
        }
    }
}

/// Two endpoints drawn at random from a pass over the set.
#[derive(Default)]
struct Sample<'a> {
    picked: [Option<&'a Arc<Subchannel>>; 2],
    seen: usize,
}

impl<'a> Sample<'a> {
    /// Reservoir sampling of two: every pair equally likely.
    fn offer(&mut self, sub: &'a Arc<Subchannel>) {
        self.seen += 1;
        match self.seen {
            1 => self.picked[0] = Some(sub),
            2 => self.picked[1] = Some(sub),
            n => {
                let slot = fastrand::usize(..n);
                if slot < 2 {
                    self.picked[slot] = Some(sub);
                }
            }
        }
    }

    /// The one with fewer calls in flight (a coin decides ties).
    fn choose(&self) -> Option<Arc<Subchannel>> {
        match self.picked {
            [Some(a), Some(b)] => {
                let (la, lb) = (a.load(), b.load());
                let pick_b = lb < la || (lb == la && fastrand::bool());
                Some(if pick_b { b.clone() } else { a.clone() })
            }
            [Some(a), None] => Some(a.clone()),
            _ => None,
        }
    }
}

/// Power of two choices among the usable endpoints that are connected,
/// else among those connecting. Idle endpoints are told to connect and
/// count as connecting. One pass, each state read once (states change
/// under it).
fn p2c(
    subs: &[Arc<Subchannel>],
    usable: &impl Fn(&Arc<Subchannel>) -> bool,
) -> Option<Arc<Subchannel>> {
    let (mut ready, mut connecting) = (Sample::default(), Sample::default());
    for sub in subs {
        if !usable(sub) {
            continue;
        }
        match sub.state_hint() {
            Connectivity::Ready => ready.offer(sub),
            Connectivity::Connecting => connecting.offer(sub),
            Connectivity::Idle => {
                sub.kick();
                connecting.offer(sub);
            }
            Connectivity::TransientFailure => {}
        }
    }
    ready.choose().or_else(|| connecting.choose())
}

/// Every endpoint is failing (or there is none): the error names them
/// all, each with the error it gave this call or its last connect error.
fn unavailable(subs: &[Arc<Subchannel>], excluded: &[(Arc<Subchannel>, Error)]) -> Error {
    if subs.is_empty() {
        return Error::unavailable("(no endpoint)", "the balanced channel has no endpoint");
    }
    let addrs: Vec<&str> = subs.iter().map(|s| s.address()).collect();
    let reasons: Vec<String> = subs
        .iter()
        .map(|s| {
            let failed = excluded.iter().find(|(x, _)| Arc::ptr_eq(x, s));
            match (failed, s.failure()) {
                (Some((_, Error::Unavailable { reason, .. })), _) => {
                    format!("{}: {reason}", s.address())
                }
                (Some((_, e)), _) => format!("{}: {e}", s.address()),
                (None, Some(reason)) => format!("{}: {reason}", s.address()),
                (None, None) => format!("{}: not connected", s.address()),
            }
        })
        .collect();
    Error::unavailable(
        addrs.join(", "),
        format!("no endpoint is connected ({})", reasons.join("; ")),
    )
}

/// Applies a discovery stream's changes to `balancer` until the stream
/// ends, fails, or the channel is dropped.
pub(crate) async fn run_discover<D>(balancer: Arc<Balancer>, discover: D)
where
    D: Discover<Service = Endpoint> + Send + 'static,
    D::Key: Hash + Eq + Send,
{
    let mut discover = std::pin::pin!(discover);
    let mut keys: HashMap<D::Key, Arc<Subchannel>> = HashMap::new();
    loop {
        let next = tokio::select! {
            c = std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)) => c,
            _ = balancer.shutdown.cancelled() => return,
        };
        match next {
            Some(Ok(Change::Insert(key, endpoint))) => {
                let sub = balancer.insert(endpoint);
                if let Some(old) = keys.insert(key, sub) {
                    balancer.remove(&old);
                }
            }
            Some(Ok(Change::Remove(key))) => {
                if let Some(old) = keys.remove(&key) {
                    balancer.remove(&old);
                }
            }
            // The set stays as it is.
            Some(Err(_)) | None => return,
        }
    }
}

/// The receiving end of [`Channel::balance_channel`](super::Channel::balance_channel)
/// as a discovery stream.
pub(crate) struct ChangeStream<K>(pub(crate) mpsc::Receiver<Change<K, Endpoint>>);

impl<K> futures_core::Stream for ChangeStream<K> {
    type Item = Result<Change<K, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}
