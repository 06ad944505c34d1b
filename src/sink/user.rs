//! The sink on the user's own message: `sub telemetry --schema F --sink URL`.
//!
//! A user's telemetry type becomes a table of its own (named from the full
//! type name, `acme.plant.v1.Metrics` -> `acme_plant_v1_metrics`), so the
//! built-in `telemetry` table is never touched. Here is what every store
//! shares: which columns a message type makes ([`Table`]), the row one
//! message is ([`UserRow`]), and how an existing SQL table is brought up to
//! the message ([`evolve`]); each store module writes these rows its way.
//!
//! Columns: `device_id` (the `{device}` level), one per other `{label}`,
//! `seq` and `time_unix_nano` (from the mapped fields, which get no column of
//! their own), `received_unix_nano`, then one per scalar field, nested
//! messages flattened with `_` (`env.temperature_c` -> `env_temperature_c`);
//! repeated fields, maps and `Struct`-like well-known types as their JSON
//! text; enums by name; `Timestamp`/`Duration` as their JSON text; a wrapper
//! (`DoubleValue`...) as its value. A field whose column name is taken by one
//! of mqttkit's (`device_id`, a label...) is stored as `msg_NAME`.
//!
//! The key: (device_id, seq) when seq is mapped; else (device_id,
//! time_unix_nano) when time is; else none, and a redelivery (after a crash
//! before the commit) is a second row.

use std::collections::HashSet;

use anyhow::{bail, Result};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::mqtt::Message;
use crate::pipeline::quarantine::payload_problem;
use crate::schema::generate::seq_of;
use crate::schema::{codec, kind_name, template, Role, Rule, Schema, TimeField, TimeUnit};

/// Nested messages deeper than this are one JSON column (recursive types).
const MAX_DEPTH: usize = 4;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1); longer names are cut
/// and given a hash, the same in every store.
const MAX_IDENT: usize = 63;
/// Columns mqttkit writes itself, before a message's fields.
pub const DEVICE: &str = "device_id";
pub const SEQ: &str = "seq";
pub const TIME: &str = "time_unix_nano";
pub const RECEIVED: &str = "received_unix_nano";
/// SQLite only: names the NaN/±Inf values stored as NULL (as in `telemetry`).
pub const NONFINITE: &str = "nonfinite";

/// A column's type, as each store spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Int,
    Real,
    Bool,
    Text,
    Bytes,
    Json,
}

/// Which SQL store a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl ColType {
    /// The declared type; also what the catalog reports back (SQLite keeps
    /// the declared text, PostgreSQL's `information_schema` its own names).
    pub fn sql(self, d: Dialect) -> &'static str {
        match (d, self) {
            (Dialect::Sqlite, ColType::Int) => "INTEGER",
            (Dialect::Sqlite, ColType::Real) => "REAL",
            (Dialect::Sqlite, ColType::Bool) => "BOOLEAN",
            (Dialect::Sqlite, ColType::Text) => "TEXT",
            (Dialect::Sqlite, ColType::Bytes) => "BLOB",
            (Dialect::Sqlite, ColType::Json) => "JSON",
            (Dialect::Postgres, ColType::Int) => "bigint",
            (Dialect::Postgres, ColType::Real) => "double precision",
            (Dialect::Postgres, ColType::Bool) => "boolean",
            (Dialect::Postgres, ColType::Text) => "text",
            (Dialect::Postgres, ColType::Bytes) => "bytea",
            (Dialect::Postgres, ColType::Json) => "jsonb",
        }
    }

    /// Numbers and booleans: InfluxDB fields and Timestream measures.
    pub fn is_measure(self) -> bool {
        matches!(self, ColType::Int | ColType::Real | ColType::Bool)
    }
}

/// How a field's value becomes a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    Scalar,
    /// Its canonical JSON: a list, a map, a Struct... (ColType::Json), or a
    /// Timestamp/Duration string (ColType::Text).
    Json,
}

