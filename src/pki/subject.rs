//! `--subject "O=Acme,OU=Sensors"` and `--org`: the subject attributes a
//! CA and its certificates carry besides the CN (which is always the
//! identity's name, so it is refused here).

use rcgen::{DistinguishedName, DnType};

/// Subject attributes other than CN, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(pub Vec<(DnType, String)>);

impl Default for Subject {
    /// What mqttkit has always written: `O=mqttkit`.
    fn default() -> Self {
        Subject(vec![(DnType::OrganizationName, "mqttkit".into())])
    }
}

const KEYS: &[(&str, DnType)] = &[
    ("C", DnType::CountryName),
    ("ST", DnType::StateOrProvinceName),
    ("L", DnType::LocalityName),
    ("O", DnType::OrganizationName),
    ("OU", DnType::OrganizationalUnitName),
];

impl Subject {
    /// Parses `--subject` (comma separated `KEY=value`, `\,` for a comma in a
    /// value; KEY one of C, ST, L, O, OU) and `--org` (shorthand for O=).
    pub fn from_flags(subject: Option<&str>, org: Option<&str>) -> anyhow::Result<Option<Self>> {
        let mut attrs = match subject {
            Some(s) => parse(s)?,
            None => Vec::new(),
        };
        if let Some(o) = org {
            if o.trim().is_empty() {
                anyhow::bail!("--org: is empty; give an organization name, e.g. --org Acme");
            }
            if attrs.iter().any(|(t, _)| *t == DnType::OrganizationName) {
                anyhow::bail!("--org and O= in --subject both set the organization; keep one");
            }
            attrs.insert(0, (DnType::OrganizationName, o.trim().to_string()));
        }
        Ok((subject.is_some() || org.is_some()).then_some(Subject(attrs)))
    }

    /// The distinguished name `attrs, CN=cn`.
    pub fn with_cn(&self, cn: &str) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        for (t, v) in &self.0 {
            dn.push(t.clone(), v.as_str());
        }
        dn.push(DnType::CommonName, cn);
        dn
    }

    /// The organization, where one is set.
    pub fn org(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(t, _)| *t == DnType::OrganizationName)
            .map(|(_, v)| v.as_str())
    }

    /// The attributes of a certificate's subject other than CN (those
    /// `--subject` can set), e.g. to issue leaves like their CA.
    pub fn of_cert(cert: &x509_parser::certificate::X509Certificate<'_>) -> Self {
        let mut attrs = Vec::new();
        for rdn in cert.subject().iter() {
            for a in rdn.iter() {
                let oid: Vec<u64> = match a.attr_type().iter() {
                    Some(it) => it.collect(),
                    None => continue,
                };
                let Some(t) = KEYS
                    .iter()
                    .map(|(_, t)| t)
                    .find(|t| oid_of(t).is_some_and(|o| o == oid))
                else {
                    continue;
                };
                if let Ok(v) = a.as_str() {
                    attrs.push((t.clone(), v.to_string()));
                }
            }
        }
        Subject(attrs)
    }
}

fn oid_of(t: &DnType) -> Option<Vec<u64>> {
    let last = match t {
        DnType::CountryName => 6,
        DnType::StateOrProvinceName => 8,
        DnType::LocalityName => 7,
        DnType::OrganizationName => 10,
        DnType::OrganizationalUnitName => 11,
        _ => return None,
    };
    Some(vec![2, 5, 4, last])
}

fn parse(raw: &str) -> anyhow::Result<Vec<(DnType, String)>> {
    let mut attrs = Vec::new();
    for part in split_unescaped(raw) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            anyhow::bail!(
                "--subject '{raw}': '{part}' is not KEY=value; write e.g. \"O=Acme,OU=Sensors\""
            );
        };
        let k = k.trim().to_ascii_uppercase();
        let v = v.trim();
        if k == "CN" {
            anyhow::bail!(
                "--subject '{raw}': CN is the certificate's name (NAME or --client); drop CN="
            );
        }
        let Some((_, t)) = KEYS.iter().find(|(name, _)| *name == k) else {
            anyhow::bail!("--subject '{raw}': unknown attribute '{k}'; use C, ST, L, O or OU");
        };
        if v.is_empty() {
            anyhow::bail!("--subject '{raw}': {k} has an empty value; give one or drop {k}=");
        }
        if k == "C" && !(v.len() == 2 && v.chars().all(|c| c.is_ascii_alphabetic())) {
            anyhow::bail!(
                "--subject '{raw}': C={v} is not a two-letter country code (ISO 3166), e.g. C=JP"
            );
        }
        attrs.push((t.clone(), v.to_string()));
    }
    if attrs.is_empty() {
        anyhow::bail!("--subject '{raw}': no attributes; write e.g. \"O=Acme,OU=Sensors\"");
    }
    Ok(attrs)
}

/// Splits on commas not preceded by a backslash, unescaping `\,`.
fn split_unescaped(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                parts.last_mut().expect("non-empty").push(',');
                chars.next();
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("non-empty").push(c),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        let s = Subject::from_flags(Some("O=Acme\\, Inc.,OU=Sensors,C=JP"), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.org(), Some("Acme, Inc."));
        assert_eq!(s.0.len(), 3);
        let s = Subject::from_flags(Some("OU=x"), Some("Acme"))
            .unwrap()
            .unwrap();
        assert_eq!(s.org(), Some("Acme"));
        assert!(Subject::from_flags(None, None).unwrap().is_none());
        for (bad, want) in [
            ("CN=x", "drop CN="),
            ("X=1", "unknown attribute 'X'"),
            ("O", "is not KEY=value"),
            ("C=Japan", "two-letter"),
            ("O=", "empty value"),
        ] {
            let e = Subject::from_flags(Some(bad), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
