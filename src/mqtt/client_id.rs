//! Client ids inside the connecting identity's namespace. `broker up` binds
//! client ids to identities (src/broker/plugin/mqttkit_bind.c): identity NAME
//! may use NAME and ids starting with "NAME-", server identities any id. So
//! the ids mqttkit makes up for a device's connection start with its name.

use super::{unique_client_id, Endpoint};

pub use crate::identity::client_id_belongs_to as belongs_to;

/// The identity the broker sees: the client certificate's CN, else the user name.
pub fn identity_of(endpoint: &Endpoint) -> Option<String> {
    let cn = (endpoint.identity.as_ref())
        .and_then(|(cert, _)| crate::identity::common_name_of_file(cert));
    cn.or_else(|| endpoint.username.clone())
}

/// `id` itself when it belongs to the endpoint's identity (or that is
/// unknown), else `IDENTITY-id`.
pub fn within(endpoint: &Endpoint, id: &str) -> String {
    match identity_of(endpoint) {
        Some(name) if !belongs_to(id, &name) => format!("{name}-{id}"),
        _ => id.to_string(),
    }
}

/// A fresh client id in the endpoint's identity's namespace: `NAME-PURPOSE-XXXXXXXX`.
pub fn unique_within(endpoint: &Endpoint, purpose: &str) -> String {
    unique_client_id(&within(endpoint, purpose))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same cases as the plugin's id_belongs_to (tests/broker.rs runs the plugin).
    #[test]
    fn ids_belong_to_the_name_and_its_dash_namespace() {
        assert!(belongs_to("device-001", "device-001"));
        assert!(belongs_to("device-001-sub-commands", "device-001"));
        assert!(!belongs_to("device-0011", "device-001"));
        assert!(!belongs_to("device-002-sub-commands", "device-001"));
        assert!(!belongs_to("mqttkit-sink-10db3266", "device-001"));
        assert!(!belongs_to("device", "device-001"));
    }
}
