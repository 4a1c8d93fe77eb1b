//! The lock of this crate: std's, or loom's when model checking
//! (`RUSTFLAGS="--cfg drpc_loom"`).

#[cfg(drpc_loom)]
pub(crate) use loom::sync::atomic::AtomicBool;
#[cfg(drpc_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(drpc_loom))]
pub(crate) use std::sync::atomic::AtomicBool;
#[cfg(not(drpc_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning: no critical section in this crate runs
/// code that can panic while the state is inconsistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