/// One column that comes from the message.
#[derive(Debug, Clone)]
pub struct FieldColumn {
    pub name: String,
    pub ty: ColType,
    /// The field and the messages above it, outermost first.
    path: Vec<FieldDescriptor>,
    leaf: Leaf,
}

impl FieldColumn {
    /// The field as the .proto names it: `env.temperature_c`.
    pub fn field_path(&self) -> String {
        let names: Vec<&str> = self.path.iter().map(|f| f.name()).collect();
        names.join(".")
    }

    /// The field's type as the .proto writes it.
    pub fn kind(&self) -> String {
        self.path.last().map(kind_name).unwrap_or_default()
    }
}

/// What makes a row unique in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    DeviceSeq,
    DeviceTime,
    None,
}

impl Key {
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Key::DeviceSeq => &[DEVICE, SEQ],
            Key::DeviceTime => &[DEVICE, TIME],
            Key::None => &[],
        }
    }

    /// For people: what a redelivered message does.
    pub fn describe(self) -> &'static str {
        match self {
            Key::DeviceSeq => "keyed by (device_id, seq): a redelivery adds no row",
            Key::DeviceTime => "keyed by (device_id, time_unix_nano): a redelivery adds no row, and a second message with the same device time is taken for one",
            Key::None => "no seq or time mapped, so no key: a message redelivered after a crash is a second row",
        }
    }
}

/// One column of a table as a store creates it.
#[derive(Debug, Clone)]
pub struct ColumnDef<'a> {
    pub name: &'a str,
    pub ty: ColType,
    pub not_null: bool,
    /// The message field it comes from, when it does.
    pub field: Option<&'a FieldColumn>,
}

/// The table (or measurement) of one message type.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub message: MessageDescriptor,
    /// Label name in the topic, and its column.
    pub labels: Vec<(String, String)>,
    pub key: Key,
    pub fields: Vec<FieldColumn>,
    seq: Option<FieldDescriptor>,
    time: Option<TimeField>,
}

/// A value of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Bool(bool),
    /// Text, and JSON text.
    Text(String),
    Bytes(Vec<u8>),
}

/// One message as a row of its table.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    /// Index of its table in [`UserTables::tables`].
    pub table: usize,
    pub device_id: String,
    /// In the order of the table's labels.
    pub labels: Vec<Option<String>>,
    pub seq: Option<i64>,
    /// The device's time, ns since the Unix epoch.
    pub time_unix_nano: Option<i64>,
    pub received_unix_nano: i64,
    /// In the order of the table's fields.
    pub cells: Vec<Cell>,
}

impl UserRow {
    /// The device's time, or the received time when the message has none.
    pub fn time_or_received(&self) -> i64 {
        self.time_unix_nano.unwrap_or(self.received_unix_nano)
    }

    /// `column=NaN|+Inf|-Inf` for every non-finite float, comma-joined.
    pub fn nonfinite(&self, table: &Table) -> Option<String> {
        let list: Vec<String> = (table.fields.iter().zip(&self.cells))
            .filter_map(|(c, cell)| match cell {
                Cell::Real(v) if v.is_nan() => Some(format!("{}=NaN", c.name)),
                Cell::Real(v) if v.is_infinite() && *v > 0.0 => Some(format!("{}=+Inf", c.name)),
                Cell::Real(v) if v.is_infinite() => Some(format!("{}=-Inf", c.name)),
                _ => None,
            })
            .collect();
        (!list.is_empty()).then(|| list.join(","))
    }
}

/// Why a message can never be a row, and the device its topic names.
#[derive(Debug, Clone, PartialEq)]
pub struct Unfit {
    pub reason: String,
    pub device_id: Option<String>,
}

/// The tables of a schema's telemetry types, and which rule feeds which.
#[derive(Debug, Clone)]
pub struct UserTables {
    schema: Schema,
    pub tables: Vec<Table>,
    /// For each rule of the schema: its table, if the sink stores it.
    by_rule: Vec<Option<usize>>,
}

