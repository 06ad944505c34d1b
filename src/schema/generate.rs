//! Realistic messages of a user's telemetry type, for `pub telemetry
//! --schema` and load tests: numeric fields drift and vary from message to
//! message, the seq field counts, the time field is now, strings and enums
//! hold sensible values, nested messages are filled the same way.

use bytes::{Bytes, BytesMut};
use prost::Message;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

use super::{Rule, TimeField, TimeUnit};

/// Nested messages deeper than this are left empty (recursive types).
const MAX_DEPTH: usize = 4;

const TIMESTAMP: &str = "google.protobuf.Timestamp";

/// Whether the generator sets `f`: one member of each oneof, the first.
fn chosen(f: &FieldDescriptor) -> bool {
    match f.containing_oneof() {
        Some(o) => o.fields().next().map(|first| first.number()) == Some(f.number()),
        None => true,
    }
}

/// How one message (or nested message) is written: the fields that are
/// the same in every message (strings, bytes, enums) encoded once, then
/// each field that varies, encoded per message.
#[derive(Debug, Clone)]
struct Level {
    constant: Bytes,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    /// A number or bool, recomputed from the seq.
    Scalar(FieldDescriptor),
    /// A nested message, written by its own level.
    Nested(FieldDescriptor, Level),
    /// Built and encoded whole by prost-reflect: Timestamps, lists, maps.
    Whole(FieldDescriptor),
}

/// The plan of a filled message: what varies comes out of `constant`.
fn level_of(msg: &DynamicMessage) -> Level {
    let mut constant = msg.clone();
    let mut parts = Vec::new();
    for f in msg.descriptor().fields() {
        if !chosen(&f) {
            continue;
        }
        let part = if f.is_list() || f.is_map() {
            Part::Whole(f.clone())
        } else {
            match f.kind() {
                Kind::String | Kind::Bytes | Kind::Enum(_) => continue,
                Kind::Message(m) if m.full_name() == TIMESTAMP => Part::Whole(f.clone()),
                Kind::Message(_) => match msg.get_field(&f).as_message() {
                    Some(inner) if msg.has_field(&f) => Part::Nested(f.clone(), level_of(inner)),
                    // Past the depth limit: left empty, as in the first message.
                    _ => continue,
                },
                // Unset is no sign of constant: false, 0 and 0.0 are left out.
                _ => Part::Scalar(f.clone()),
            }
        };
        constant.clear_field(&f);
        parts.push(part);
    }
    Level {
        constant: Bytes::from(constant.encode_to_vec()),
        parts,
    }
}

/// Makes one message after another for one device.
#[derive(Debug, Clone)]
pub struct Generator {
    rule: Rule,
    device: String,
    seq: u64,
    /// How every message after the first is written (made from the first):
    /// building and encoding a `DynamicMessage` by reflection each time
    /// cost the publisher more than its MQTT work.
    plan: Option<Level>,
    /// Encoded payloads are split off this buffer (no allocation each).
    buf: BytesMut,
}

impl Generator {
    pub fn new(rule: &Rule, device: &str, start_seq: u64) -> Self {
        Generator {
            rule: rule.clone(),
            device: device.to_string(),
            seq: start_seq,
            plan: None,
            buf: BytesMut::new(),
        }
    }

    /// The next message's seq and encoded bytes.
    pub fn next_payload(&mut self, now_unix_nano: u64) -> (u64, Bytes) {
        let seq = self.seq;
        self.seq += 1;
        self.buf.reserve(256);
        match self.plan.take() {
            Some(plan) => {
                let mut out = std::mem::take(&mut self.buf);
                self.write(&plan, seq, now_unix_nano, 0, &mut out);
                self.buf = out;
                self.plan = Some(plan);
            }
            None => {
                let msg = self.message(seq, now_unix_nano);
                msg.encode(&mut self.buf)
                    .expect("a BytesMut grows as needed");
                self.plan = Some(level_of(&msg));
            }
        }
        (seq, self.buf.split().freeze())
    }

    /// Message `seq` built by reflection (the first one, and the reference
    /// the plan's output is tested against).
    fn message(&self, seq: u64, now: u64) -> DynamicMessage {
        let mut msg = DynamicMessage::new(self.rule.message.clone());
        self.fill(&mut msg, seq, now, 0);
        if let Some(f) = &self.rule.seq {
            msg.set_field(f, integer_value(f, seq as i128));
        }
        if let Some(t) = &self.rule.time {
            set_time(&mut msg, t, now);
        }
        msg
    }

