//! InfluxDB line protocol over HTTP: the v1 `/write?db=` API (InfluxDB 1.x,
//! and the compatibility API of InfluxDB 2 and Timestream for InfluxDB), or
//! v2 `/api/v2/write` when the URL names an org. One point per message:
//! measurement `telemetry`, tag `device_id`, the device's time in ns; a
//! redelivery has the same series and time, so it overwrites itself.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Client, RequestBuilder, StatusCode, Url};

use std::sync::Arc;

use super::user::{Cell, UserRow, UserTables};
use super::{fill_gaps, DeviceStats, Rejected, RejectedStats, TelemetryRow, Written};

/// The environment variable holding an InfluxDB API token.
pub const TOKEN_ENV: &str = "INFLUX_TOKEN";
const MEASUREMENT: &str = "telemetry";
/// Where quarantined messages are counted.
const REJECTED: &str = "rejected";

#[derive(Debug, Clone, PartialEq)]
pub struct InfluxTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// v1 database, or v2 bucket when `org` is set.
    pub db: String,
    pub org: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// `?cafile=PATH` (influxs only): trust this CA instead of the system's.
    pub cafile: Option<std::path::PathBuf>,
}

impl InfluxTarget {
    /// Parses what follows `influx:` / `influxs:`:
    /// `//[USER:PASS@]HOST:PORT/DB[?org=ORG][&cafile=PATH]`.
    pub fn parse(tls: bool, rest: &str) -> Result<Self, String> {
        let scheme = if tls { "https" } else { "http" };
        let url = Url::parse(&format!("{scheme}:{rest}"))
            .map_err(|e| format!("not a URL ({e}); expected influx://HOST:PORT/DB"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("no host; expected influx://HOST:PORT/DB")?
            .to_string();
        let port = url.port().unwrap_or(8086);
        let db = url.path().trim_matches('/').to_string();
        if db.is_empty() || db.contains('/') {
            return Err("expected one database (or bucket) name: influx://HOST:PORT/DB".into());
        }
        let org = url
            .query_pairs()
            .find(|(k, _)| k == "org")
            .map(|(_, v)| v.into_owned());
        // Percent-decoded only (a `+` in a path stays a `+`), as for PostgreSQL.
        let cafile = url
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("cafile="))
            .map(|v| {
                let path = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                std::path::PathBuf::from(path.as_ref())
            });
        if cafile.is_some() && !tls {
            return Err("cafile is for TLS: use influxs://".into());
        }
        let user = (!url.username().is_empty()).then(|| url.username().to_string());
        Ok(InfluxTarget {
            tls,
            host,
            port,
            db,
            org,
            user,
            password: url.password().map(str::to_string),
            cafile,
        })
    }

    fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}", self.port)
    }

    fn describe(&self) -> String {
        let scheme = if self.tls { "influxs" } else { "influx" };
        format!("--sink {scheme}://{}:{}/{}", self.host, self.port, self.db)
    }
}

pub struct InfluxStore {
    target: InfluxTarget,
    http: Client,
    token: Option<String>,
    /// The user's tables (measurements), when storing a schema's types.
    user: Option<Arc<UserTables>>,
}