impl UserTables {
    /// The tables of `schema`'s telemetry rules (every rule in the one-off
    /// `--proto --message` form, which has no roles).
    pub fn new(schema: Schema) -> Result<UserTables> {
        let telemetry = |r: &Rule| r.role == Some(Role::Telemetry);
        let any_telemetry = schema.rules.iter().any(telemetry);
        let mut tables: Vec<Table> = Vec::new();
        let mut by_rule = Vec::new();
        for rule in &schema.rules {
            if (any_telemetry && !telemetry(rule)) || rule.role == Some(Role::Command) {
                by_rule.push(None);
                continue;
            }
            let name = rule.message.full_name();
            let i = match tables.iter().position(|t| t.message.full_name() == name) {
                Some(i) => {
                    tables[i].merge(rule)?;
                    i
                }
                None => {
                    tables.push(Table::empty(rule));
                    tables.len() - 1
                }
            };
            by_rule.push(Some(i));
        }
        if tables.is_empty() {
            bail!(
                "--schema: no [[topic]] has role = \"telemetry\"; mark the topics to store with it"
            );
        }
        for t in &mut tables {
            t.fields = field_columns(t)?;
        }
        Ok(UserTables {
            schema,
            tables,
            by_rule,
        })
    }

    /// The device a topic names: its `{device}` level, else `devices/ID/...`.
    pub fn device_of(&self, topic: &str) -> Option<String> {
        match self.schema.rule_for(topic) {
            Some((_, labels)) if labels.contains_key(template::DEVICE) => {
                labels.get(template::DEVICE).cloned()
            }
            _ => crate::mqtt::device_of_topic(topic).map(str::to_string),
        }
    }

    /// The row `p` is, or why it can never be one.
    pub fn row(&self, p: &Message) -> Result<UserRow, Unfit> {
        let unfit = |reason: String| Unfit {
            reason,
            device_id: self.device_of(&p.topic),
        };
        let Some((i, rule, labels)) = self.rule_for(&p.topic) else {
            return Err(unfit(
                "no telemetry [[topic]] of the schema matches this topic".into(),
            ));
        };
        let table = &self.tables[i];
        let name = rule.message.full_name();
        if let Some(problem) = payload_problem(&p.payload, name) {
            return Err(unfit(problem));
        }
        let msg = codec::decode_message(&rule.message, &p.payload)
            .map_err(|e| unfit(format!("{e:#}")))?;
        let device_id = match labels.get(template::DEVICE).map(String::as_str) {
            Some(d) => d.to_string(),
            None => crate::mqtt::device_of_topic(&p.topic)
                .ok_or_else(|| unfit("the topic names no device ({device} level)".into()))?
                .to_string(),
        };
        let received = i64::try_from(crate::clock::now_unix_nano()).unwrap_or(i64::MAX);
        table
            .row(i, rule, &msg, device_id, &labels, received)
            .map_err(unfit)
    }

    fn rule_for(&self, topic: &str) -> Option<(usize, &Rule, template::Labels)> {
        let rule_index = self
            .schema
            .rules
            .iter()
            .position(|r| r.template.matches(topic).is_some())?;
        let rule = &self.schema.rules[rule_index];
        let table = self.by_rule[rule_index]?;
        Some((table, rule, rule.template.matches(topic)?))
    }
}

impl Table {
    fn empty(rule: &Rule) -> Table {
        let mut t = Table {
            name: ident(&rule.message.full_name().replace('.', "_")),
            message: rule.message.clone(),
            labels: Vec::new(),
            key: match (&rule.seq, &rule.time) {
                (Some(_), _) => Key::DeviceSeq,
                (None, Some(_)) => Key::DeviceTime,
                (None, None) => Key::None,
            },
            fields: Vec::new(),
            seq: rule.seq.clone(),
            time: rule.time.clone(),
        };
        t.add_labels(rule);
        t
    }

