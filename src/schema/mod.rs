//! The user's schema: their `.proto` files and which message lives on which
//! topic.
//!
//! mqttkit's own world (`proto/mqttkit.proto`, `devices/{id}/...`) is
//! compiled in; a user's is loaded when a command starts, from `.proto`
//! source compiled in-process by protox (no `protoc` on the machine) or from
//! a descriptor set (`protoc --descriptor_set_out`, `buf build`; so editions
//! work too), into one prost-reflect [`DescriptorPool`]. A schema file maps
//! topic templates to message types:
//!
//! ```toml
//! proto = ["plant.proto"]          # relative to this file
//! proto_path = ["."]               # like protoc -I (default: each file's directory)
//! [[topic]]
//! filter = "plant/{site}/{device}/metrics"
//! message = "acme.plant.v1.Metrics"
//! role = "telemetry"               # or "command"; optional
//! seq = "sequence"                 # optional integer field
//! time = "sampled_at"              # optional: a Timestamp, or an integer with time_unit
//! time_unit = "ms"                 # ns | us | ms | s, for an integer time field
//! ```
//!
//! The map may also be declared in the `.proto` by a custom message option,
//! `(mqttkit.options.topic)` (see [`options`]); a schema file's `[[topic]]`s
//! for a message replace that message's options.
//!
//! The first rule whose template matches a topic decides its type. Every
//! problem is found here, before a connection is made: a syntax error with
//! file:line:column, an unknown type with the closest names, a seq field that
//! is not an integer, a role without `{device}`, an unknown key.

pub mod args;
pub mod codec;
pub mod generate;
pub mod options;
pub mod template;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde::Deserialize;

pub use args::SchemaArgs;
pub use template::{Labels, Template};

/// Where a command's schema comes from, resolved from its flags
/// (`--schema`, `--proto`, `--proto-path`, `--descriptor-set`, `--message`).
#[derive(Debug, Clone, Default)]
pub struct SchemaSource {
    pub schema: Option<PathBuf>,
    pub proto: Vec<PathBuf>,
    pub proto_path: Vec<PathBuf>,
    pub descriptor_set: Vec<PathBuf>,
    /// One type for every topic of the command (with `--proto`/`--descriptor-set`).
    pub message: Option<String>,
}

impl SchemaSource {
    pub fn is_empty(&self) -> bool {
        self.schema.is_none() && self.proto.is_empty() && self.descriptor_set.is_empty()
    }
}

/// Which direction a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Device to server.
    Telemetry,
    /// Server to device.
    Command,
}

/// The unit of an integer time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Ns,
    Us,
    Ms,
    S,
}

/// How a message carries its device time.
#[derive(Debug, Clone)]
pub enum TimeField {
    Timestamp(FieldDescriptor),
    Integer(FieldDescriptor, TimeUnit),
}

/// One `[[topic]]`: a template and the message on it.
#[derive(Debug, Clone)]
pub struct Rule {
    pub template: Template,
    pub message: MessageDescriptor,
    pub role: Option<Role>,
    pub seq: Option<FieldDescriptor>,
    pub time: Option<TimeField>,
}

/// A loaded schema: the descriptor pool and the topic rules, in order.
#[derive(Debug, Clone)]
pub struct Schema {
    pub pool: DescriptorPool,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    #[serde(default)]
    proto: Vec<PathBuf>,
    #[serde(default)]
    proto_path: Vec<PathBuf>,
    #[serde(default)]
    descriptor_set: Vec<PathBuf>,
    #[serde(default, rename = "topic")]
    topics: Vec<TopicEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicEntry {
    filter: String,
    message: String,
    role: Option<Role>,
    seq: Option<String>,
    time: Option<String>,
    time_unit: Option<TimeUnit>,
}

impl Schema {
    /// Loads and checks everything `src` names.
    pub fn load(src: &SchemaSource) -> Result<Schema> {
        let (file, label) = match &src.schema {
            Some(path) => (read_schema_file(path)?, path.display().to_string()),
            None => (SchemaFile::default(), "--proto".to_string()),
        };
        let base = src.schema.as_deref().and_then(Path::parent);
        let rel = |p: &PathBuf| match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p.clone(),
        };
        let mut proto: Vec<PathBuf> = file.proto.iter().map(rel).collect();
        proto.extend(src.proto.iter().cloned());
        let mut includes: Vec<PathBuf> = file.proto_path.iter().map(rel).collect();
        includes.extend(src.proto_path.iter().cloned());
        let mut sets: Vec<PathBuf> = file.descriptor_set.iter().map(rel).collect();
        sets.extend(src.descriptor_set.iter().cloned());
        if proto.is_empty() && sets.is_empty() {
            bail!("{label}: no .proto file and no descriptor set; add proto = [\"FILE.proto\"] (or --proto FILE / --descriptor-set FILE)");
        }
        let pool = build_pool(&proto, &includes, &sets)?;
        let entries = entries(&pool, &label, file.topics, src.message.as_deref())?;
        if entries.is_empty() {
            bail!("{label}: no topic is mapped to a message; add a [[topic]] with filter and message, declare option ({}) in the .proto, or give --message TYPE", options::EXTENSION);
        }
        let rules = (entries.iter())
            .map(|(place, e)| rule(&pool, e).with_context(|| place.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Schema { pool, rules })
    }

