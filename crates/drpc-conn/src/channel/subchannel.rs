//! The connections of a channel to one endpoint: dialing, redialing with
//! backoff, the sequential-mode pool, idleness.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Connectivity;
use super::endpoint::Endpoint;
use crate::{Conn, Error};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a call will do with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// A unary call: holds its connection until it returns.
    Unary,
    /// A stream: in sequential mode, holds its connection until it ends.
    Stream,
}

/// The channel's connections to one endpoint.
pub(crate) struct Subchannel {
    pub(crate) endpoint: Endpoint,
    sequential: bool,
    shared: Mutex<Shared>,
    /// Told of every change: a connection made, lost or freed, an attempt
    /// failed. Shared by all the subchannels of a balanced channel.
    changed: Arc<Notify>,
    /// [`Connectivity`] as a number, for reads without the lock.
    state: AtomicU8,
    /// Calls waiting for a connection here.
    waiting: AtomicUsize,
    /// Set by calls, cleared by the retry loop: whether anyone asked since.
    touched: AtomicBool,
    /// Cancelled when the channel is dropped or the endpoint removed.
    shutdown: CancellationToken,
}

#[derive(Default)]
struct Shared {
    /// Connections made and not yet seen to end (at most one when
    /// multiplexed).
    conns: Vec<Arc<Pooled>>,
    /// Dial tasks running (a retry loop counts while it waits).
    dialing: usize,
    /// The last attempt's error, from a failed attempt until a connection
    /// is made: calls fail fast with it.
    failure: Option<Arc<str>>,
    /// Whether a dial task is retrying with backoff.
    retrying: bool,
}

/// One connection of a subchannel.
/// How long a connection must have lived for its end not to count
/// towards the backoff of the redial after it.
const STABLE_CONNECTION: Duration = Duration::from_secs(5);

pub(crate) struct Pooled {
    conn: Conn,
    /// Sequential mode: calls holding or waiting for this connection.
    claims: AtomicUsize,
    /// Sequential mode: a stream was opened on it, which holds it until
    /// the connection says it is free again.
    streamed: AtomicBool,
    /// Set by calls, cleared by the idle check.
    touched: AtomicBool,
    /// Whether any call was made on it.
    used: AtomicBool,
    /// How many connections in a row ended soon after they were made,
    /// before this one: the backoff attempt a redial after it starts from.
    streak: u32,
}

impl Pooled {
    fn new(conn: Conn, streak: u32) -> Pooled {
        Pooled {
            conn,
            claims: AtomicUsize::new(0),
            streamed: AtomicBool::new(false),
            touched: AtomicBool::new(false),
            used: AtomicBool::new(false),
            streak,
        }
    }

    fn alive(&self) -> bool {
        self.conn.manager().termination().is_none()
    }