    /// Another rule with the same type: its labels join; seq and time must agree.
    fn merge(&mut self, rule: &Rule) -> Result<()> {
        let name = |f: Option<&FieldDescriptor>| f.map(|f| f.name().to_string());
        let time_name = |t: Option<&TimeField>| {
            t.map(|t| match t {
                TimeField::Timestamp(f) | TimeField::Integer(f, _) => f.name().to_string(),
            })
        };
        if name(self.seq.as_ref()) != name(rule.seq.as_ref())
            || time_name(self.time.as_ref()) != time_name(rule.time.as_ref())
        {
            bail!(
                "--schema: filter {}: {} is mapped on other topics with another seq or time; give every [[topic]] of one type the same seq and time (they make its table's key)",
                rule.template,
                rule.message.full_name()
            );
        }
        self.add_labels(rule);
        Ok(())
    }

    fn add_labels(&mut self, rule: &Rule) {
        for label in rule.template.labels().filter(|l| *l != template::DEVICE) {
            if self.labels.iter().all(|(l, _)| l != label) {
                let column = ident(label);
                let column = if mqttkit_column(&column) {
                    format!("label_{column}")
                } else {
                    column
                };
                self.labels.push((label.to_string(), column));
            }
        }
    }

    /// Every column, in order, as `dialect` creates it.
    pub fn columns(&self, dialect: Dialect) -> Vec<ColumnDef<'_>> {
        let fixed = |name, ty, not_null| ColumnDef {
            name,
            ty,
            not_null,
            field: None,
        };
        let mut cols = vec![fixed(DEVICE, ColType::Text, true)];
        cols.extend((self.labels.iter()).map(|(_, c)| fixed(c.as_str(), ColType::Text, false)));
        cols.push(fixed(SEQ, ColType::Int, self.key == Key::DeviceSeq));
        cols.push(fixed(TIME, ColType::Int, self.key == Key::DeviceTime));
        cols.push(fixed(RECEIVED, ColType::Int, true));
        cols.extend(self.fields.iter().map(|f| ColumnDef {
            name: &f.name,
            ty: f.ty,
            not_null: false,
            field: Some(f),
        }));
        if dialect == Dialect::Sqlite {
            cols.push(fixed(NONFINITE, ColType::Text, false));
        }
        cols
    }

    /// `CREATE TABLE IF NOT EXISTS` and its time index.
    pub fn create_sql(&self, dialect: Dialect) -> String {
        let mut defs: Vec<String> = (self.columns(dialect).iter())
            .map(|c| column_sql(c, dialect))
            .collect();
        if self.key != Key::None {
            defs.push(format!("PRIMARY KEY ({})", self.key.columns().join(", ")));
        }
        let rowid = match (dialect, self.key) {
            (Dialect::Sqlite, Key::DeviceSeq | Key::DeviceTime) => " WITHOUT ROWID",
            _ => "",
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {t} ({defs}){rowid};\n\
             CREATE INDEX IF NOT EXISTS {ti} ON {t} ({TIME});",
            t = quote(&self.name),
            ti = quote(&format!("{}_time", self.name)),
            defs = defs.join(", ")
        )
    }

    /// The quoted column list every insert uses, in [`Table::columns`] order.
    pub fn column_list(&self, dialect: Dialect) -> String {
        let names: Vec<String> = self
            .columns(dialect)
            .iter()
            .map(|c| quote(c.name))
            .collect();
        names.join(", ")
    }

    fn row(
        &self,
        index: usize,
        rule: &Rule,
        msg: &DynamicMessage,
        device_id: String,
        labels: &template::Labels,
        received: i64,
    ) -> Result<UserRow, String> {
        let seq = match seq_of(rule, msg) {
            Some(s) => Some(i64::try_from(s).map_err(|_| format!("seq {s} out of range"))?),
            None if rule.seq.is_some() => return Err("seq is negative".into()),
            None => None,
        };
        let time_unix_nano = rule
            .time
            .as_ref()
            .map(|t| time_of(msg, t))
            .transpose()?
            .flatten();
        if self.key == Key::DeviceTime && time_unix_nano.is_none() {
            return Err("no device time (the time field is not set), which the table's key (device_id, time_unix_nano) needs".into());
        }
        let cells = (self.fields.iter())
            .map(|c| cell(c, msg))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(UserRow {
            table: index,
            device_id,
            labels: (self.labels.iter())
                .map(|(l, _)| labels.get(l).cloned())
                .collect(),
            seq,
            time_unix_nano,
            received_unix_nano: received,
            cells,
        })
    }
}

