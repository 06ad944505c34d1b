//! The least-privilege AWS IoT policy for one thing: connect only as client id
//! NAME, publish only its telemetry, subscribe/receive only its commands.
//! The topics are exact (no `*`): mqttkit's own tree, or the user's schema
//! with every label given.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::schema::{template, Labels, Role, Schema};

/// The topics one thing may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTopics {
    pub publish: Vec<String>,
    /// Subscribed to (as filters) and received from.
    pub receive: Vec<String>,
}

impl PolicyTopics {
    /// `devices/NAME/telemetry` and `devices/NAME/replies` (answers to
    /// commands) out, `devices/NAME/commands` in.
    pub fn builtin(name: &str) -> Self {
        PolicyTopics {
            publish: vec![
                crate::mqtt::telemetry_topic(name),
                crate::mqtt::reply_topic(name),
            ],
            receive: vec![crate::mqtt::command_topic(name)],
        }
    }

    /// The schema's telemetry and command topics with `{device}` = `name`
    /// and the other labels from `labels` (each must be given: a policy
    /// names exact topics).
    pub fn from_schema(schema: &Schema, name: &str, labels: &Labels) -> Result<Self> {
        let mut all = labels.clone();
        all.insert(template::DEVICE.to_string(), name.to_string());
        let topics = |role: Role| -> Result<Vec<String>> {
            (schema.rules.iter().filter(|r| r.role == Some(role)))
                .map(|r| {
                    r.template.topic(&all).map_err(|e| {
                        anyhow::anyhow!("--schema: {e}; an IoT policy names exact topics, so give every label with --label NAME=VALUE")
                    })
                })
                .collect()
        };
        let t = PolicyTopics {
            publish: topics(Role::Telemetry)?,
            receive: topics(Role::Command)?,
        };
        if t.publish.is_empty() && t.receive.is_empty() {
            bail!("--schema: no [[topic]] has role = \"telemetry\" or \"command\", so the policy would allow no topic; give the device topics a role");
        }
        Ok(t)
    }

    /// One phrase for a confirmation prompt.
    pub fn describe(&self) -> String {
        format!(
            "publish {}, receive {}",
            or_none(&self.publish),
            or_none(&self.receive)
        )
    }
}

fn or_none(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

/// The policy document for thing `name` in `partition`/`region`/`account`.
pub fn document(
    partition: &str,
    region: &str,
    account: &str,
    name: &str,
    topics: &PolicyTopics,
) -> Value {
    let arn =
        |kind: &str, rest: &str| format!("arn:{partition}:iot:{region}:{account}:{kind}/{rest}");
    let arns = |kind: &str, list: &[String]| -> Vec<String> {
        list.iter().map(|t| arn(kind, t)).collect()
    };
    let mut statements =
        vec![json!({"Effect": "Allow", "Action": "iot:Connect", "Resource": arn("client", name)})];
    if !topics.publish.is_empty() {
        statements.push(json!({"Effect": "Allow", "Action": "iot:Publish", "Resource": arns("topic", &topics.publish)}));
    }
    if !topics.receive.is_empty() {
        statements.push(json!({"Effect": "Allow", "Action": "iot:Subscribe", "Resource": arns("topicfilter", &topics.receive)}));
        statements.push(json!({"Effect": "Allow", "Action": "iot:Receive", "Resource": arns("topic", &topics.receive)}));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// Whether two policy documents say the same thing (AWS may reformat JSON).
pub fn same_document(a: &str, b: &Value) -> bool {
    serde_json::from_str::<Value>(a).is_ok_and(|a| &a == b)
}

/// Reasons a document is broader than least privilege; empty when it is fine.
pub fn broad_grants(doc: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let as_list = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => vec![],
        }
    };
    for st in doc["Statement"].as_array().into_iter().flatten() {
        for action in as_list(&st["Action"]) {
            if action.contains('*') {
                found.push(format!("Action {action}"));
            }
        }
        for resource in as_list(&st["Resource"]) {
            if resource == "*" || resource.ends_with(":*") || resource.ends_with("/*") {
                found.push(format!("Resource {resource}"));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_privilege() {
        let d = document(
            "aws",
            "us-east-1",
            "123456789012",
            "dev-1",
            &PolicyTopics::builtin("dev-1"),
        );
        assert!(broad_grants(&d).is_empty());
        let text = d.to_string();
        assert!(text.contains("arn:aws:iot:us-east-1:123456789012:client/dev-1"));
        assert!(text.contains("topic/devices/dev-1/telemetry"));
        assert!(text.contains("topic/devices/dev-1/replies"));
        assert!(text.contains("topicfilter/devices/dev-1/commands"));
        assert!(!text.contains("iot:*"));
        assert!(same_document(&text, &d));
        let (schema, _dir) = crate::schema::tests::plant_schema();
        let e = PolicyTopics::from_schema(&schema, "dev-1", &Labels::new()).unwrap_err();
        assert!(e.to_string().contains("no value for {site}"), "{e}");
        let labels = Labels::from([("site".to_string(), "osaka".to_string())]);
        let t = PolicyTopics::from_schema(&schema, "dev-1", &labels).unwrap();
        assert_eq!(t.publish, ["plant/osaka/dev-1/metrics"]);
        assert_eq!(t.receive, ["plant/osaka/dev-1/commands"]);
        let d = document("aws", "us-east-1", "1", "dev-1", &t);
        assert!(broad_grants(&d).is_empty());
        assert!(d
            .to_string()
            .contains("topicfilter/plant/osaka/dev-1/commands"));
        let wide = json!({"Statement": [{"Action": "iot:*", "Resource": "*"}]});
        assert_eq!(broad_grants(&wide).len(), 2);
    }
}