    fn fill(&self, msg: &mut DynamicMessage, seq: u64, now: u64, depth: usize) {
        for f in msg.descriptor().fields() {
            if !chosen(&f) {
                continue;
            }
            if let Some(v) = self.value_for(&f, seq, now, depth) {
                msg.set_field(&f, v);
            }
        }
    }

    /// Writes message `seq` by `level`: its constant bytes, then each
    /// varying field. The wire order differs from a generated encoder's
    /// (constant fields first), which every protobuf parser accepts: the
    /// encoding spec lets fields come in any order.
    fn write(&self, level: &Level, seq: u64, now: u64, depth: usize, buf: &mut BytesMut) {
        use prost::bytes::BufMut;
        buf.put_slice(&level.constant);
        for part in &level.parts {
            match part {
                Part::Scalar(f) => {
                    let v = match depth {
                        0 => self.top_level_value(f, seq, now),
                        _ => None,
                    };
                    if let Some(v) = v.or_else(|| scalar(f, seq, &self.device)) {
                        write_scalar(f, &v, buf);
                    }
                }
                Part::Nested(f, inner) => {
                    let mut sub = BytesMut::new();
                    self.write(inner, seq, now, depth + 1, &mut sub);
                    prost::encoding::encode_key(
                        f.number(),
                        prost::encoding::WireType::LengthDelimited,
                        buf,
                    );
                    prost::encoding::encode_varint(sub.len() as u64, buf);
                    buf.put_slice(&sub);
                }
                Part::Whole(f) => {
                    // A Timestamp is `now`, the time field's value too.
                    if let Some(v) = self.value_for(f, seq, now, depth) {
                        let mut one = DynamicMessage::new(f.parent_message().clone());
                        one.set_field(f, v);
                        one.encode(buf).expect("a BytesMut grows as needed");
                    }
                }
            }
        }
    }

    /// The seq and (integer) time fields' values, set as in `message`.
    fn top_level_value(&self, f: &FieldDescriptor, seq: u64, now: u64) -> Option<Value> {
        if self
            .rule
            .seq
            .as_ref()
            .is_some_and(|s| s.number() == f.number())
        {
            return Some(integer_value(f, seq as i128));
        }
        match &self.rule.time {
            Some(t @ TimeField::Integer(tf, _)) if tf.number() == f.number() => time_value(t, now),
            _ => None,
        }
    }

    fn value_for(&self, f: &FieldDescriptor, seq: u64, now: u64, depth: usize) -> Option<Value> {
        if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                return None;
            };
            let key = entry.map_entry_key_field();
            let value = entry.map_entry_value_field();
            let k = match key.kind() {
                Kind::String => MapKey::String("a".into()),
                Kind::Bool => MapKey::Bool(true),
                _ => match scalar(&key, seq, &self.device)? {
                    Value::I32(v) => MapKey::I32(v),
                    Value::I64(v) => MapKey::I64(v),
                    Value::U32(v) => MapKey::U32(v),
                    Value::U64(v) => MapKey::U64(v),
                    _ => return None,
                },
            };
            let v = self.single(&value, seq, now, depth)?;
            return Some(Value::Map([(k, v)].into_iter().collect()));
        }
        let one = self.single(f, seq, now, depth)?;
        Some(if f.is_list() {
            Value::List(vec![one])
        } else {
            one
        })
    }

    fn single(&self, f: &FieldDescriptor, seq: u64, now: u64, depth: usize) -> Option<Value> {
        match f.kind() {
            Kind::Message(m) if m.full_name() == TIMESTAMP => {
                Some(Value::Message(timestamp(&m, now)))
            }
            Kind::Message(m) if depth < MAX_DEPTH => {
                let mut inner = DynamicMessage::new(m);
                self.fill(&mut inner, seq, now, depth + 1);
                Some(Value::Message(inner))
            }
            Kind::Message(_) => None,
            _ => scalar(f, seq, &self.device),
        }
    }
}