fn column_sql(c: &ColumnDef, dialect: Dialect) -> String {
    let null = if c.not_null { " NOT NULL" } else { "" };
    format!("{} {}{null}", quote(c.name), c.ty.sql(dialect))
}

/// `ALTER TABLE ... ADD COLUMN` for a column the table lacks (always
/// nullable: the rows already there have no value).
pub fn add_column_sql(table: &str, c: &ColumnDef, dialect: Dialect) -> String {
    format!(
        "ALTER TABLE {} ADD COLUMN {} {}",
        quote(table),
        quote(c.name),
        c.ty.sql(dialect)
    )
}

/// An SQL identifier in double quotes.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn mqttkit_column(name: &str) -> bool {
    [DEVICE, SEQ, TIME, RECEIVED, NONFINITE].contains(&name)
}

/// A name fit for every store: lower case, letters, digits and `_`; at most
/// [`MAX_IDENT`] bytes (a longer one is cut and ends in a hash of the whole).
pub fn ident(raw: &str) -> String {
    let s: String = (raw.chars())
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if s.len() <= MAX_IDENT {
        return s;
    }
    // FNV-1a: stable across builds, so a restarted sink finds its column.
    let mut h: u32 = 0x811c9dc5;
    for b in raw.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x01000193);
    }
    format!("{}_{h:08x}", &s[..MAX_IDENT - 9])
}

/// The field columns of `t`'s message, with their final names.
fn field_columns(t: &Table) -> Result<Vec<FieldColumn>> {
    let skip: Vec<&FieldDescriptor> = [t.seq.as_ref(), time_descriptor(t.time.as_ref())]
        .into_iter()
        .flatten()
        .collect();
    let mut out = Vec::new();
    flatten(&t.message, "", &mut Vec::new(), &skip, &mut out);
    let taken: HashSet<&str> = t.labels.iter().map(|(_, c)| c.as_str()).collect();
    for c in &mut out {
        if mqttkit_column(&c.name) || taken.contains(c.name.as_str()) {
            c.name = ident(&format!("msg_{}", c.name));
        }
    }
    let mut seen: Vec<&FieldColumn> = Vec::new();
    for c in &out {
        if let Some(other) = seen.iter().find(|o| o.name == c.name) {
            bail!(
                "--schema: {}: fields {} and {} both make column {}; rename one of them",
                t.message.full_name(),
                other.field_path(),
                c.field_path(),
                c.name
            );
        }
        seen.push(c);
    }
    Ok(out)
}

fn time_descriptor(t: Option<&TimeField>) -> Option<&FieldDescriptor> {
    t.map(|t| match t {
        TimeField::Timestamp(f) | TimeField::Integer(f, _) => f,
    })
}

const WRAPPERS: [&str; 9] = [
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue",
];

