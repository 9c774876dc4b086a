//! Waking the connections attached to a session when it changes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// One connection's wake-up: raised when its session changes, taken by the connection's wait.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Wake {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once raised since the last time it was taken.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.raised.load(Ordering::Acquire) {
            self.waker.register(cx.waker());
        }
        if self.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The wake-ups of the connections attached to one session: one, or two while a superseded
/// connection has not yet noticed it was.
///
/// Cheaper than a `watch` channel, which locks each of its eight wait lists on every send and
/// whose waiters register again on every poll.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    list: Mutex<Vec<Arc<Wake>>>,
    /// `list.len()`, read without the lock.
    count: AtomicUsize,
}

impl Wakes {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Wake>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A wake-up for a connection attaching now: raised by changes from now on. Add it before
    /// the connection first reads the log, so that a message logged after that read wakes it.
    pub(crate) fn add(&self) -> Arc<Wake> {
        let wake = Arc::new(Wake::default());
        let mut list = self.lock();
        list.push(Arc::clone(&wake));
        self.count.store(list.len(), Ordering::Release);
        wake
    }

    pub(crate) fn remove(&self, wake: &Arc<Wake>) {
        let mut list = self.lock();
        list.retain(|w| !Arc::ptr_eq(w, wake));
        self.count.store(list.len(), Ordering::Release);
        if list.is_empty() {
            // A detached session holds no list.
            *list = Vec::new();
        }
    }

    /// Wakes every attached connection.
    pub(crate) fn raise(&self) {
        self.lock().iter().for_each(|w| w.raise());
    }

    /// Wakes every attached connection but the one that made the change, which knows of it.
    ///
    /// With the change made under the store's lock: a connection attaching since added its
    /// wake-up before reading the log under that lock, so it is either counted here or reads
    /// the change.
    pub(crate) fn raise_others(&self, except: &Wake) {
        if self.count.load(Ordering::Acquire) <= 1 {
            // Only the caller's own.
            return;
        }
        self.lock()
            .iter()
            .filter(|w| !std::ptr::eq::<Wake>(&***w, except))
            .for_each(|w| w.raise());
    }
}
