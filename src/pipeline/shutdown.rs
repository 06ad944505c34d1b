//! One stop request for every loop: SIGINT/SIGTERM for the commands, or a
//! trigger the bench pulls. Requests are counted, so a loop that is already
//! stopping (a final commit that keeps failing) can give up on the next one.

use tokio::sync::watch;

/// Observable stop requests; clone it into every loop that must react.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<u32>,
}

/// Pulls a [`Shutdown`] made by [`Shutdown::manual`].
pub struct Trigger(watch::Sender<u32>);

impl Trigger {
    pub fn stop(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

impl Shutdown {
    /// Ctrl-C or SIGTERM.
    pub fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = watch::channel(0u32);
        // Registered here, before any network work: a signal that arrives
        // before the watcher task first runs must not kill the process
        // with the default action (no DISCONNECT, no summary).
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    tx.send_modify(|n| *n += 1);
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    tx.send_modify(|n| *n += 1);
                    // Keep the sender alive so receivers never see a closed channel.
                    std::future::pending::<()>().await;
                }
            }
        });
        Shutdown { rx }
    }

    /// A stop requested by code (the bench ends its subscribers this way).
    pub fn manual() -> (Trigger, Self) {
        let (tx, rx) = watch::channel(0u32);
        (Trigger(tx), Shutdown { rx })
    }

    /// How many stops were requested so far.
    pub fn requests(&self) -> u32 {
        *self.rx.borrow()
    }

    /// Resolves once a stop was requested (immediately if it already was).
    pub async fn wait(&mut self) {
        self.wait_beyond(0).await
    }

    /// Resolves once more than `seen` stops were requested.
    pub async fn wait_beyond(&mut self, seen: u32) {
        if self.rx.wait_for(|n| *n > seen).await.is_err() {
            // The trigger is gone without a request: never.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_counted() {
        let (trigger, mut s) = Shutdown::manual();
        assert_eq!(s.requests(), 0);
        trigger.stop();
        s.wait().await;
        trigger.stop();
        s.wait_beyond(1).await;
        assert_eq!(s.requests(), 2);
        let again = tokio::time::timeout(std::time::Duration::from_millis(20), s.wait_beyond(2));
        assert!(again.await.is_err(), "no third request yet");
    }
}