/// Appends the columns of `msg`'s fields (below `path`), depth first.
fn flatten(
    msg: &MessageDescriptor,
    prefix: &str,
    path: &mut Vec<FieldDescriptor>,
    skip: &[&FieldDescriptor],
    out: &mut Vec<FieldColumn>,
) {
    for f in msg.fields() {
        if path.is_empty() && skip.contains(&&f) {
            continue;
        }
        let name = ident(&format!("{prefix}{}", f.name()));
        path.push(f.clone());
        let col = |path: &[FieldDescriptor], ty, leaf| FieldColumn {
            name: name.clone(),
            ty,
            path: path.to_vec(),
            leaf,
        };
        match f.kind() {
            _ if f.is_list() || f.is_map() => out.push(col(path, ColType::Json, Leaf::Json)),
            Kind::Message(m) => match m.full_name().strip_prefix("google.protobuf.") {
                Some("Timestamp" | "Duration") => out.push(col(path, ColType::Text, Leaf::Json)),
                Some(w) if WRAPPERS.contains(&w) => {
                    let value = m.get_field_by_name("value").expect("wrappers have a value");
                    let ty = scalar_type(&value.kind());
                    let mut inner = path.clone();
                    inner.push(value);
                    out.push(col(&inner, ty, Leaf::Scalar));
                }
                Some(_) => out.push(col(path, ColType::Json, Leaf::Json)),
                None if path.len() >= MAX_DEPTH => out.push(col(path, ColType::Json, Leaf::Json)),
                None => flatten(&m, &format!("{name}_"), path, skip, out),
            },
            k => out.push(col(path, scalar_type(&k), Leaf::Scalar)),
        }
        path.pop();
    }
}

fn scalar_type(k: &Kind) -> ColType {
    match k {
        Kind::Double | Kind::Float => ColType::Real,
        Kind::Bool => ColType::Bool,
        Kind::String | Kind::Enum(_) => ColType::Text,
        Kind::Bytes => ColType::Bytes,
        Kind::Message(_) => ColType::Json,
        _ => ColType::Int,
    }
}

/// The value of column `c` in `root`: NULL when a message above it, or the
/// field itself (a oneof member, an `optional`), is not set.
fn cell(c: &FieldColumn, root: &DynamicMessage) -> Result<Cell, String> {
    let (leaf, parents) = c.path.split_last().expect("a column has a field");
    let mut msg = root;
    for f in parents {
        if !msg.has_field(f) {
            return Ok(Cell::Null);
        }
        match msg.get_field(f) {
            std::borrow::Cow::Borrowed(Value::Message(m)) => msg = m,
            _ => return Ok(Cell::Null),
        }
    }
    if leaf.supports_presence() && !msg.has_field(leaf) {
        return Ok(Cell::Null);
    }
    if c.leaf == Leaf::Json {
        let v = codec::field_json(msg, leaf).map_err(|e| format!("{}: {e}", c.field_path()))?;
        return Ok(match v {
            serde_json::Value::String(s) if c.ty == ColType::Text => Cell::Text(s),
            v => Cell::Text(v.to_string()),
        });
    }
    scalar_cell(c, &msg.get_field(leaf))
}

fn scalar_cell(c: &FieldColumn, v: &Value) -> Result<Cell, String> {
    Ok(match v {
        Value::I32(v) => Cell::Int(i64::from(*v)),
        Value::I64(v) => Cell::Int(*v),
        Value::U32(v) => Cell::Int(i64::from(*v)),
        Value::U64(v) => Cell::Int(i64::try_from(*v).map_err(|_| {
            format!(
                "{} = {v} is beyond the 64-bit signed integers stores hold",
                c.field_path()
            )
        })?),
        // Via its shortest text, so 0.1f32 is stored as 0.1, not 0.10000000149.
        Value::F32(v) => Cell::Real(v.to_string().parse().unwrap_or(f64::from(*v))),
        Value::F64(v) => Cell::Real(*v),
        Value::Bool(v) => Cell::Bool(*v),
        Value::String(s) => Cell::Text(s.clone()),
        Value::Bytes(b) => Cell::Bytes(b.to_vec()),
        Value::EnumNumber(n) => Cell::Text(enum_name(c, *n)),
        Value::Message(_) | Value::List(_) | Value::Map(_) => Cell::Null,
    })
}

