//! One MQTT CONNECT/CONNACK round trip, and why it failed as a
//! [`Failure`] kind. Used by `broker up`/`status` health checks and `doctor`.

use std::time::{Duration, Instant};

use super::failure::Failure;
use super::session::{self, Event, Options};
use super::Endpoint;

#[derive(Debug, thiserror::Error)]
#[error("{explanation}")]
pub struct ProbeError {
    pub explanation: String,
    /// Why, for callers to match on.
    pub failure: Failure,
}

impl ProbeError {
    /// The broker answered at the TCP level (so it is up, just refusing us).
    pub fn reached(&self) -> bool {
        self.failure.reached()
    }
}

/// Connects, waits for CONNACK, disconnects. Returns the time to CONNACK.
pub async fn connect_once(
    endpoint: &Endpoint,
    client_id: &str,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let (client, mut eventloop) = session::open(endpoint, &Options::new(client_id));
    let result = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Connected { .. }) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let out = match result {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => {
            let failure = Failure::classify(&e)
                .given_credentials(endpoint.password.is_some())
                .refine(&endpoint.host, endpoint.port)
                .await;
            Err(ProbeError {
                explanation: explain(&failure, endpoint),
                failure,
            })
        }
        Err(_) => Err(ProbeError {
            failure: Failure::TimedOut,
            explanation: format!(
                "no CONNACK from {} within {:.0?}",
                endpoint.describe(),
                timeout
            ),
        }),
    };
    if out.is_ok() {
        let _ = client.try_disconnect();
        // Let the DISCONNECT go out so the broker does not log a lost connection.
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
    out
}

/// Explains a connection failure in terms of what to fix.
pub fn explain(failure: &Failure, endpoint: &Endpoint) -> String {
    failure.explain(
        &endpoint.describe(),
        &endpoint.host,
        endpoint.cafile.as_deref(),
    )
}
