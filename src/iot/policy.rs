//! The least-privilege AWS IoT policy for one thing: connect only as client id
//! NAME, publish only its telemetry, subscribe/receive only its commands.

use serde_json::{json, Value};

/// The policy document for thing `name` in `partition`/`region`/`account`.
pub fn document(partition: &str, region: &str, account: &str, name: &str) -> Value {
    let arn =
        |kind: &str, rest: &str| format!("arn:{partition}:iot:{region}:{account}:{kind}/{rest}");
    let telemetry = crate::mqtt::telemetry_topic(name);
    let commands = crate::mqtt::command_topic(name);
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": arn("client", name)},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": arn("topic", &telemetry)},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": arn("topicfilter", &commands)},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": arn("topic", &commands)},
        ]
    })
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
        let d = document("aws", "us-east-1", "123456789012", "dev-1");
        assert!(broad_grants(&d).is_empty());
        let text = d.to_string();
        assert!(text.contains("arn:aws:iot:us-east-1:123456789012:client/dev-1"));
        assert!(text.contains("topic/devices/dev-1/telemetry"));
        assert!(text.contains("topicfilter/devices/dev-1/commands"));
        assert!(!text.contains("iot:*"));
        assert!(same_document(&text, &d));
        let wide = json!({"Statement": [{"Action": "iot:*", "Resource": "*"}]});
        assert_eq!(broad_grants(&wide).len(), 2);
    }
}