    /// The first rule whose template matches `topic`, with its labels.
    pub fn rule_for(&self, topic: &str) -> Option<(&Rule, Labels)> {
        (self.rules.iter()).find_map(|r| r.template.matches(topic).map(|l| (r, l)))
    }

    /// The topics of `role` for one device, as filters: `{device}` is
    /// `device` (an id, or `%u` in a mosquitto ACL pattern), other labels `+`.
    pub fn device_topics(&self, role: Role, device: &str) -> Vec<String> {
        let labels = Labels::from([(template::DEVICE.to_string(), device.to_string())]);
        self.rules_of(role)
            .map(|r| r.template.filter_with(&labels))
            .collect()
    }

    /// The filters of `role` for every device.
    pub fn filters(&self, role: Role) -> Vec<String> {
        self.rules_of(role).map(|r| r.template.filter()).collect()
    }

    fn rules_of(&self, role: Role) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.role == Some(role))
    }

    /// The first rule of `role` (the topic a role command uses).
    pub fn rule_of(&self, role: Role) -> Option<&Rule> {
        self.rules.iter().find(|r| r.role == Some(role))
    }
}

/// The map's entries, in the order they match, each with the place an
/// error names: the schema file's `[[topic]]`s, then the `.proto` options of
/// the messages the file does not map (a file's entries win over a
/// message's options); with `--message` one catch-all rule instead of the
/// options.
fn entries(
    pool: &DescriptorPool,
    label: &str,
    topics: Vec<TopicEntry>,
    message: Option<&str>,
) -> Result<Vec<(String, TopicEntry)>> {
    let mapped: Vec<String> = (topics.iter())
        .map(|t| t.message.trim_start_matches('.').to_string())
        .collect();
    let mut entries: Vec<(String, TopicEntry)> = (topics.into_iter().enumerate())
        .map(|(i, e)| (format!("{label}: [[topic]] #{}", i + 1), e))
        .collect();
    match message {
        // One type for every topic the command uses: a catch-all rule last.
        Some(message) => entries.push((
            format!("--message {message}"),
            TopicEntry {
                filter: "#".into(),
                message: message.to_string(),
                role: None,
                seq: None,
                time: None,
                time_unit: None,
            },
        )),
        None => entries.extend(options::entries(pool, |name| {
            mapped.iter().any(|m| m == name)
        })?),
    }
    Ok(entries)
}

fn read_schema_file(path: &Path) -> Result<SchemaFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--schema {}: cannot read it", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--schema {}: {}",
            path.display(),
            e.to_string().replace('\n', " ").trim()
        )
    })
}

/// Compiles the `.proto` files and adds the descriptor sets, on top of the
/// well-known types (so a set built without `--include_imports` still
/// resolves `google.protobuf.Timestamp`). Files already present are skipped.
fn build_pool(proto: &[PathBuf], includes: &[PathBuf], sets: &[PathBuf]) -> Result<DescriptorPool> {
    let mut pool = DescriptorPool::global();
    if !proto.is_empty() {
        let compiled = compile_protos(proto, includes)?;
        pool.decode_file_descriptor_set(compiled.as_slice())
            .map_err(|e| anyhow::anyhow!("--proto: {e}"))?;
    }
    for set in sets {
        let bytes = std::fs::read(set)
            .with_context(|| format!("--descriptor-set {}: cannot read it", set.display()))?;
        pool.decode_file_descriptor_set(bytes.as_slice()).map_err(|e| {
            anyhow::anyhow!(
                "--descriptor-set {}: {e}; write it with protoc --include_imports --descriptor_set_out=FILE (or buf build -o FILE)",
                set.display()
            )
        })?;
    }
    Ok(pool)
}

/// The encoded `FileDescriptorSet` of `proto` and everything they import.
fn compile_protos(proto: &[PathBuf], includes: &[PathBuf]) -> Result<Vec<u8>> {
    let mut includes = includes.to_vec();
    if includes.is_empty() {
        // Like protoc with no -I: each file's own directory.
        for p in proto {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !includes.contains(&dir) {
                includes.push(dir);
            }
        }
    }
    // protoc's resolution (the include paths, then the well-known types),
    // with mqttkit/options.proto from the binary in between.
    let mut resolver = protox::file::ChainFileResolver::new();
    for dir in includes {
        resolver.add(protox::file::IncludeFileResolver::new(dir));
    }
    resolver.add(options::Embedded);
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    for p in proto {
        compiler.open_file(p).map_err(|e| proto_error(&e))?;
    }
    Ok(compiler.encode_file_descriptor_set())
}

