//! Topic templates: `plant/{site}/{device}/metrics`.
//!
//! A template is an MQTT topic whose levels may be `{name}` placeholders
//! (each a whole level). It gives three things from one string: the
//! subscription filter (`plant/+/+/metrics`), the labels of a received topic
//! (`site`, `device`), and a concrete topic for publishing once the labels are
//! known. `{device}` is the device level: the one the broker's ACL ties to a
//! certificate identity. A trailing `#` is kept as is (it matches, names
//! nothing).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Result};

/// The placeholder that names the device level.
pub const DEVICE: &str = "device";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Label(String),
    /// `+` written in the template: matches one level, names nothing.
    Any,
    /// `#`, last level only.
    Rest,
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    levels: Vec<Level>,
}

/// The `{name}` values of one topic, in template order.
pub type Labels = BTreeMap<String, String>;

impl Template {
    /// Parses `text`; errors name the level that is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            bail!("topic template is empty; write e.g. plant/{{site}}/{{device}}/metrics");
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            levels.push(Self::level(text, part, i + 1 == parts.len())?);
        }
        let mut seen = Vec::new();
        for l in &levels {
            if let Level::Label(name) = l {
                if seen.contains(&name) {
                    bail!("topic template {text}: {{{name}}} appears twice; give each level its own name");
                }
                seen.push(name);
            }
        }
        Ok(Template {
            source: text.to_string(),
            levels,
        })
    }

    fn level(text: &str, part: &str, last: bool) -> Result<Level> {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                bail!("topic template {text}: {{{name}}} is not a name; use letters, digits and _");
            }
            return Ok(Level::Label(name.to_string()));
        }
        if part.contains(['{', '}']) {
            bail!("topic template {text}: level {part:?} mixes text and a placeholder; a {{name}} must be a whole level");
        }
        match part {
            "+" => Ok(Level::Any),
            "#" if last => Ok(Level::Rest),
            "#" => bail!("topic template {text}: # may only be the last level"),
            _ if part.contains(['+', '#']) => {
                bail!("topic template {text}: level {part:?} holds a wildcard character; wildcards are whole levels")
            }
            _ => Ok(Level::Literal(part.to_string())),
        }
    }

    /// The MQTT subscription filter: every placeholder becomes `+`.
    pub fn filter(&self) -> String {
        self.render_with(|_| "+".to_string())
    }

    /// The filter with the labels that are given filled in, `+` elsewhere
    /// (e.g. one device's topics).
    pub fn filter_with(&self, labels: &Labels) -> String {
        self.render_with(|name| labels.get(name).cloned().unwrap_or_else(|| "+".into()))
    }

    fn render_with(&self, mut label: impl FnMut(&str) -> String) -> String {
        let parts: Vec<String> = (self.levels.iter())
            .map(|l| match l {
                Level::Literal(s) => s.clone(),
                Level::Label(name) => label(name),
                Level::Any => "+".into(),
                Level::Rest => "#".into(),
            })
            .collect();
        parts.join("/")
    }

    /// The names of the placeholders, in order.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Label(name) => Some(name.as_str()),
            _ => None,
        })
    }

    pub fn has_label(&self, name: &str) -> bool {
        self.labels().any(|l| l == name)
    }

    /// A concrete topic to publish to; every placeholder must be given and
    /// the template must have no wildcard.
    pub fn topic(&self, labels: &Labels) -> Result<String> {
        let mut parts = Vec::with_capacity(self.levels.len());
        for l in &self.levels {
            match l {
                Level::Literal(s) => parts.push(s.clone()),
                Level::Label(name) => match labels.get(name) {
                    Some(v) if is_level_value(v) => parts.push(v.clone()),
                    Some(v) => bail!("topic template {self}: {{{name}}} = {v:?} is not one topic level (no /, +, # or empty)"),
                    None => bail!("topic template {self}: no value for {{{name}}}; give it (e.g. --label {name}=VALUE)"),
                },
                Level::Any | Level::Rest => {
                    bail!("topic template {self} has a wildcard; it can be subscribed to, not published to")
                }
            }
        }
        Ok(parts.join("/"))
    }

    /// The labels of `topic` when it matches, else `None`.
    pub fn matches(&self, topic: &str) -> Option<Labels> {
        let mut labels = Labels::new();
        let mut parts = topic.split('/');
        for l in &self.levels {
            match l {
                Level::Rest => return Some(labels),
                _ => {
                    let part = parts.next()?;
                    match l {
                        Level::Literal(s) if s != part => return None,
                        Level::Label(name) => {
                            labels.insert(name.clone(), part.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
        parts.next().is_none().then_some(labels)
    }
}

/// Whether `v` can stand as one level of a topic to publish to.
pub fn is_level_value(v: &str) -> bool {
    !v.is_empty() && !v.contains(['/', '+', '#', '\0'])
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filter_labels_and_topic_come_from_one_template() {
        let t = Template::parse("plant/{site}/{device}/metrics").unwrap();
        assert_eq!(t.filter(), "plant/+/+/metrics");
        assert_eq!(t.labels().collect::<Vec<_>>(), ["site", "device"]);
        let l = t.matches("plant/osaka/pump-7/metrics").unwrap();
        assert_eq!(l, labels(&[("site", "osaka"), ("device", "pump-7")]));
        assert_eq!(t.topic(&l).unwrap(), "plant/osaka/pump-7/metrics");
        assert_eq!(
            t.filter_with(&labels(&[("device", "pump-7")])),
            "plant/+/pump-7/metrics"
        );
    }

    #[test]
    fn matching_is_by_whole_levels() {
        let t = Template::parse("plant/{site}/{device}/metrics").unwrap();
        assert!(t.matches("plant/osaka/pump-7/metrics/x").is_none());
        assert!(t.matches("plant/osaka/metrics").is_none());
        assert!(t.matches("plant/osaka/pump-7/status").is_none());
        let rest = Template::parse("fleet/{device}/#").unwrap();
        assert_eq!(rest.filter(), "fleet/+/#");
        assert_eq!(
            rest.matches("fleet/a/b/c").unwrap(),
            labels(&[("device", "a")])
        );
    }

    #[test]
    fn bad_templates_say_which_level() {
        for (t, says) in [
            ("", "empty"),
            ("a/{de-vice}", "not a name"),
            ("a/x{device}", "whole level"),
            ("a/#/b", "last level"),
            ("a/b+", "wildcard character"),
            ("{device}/{device}", "appears twice"),
        ] {
            let e = Template::parse(t).unwrap_err().to_string();
            assert!(e.contains(says), "{t}: {e}");
        }
    }

    #[test]
    fn publishing_needs_every_label_and_no_wildcard() {
        let t = Template::parse("plant/{site}/{device}/metrics").unwrap();
        let e = t.topic(&labels(&[("device", "d")])).unwrap_err();
        assert!(e.to_string().contains("no value for {site}"), "{e}");
        let e = t
            .topic(&labels(&[("device", "d"), ("site", "a/b")]))
            .unwrap_err();
        assert!(e.to_string().contains("not one topic level"), "{e}");
        let w = Template::parse("plant/+/{device}").unwrap();
        assert!(w.topic(&labels(&[("device", "d")])).is_err());
    }
}