    fn touch(&self) {
        if !self.touched.load(Ordering::Relaxed) {
            self.touched.store(true, Ordering::Relaxed);
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Sequential mode: whether a call could start on it now.
    fn is_free(&self) -> bool {
        self.claims.load(Ordering::Acquire) == 0
            && (!self.streamed.load(Ordering::Acquire) || self.conn.manager().is_unblocked())
    }

    /// Sequential mode: calls on it or queued for it.
    fn queue_len(&self) -> usize {
        self.claims.load(Ordering::Acquire)
            + usize::from(
                self.streamed.load(Ordering::Acquire) && !self.conn.manager().is_unblocked(),
            )
    }
}

/// A connection lent to one call. In sequential mode it keeps the
/// connection claimed until dropped, and dropping it tells waiting calls.
pub(crate) struct Lease {
    pooled: Arc<Pooled>,
    release: Option<Arc<Notify>>,
}

impl Lease {
    pub(crate) fn conn(&self) -> &Conn {
        &self.pooled.conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(changed) = self.release.take() {
            self.pooled.claims.fetch_sub(1, Ordering::AcqRel);
            changed.notify_waiters();
        }
    }
}

/// Counts a waiting call for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a call found.
enum Pick {
    Lease(Lease),
    /// Not connected, for this reason.
    Failing(Arc<str>),
    /// A connection is being made or freed: wait for a change.
    Wait,
}

/// Why a connection's watcher stopped.
enum End {
    Closed(drpc_stream::ConnectionError),
    Idle,
    Shutdown,
}

impl Subchannel {
    pub(crate) fn new(
        endpoint: Endpoint,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Arc<Subchannel> {
        Arc::new(Subchannel {
            sequential: endpoint.conn_options.manager.sequential,
            endpoint,
            shared: Mutex::new(Shared::default()),
            changed,
            state: AtomicU8::new(Connectivity::Idle as u8),
            waiting: AtomicUsize::new(0),
            touched: AtomicBool::new(false),
            shutdown,
        })
    }

    /// Adopts a connection made outside (the first one of
    /// [`Endpoint::connect`]).
    pub(crate) fn adopt(self: &Arc<Self>, conn: Conn) {
        let pooled = Arc::new(Pooled::new(conn, 0));
        {
            let mut shared = lock(&self.shared);
            shared.conns.push(pooled.clone());
            self.update_state(&shared);
        }
        tokio::spawn(self.clone().watch(pooled));
    }

    /// The state as last recorded, without the lock: a connection that
    /// just ended may still count as ready until its watcher has seen it.
    pub(crate) fn state_hint(&self) -> Connectivity {
        Connectivity::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The state, checked: ready only with a connection still alive.
    pub(crate) fn connectivity(&self) -> Connectivity {
        match self.state_hint() {
            Connectivity::Ready if !lock(&self.shared).conns.iter().any(|p| p.alive()) => {
                Connectivity::Connecting
            }
            state => state,
        }
    }

    /// The last connect error, while failing.
    pub(crate) fn failure(&self) -> Option<Arc<str>> {
        lock(&self.shared).failure.clone()
    }

    /// Calls waiting here plus streams open on its connections: what
    /// power-of-two-choices compares.
    pub(crate) fn load(&self) -> usize {
        let streams: usize = lock(&self.shared)
            .conns
            .iter()
            .map(|p| p.conn.manager().active_streams())
            .sum();
        streams + self.waiting.load(Ordering::Relaxed)
    }

    /// Starts connecting if idle (a balanced channel connects to every
    /// endpoint it may pick).
    pub(crate) fn kick(self: &Arc<Self>) {
        let mut shared = lock(&self.shared);
        if shared.conns.is_empty() && shared.dialing == 0 && shared.failure.is_none() {
            self.start_dial(&mut shared);
        }
    }

    /// Stops everything: dialing ends, connections are let go (calls in
    /// flight on them go on).
    pub(crate) fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A connection for a call, at once when one is ready (the fast path
    /// takes one lock and clones one reference). Otherwise waits for a
    /// connection being made; fails fast with [`Error::Unavailable`] after
    /// a failed attempt, unless `wait_for_ready`.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        kind: CallKind,
        wait_for_ready: bool,
    ) -> Result<Lease, Error> {
        if !self.sequential {
            let shared = lock(&self.shared);
            if let Some(pooled) = shared.conns.first().filter(|p| p.alive()) {
                pooled.touch();
                return Ok(Lease {
                    pooled: pooled.clone(),
                    release: None,
                });
            }
        }
        self.touched.store(true, Ordering::Relaxed);
        let _waiting = Waiting::new(&self.waiting);
        let mut dialed = false;
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.shutdown.is_cancelled() {
                return Err(Error::unavailable(
                    &*self.endpoint.addr,
                    "the channel to it was shut down",
                ));
            }
            match self.pick(kind, &mut dialed) {
                Pick::Lease(lease) => return Ok(lease),
                Pick::Failing(reason) if !wait_for_ready => {
                    return Err(Error::unavailable(&*self.endpoint.addr, &*reason));
                }
                Pick::Failing(_) | Pick::Wait => {}
            }
            tokio::select! {
                _ = notified => {}
                _ = self.shutdown.cancelled() => {}
            }
            self.touched.store(true, Ordering::Relaxed);
        }
    }

    fn pick(self: &Arc<Self>, kind: CallKind, dialed: &mut bool) -> Pick {
        let mut shared = lock(&self.shared);
        if !self.sequential {
            if let Some(pooled) = shared.conns.first() {
                if pooled.alive() {
                    pooled.touch();
                    return Pick::Lease(Lease {
                        pooled: pooled.clone(),
                        release: None,
                    });
                }
                // Its watcher is about to replace it.
                return Pick::Wait;
            }
            if let Some(reason) = &shared.failure {
                return Pick::Failing(reason.clone());
            }
            if shared.dialing == 0 {
                self.start_dial(&mut shared);
            }
            return Pick::Wait;
        }
        // Sequential: a free connection, else a new one, else a turn on the
        // connection with the shortest queue.
        if let Some(pooled) = shared.conns.iter().find(|p| p.alive() && p.is_free()) {
            return Pick::Lease(self.claim(pooled, kind));
        }
        let max = self.endpoint.max_connections;
        if shared.failure.is_none()
            && shared.conns.len() + shared.dialing < max
            && (!*dialed || shared.dialing == 0)
        {
            *dialed = true;
            self.start_dial(&mut shared);
            return Pick::Wait;
        }
        // Queue only once every connection is made and busy (or no more
        // can be made now): a connection being made is better.
        if (shared.conns.len() >= max || shared.failure.is_some())
            && let Some(pooled) = shared
                .conns
                .iter()
                .filter(|p| p.alive())
                .min_by_key(|p| p.queue_len())
        {
            return Pick::Lease(self.claim(pooled, kind));
        }
        if let Some(reason) = &shared.failure {
            return Pick::Failing(reason.clone());
        }
        if shared.dialing == 0 {
            self.start_dial(&mut shared);
        }
        Pick::Wait
    }

    fn claim(&self, pooled: &Arc<Pooled>, kind: CallKind) -> Lease {
        pooled.claims.fetch_add(1, Ordering::AcqRel);
        // Seen free again: whatever stream held it has ended.
        if pooled.conn.manager().is_unblocked() {
            pooled.streamed.store(false, Ordering::Release);
        }
        if kind == CallKind::Stream {
            pooled.streamed.store(true, Ordering::Release);
        }
        pooled.touch();
        Lease {
            pooled: pooled.clone(),
            release: Some(self.changed.clone()),
        }
    }

    fn update_state(&self, shared: &Shared) {
        let state = if shared.conns.iter().any(|p| p.alive()) {
            Connectivity::Ready
        } else if shared.failure.is_some() {
            Connectivity::TransientFailure
        } else if shared.dialing > 0 {
            Connectivity::Connecting
        } else {
            Connectivity::Idle
        };
        self.state.store(state as u8, Ordering::Release);
    }

    fn start_dial(self: &Arc<Self>, shared: &mut Shared) {
        shared.dialing += 1;
        self.update_state(shared);
        tokio::spawn(self.clone().dial_loop(None, 0));
    }

    /// Dials until a connection is made. After a failure, either hands the
    /// retrying to the dial task already doing it, or retries itself with
    /// backoff, until a connection is made, the subchannel shuts down, or
    /// no call came for an idle timeout. `failed` starts it as if an
    /// attempt had just failed for that reason; `attempt` is the backoff
    /// attempt it starts from.
    async fn dial_loop(self: Arc<Self>, failed: Option<String>, attempt: u32) {
        let backoff = self.endpoint.backoff;
        let mut attempt = attempt;
        let mut retrier = false;
        let mut quiet_since = Instant::now();
        let mut failed = failed;
        loop {
            if let Some(reason) = failed.take() {
                {
                    let mut shared = lock(&self.shared);
                    shared.failure = Some(reason.into());
                    if shared.retrying && !retrier {
                        shared.dialing -= 1;
                        self.update_state(&shared);
                        drop(shared);
                        self.changed.notify_waiters();
                        return;
                    }
                    shared.retrying = true;
                    retrier = true;
                    self.update_state(&shared);
                }
                self.changed.notify_waiters();
                let delay = backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.cancelled() => return self.stop_dialing(true),
                }
                if self.touched.swap(false, Ordering::Relaxed) {
                    quiet_since = Instant::now();
                } else if self
                    .endpoint
                    .idle_timeout
                    .is_some_and(|idle| quiet_since.elapsed() >= idle)
                {
                    // Nobody asked for a while: stop, and dial again at
                    // the next call.
                    return self.stop_dialing(true);
                }
            }
            // A connector that panics is a failed attempt, not a dial that
            // never ends (calls would wait for it forever).
            let dial = std::panic::AssertUnwindSafe(self.endpoint.dial()).catch_unwind();
            let dialed = tokio::select! {
                r = dial => r.unwrap_or_else(|_| Err(std::io::Error::other("the connector panicked"))),
                _ = self.shutdown.cancelled() => return self.stop_dialing(retrier),
            };
            match dialed {
                Ok(conn) => {
                    let pooled = Arc::new(Pooled::new(conn, attempt));
                    {
                        let mut shared = lock(&self.shared);
                        shared.dialing -= 1;
                        shared.failure = None;
                        if retrier {
                            shared.retrying = false;
                        }
                        shared.conns.push(pooled.clone());
                        self.update_state(&shared);
                    }
                    self.changed.notify_waiters();
                    self.watch(pooled).await;
                    return;
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
    }

    fn stop_dialing(&self, retrier: bool) {
        {
            let mut shared = lock(&self.shared);
            shared.dialing -= 1;
            if retrier {
                shared.retrying = false;
                shared.failure = None;
            }
            self.update_state(&shared);
        }
        self.changed.notify_waiters();
    }

    /// Watches one connection until it ends, goes idle or the subchannel
    /// shuts down; takes it out of the pool then and, multiplexed, dials
    /// again at once (after a backoff wait if it ended right after it was
    /// made).
    ///
    /// Boxed: it may start a dial loop, which ends in a watch.
    fn watch(self: Arc<Self>, pooled: Arc<Pooled>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.watch_inner(pooled))
    }

    async fn watch_inner(self: Arc<Self>, pooled: Arc<Pooled>) {
        let born = Instant::now();
        let idle = self.endpoint.idle_timeout;
        let mut last_active = Instant::now();
        let end = loop {
            let tick = async {
                match idle {
                    Some(idle) => tokio::time::sleep(idle / 4).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                e = pooled.conn.closed() => break End::Closed(e),
                _ = self.shutdown.cancelled() => break End::Shutdown,
                _ = tick => {
                    let busy = pooled.touched.swap(false, Ordering::Relaxed)
                        || pooled.claims.load(Ordering::Acquire) > 0
                        || pooled.conn.manager().active_streams() > 0;
                    if busy {
                        last_active = Instant::now();
                    } else if idle.is_some_and(|idle| last_active.elapsed() >= idle) {
                        break End::Idle;
                    }
                }
            }
        };
        let mut shared = lock(&self.shared);
        shared.conns.retain(|p| !Arc::ptr_eq(p, &pooled));
        // A connection that never carried a call is not replaced until the
        // next call asks: a server that closes connections that say
        // nothing (a first-byte or idle timeout) would otherwise be redialled
        // for ever by a channel nobody uses.
        if let End::Closed(e) = &end
            && !self.sequential
            && !self.shutdown.is_cancelled()
            && shared.dialing == 0
            && pooled.used.load(Ordering::Relaxed)
        {
            shared.dialing += 1;
            // A connection that ends soon after it was made continues the
            // streak of the attempts before it: a server that accepts and
            // drops connections (at once, or after a call or two) is
            // redialled with growing backoff, not in a tight loop. The
            // second short one in a row counts as a failed attempt; a first
            // short one (a restart, a cut) is redialled at once.
            let short = born.elapsed() < STABLE_CONNECTION;
            let streak = if short {
                pooled.streak.saturating_add(1)
            } else {
                0
            };
            let failed = (short && streak > 1)
                .then(|| format!("the connection ended soon after it was made: {e}"));
            tokio::spawn(self.clone().dial_loop(failed, streak));
        }
        self.update_state(&shared);
        drop(shared);
        // Dropping the last handle closes an idle connection; a call that
        // took it just now keeps it open until it is done.
        drop(pooled);
        self.changed.notify_waiters();
    }

    pub(crate) fn address(&self) -> &str {
        &self.endpoint.addr
    }
}
