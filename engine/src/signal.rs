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
    /// Wakers of pending [`Changed`] futures, by the future's id.
    wakers: Mutex<Vec<(u64, Waker)>>,
    next_id: AtomicU64,
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
        for (_, w) in wakers {
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
        Changed { signal: self.clone(), seen, registered: false, id: self.next_id.fetch_add(1, Ordering::Relaxed) }
    }
}

/// Completes when a [`Signal`]'s generation moves past the one it was made with.
#[derive(Debug)]
pub struct Changed {
    signal: Arc<Signal>,
    seen: u64,
    registered: bool,
    id: u64,
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
        let id = self.id;
        match w.iter_mut().find(|(i, _)| *i == id) {
            Some((_, x)) if x.will_wake(cx.waker()) => {}
            Some((_, x)) => *x = cx.waker().clone(),
            None => w.push((id, cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl Drop for Changed {
    fn drop(&mut self) {
        if self.registered {
            self.signal.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        // A waiter that gives up (a long poll timing out) takes its waker
        // along, so an idle queue does not collect them.
        if self.registered {
            let id = self.id;
            self.signal.wakers.lock().unwrap_or_else(|e| e.into_inner()).retain(|(i, _)| *i != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_pending_future_is_woken_and_a_dropped_one_leaves_nothing_behind() {
        let s = Arc::new(Signal::default());
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let g = s.generation();
        let mut kept = s.changed(g);
        for _ in 0..100 {
            // Long polls that time out: polled once, then dropped.
            let mut f = s.changed(g);
            assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        }
        assert!(Pin::new(&mut kept).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut kept).poll(&mut cx).is_pending(), "polled again: still one entry");
        assert_eq!(s.wakers.lock().unwrap().len(), 1, "dropped futures took their wakers along");
        s.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut kept).poll(&mut cx).is_ready());
    }
}
