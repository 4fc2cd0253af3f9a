//! The actor's tokio tasks: aborted when dropped, counted while they run.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A spawned tokio task, aborted when dropped; counted in the actor's task counter while
/// it runs.
#[derive(Debug)]
pub(super) struct Task(Option<tokio::task::JoinHandle<()>>);

impl Task {
    /// Aborts the task and waits until it is gone.
    pub(super) async fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            // A cancelled or finished task: either way it is gone.
            let _ = handle.await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Decrements the live-task counter when the task's future is dropped (done or aborted).
struct TaskCount(Arc<AtomicUsize>);

impl Drop for TaskCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn spawn_task<F>(counter: &Arc<AtomicUsize>, fut: F) -> Task
where
    F: Future<Output = ()> + Send + 'static,
{
    counter.fetch_add(1, Ordering::SeqCst);
    let count = TaskCount(counter.clone());
    Task(Some(tokio::spawn(async move {
        let _count = count;
        fut.await;
    })))
}
