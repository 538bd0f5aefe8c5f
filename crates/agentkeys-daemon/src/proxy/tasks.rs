//! The tasks of one proxy, stopped together when its run ends.

use std::sync::Arc;

/// The tasks of one proxy: its listener, the agent's connections, tunnels, HTTP/2 streams
/// and the upstream pool's connections. Their buffers hold injected keys (hyper reuses a
/// connection's header buffer without clearing it), so the run's end stops them all and
/// waits until each is dropped: the allocator then scrubs what they held.
#[derive(Clone, Default)]
pub(super) struct Tasks(Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>);

impl Tasks {
    /// Runs `task` on the runtime, as one of these tasks.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while set.try_join_next().is_some() {} // forget the finished ones
        set.spawn(task);
    }

    /// Aborts every task and returns once each has been dropped. A task can spawn another
    /// while it is being stopped (a pooled connection, say): those are stopped in turn.
    pub(super) async fn stop(&self) {
        loop {
            let mut set = std::mem::take(
                &mut *self
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if set.is_empty() {
                return;
            }
            set.shutdown().await;
        }
    }

    /// Aborts every task without waiting (a drop that could not wait).
    pub(super) fn abort(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .abort_all();
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Tasks {
    fn execute(&self, task: F) {
        self.spawn(task);
    }
}
