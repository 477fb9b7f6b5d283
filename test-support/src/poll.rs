//! Waiting for a condition: poll it at a short interval up to a limit, then fail the test
//! saying what was awaited (omicron `test-utils/src/dev/poll.rs`). Tests never sleep for a
//! guessed time; the limit is generous (TCG and two shared cores) and only bounds a hang.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at unless [`Poll::every`] says otherwise: short, so a
/// test goes on as soon as its condition holds.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `f` every [`INTERVAL`] until it returns `Some`; panics after `limit` naming `what`.
pub fn poll<T>(what: &str, limit: Duration, f: impl FnMut() -> Option<T>) -> T {
    Poll::new(what, limit).until(f)
}

/// [`poll`] for async conditions; sleeps on the runtime's timer between tries.
pub async fn poll_async<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    f: impl FnMut() -> F,
) -> T {
    Poll::new(what, limit).until_async(f).await
}

/// A poll with more than a limit: another interval (a condition that is costly to check),
/// or context to print when it times out (logs, the state last seen).
pub struct Poll<'a> {
    what: &'a str,
    limit: Duration,
    interval: Duration,
    context: Option<&'a dyn Fn() -> String>,
}

impl<'a> Poll<'a> {
    /// Waits for `what` up to `limit`, every [`INTERVAL`].
    pub fn new(what: &'a str, limit: Duration) -> Self {
        Self {
            what,
            limit,
            interval: INTERVAL,
            context: None,
        }
    }

    /// Tries every `interval` instead.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Adds `context()` to the failure message.
    pub fn context(mut self, context: &'a dyn Fn() -> String) -> Self {
        self.context = Some(context);
        self
    }

    /// Polls `f` until it returns `Some`.
    pub fn until<T>(self, mut f: impl FnMut() -> Option<T>) -> T {
        let mut polling = self.start();
        loop {
            if let Some(v) = f() {
                return v;
            }
            polling.wait();
        }
    }

    /// Polls the future `f` returns until it yields `Some`.
    pub async fn until_async<T, F: Future<Output = Option<T>>>(
        self,
        mut f: impl FnMut() -> F,
    ) -> T {
        let mut polling = self.start();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            polling.wait_async().await;
        }
    }

    /// Starts the clock, for a loop of the caller's own: a condition that must borrow mutably
    /// what a closure could not lend to its future.
    pub fn start(self) -> Polling<'a> {
        Polling {
            poll: self,
            start: Instant::now(),
        }
    }
}

/// A [`Poll`] under way: the caller checks its condition, then waits for the next try.
pub struct Polling<'a> {
    poll: Poll<'a>,
    start: Instant,
}

impl Polling<'_> {
    /// Sleeps one interval; panics once the limit has passed.
    pub fn wait(&mut self) {
        self.check();
        std::thread::sleep(self.poll.interval);
    }

    /// Sleeps one interval on the runtime's timer; panics once the limit has passed.
    pub async fn wait_async(&mut self) {
        self.check();
        tokio::time::sleep(self.poll.interval).await;
    }

    fn check(&self) {
        let poll = &self.poll;
        if self.start.elapsed() < poll.limit {
            return;
        }
        let context = poll
            .context
            .map(|c| format!("\n{}", c()))
            .unwrap_or_default();
        panic!(
            "timed out after {:?} waiting for {}{context}",
            poll.limit, poll.what
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_and_fails_with_what_and_context() {
        let mut n = 0;
        let v = poll("three tries", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v, 3);
        let failed = std::panic::catch_unwind(|| {
            Poll::new("never", Duration::from_millis(120))
                .every(Duration::from_millis(10))
                .context(&|| "last seen: nothing".into())
                .until(|| None::<()>)
        })
        .unwrap_err();
        let message = failed.downcast_ref::<String>().unwrap();
        assert!(
            message.starts_with("timed out after 120ms waiting for never\nlast seen: nothing"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn async_conditions_are_awaited() {
        let mut n = 0;
        let v = poll_async("two tries", Duration::from_secs(5), || {
            n += 1;
            let v = n;
            async move { (v == 2).then_some(v) }
        })
        .await;
        assert_eq!(v, 2);
    }
}
