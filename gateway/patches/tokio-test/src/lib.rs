//! A stand-in for `tokio-test`, patched in by the workspace's `Cargo.toml`.
//!
//! pingora-core 0.9 lists `tokio-test` as a normal dependency, not a dev-dependency
//! (cloudflare/pingora#598). `tokio-test` turns on tokio's `test-util` feature, and features
//! are unified, so every build of the gateway got the pausable test clock: each time a proxy
//! thread parks, tokio's time driver then locks the clock's mutex and reads the time again.
//! That was 2.5% of the instructions of a proxied request (23,449 → 22,871).
//!
//! A patch replaces the crate for everyone who depends on it, so this one keeps what they
//! use: pingora-core, outside its own tests, implements its I/O traits for `io::Mock`; and
//! tower-test (kube's mock API server, in Weir's tests) polls on a `task::spawn` mock task.
//! Tests that pause time ask tokio for `test-util` in their own dev-dependencies. If a new
//! pingora or tower-test uses more of the crate, the build fails and says what is missing.

/// What pingora-core names: a mock I/O type.
pub mod io {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A mock I/O object that cannot be built: pingora-core's impls for it never run.
    #[derive(Debug)]
    pub enum Mock {}

    impl AsyncRead for Mock {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            match *self.get_mut() {}
        }
    }

    impl AsyncWrite for Mock {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            match *self.get_mut() {}
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            match *self.get_mut() {}
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            match *self.get_mut() {}
        }
    }
}

/// What tower-test uses: a future polled by hand, with a waker that records being woken.
pub mod task {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Wake, Waker};

    /// `task` on a mock task of its own.
    pub fn spawn<T>(task: T) -> Spawn<T> {
        Spawn {
            woken: Arc::new(Woken(AtomicBool::new(false))),
            future: Box::pin(task),
        }
    }

    /// A value polled on a mock task.
    #[derive(Debug)]
    pub struct Spawn<T> {
        woken: Arc<Woken>,
        future: Pin<Box<T>>,
    }

    #[derive(Debug)]
    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    impl<T> Spawn<T> {
        /// Whether the task was woken since it was last entered.
        pub fn is_woken(&self) -> bool {
            self.woken.0.load(Ordering::SeqCst)
        }

        /// How many wakers of the task are held elsewhere.
        pub fn waker_ref_count(&self) -> usize {
            Arc::strong_count(&self.woken) - 1
        }

        /// Runs `f` with the task's context and the value.
        pub fn enter<F, R>(&mut self, f: F) -> R
        where
            F: FnOnce(&mut Context<'_>, Pin<&mut T>) -> R,
        {
            self.woken.0.store(false, Ordering::SeqCst);
            let waker = Waker::from(self.woken.clone());
            let mut cx = Context::from_waker(&waker);
            f(&mut cx, self.future.as_mut())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_wake_is_seen_until_the_next_enter() {
            let mut t = spawn(());
            let waker = t.enter(|cx, _| cx.waker().clone());
            assert!(!t.is_woken());
            assert_eq!(t.waker_ref_count(), 1);
            waker.wake();
            assert!(t.is_woken());
            assert_eq!(t.waker_ref_count(), 0);
            t.enter(|_, _| ());
            assert!(!t.is_woken());
        }
    }
}
