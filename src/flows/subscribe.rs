//! Subscribers: the server's view of all telemetry, and a device's commands.
//!
//! Acknowledgements are manual: a QoS 1 message is acknowledged only after
//! it was decoded and written out, and messages past `--count` are left
//! unacknowledged, so a persistent session gets them next time instead of
//! losing them.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use prost::Message;
use rangemap::RangeInclusiveSet;
use rumqttc::{AsyncClient, Event, Incoming, Publish, SubscribeReasonCode};
use serde::Serialize;

use super::publish::disconnect;
use super::{
    device_id, qos, validate_device_id, Out, Reconnect, Shutdown, SubCommandArgs, SubCommonArgs,
    SubTelemetryArgs,
};
use crate::mqtt::poller::Poller;
use crate::mqtt::{
    command_topic, device_of_topic, telemetry_topic, unique_client_id, Endpoint, Role,
    ALL_TELEMETRY,
};
use crate::proto::v1::telemetry::Status;
use crate::proto::{Command, Telemetry};

/// Longest a received line waits in the stdout buffer (when not a TTY).
const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

pub async fn run_telemetry(args: SubTelemetryArgs) -> Result<ExitCode> {
    if args.sink.is_some() {
        // Storing, not printing: see crate::sink (acks only after commit).
        return crate::sink::run_subscriber(
            &args.conn,
            args.device_id.as_deref(),
            args.common.count,
            &args.sink,
        )
        .await;
    }
    let filter = match &args.device_id {
        Some(id) => {
            validate_device_id(id)?;
            telemetry_topic(id)
        }
        None => ALL_TELEMETRY.to_string(),
    };
    let endpoint = args.conn.resolve(Role::Server)?;
    let identity = identity_name(&endpoint, "server");
    let fixed_id = match &args.device_id {
        Some(id) => format!("{identity}-sub-telemetry-{id}"),
        None => format!("{identity}-sub-telemetry"),
    };
    let mut handler = TelemetryPrinter {
        msg: Telemetry::default(),
        json: args.common.json,
        // Only a bounded run needs to know what it has seen.
        seen: args.common.count.map(|_| HashMap::new()),
    };
    subscribe(
        &endpoint,
        &args.common,
        &fixed_id,
        &filter,
        |out: &mut Out, p: &Publish| handler.handle(out, p),
    )
    .await
}

pub async fn run_command(args: SubCommandArgs) -> Result<ExitCode> {
    let device = device_id(&args.conn, args.device_id.as_deref())?;
    let endpoint = args.conn.resolve(Role::Device(&device))?;
    let filter = command_topic(&device);
    let fixed_id = format!("{device}-sub-commands");
    let json = args.common.json;
    subscribe(
        &endpoint,
        &args.common,
        &fixed_id,
        &filter,
        |out: &mut Out, p: &Publish| print_command(out, p, json),
    )
    .await
}

/// The certificate's file stem (its identity name), for stable client ids.
fn identity_name(endpoint: &Endpoint, fallback: &str) -> String {
    endpoint
        .identity
        .as_ref()
        .and_then(|(cert, _)| cert.file_stem())
        .and_then(|s| s.to_str())
        .map(str::to_string)
        .unwrap_or_else(|| fallback.to_string())
}

/// Outcome of one received message.
enum Handled {
    /// Decoded and printed; counts towards --count.
    Printed,
    /// Not decodable; warned about and acknowledged (it will never decode).
    Skipped,
    /// Printed again: a QoS 1 redelivery of a message already counted.
    Repeated,
}

