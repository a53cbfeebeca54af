//! "Something changed" notification for waiting consumers: a generation
//! counter that threads can block on and async tasks can await, so a
//! long-poll consume or a push subscription waits without polling.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A generation counter with waiters.
#[derive(Debug, Default)]
pub struct Signal {
    generation: AtomicU64,
    waiting: AtomicUsize,
    wakers: Mutex<Vec<Waker>>,
    cv: Condvar,
}

impl Signal {
    /// The current generation: take it *before* looking for messages, then
    /// wait for it to change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Advances the generation and wakes every waiter.
    pub fn notify(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        self.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Blocks until the generation differs from `seen` or `deadline` passes;
    /// returns whether it changed.
    pub fn wait_until(&self, seen: u64, deadline: Instant) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut g = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        let changed = loop {
            if self.generation() != seen {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            g = self.cv.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        };
        drop(g);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        changed
    }

    /// A future that completes when the generation differs from `seen`.
    pub fn changed(self: &Arc<Self>, seen: u64) -> Changed {
        Changed { signal: self.clone(), seen, registered: false }
    }
}

/// Completes when a [`Signal`]'s generation moves past the one it was made with.
#[derive(Debug)]
pub struct Changed {
    signal: Arc<Signal>,
    seen: u64,
    registered: bool,
}

impl Future for Changed {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.generation() != self.seen {
            return Poll::Ready(());
        }
        if !self.registered {
            self.registered = true;
            self.signal.waiting.fetch_add(1, Ordering::SeqCst);
        }
        let mut w = self.signal.wakers.lock().unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: a notify between the first check and
        // here has taken the wakers already, so it must not be missed.
        if self.signal.generation() != self.seen {
            return Poll::Ready(());
        }
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        if self.registered {
            self.signal.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}
