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

/// The fields of a filled message whose values change from message to
/// message: all but strings, bytes and enums (the same in every message).
fn varying(msg: &DynamicMessage) -> Vec<Step> {
    let mut steps = Vec::new();
    for f in msg.descriptor().fields() {
        // Unset is no sign of constant: false, 0 and 0.0 are left out.
        if !chosen(&f) {
            continue;
        }
        if f.is_list() || f.is_map() {
            steps.push(Step::Whole(f));
            continue;
        }
        match f.kind() {
            Kind::String | Kind::Bytes | Kind::Enum(_) => {}
            Kind::Message(m) if m.full_name() == TIMESTAMP => steps.push(Step::Whole(f)),
            Kind::Message(_) if msg.has_field(&f) => {
                let inner = msg.get_field(&f).as_message().map(varying);
                steps.push(Step::Nested(f, inner.unwrap_or_default()));
            }
            // Past the depth limit: left empty, as in the first message.
            Kind::Message(_) => {}
            _ => steps.push(Step::Scalar(f)),
        }
    }
    steps
}

/// Makes one message after another for one device.
#[derive(Debug, Clone)]
pub struct Generator {
    rule: Rule,
    device: String,
    seq: u64,
    /// The last message and what varies in it (found from the first one):
    /// later messages are refreshed in place, strings, bytes and enums
    /// keeping their values. A fresh message each time cost the publisher
    /// more than its MQTT work.
    last: Option<(DynamicMessage, Vec<Step>)>,
    /// Encoded payloads are split off this buffer (no allocation each).
    buf: BytesMut,
}

/// One field that changes from message to message.
#[derive(Debug, Clone)]
enum Step {
    /// A scalar, recomputed from the seq.
    Scalar(FieldDescriptor),
    /// A nested message, refreshed by its own steps.
    Nested(FieldDescriptor, Vec<Step>),
    /// Rebuilt whole: Timestamps, lists and maps.
    Whole(FieldDescriptor),
}

impl Generator {
    pub fn new(rule: &Rule, device: &str, start_seq: u64) -> Self {
        Generator {
            rule: rule.clone(),
            device: device.to_string(),
            seq: start_seq,
            last: None,
            buf: BytesMut::new(),
        }
    }

    /// The next message's seq and encoded bytes.
    pub fn next_payload(&mut self, now_unix_nano: u64) -> (u64, Bytes) {
        let seq = self.seq;
        self.seq += 1;
        let (mut msg, steps) = match self.last.take() {
            Some((mut msg, steps)) => {
                self.refresh(&mut msg, &steps, seq, now_unix_nano, 0);
                (msg, steps)
            }
            None => {
                let mut msg = DynamicMessage::new(self.rule.message.clone());
                self.fill(&mut msg, seq, now_unix_nano, 0);
                let steps = varying(&msg);
                (msg, steps)
            }
        };
        if let Some(f) = &self.rule.seq {
            msg.set_field(f, integer_value(f, seq as i128));
        }
        if let Some(t) = &self.rule.time {
            set_time(&mut msg, t, now_unix_nano);
        }
        // BytesMut grows as needed; the hint saves a second length pass.
        self.buf.reserve(256);
        msg.encode(&mut self.buf)
            .expect("a BytesMut grows as needed");
        self.last = Some((msg, steps));
        (seq, self.buf.split().freeze())
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

    /// Sets what varies in `msg` (its `steps`) for message `seq`.
    fn refresh(&self, msg: &mut DynamicMessage, steps: &[Step], seq: u64, now: u64, depth: usize) {
        for step in steps {
            match step {
                Step::Scalar(f) => {
                    if let Some(v) = scalar(f, seq, &self.device) {
                        msg.set_field(f, v);
                    }
                }
                Step::Nested(f, inner) => {
                    if let Some(m) = msg.get_field_mut(f).as_message_mut() {
                        self.refresh(m, inner, seq, now, depth + 1);
                    }
                }
                Step::Whole(f) => {
                    if let Some(v) = self.value_for(f, seq, now, depth) {
                        msg.set_field(f, v);
                    }
                }
            }
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
    match t {
        TimeField::Timestamp(f) => {
            if let Kind::Message(m) = f.kind() {
                msg.set_field(f, Value::Message(timestamp(&m, ns)));
            }
        }
        TimeField::Integer(f, unit) => {
            let v = match unit {
                TimeUnit::Ns => ns,
                TimeUnit::Us => ns / 1_000,
                TimeUnit::Ms => ns / 1_000_000,
                TimeUnit::S => ns / 1_000_000_000,
            };
            msg.set_field(f, integer_value(f, v as i128));
        }
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
        // Refreshed in place, message after message, it is what a fresh
        // generator makes for the same seq and time.
        for _ in 0..3 {
            g.next_payload(1_700_000_000_789_000_000);
        }
        // (Both parities: a bool that starts false must still turn true.)
        for _ in 0..4 {
            let (seq, again) = g.next_payload(1_700_000_000_999_000_000);
            let fresh = Generator::new(rule, "pump-7", seq).next_payload(1_700_000_000_999_000_000);
            assert_eq!(again, fresh.1, "seq {seq}");
        }
        assert_eq!(b_json["site"], "pump-7-site");
    }
}