/// A protox error in one line, with file:line:column when it has a span.
fn proto_error(e: &protox::Error) -> anyhow::Error {
    use miette::Diagnostic;
    let file = e.file().unwrap_or("--proto");
    let place = e
        .labels()
        .and_then(|mut labels| labels.next())
        .and_then(|label| {
            let source = e.source_code()?;
            let contents = source.read_span(label.inner(), 0, 0).ok()?;
            Some(format!(
                ":{}:{}",
                contents.line() + 1,
                contents.column() + 1
            ))
        })
        .unwrap_or_default();
    let help = e.help().map(|h| format!("; {h}")).unwrap_or_default();
    anyhow::anyhow!("{file}{place}: {e}{help}")
}

fn rule(pool: &DescriptorPool, e: &TopicEntry) -> Result<Rule> {
    let template = Template::parse(&e.filter)?;
    if e.role.is_some() && !template.has_label(template::DEVICE) {
        bail!("filter {}: a role needs a {{device}} level (the identity the broker ties to a certificate); e.g. plant/{{site}}/{{device}}/metrics", e.filter);
    }
    let message = find_message(pool, &e.message)?;
    let seq = (e.seq.as_deref())
        .map(|name| seq_field(&message, name))
        .transpose()?;
    let time = (e.time.as_deref())
        .map(|name| time_field(&message, name, e.time_unit))
        .transpose()?;
    Ok(Rule {
        template,
        message,
        role: e.role,
        seq,
        time,
    })
}

/// The message named `name` (a leading `.` allowed), or an error with the
/// closest names the pool has.
pub fn find_message(pool: &DescriptorPool, name: &str) -> Result<MessageDescriptor> {
    let name = name.trim_start_matches('.');
    if let Some(m) = pool.get_message_by_name(name) {
        return Ok(m);
    }
    let mut known: Vec<(f64, String)> = (pool.all_messages())
        .filter(|m| !m.full_name().starts_with("google.protobuf."))
        .map(|m| {
            (
                strsim::jaro_winkler(name, m.full_name()),
                m.full_name().to_string(),
            )
        })
        .collect();
    known.sort_by(|a, b| b.0.total_cmp(&a.0));
    let closest: Vec<String> = known.into_iter().take(3).map(|(_, n)| n).collect();
    if closest.is_empty() {
        bail!("message {name}: the schema defines no message types; check the .proto files");
    }
    bail!(
        "message {name}: no such message type; closest: {}",
        closest.join(", ")
    )
}

fn field(message: &MessageDescriptor, name: &str, what: &str) -> Result<FieldDescriptor> {
    message.get_field_by_name(name).ok_or_else(|| {
        let fields: Vec<String> = message.fields().map(|f| f.name().to_string()).collect();
        anyhow::anyhow!(
            "{what} = {name:?}: {} has no such field; its fields: {}",
            message.full_name(),
            fields.join(", ")
        )
    })
}

fn seq_field(message: &MessageDescriptor, name: &str) -> Result<FieldDescriptor> {
    let f = field(message, name, "seq")?;
    if f.is_list() || f.is_map() || !is_integer(&f.kind()) {
        bail!(
            "seq = {name:?}: {}.{name} is {}, not an integer; map seq to an integer field (uint32, uint64, int64...)",
            message.full_name(),
            kind_name(&f)
        );
    }
    Ok(f)
}

fn time_field(
    message: &MessageDescriptor,
    name: &str,
    unit: Option<TimeUnit>,
) -> Result<TimeField> {
    let f = field(message, name, "time")?;
    if f.is_list() || f.is_map() {
        bail!(
            "time = {name:?}: {}.{name} is repeated; map time to one Timestamp or integer field",
            message.full_name()
        );
    }
    match (f.kind(), unit) {
        (Kind::Message(m), None) if m.full_name() == "google.protobuf.Timestamp" => {
            Ok(TimeField::Timestamp(f))
        }
        (Kind::Message(m), Some(_)) if m.full_name() == "google.protobuf.Timestamp" => {
            bail!("time_unit: {}.{name} is a Timestamp, which carries its own unit; remove time_unit", message.full_name())
        }
        (k, Some(unit)) if is_integer(&k) => Ok(TimeField::Integer(f, unit)),
        (k, None) if is_integer(&k) => {
            bail!("time = {name:?}: {}.{name} is an integer; say its unit with time_unit = \"ns\" | \"us\" | \"ms\" | \"s\"", message.full_name())
        }
        _ => bail!(
            "time = {name:?}: {}.{name} is {}; map time to a google.protobuf.Timestamp or an integer field",
            message.full_name(),
            kind_name(&f)
        ),
    }
}

pub(crate) fn is_integer(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64
            | Kind::Sfixed32
            | Kind::Sfixed64
    )
}

/// A field's type as a .proto would write it.
pub fn kind_name(f: &FieldDescriptor) -> String {
    let base = match f.kind() {
        Kind::Message(m) => m.full_name().to_string(),
        Kind::Enum(e) => e.full_name().to_string(),
        k => format!("{k:?}").to_lowercase(),
    };
    if f.is_map() {
        format!("a map ({base})")
    } else if f.is_list() {
        format!("repeated {base}")
    } else {
        base
    }
}

#[cfg(test)]
pub(crate) mod tests;
