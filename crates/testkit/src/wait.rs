//! Waiting with a deadline: the one [`WAIT`] every wait in the kit and its tests is bounded
//! by, [`within`] for one future, and [`poll_until`] for a condition only polling can see
//! (a process's state, Redis keys). Nothing here sleeps to let time pass; `poll_until`
//! sleeps only between two looks at a condition.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long any single wait may take before the test fails: a frame, a reply, a process to
/// be ready. Generous, because the machines that run the suite are small and shared; it
/// costs time only when something is already wrong.
pub const WAIT: Duration = Duration::from_secs(30);

/// Between two looks at a condition in [`poll_until`].
pub const POLL: Duration = Duration::from_millis(50);

/// `fut`'s output, or a panic naming `what` after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `check` every [`POLL`] until it returns `Some`, or panics naming `what` (and
/// `context()`, e.g. a process's last log lines) after [`WAIT`].
pub async fn poll_until<T, F, Fut>(what: &str, mut check: F, context: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}\n{}", context());
        }
        tokio::time::sleep(POLL).await;
    }
}
