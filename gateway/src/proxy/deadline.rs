//! One timer per connection for all of its waits: the next request's head, a body, a
//! write, a backend's answer.
//!
//! A fresh `tokio::time::timeout` per wait registers an entry in the runtime's timer wheel
//! (under its lock) whenever the wait blocks and removes it when the wait ends: on a small
//! keep-alive request that came to about a tenth of the gateway's instructions. A
//! connection waits for one thing at a time, so one timer does: each wait only notes when it
//! is due, and the timer is moved only when it would go off too late. When it goes off
//! early (for a wait that has since ended, with a later one under way) it is set again for
//! the wait now under way, so it moves about once per timeout period rather than per wait.
//! A wait that does not block reads no clock at all.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use tokio::time::{Duration, Instant, Sleep};

/// How far off a timer that no wait has used yet is set.
const UNSET: Duration = Duration::from_secs(86_400 * 365);

/// A connection's timer.
pub(crate) struct Deadline {
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` goes off.
    armed: Instant,
}

/// A wait ran past its time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("armed", &self.armed)
            .finish()
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

impl Deadline {
    /// A timer, set for no wait yet. Needs a tokio runtime with its time driver.
    pub(crate) fn new() -> Self {
        let armed = Instant::now() + UNSET;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
        }
    }

    /// `fut`, unless it is still waiting `limit` after it first had to wait.
    pub(crate) async fn within<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        self.run(fut, || Instant::now() + limit).await
    }

    /// `fut`, unless it is still waiting at `due`.
    pub(crate) async fn until<F: Future>(
        &mut self,
        due: Instant,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        self.run(fut, || due).await
    }

    /// `fut` with an optional limit: none waits as long as it takes.
    pub(crate) async fn maybe<F: Future>(
        &mut self,
        limit: Option<Duration>,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        match limit {
            Some(l) => self.within(l, fut).await,
            None => Ok(fut.await),
        }
    }

    async fn run<F: Future>(
        &mut self,
        fut: F,
        mut due: impl FnMut() -> Instant,
    ) -> Result<F::Output, Elapsed> {
        let mut fut = pin!(fut);
        // The clock is read only once the wait blocks: most writes, and reads of bytes
        // already there, never do.
        let mut at = None;
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            let at = *at.get_or_insert_with(&mut due);
            loop {
                if self.armed > at {
                    self.arm(at);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) if self.armed >= at => return Poll::Ready(Err(Elapsed)),
                    // It went off for an earlier wait: set it for this one.
                    Poll::Ready(()) => self.arm(at),
                }
            }
        })
        .await
    }

    fn arm(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_own_time_whatever_came_before() {
        let mut d = Deadline::new();
        let never = std::future::pending::<()>;
        let start = Instant::now();
        // A long wait that ends in time leaves the timer set far off ...
        assert_eq!(d.within(Duration::from_secs(60), async {}).await, Ok(()));
        let slept = d
            .within(
                Duration::from_secs(60),
                tokio::time::sleep(Duration::from_secs(1)),
            )
            .await;
        assert_eq!(slept, Ok(()));
        // ... and a shorter one after it still ends on time.
        assert_eq!(
            d.within(Duration::from_secs(5), never()).await,
            Err(Elapsed)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(6));
        // A longer wait after a shorter one: the timer goes off early and is set again.
        let t = Instant::now();
        assert_eq!(
            d.within(
                Duration::from_secs(2),
                tokio::time::sleep(Duration::from_secs(1))
            )
            .await,
            Ok(())
        );
        assert_eq!(
            d.within(Duration::from_secs(30), never()).await,
            Err(Elapsed)
        );
        assert_eq!(Instant::now() - t, Duration::from_secs(31));
        // A fixed instant, and one already past.
        let due = Instant::now() + Duration::from_secs(3);
        assert_eq!(d.until(due, never()).await, Err(Elapsed));
        assert_eq!(Instant::now(), due);
        assert_eq!(d.until(due, never()).await, Err(Elapsed));
        assert_eq!(
            d.until(due, async { 7 }).await,
            Ok(7),
            "ready work is never refused"
        );
        assert_eq!(
            d.maybe(None, tokio::time::sleep(Duration::from_secs(90)))
                .await,
            Ok(())
        );
    }
}