async fn subscribe<F>(
    endpoint: &Endpoint,
    common: &SubCommonArgs,
    fixed_id: &str,
    filter: &str,
    mut handle: F,
) -> Result<ExitCode>
where
    F: FnMut(&mut Out, &Publish) -> Result<Handled>,
{
    let client_id = match (&endpoint.client_id, common.persistent) {
        (Some(id), _) => id.clone(),
        (None, true) => fixed_id.to_string(),
        (None, false) => unique_client_id("mqttkit-sub"),
    };
    let mut opts = endpoint.mqtt_options(&client_id);
    opts.set_clean_session(!common.persistent);
    opts.set_manual_acks(true);
    // Every ack goes through this channel while we are the one polling, so
    // it must hold as many as the broker can have in flight (packet ids).
    let (client, eventloop) = AsyncClient::new(opts, u16::MAX as usize + 16);
    // Cancel-safe: the flush and retry timers below interrupt polls, and an
    // interrupted write (an acknowledgement) must not be lost.
    let mut poller = Poller::new(eventloop);
    let q = qos(common.qos);
    let mut reconnect = Reconnect::new(endpoint, common.reconnect_timeout.as_secs());
    let mut shutdown = Shutdown::install();
    let mut out = Out::new();
    let mut printed: u64 = 0;
    let mut skipped: u64 = 0;
    let mut subscribed = false;
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Into a pipe, lines are flushed in batches, at most FLUSH_AFTER after
    // the first unflushed one: readers see messages as they come without a
    // write per line.
    // One timer, re-armed: not a new timer registration per message.
    let flush_timer = tokio::time::sleep(FLUSH_AFTER);
    tokio::pin!(flush_timer);
    let mut flush_armed = false;
    // Messages printed into the buffer but not yet flushed: acked after the flush,
    // so a crash never acknowledges a line that was not written out.
    let mut unflushed: Vec<rumqttc::Publish> = Vec::new();
    let wanted = common.count;
    if wanted == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }

    let result: Result<()> = async {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                _ = &mut flush_timer, if flush_armed => {
                    flush_armed = false;
                    flush_and_ack(&mut out, &client, &mut unflushed)?;
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    retry_at = None;
                }
                ev = poller.next(), if retry_at.is_none() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        reconnect.connected();
                        if !ack.session_present || !subscribed {
                            client.subscribe(filter, q).await.context("subscribing")?;
                        }
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                            bail!("the broker refused the subscription to {filter} for client {client_id}: its ACL does not allow this identity to read it");
                        }
                        if !subscribed {
                            subscribed = true;
                            crate::note!(
                                "subscribed to {filter} on {} as {client_id}{}",
                                endpoint.describe(),
                                if common.persistent { " (persistent session)" } else { "" }
                            );
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if wanted.is_some_and(|n| printed >= n) {
                            // Past --count: leave it to the next session.
                            continue;
                        }
                        match handle(&mut out, &p).context("writing to stdout")? {
                            Handled::Printed => printed += 1,
                            Handled::Repeated => {}
                            Handled::Skipped => skipped += 1,
                        }
                        if out.is_tty() {
                            // Written and flushed line by line: acknowledge now.
                            client.try_ack(&p).context("queueing an acknowledgement")?;
                        } else {
                            // Acknowledged only once the line has left our buffer.
                            unflushed.push(p);
                        }
                        if !flush_armed && !out.is_tty() {
                            flush_timer.as_mut().reset(tokio::time::Instant::now() + FLUSH_AFTER);
                            flush_armed = true;
                        }
                        if wanted.is_some_and(|n| printed >= n) {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        out.flush().context("writing to stdout")?;
                        // Their packet ids belong to the dead connection; the
                        // broker redelivers what it kept.
                        unflushed.clear();
                        flush_armed = false;
                        let delay = reconnect.failed(e)?;
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    if retry_at.is_none() {
        flush_and_ack(&mut out, &client, &mut unflushed)?;
    } else {
        out.flush().context("writing to stdout")?;
    }
    if retry_at.is_none() && result.is_ok() {
        // Sends the queued acknowledgements before DISCONNECT.
        disconnect(&client, &mut poller).await;
    }
    result?;
    let skipped_note = if skipped > 0 {
        format!(", {skipped} undecodable skipped")
    } else {
        String::new()
    };
    crate::note!(
        "sub: {printed} message(s) received{skipped_note}, {} reconnects",
        reconnect.reconnects
    );
    if wanted.is_some_and(|n| printed < n) {
        // Stopped (Ctrl-C) before the requested count.
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

struct TelemetryPrinter {
    /// Decoded into the same message each time: no allocation once warm.
    msg: Telemetry,
    json: bool,
    /// With --count: the seqs already printed per device, so redeliveries
    /// do not end the run before N distinct messages arrived. Seqs mostly
    /// arrive in order, so a set of ranges stays a few entries long.
    seen: Option<HashMap<String, RangeInclusiveSet<u64>>>,
}

#[derive(Serialize)]
struct TelemetryJson<'a> {
    topic: &'a str,
    device_id: &'a str,
    seq: u64,
    time_unix_nano: u64,
    temperature_c: f64,
    humidity_pct: f64,
    pressure_hpa: f64,
    battery_v: f64,
    rssi_dbm: i32,
    status: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dup: bool,
}

impl TelemetryPrinter {
    fn handle(&mut self, out: &mut Out, p: &Publish) -> Result<Handled> {
        self.msg.clear();
        if let Err(e) = self.msg.merge(p.payload.as_ref()) {
            warn_undecodable(&p.topic, p.payload.len(), "Telemetry", &e);
            return Ok(Handled::Skipped);
        }
        let m = &self.msg;
        if device_of_topic(&p.topic) != Some(m.device_id.as_str()) {
            tracing::warn!(
                "{}: message says device_id '{}', not the topic's device",
                p.topic,
                m.device_id
            );
        }
        let status = Status::try_from(m.status).unwrap_or(Status::Unspecified);
        let w = out.writer();
        if self.json {
            serde_json::to_writer(
                &mut *w,
                &TelemetryJson {
                    topic: &p.topic,
                    device_id: &m.device_id,
                    seq: m.seq,
                    time_unix_nano: m.time_unix_nano,
                    temperature_c: m.temperature_c,
                    humidity_pct: m.humidity_pct,
                    pressure_hpa: m.pressure_hpa,
                    battery_v: m.battery_v,
                    rssi_dbm: m.rssi_dbm,
                    status: status.as_str_name(),
                    dup: p.dup,
                },
            )?;
        } else {
            write!(
                w,
                "{} seq={} {} temp={:.2}C hum={:.1}% press={:.1}hPa batt={:.3}V rssi={}dBm {}",
                m.device_id,
                m.seq,
                Rfc3339Nanos(m.time_unix_nano),
                m.temperature_c,
                m.humidity_pct,
                m.pressure_hpa,
                m.battery_v,
                m.rssi_dbm,
                status.as_str_name().trim_start_matches("STATUS_"),
            )?;
        }
        out.end_line()?;
        let first_time = match &mut self.seen {
            Some(seen) => {
                let seqs = match seen.get_mut(m.device_id.as_str()) {
                    Some(seqs) => seqs,
                    None => seen.entry(m.device_id.clone()).or_default(),
                };
                let new = !seqs.contains(&m.seq);
                if new {
                    seqs.insert(m.seq..=m.seq);
                }
                new
            }
            None => true,
        };
        Ok(if first_time {
            Handled::Printed
        } else {
            Handled::Repeated
        })
    }
}

fn warn_undecodable(topic: &str, size: usize, what: &str, err: &prost::DecodeError) {
    crate::note!("warning: {topic}: {size}-byte payload is not a {what} message ({err}); skipped");
}

#[derive(Serialize)]
struct CommandJson<'a> {
    topic: &'a str,
    id: &'a str,
    device_id: &'a str,
    name: &'a str,
    params: &'a std::collections::BTreeMap<String, String>,
    time_unix_nano: u64,
}

fn print_command(out: &mut Out, p: &Publish, json: bool) -> Result<Handled> {
    let cmd = match Command::decode(p.payload.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            warn_undecodable(&p.topic, p.payload.len(), "Command", &e);
            return Ok(Handled::Skipped);
        }
    };
    let w = out.writer();
    if json {
        serde_json::to_writer(
            &mut *w,
            &CommandJson {
                topic: &p.topic,
                id: &cmd.id,
                device_id: &cmd.device_id,
                name: &cmd.name,
                params: &cmd.params,
                time_unix_nano: cmd.time_unix_nano,
            },
        )?;
    } else {
        write!(
            w,
            "{} {} id={} {}",
            cmd.device_id,
            cmd.name,
            cmd.id,
            Rfc3339Nanos(cmd.time_unix_nano)
        )?;
        for (k, v) in &cmd.params {
            write!(w, " {k}={v}")?;
        }
    }
    out.end_line()?;
    Ok(Handled::Printed)
}

/// Unix nanoseconds as an RFC 3339 UTC time with milliseconds.
struct Rfc3339Nanos(u64);

impl std::fmt::Display for Rfc3339Nanos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match time::OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            Err(_) => write!(f, "t={}", self.0),
        }
    }
}

/// Flushes the printed lines, then acknowledges the messages behind them.
fn flush_and_ack(
    out: &mut Out,
    client: &AsyncClient,
    unflushed: &mut Vec<rumqttc::Publish>,
) -> Result<()> {
    out.flush().context("writing to stdout")?;
    for p in unflushed.drain(..) {
        client.try_ack(&p).context("queueing an acknowledgement")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(
            Rfc3339Nanos(1_700_000_000_123_456_789).to_string(),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