impl InfluxStore {
    pub async fn open(target: &InfluxTarget, user: Option<Arc<UserTables>>) -> Result<Self> {
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(cafile) = &target.cafile {
            // Checked by our loader first: its errors name the file and the fix.
            crate::mqtt::tls::load_roots_for("cafile", cafile)
                .map_err(|e| anyhow::anyhow!("{}: {e}", target.describe()))?;
            let pem = std::fs::read(cafile)
                .with_context(|| format!("{}: cafile={}", target.describe(), cafile.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("cafile={}", cafile.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().context("building the HTTP client")?;
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        if target.org.is_some() && token.is_none() {
            bail!(
                "{}?org=...: the v2 API needs a token; set {TOKEN_ENV}",
                target.describe()
            );
        }
        let store = InfluxStore {
            target: target.clone(),
            http,
            token,
            user,
        };
        let ping = store
            .auth(store.http.get(format!("{}/ping", target.base())))
            .send()
            .await
            .with_context(|| format!("{}: cannot reach InfluxDB", target.describe()))?;
        if !ping.status().is_success() {
            bail!(
                "{}: /ping answered {}; is this InfluxDB?",
                target.describe(),
                ping.status()
            );
        }
        if target.org.is_none() {
            // v1: create the database (a no-op when it exists). Without the
            // rights to, go on: the first write tells whether it exists.
            let q = format!("CREATE DATABASE \"{}\"", target.db.replace('"', "\\\""));
            let mut url = Url::parse(&format!("{}/query", target.base()))?;
            url.query_pairs_mut().append_pair("q", &q);
            let resp = store.auth(store.http.post(url)).send().await?;
            if !resp.status().is_success() {
                tracing::warn!(
                    "{}: could not create the database ({}); writing anyway",
                    target.describe(),
                    resp.status()
                );
            }
        }
        Ok(store)
    }

    fn auth(&self, req: RequestBuilder) -> RequestBuilder {
        if let Some(t) = &self.token {
            req.header("Authorization", format!("Token {t}"))
        } else if let Some(u) = &self.target.user {
            req.basic_auth(u, self.target.password.as_ref())
        } else {
            req
        }
    }

    fn write_url(&self) -> Result<Url> {
        let t = &self.target;
        let mut url = match &t.org {
            Some(org) => {
                let mut u = Url::parse(&format!("{}/api/v2/write", t.base()))?;
                u.query_pairs_mut()
                    .append_pair("org", org)
                    .append_pair("bucket", &t.db);
                u
            }
            None => {
                let mut u = Url::parse(&format!("{}/write", t.base()))?;
                u.query_pairs_mut().append_pair("db", &t.db);
                u
            }
        };
        url.query_pairs_mut().append_pair("precision", "ns");
        Ok(url)
    }

    /// One write per batch; when InfluxDB refuses it as a bad request (a
    /// point it cannot parse or a field type conflict: the content), the
    /// points one by one, so only the poison one is refused. Anything else
    /// (unreachable, 5xx) is an error: retried, nothing acknowledged.
    pub async fn write_batch(&mut self, rows: &[TelemetryRow]) -> Result<Written> {
        self.write_points(rows.len(), |out, i| line(out, &rows[i]))
            .await
    }

    /// The user's rows, one point each in its message type's measurement.
    pub async fn write_user(&mut self, rows: &[UserRow]) -> Result<Written> {
        let tables = (self.user.clone()).ok_or_else(|| anyhow::anyhow!("no user tables"))?;
        self.write_points(rows.len(), |out, i| user_line(out, &tables, &rows[i]))
            .await
    }

    /// Points 0..n (`line` appends point i) in one write; refused as a bad
    /// request, one by one.
    async fn write_points(&self, n: usize, line: impl Fn(&mut String, usize)) -> Result<Written> {
        let mut body = String::with_capacity(n * 200);
        for i in 0..n {
            line(&mut body, i);
        }
        let mut written = Written::default();
        match self.write(body).await? {
            None => {
                written.stored = n;
                return Ok(written);
            }
            Some(why) => tracing::debug!("batch refused ({why}); writing its points one by one"),
        }
        for i in 0..n {
            let mut one = String::new();
            line(&mut one, i);
            match self.write(one).await? {
                None => written.stored += 1,
                Some(why) => written
                    .refused
                    .push((i, format!("InfluxDB refused the point: {why}"))),
            }
        }
        Ok(written)
    }

    /// Quarantined messages as points of the `rejected` measurement (tag
    /// device_id; fields topic, size, reason, sha256; time: when received).
    /// The payloads themselves go to the dead-letter file.
    pub async fn quarantine(&mut self, rejected: &[Rejected]) -> Result<()> {
        let mut body = String::new();
        for r in rejected {
            rejected_line(&mut body, r);
        }
        match self.write(body).await? {
            None => Ok(()),
            Some(why) => bail!("{}: writing rejected points: {why}", self.target.describe()),
        }
    }

    /// POSTs line protocol: `None` when written, `Some(answer)` when refused
    /// as a bad request (400), an error otherwise.
    async fn write(&self, body: String) -> Result<Option<String>> {
        let resp = self
            .auth(self.http.post(self.write_url()?))
            .body(body)
            .send()
            .await
            .with_context(|| format!("{}: write failed", self.target.describe()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(None);
        }
        let text = resp.text().await.unwrap_or_default();
        if status == StatusCode::BAD_REQUEST {
            return Ok(Some(text.trim().to_string()));
        }
        bail!(
            "{}: write answered {status}: {}",
            self.target.describe(),
            text.trim()
        )
    }

    pub async fn rejected_stats(&mut self) -> Result<Vec<RejectedStats>> {
        let v = self
            .query(&format!(
                "SELECT count(size) FROM {REJECTED} GROUP BY device_id; \
                 SELECT last(reason) FROM {REJECTED} GROUP BY device_id"
            ))
            .await?;
        let series = |i: usize| {
            v["results"][i]["series"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let mut out: Vec<RejectedStats> = series(0)
            .iter()
            .map(|s| RejectedStats {
                device_id: s["tags"]["device_id"].as_str().unwrap_or("").to_string(),
                rejected: s["values"][0][1].as_u64().unwrap_or(0),
                last_reason: String::new(),
            })
            .collect();
        for s in series(1) {
            let dev = s["tags"]["device_id"].as_str().unwrap_or("");
            if let Some(d) = out.iter_mut().find(|d| d.device_id == dev) {
                d.last_reason = s["values"][0][1].as_str().unwrap_or("").to_string();
            }
        }
        out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(out)
    }

    /// Runs InfluxQL statements through `/query` (v1, or v2's v1-compatible API).
    async fn query(&self, q: &str) -> Result<serde_json::Value> {
        let mut url = Url::parse(&format!("{}/query", self.target.base()))?;
        url.query_pairs_mut()
            .append_pair("db", &self.target.db)
            .append_pair("epoch", "ns")
            .append_pair("q", q);
        let resp = self.auth(self.http.get(url)).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != StatusCode::OK {
            bail!(
                "{}: query answered {status}: {}",
                self.target.describe(),
                text.trim()
            );
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: query answer is not JSON", self.target.describe()))?;
        if let Some(err) = v["results"]
            .as_array()
            .and_then(|rs| rs.iter().find_map(|r| r["error"].as_str()))
        {
            bail!("{}: query failed: {err}", self.target.describe());
        }
        Ok(v)
    }

    /// Per device of `telemetry`, or of the user's `measurement`. Every
    /// point has `received_unix_nano`, so that counts them; `seq` only when
    /// mapped.
    pub async fn stats(&mut self, measurement: Option<&str>) -> Result<Vec<DeviceStats>> {
        let m = format!("\"{}\"", measurement.unwrap_or(MEASUREMENT));
        let v = self
            .query(&format!(
                "SELECT count(received_unix_nano), min(seq), max(seq) FROM {m} GROUP BY device_id; \
                 SELECT first(received_unix_nano) FROM {m} GROUP BY device_id; \
                 SELECT last(received_unix_nano) FROM {m} GROUP BY device_id"
            ))
            .await?;
        let series = |i: usize| {
            v["results"][i]["series"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let mut devices: Vec<DeviceStats> = Vec::new();
        for s in series(0) {
            let vals = &s["values"][0];
            devices.push(DeviceStats {
                table: None,
                device_id: s["tags"]["device_id"].as_str().unwrap_or("").to_string(),
                rows: vals[1].as_u64().unwrap_or(0),
                first_seq: vals[2].as_i64(),
                last_seq: vals[3].as_i64(),
                first_time_unix_nano: 0,
                last_time_unix_nano: 0,
                missing: 0,
                gaps: Vec::new(),
            });
        }
        for (i, first) in [(1, true), (2, false)] {
            for s in series(i) {
                let dev = s["tags"]["device_id"].as_str().unwrap_or("");
                let t = s["values"][0][0].as_i64().unwrap_or(0);
                if let Some(d) = devices.iter_mut().find(|d| d.device_id == dev) {
                    if first {
                        d.first_time_unix_nano = t;
                    } else {
                        d.last_time_unix_nano = t;
                    }
                }
            }
        }
        for d in &mut devices {
            let q = format!(
                "SELECT seq FROM {m} WHERE device_id = '{}'",
                d.device_id.replace('\\', "\\\\").replace('\'', "\\'")
            );
            let seqs = match d.last_seq.is_some() {
                true => Some(self.query(&q).await?),
                false => None,
            };
            fill_gaps(d, |_| {
                let mut seqs: Vec<i64> = (seqs.as_ref())
                    .and_then(|v| v["results"][0]["series"][0]["values"].as_array())
                    .map(|vals| vals.iter().filter_map(|r| r[1].as_i64()).collect())
                    .unwrap_or_default();
                seqs.sort_unstable();
                seqs.dedup();
                Ok::<_, anyhow::Error>(seqs)
            })?;
        }
        devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        Ok(devices)
    }
}

/// A tag value (or key) escaped for line protocol.
fn push_tag(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, ',' | '=' | ' ' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// A string field value, quoted.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One point of the `rejected` measurement for `r`.
pub fn rejected_line(out: &mut String, r: &Rejected) {
    use std::fmt::Write;
    out.push_str(REJECTED);
    if let Some(d) = r.device_id.as_deref().filter(|d| !d.is_empty()) {
        out.push_str(",device_id=");
        push_tag(out, d);
    }
    // Line protocol has no way to write a newline in a field: escaped.
    let oneline = |s: &str| s.replace('\n', "\\n").replace('\r', "\\r");
    let _ = writeln!(
        out,
        " topic={},size={}i,reason={},sha256={} {}",
        quoted(&oneline(&r.topic)),
        r.size,
        quoted(&oneline(&r.reason)),
        quoted(&r.sha256),
        r.received_unix_nano
    );
}

/// Appends one line of line protocol for `r`.
pub fn line(out: &mut String, r: &TelemetryRow) {
    use std::fmt::Write;
    out.push_str(MEASUREMENT);
    out.push_str(",device_id=");
    push_tag(out, &r.device_id);
    let _ = write!(
        out,
        " seq={}i,received_unix_nano={}i,rssi_dbm={}i",
        r.seq, r.received_unix_nano, r.rssi_dbm
    );
    // Line protocol has no NaN or infinity: such a reading is left out,
    // and the string field `nonfinite` names it (`humidity_pct=NaN`).
    for (name, v) in r.float_measures() {
        if v.is_finite() {
            let _ = write!(out, ",{name}={v:?}");
        }
    }
    if let Some(flag) = r.nonfinite() {
        let _ = write!(out, ",nonfinite={}", quoted(&flag));
    }
    let _ = writeln!(out, ",status={} {}", quoted(&r.status), r.time_unix_nano);
}

/// One point for a user's row: measurement = its table's name, tags =
/// device_id and the labels, fields = `seq`, `received_unix_nano` and the
/// numbers and booleans (a NaN/±Inf one left out and named in
/// `nonfinite`), time = the device's time (else the received time).
pub fn user_line(out: &mut String, tables: &UserTables, r: &UserRow) {
    use std::fmt::Write;
    let t = &tables.tables[r.table];
    // Table and column names are letters, digits and _ (user::ident).
    out.push_str(&t.name);
    out.push_str(",device_id=");
    push_tag(out, &r.device_id);
    for ((_, column), value) in t.labels.iter().zip(&r.labels) {
        // An empty tag value is not allowed: such a label is left out.
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            out.push(',');
            out.push_str(column);
            out.push('=');
            push_tag(out, v);
        }
    }
    let _ = write!(out, " received_unix_nano={}i", r.received_unix_nano);
    if let Some(seq) = r.seq {
        let _ = write!(out, ",seq={seq}i");
    }
    for (c, cell) in t.fields.iter().zip(&r.cells) {
        if !c.ty.is_measure() {
            continue;
        }
        let value = match cell {
            Cell::Int(v) => format!("{v}i"),
            Cell::Real(v) if v.is_finite() => format!("{v:?}"),
            Cell::Bool(v) => v.to_string(),
            _ => continue,
        };
        out.push(',');
        out.push_str(&c.name);
        let _ = write!(out, "={value}");
    }
    if let Some(flag) = r.nonfinite(t) {
        let _ = write!(out, ",nonfinite={}", quoted(&flag));
    }
    let _ = writeln!(out, " {}", r.time_or_received());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = InfluxTarget::parse(false, "//127.0.0.1:8087/tele").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.db.as_str()),
            ("127.0.0.1", 8087, "tele")
        );
        assert_eq!(t.org, None);
        let t = InfluxTarget::parse(true, "//u:p@influx.example/bucket?org=acme").unwrap();
        assert_eq!(
            (t.port, t.org.as_deref(), t.user.as_deref()),
            (8086, Some("acme"), Some("u"))
        );
        assert!(InfluxTarget::parse(false, "//h:1/").is_err());
        let t = InfluxTarget::parse(true, "//h:8086/db?cafile=out%2Fcerts%2Fca+1.crt").unwrap();
        assert_eq!(
            t.cafile,
            Some(std::path::PathBuf::from("out/certs/ca+1.crt"))
        );
        let e = InfluxTarget::parse(false, "//h:8086/db?cafile=ca.crt").unwrap_err();
        assert!(e.contains("influxs://"), "{e}");
    }

    #[test]
    fn line_protocol() {
        let r = TelemetryRow {
            device_id: "dev 1".into(),
            seq: 3,
            time_unix_nano: 1_700_000_000_000_000_000,
            received_unix_nano: 1_700_000_000_000_000_500,
            temperature_c: 20.0,
            humidity_pct: f64::NAN,
            pressure_hpa: 1013.25,
            battery_v: 3.7,
            rssi_dbm: -60,
            status: "OK".into(),
        };
        let mut s = String::new();
        line(&mut s, &r);
        assert_eq!(
            s,
            "telemetry,device_id=dev\\ 1 seq=3i,received_unix_nano=1700000000000000500i,rssi_dbm=-60i,\
             temperature_c=20.0,pressure_hpa=1013.25,battery_v=3.7,nonfinite=\"humidity_pct=NaN\",status=\"OK\" 1700000000000000000\n"
        );
    }
}
