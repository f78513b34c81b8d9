//! The shutdown signal as one connection sees it: a single wait registered once for the
//! connection's life. A fresh `watch::Receiver::changed()` for every keep-alive request
//! registered and dropped a waiter each time, which cost more than the head gate's parse.

use pingora::server::ShutdownWatch;
use std::future::Future;
use std::pin::Pin;

pub(super) struct Stop {
    rx: ShutdownWatch,
    fired: bool,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Stop {
    pub(super) fn new(rx: &ShutdownWatch) -> Self {
        let mut own = rx.clone();
        let wait = Box::pin(async move {
            loop {
                if *own.borrow_and_update() {
                    return;
                }
                if own.changed().await.is_err() {
                    // The sender is gone only as the process ends: no signal will come.
                    std::future::pending::<()>().await;
                }
            }
        });
        Self {
            rx: rx.clone(),
            fired: false,
            wait,
        }
    }

    /// Whether the gateway is stopping.
    pub(super) fn is_set(&self) -> bool {
        self.fired || *self.rx.borrow()
    }

    /// Resolves once the gateway is stopping.
    pub(super) async fn wait(&mut self) {
        if !self.fired {
            (&mut self.wait).await;
            self.fired = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_set_and_stays_set() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut stop = Stop::new(&rx);
        assert!(!stop.is_set());
        // Polled and dropped without firing: the registration survives for the next wait.
        tokio::select! {
            biased;
            _ = stop.wait() => panic!("fired early"),
            _ = tokio::task::yield_now() => {}
        }
        tx.send(true).unwrap();
        stop.wait().await;
        assert!(stop.is_set());
        stop.wait().await;

        // Set before the connection began: seen at once.
        let late = Stop::new(&rx);
        assert!(late.is_set());
    }
}
