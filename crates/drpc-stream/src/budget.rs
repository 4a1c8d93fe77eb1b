//! Memory accounting: what a connection holds for its peer, against a
//! limit of its own and one shared by every connection of a server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use crate::sync::{Mutex, lock};

/// A count of bytes held for peers, with a limit past which the
/// connections that charge it stop reading until it falls again.
///
/// Each connection has one, whose parent (optional) is shared by every
/// connection of a server or client. Everything held on a peer's behalf is
/// charged: received messages waiting in stream queues, half-assembled
/// packets, Invokes still assembling or being served (rpc and metadata, at
/// their in-memory size), and bytes waiting for the writer task. Charges
/// never fail: the limit is enforced by the connection's reader, which
/// reserves room for each frame ([`MemoryBudget::poll_reserve`]) before
/// reading its data, so the budgets hold what they say: a frame is let in
/// only while it fits, or while nothing at all is held (so that a frame
/// larger than the limit cannot wait forever).
#[derive(Debug)]
pub struct MemoryBudget {
    held: AtomicUsize,
    limit: usize,
    parent: Option<Arc<MemoryBudget>>,
    /// Set while a reader waits, so that releases take the lock only then.
    waiting: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, charged through to `parent` as well.
    pub fn new(limit: usize, parent: Option<Arc<MemoryBudget>>) -> MemoryBudget {
        MemoryBudget {
            held: AtomicUsize::new(0),
            limit,
            parent,
            waiting: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// A budget that never stops anyone (still counts).
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::new(usize::MAX, None)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts `n` more bytes held.
    pub fn charge(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        if let Some(p) = &self.parent {
            p.charge(n);
        }
    }

    /// Counts `n` bytes given back, waking readers once below the limit.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        debug_assert!(self.held() >= n, "released more than was charged");
        self.release_local(n);
        if let Some(p) = &self.parent {
            p.release(n);
        }
    }

    /// Applies the change from `before` to `after` bytes held.
    pub fn adjust(&self, before: usize, after: usize) {
        if after > before {
            self.charge(after - before);
        } else {
            self.release(before - after);
        }
    }

    fn wake_all(&self) {
        let wakers = {
            let mut wakers = lock(&self.wakers);
            // Under the lock, so that a reader registering meanwhile keeps
            // the flag it sets.
            self.waiting.store(false, Ordering::SeqCst);
            std::mem::take(&mut *wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes `n` bytes if they fit (or nothing is held), without waiting.
    fn try_take(&self, n: usize) -> bool {
        // SeqCst with the release side: a reader sets `waiting` then reads
        // `held`, a releaser lowers `held` then reads `waiting`; at least
        // one of them must see the other's write, or a wake-up is lost.
        let mut held = self.held.load(Ordering::SeqCst);
        loop {
            if held != 0 && held.saturating_add(n) > self.limit {
                return false;
            }
            match self.held.compare_exchange_weak(
                held,
                held.saturating_add(n),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// Charges `n` bytes to this budget and its parents if they fit in
    /// each (a budget that holds nothing takes anything); `false`, charging
    /// nothing, otherwise.
    pub fn try_reserve(&self, n: usize) -> bool {
        if !self.try_take(n) {
            return false;
        }
        if let Some(p) = &self.parent
            && !p.try_reserve(n)
        {
            self.release_local(n);
            return false;
        }
        true
    }

    /// As [`MemoryBudget::try_reserve`], waiting for room: the connection's
    /// reader reserves each frame's bytes this way before reading them, and
    /// gives them back with [`MemoryBudget::release`] once the frame is
    /// routed (whatever keeps it has charged it by then).
    pub fn poll_reserve(&self, n: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.try_reserve(n) {
            return Poll::Ready(());
        }
        self.register(cx.waker());
        if let Some(p) = &self.parent {
            p.register(cx.waker());
        }
        // A release between the attempt and the registration saw no waiter.
        if self.try_reserve(n) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn release_local(&self, n: usize) {
        let before = self.held.fetch_sub(n, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) && before - n < self.limit {
            self.wake_all();
        }
    }

    fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        self.waiting.store(true, Ordering::SeqCst);
    }
}

#[cfg(all(test, not(drpc_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn charges_reach_the_parent_and_limits_stop_readers() {
        let shared = Arc::new(MemoryBudget::new(100, None));
        let a = MemoryBudget::new(60, Some(shared.clone()));
        let b = MemoryBudget::new(60, Some(shared.clone()));
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        a.charge(59);
        assert!(a.poll_reserve(1, &mut cx).is_ready());
        assert!(a.poll_reserve(1, &mut cx).is_pending());
        b.charge(39);
        assert_eq!(shared.held(), 99);
        assert!(b.poll_reserve(2, &mut cx).is_pending(), "the shared limit");
        a.release(1);
        assert!(
            count.0.load(Ordering::SeqCst) >= 1,
            "the waiting reader was woken"
        );
        assert!(b.poll_reserve(2, &mut cx).is_ready());
        a.adjust(59, 10);
        assert_eq!((a.held(), shared.held()), (10, 51));
        assert!(a.poll_reserve(49, &mut cx).is_ready());
    }

    #[test]
    fn reservations_fit_or_wait() {
        let shared = Arc::new(MemoryBudget::new(100, None));
        let a = MemoryBudget::new(60, Some(shared.clone()));
        let b = MemoryBudget::new(60, Some(shared.clone()));
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        // Anything fits an empty budget, even more than its limit.
        assert!(a.poll_reserve(80, &mut cx).is_ready());
        assert_eq!((a.held(), shared.held()), (80, 80));
        assert!(a.poll_reserve(1, &mut cx).is_pending());
        assert!(!b.try_reserve(21), "the shared budget has 20 left");
        assert_eq!(b.held(), 0, "a refused reservation charges nothing");
        assert!(b.try_reserve(20));
        a.release(80);
        assert!(
            count.0.load(Ordering::SeqCst) >= 1,
            "the waiting reader was woken"
        );
        assert!(a.poll_reserve(1, &mut cx).is_ready());
        assert_eq!(shared.held(), 21);
    }

    /// Threads that each reserve the whole budget in turn and give it back:
    /// no wake-up is lost (the run would hang), and nothing stays charged.
    #[test]
    fn contended_reservations_never_lose_a_wake_up() {
        let shared = Arc::new(MemoryBudget::new(10, None));
        let budget = Arc::new(MemoryBudget::new(10, Some(shared.clone())));
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let (budget, done) = (budget.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    futures_executor::block_on(std::future::poll_fn(|cx| {
                        budget.poll_reserve(10, cx)
                    }));
                    budget.release(10);
                }
                let _ = done.send(());
            });
        }
        for _ in 0..3 {
            finished
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a reserving thread hung: a wake-up was lost");
        }
        assert_eq!((budget.held(), shared.held()), (0, 0));
    }
}