fn enum_name(c: &FieldColumn, n: i32) -> String {
    match c.path.last().map(|f| f.kind()) {
        Some(Kind::Enum(e)) => e
            .get_value(n)
            .map_or(n.to_string(), |v| v.name().to_string()),
        _ => n.to_string(),
    }
}

/// The device time in ns, `None` when the field is not set.
fn time_of(msg: &DynamicMessage, t: &TimeField) -> Result<Option<i64>, String> {
    let f = time_descriptor(Some(t)).expect("some");
    if !msg.has_field(f) {
        return Ok(None);
    }
    let ns: i128 = match (t, &*msg.get_field(f)) {
        (TimeField::Timestamp(_), Value::Message(ts)) => {
            let part = |name: &str| match ts.get_field_by_name(name).as_deref() {
                Some(Value::I64(v)) => i128::from(*v),
                Some(Value::I32(v)) => i128::from(*v),
                _ => 0,
            };
            part("seconds") * 1_000_000_000 + part("nanos")
        }
        (TimeField::Integer(_, unit), v) => {
            let n: i128 = match v {
                Value::I32(v) => (*v).into(),
                Value::I64(v) => (*v).into(),
                Value::U32(v) => (*v).into(),
                Value::U64(v) => (*v).into(),
                _ => return Ok(None),
            };
            n * match unit {
                TimeUnit::Ns => 1,
                TimeUnit::Us => 1_000,
                TimeUnit::Ms => 1_000_000,
                TimeUnit::S => 1_000_000_000,
            }
        }
        _ => return Ok(None),
    };
    i64::try_from(ns)
        .map(Some)
        .map_err(|_| format!("{} is out of range ({ns} ns)", f.name()))
}

/// An existing table as its catalog describes it.
#[derive(Debug, Default)]
pub struct Existing {
    /// Column name and declared type.
    pub columns: Vec<(String, String)>,
    /// The primary key's columns, in order.
    pub key: Vec<String>,
}

/// What to add to an existing table so it holds `t`'s rows: the missing
/// columns. A column whose type changed, or a key that changed, is a
/// one-line error naming table, column, both types and the fix.
pub fn evolve<'a>(
    t: &'a Table,
    existing: &Existing,
    dialect: Dialect,
    what: &str,
) -> Result<Vec<ColumnDef<'a>>> {
    let want_key: Vec<&str> = t.key.columns().to_vec();
    let key_matches = existing.key.len() == want_key.len()
        && (existing.key.iter().zip(&want_key)).all(|(a, b)| a.eq_ignore_ascii_case(b));
    if !key_matches {
        bail!(
            "{what}: table {} is keyed by ({}), but the schema's seq/time mapping keys it by ({}); map seq and time as when it was made, or rename the old table (ALTER TABLE {} RENAME TO ...) and restart",
            t.name,
            existing.key.join(", "),
            want_key.join(", "),
            t.name
        );
    }
    let mut add = Vec::new();
    for c in t.columns(dialect) {
        let found = existing
            .columns
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(c.name));
        match found {
            None => add.push(c),
            Some((_, ty)) if ty.eq_ignore_ascii_case(c.ty.sql(dialect)) => {}
            Some((_, ty)) => bail!("{what}: {}", type_change(t, &c, ty, dialect)),
        }
    }
    Ok(add)
}

fn type_change(t: &Table, c: &ColumnDef, old: &str, dialect: Dialect) -> String {
    let new = c.ty.sql(dialect);
    let source = match c.field {
        Some(f) => format!(
            "{}.{} is now {} ({new})",
            t.message.full_name(),
            f.field_path(),
            f.kind()
        ),
        None => format!("mqttkit writes {new} there"),
    };
    format!(
        "table {} column {} is {old}, but {source}; give the changed field a new name (a new column), or rename the old table (ALTER TABLE {} RENAME TO ...) and restart",
        t.name, c.name, t.name
    )
}

#[cfg(test)]
mod tests;
