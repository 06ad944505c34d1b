//! The one backoff policy (doubling delays between a floor and a ceiling) and
//! the reconnect policy built on it, for every long-running MQTT client.

use std::time::{Duration, Instant};

use crate::mqtt::ConnError as ConnectionError;
use anyhow::{bail, Result};

use crate::mqtt::failure::describe_connect_error_as;
use crate::mqtt::Endpoint;

/// Doubling delays from `min` up to `max`; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after it is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Reconnect policy: the first connection must succeed (a wrong host or
/// certificate is an error, not something to retry forever); after that,
/// exponential backoff until `give_up` without a connection (`None`: a lost
/// connection ends the run at once).
pub struct Reconnect {
    endpoint: String,
    /// A user name and password were sent (for mosquitto's "not authorized").
    credentials: bool,
    connected_once: bool,
    down_since: Option<Instant>,
    backoff: Backoff,
    give_up: Option<Duration>,
    last_report: Option<Instant>,
    /// When the current connection got its CONNACK.
    connected_at: Option<Instant>,
    /// Connections in a row that the broker closed right after accepting them.
    short_lived: u32,
    pub reconnects: u64,
}

/// A connection closed this soon after CONNACK counts as taken over.
const SHORT_LIVED: Duration = Duration::from_millis(500);
/// Take-overs in a row before giving up with an explanation.
const TAKEN_OVER_LIMIT: u32 = 5;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often to repeat the last error while reconnecting.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Reconnect {
    pub fn new(endpoint: &Endpoint, give_up: Option<Duration>) -> Self {
        Reconnect {
            endpoint: endpoint.describe(),
            credentials: endpoint.password.is_some(),
            connected_once: false,
            down_since: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            give_up,
            last_report: None,
            connected_at: None,
            short_lived: 0,
            reconnects: 0,
        }
    }

    pub fn connected(&mut self) {
        if self.connected_once {
            self.reconnects += 1;
            let down = self.down_since.map(|t| t.elapsed()).unwrap_or_default();
            crate::note!(
                "reconnected to {} after {:.1} s",
                self.endpoint,
                down.as_secs_f64()
            );
        }
        self.connected_once = true;
        self.connected_at = Some(Instant::now());
        self.down_since = None;
        self.last_report = None;
        self.backoff.reset();
    }

    /// How long to wait before the next attempt, or the error to stop with.
    pub fn failed(&mut self, err: ConnectionError) -> Result<Duration> {
        if !self.connected_once {
            bail!(
                "{}",
                describe_connect_error_as(&self.endpoint, &err, self.credentials)
            );
        }
        let Some(give_up) = self.give_up else {
            bail!("connection to {} lost: {err}", self.endpoint);
        };
        self.check_taken_over()?;
        let since = *self.down_since.get_or_insert_with(|| {
            crate::note!("connection to {} lost ({err}); reconnecting", self.endpoint);
            Instant::now()
        });
        self.report_now_and_then(since, &err);
        if since.elapsed() >= give_up {
            bail!(
                "no connection to {} for {} s (last error: {}); giving up (see --reconnect-timeout)",
                self.endpoint,
                give_up.as_secs(),
                describe_connect_error_as(&self.endpoint, &err, self.credentials)
            );
        }
        tracing::debug!("reconnect attempt failed: {err}");
        Ok(self.backoff.next_delay())
    }

    /// Two clients with one client id take the connection from each other
    /// in turn (the broker keeps one per id): say so instead of looping.
    fn check_taken_over(&mut self) -> Result<()> {
        match self.connected_at.take() {
            Some(t) if t.elapsed() < SHORT_LIVED => self.short_lived += 1,
            Some(_) => self.short_lived = 0,
            None => {}
        }
        if self.short_lived >= TAKEN_OVER_LIMIT {
            bail!(
                "{}: the broker closed the connection right after accepting it {TAKEN_OVER_LIMIT} times in a row; another client is probably connected with the same client id; pass a different --client-id",
                self.endpoint
            );
        }
        Ok(())
    }

    fn report_now_and_then(&mut self, since: Instant, err: &ConnectionError) {
        let now = Instant::now();
        match self.last_report {
            None => self.last_report = Some(now),
            Some(t) if now - t >= REPORT_EVERY => {
                self.last_report = Some(now);
                crate::note!(
                    "still reconnecting after {:.0} s: {}",
                    since.elapsed().as_secs_f64(),
                    describe_connect_error_as(&self.endpoint, err, self.credentials)
                );
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [50, 100, 200, 300, 300]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(50));
    }
}