/// A value for a scalar field: numbers vary with seq around a base taken
/// from the field's number, so fields differ from each other.
fn scalar(f: &FieldDescriptor, seq: u64, device: &str) -> Option<Value> {
    let wave = ((seq as f64) / 10.0 + f.number() as f64).sin();
    let base = 10.0 + f.number() as f64 * 3.0;
    let real = base + wave * base * 0.05;
    Some(match f.kind() {
        Kind::Double => Value::F64((real * 100.0).round() / 100.0),
        Kind::Float => Value::F32(((real * 100.0).round() / 100.0) as f32),
        Kind::Bool => Value::Bool(seq % 2 == 0),
        Kind::String => Value::String(format!("{device}-{}", f.name())),
        Kind::Bytes => Value::Bytes(Bytes::from(device.as_bytes().to_vec())),
        Kind::Enum(e) => {
            // The first value that is not the zero "unspecified" one.
            let v = e
                .values()
                .find(|v| v.number() != 0)
                .or_else(|| e.values().next())?;
            Value::EnumNumber(v.number())
        }
        k if super::is_integer(&k) => integer_value(f, real.round() as i128),
        _ => return None,
    })
}

/// `n` as the integer type of `f` (clamped into its range).
fn integer_value(f: &FieldDescriptor, n: i128) -> Value {
    match f.kind() {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(n.clamp(i32::MIN as i128, i32::MAX as i128) as i32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(n.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(n.clamp(0, u32::MAX as i128) as u32),
        _ => Value::U64(n.clamp(0, u64::MAX as i128) as u64),
    }
}

fn timestamp(desc: &MessageDescriptor, ns: u64) -> DynamicMessage {
    let mut t = DynamicMessage::new(desc.clone());
    t.set_field_by_name("seconds", Value::I64((ns / 1_000_000_000) as i64));
    t.set_field_by_name("nanos", Value::I32((ns % 1_000_000_000) as i32));
    t
}

fn set_time(msg: &mut DynamicMessage, t: &TimeField, ns: u64) {
    let f = match t {
        TimeField::Timestamp(f) | TimeField::Integer(f, _) => f,
    };
    if let Some(v) = time_value(t, ns) {
        msg.set_field(f, v);
    }
}

/// The time field's value for `ns` (Unix nanoseconds).
fn time_value(t: &TimeField, ns: u64) -> Option<Value> {
    match t {
        TimeField::Timestamp(f) => match f.kind() {
            Kind::Message(m) => Some(Value::Message(timestamp(&m, ns))),
            _ => None,
        },
        TimeField::Integer(f, unit) => {
            let v = match unit {
                TimeUnit::Ns => ns,
                TimeUnit::Us => ns / 1_000,
                TimeUnit::Ms => ns / 1_000_000,
                TimeUnit::S => ns / 1_000_000_000,
            };
            Some(integer_value(f, v as i128))
        }
    }
}

/// Writes one scalar as a generated encoder would (prost's own encoding
/// functions, which prost-build's code calls too); a proto3 field without
/// presence is left out at its default value, as there.
fn write_scalar(f: &FieldDescriptor, v: &Value, buf: &mut BytesMut) {
    use prost::encoding as enc;
    if !f.supports_presence() && *v == f.default_value() {
        return;
    }
    let n = f.number();
    match (f.kind(), v) {
        (Kind::Double, Value::F64(x)) => enc::double::encode(n, x, buf),
        (Kind::Float, Value::F32(x)) => enc::float::encode(n, x, buf),
        (Kind::Bool, Value::Bool(x)) => enc::bool::encode(n, x, buf),
        (Kind::Int32, Value::I32(x)) => enc::int32::encode(n, x, buf),
        (Kind::Sint32, Value::I32(x)) => enc::sint32::encode(n, x, buf),
        (Kind::Sfixed32, Value::I32(x)) => enc::sfixed32::encode(n, x, buf),
        (Kind::Int64, Value::I64(x)) => enc::int64::encode(n, x, buf),
        (Kind::Sint64, Value::I64(x)) => enc::sint64::encode(n, x, buf),
        (Kind::Sfixed64, Value::I64(x)) => enc::sfixed64::encode(n, x, buf),
        (Kind::Uint32, Value::U32(x)) => enc::uint32::encode(n, x, buf),
        (Kind::Fixed32, Value::U32(x)) => enc::fixed32::encode(n, x, buf),
        (Kind::Uint64, Value::U64(x)) => enc::uint64::encode(n, x, buf),
        (Kind::Fixed64, Value::U64(x)) => enc::fixed64::encode(n, x, buf),
        // `scalar` makes no other pairs.
        _ => {}
    }
}

/// The seq of a decoded message (when the rule maps one).
pub fn seq_of(rule: &Rule, msg: &DynamicMessage) -> Option<u64> {
    let f = rule.seq.as_ref()?;
    match &*msg.get_field(f) {
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        _ => None,
    }
}

/// The device time of a decoded message in Unix nanoseconds (when the rule
/// maps a time field and the message carries it).
pub fn time_of(rule: &Rule, msg: &DynamicMessage) -> Option<i128> {
    match rule.time.as_ref()? {
        TimeField::Timestamp(f) => {
            let value = msg.get_field(f);
            let t = value.as_message()?;
            let seconds = t.get_field_by_name("seconds")?.as_i64()?;
            let nanos = t.get_field_by_name("nanos")?.as_i32()?;
            Some(seconds as i128 * 1_000_000_000 + nanos as i128)
        }
        TimeField::Integer(f, unit) => {
            let n: i128 = match &*msg.get_field(f) {
                Value::I32(v) => *v as i128,
                Value::I64(v) => *v as i128,
                Value::U32(v) => *v as i128,
                Value::U64(v) => *v as i128,
                _ => return None,
            };
            let per = match unit {
                TimeUnit::Ns => 1,
                TimeUnit::Us => 1_000,
                TimeUnit::Ms => 1_000_000,
                TimeUnit::S => 1_000_000_000,
            };
            Some(n * per)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::codec;
    use crate::schema::tests::plant_schema;

    #[test]
    fn generated_messages_count_vary_and_decode() {
        let (schema, _dir) = plant_schema();
        let rule = &schema.rules[0];
        let mut g = Generator::new(rule, "pump-7", 5);
        let (s0, a) = g.next_payload(1_700_000_000_123_000_000);
        let (s1, b) = g.next_payload(1_700_000_000_456_000_000);
        assert_eq!((s0, s1), (5, 6));
        let a_json = codec::decode(&rule.message, &a).unwrap();
        let b_json = codec::decode(&rule.message, &b).unwrap();
        assert_eq!(a_json["sequence"], "5");
        assert_eq!(a_json["sampledAt"], "2023-11-14T22:13:20.123Z");
        assert_eq!(a_json["site"], "pump-7-site");
        assert_eq!(a_json["state"], "STATE_RUNNING");
        assert!(a_json["env"]["temperatureC"].is_number(), "{a_json}");
        assert_ne!(a_json["env"], b_json["env"], "numbers vary");
        let msg = codec::decode_message(&rule.message, &b).unwrap();
        assert_eq!(seq_of(rule, &msg), Some(6));
        assert_eq!(time_of(rule, &msg), Some(1_700_000_000_456_000_000));
        assert_plan_writes_the_reference(rule, "pump-7");
        assert_eq!(b_json["site"], "pump-7-site");
    }

    /// Messages written by the plan decode into what `message` builds by
    /// reflection for the same seq and time (both seq parities: a bool
    /// that is false in the first message must still turn true).
    fn assert_plan_writes_the_reference(rule: &Rule, device: &str) {
        let mut g = Generator::new(rule, device, 41);
        for i in 0..6u64 {
            let now = 1_700_000_000_000_000_000 + i * 1_234_567;
            let (seq, bytes) = g.next_payload(now);
            let want = codec::to_json(&g.message(seq, now)).unwrap();
            let got = codec::decode(&rule.message, &bytes).unwrap();
            assert_eq!(got, want, "seq {seq}");
        }
    }

    #[test]
    fn the_plan_writes_a_flat_message_with_an_integer_time_as_reflection_does() {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "proto = [\"{}/proto/mqttkit.proto\"]\n[[topic]]\nfilter = \"devices/{{device}}/telemetry\"\nmessage = \"mqttkit.v1.Telemetry\"\nrole = \"telemetry\"\nseq = \"seq\"\ntime = \"time_unix_nano\"\ntime_unit = \"ns\"\n",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::write(dir.path().join("s.toml"), toml).unwrap();
        let schema = crate::schema::Schema::load(&crate::schema::SchemaSource {
            schema: Some(dir.path().join("s.toml")),
            ..Default::default()
        })
        .unwrap();
        assert_plan_writes_the_reference(&schema.rules[0], "device-001");
    }
}
