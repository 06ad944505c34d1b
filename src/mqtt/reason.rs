//! MQTT 5 reason codes as the broker sent them, with their names from the
//! specification (section 2.4), so every command reports "0x87 not
//! authorized" the same way. 3.1.1 acknowledgements carry no reason: they
//! become [`Reason::SUCCESS`] (and prove only that the broker took the
//! packet, not that it let it through).

use std::fmt;

/// One reason code, and the reason string the broker may add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub code: u8,
    pub text: Option<String>,
}

impl Reason {
    pub const SUCCESS: Reason = Reason::new(0x00);
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;

    pub const fn new(code: u8) -> Reason {
        Reason { code, text: None }
    }

    pub fn with_text(code: u8, text: Option<String>) -> Reason {
        Reason { code, text }
    }

    /// Below 0x80: the packet did what it asked (MQTT 5, 2.4).
    pub fn is_success(&self) -> bool {
        self.code < 0x80
    }

    pub fn name(&self) -> &'static str {
        name(self.code)
    }
}

impl fmt::Display for Reason {
    /// `0x87 not authorized`, with the broker's reason string if it sent one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02x} {}", self.code, self.name())?;
        if let Some(text) = &self.text {
            // The broker's words: control characters escaped for the terminal.
            write!(f, " ({})", text.escape_debug())?;
        }
        Ok(())
    }
}

/// The specification's name of a reason code (lower case, as a phrase).
pub fn name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x01 => "granted QoS 1",
        0x02 => "granted QoS 2",
        0x04 => "disconnect with will message",
        0x10 => "no matching subscribers",
        0x11 => "no subscription existed",
        0x18 => "continue authentication",
        0x19 => "re-authenticate",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8a => "banned",
        0x8b => "server shutting down",
        0x8c => "bad authentication method",
        0x8d => "keep alive timeout",
        0x8e => "session taken over",
        0x8f => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x92 => "packet identifier not found",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9a => "retain not supported",
        0x9b => "QoS not supported",
        0x9c => "use another server",
        0x9d => "server moved",
        0x9e => "shared subscriptions not supported",
        0x9f => "connection rate exceeded",
        0xa0 => "maximum connect time",
        0xa1 => "subscription identifiers not supported",
        0xa2 => "wildcard subscriptions not supported",
        _ => "unknown reason code",
    }
}

/// The codes of rumqttc's MQTT 5 reason enums (it keeps no numbers).
pub(super) mod v5 {
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode as C, DisconnectReasonCode, PubAckReason as A, PubCompReason,
        PubRecReason as R, SubscribeReasonCode as S,
    };

    pub fn puback(r: A) -> u8 {
        match r {
            A::Success => 0x00,
            A::NoMatchingSubscribers => 0x10,
            A::UnspecifiedError => 0x80,
            A::ImplementationSpecificError => 0x83,
            A::NotAuthorized => 0x87,
            A::TopicNameInvalid => 0x90,
            A::PacketIdentifierInUse => 0x91,
            A::QuotaExceeded => 0x97,
            A::PayloadFormatInvalid => 0x99,
        }
    }

    pub fn pubrec(r: R) -> u8 {
        match r {
            R::Success => 0x00,
            R::NoMatchingSubscribers => 0x10,
            R::UnspecifiedError => 0x80,
            R::ImplementationSpecificError => 0x83,
            R::NotAuthorized => 0x87,
            R::TopicNameInvalid => 0x90,
            R::PacketIdentifierInUse => 0x91,
            R::QuotaExceeded => 0x97,
            R::PayloadFormatInvalid => 0x99,
        }
    }

    pub fn pubcomp(r: PubCompReason) -> u8 {
        match r {
            PubCompReason::Success => 0x00,
            PubCompReason::PacketIdentifierNotFound => 0x92,
        }
    }

    /// `None` for a granted subscription.
    pub fn suback(r: S) -> Option<u8> {
        Some(match r {
            S::Success(_) => return None,
            S::Failure | S::Unspecified => 0x80,
            S::ImplementationSpecific => 0x83,
            S::NotAuthorized => 0x87,
            S::TopicFilterInvalid => 0x8f,
            S::PkidInUse => 0x91,
            S::QuotaExceeded => 0x97,
            S::SharedSubscriptionsNotSupported => 0x9e,
            S::SubscriptionIdNotSupported => 0xa1,
            S::WildcardSubscriptionsNotSupported => 0xa2,
        })
    }

    pub fn connack(c: C) -> u8 {
        match c {
            C::Success => 0x00,
            // rumqttc's 3.1.1-style names; MQTT 5 has no such codes.
            C::RefusedProtocolVersion => 0x84,
            C::BadClientId => 0x85,
            C::ServiceUnavailable => 0x88,
            C::UnspecifiedError => 0x80,
            C::MalformedPacket => 0x81,
            C::ProtocolError => 0x82,
            C::ImplementationSpecificError => 0x83,
            C::UnsupportedProtocolVersion => 0x84,
            C::ClientIdentifierNotValid => 0x85,
            C::BadUserNamePassword => 0x86,
            C::NotAuthorized => 0x87,
            C::ServerUnavailable => 0x88,
            C::ServerBusy => 0x89,
            C::Banned => 0x8a,
            C::BadAuthenticationMethod => 0x8c,
            C::TopicNameInvalid => 0x90,
            C::PacketTooLarge => 0x95,
            C::QuotaExceeded => 0x97,
            C::PayloadFormatInvalid => 0x99,
            C::RetainNotSupported => 0x9a,
            C::QoSNotSupported => 0x9b,
            C::UseAnotherServer => 0x9c,
            C::ServerMoved => 0x9d,
            C::ConnectionRateExceeded => 0x9f,
        }
    }

    pub fn disconnect(c: DisconnectReasonCode) -> u8 {
        // rumqttc declares it #[repr(u8)] with the specification's values.
        c as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_as_the_specification_names_them() {
        assert_eq!(Reason::new(0x87).to_string(), "0x87 not authorized");
        let r = Reason::with_text(0x97, Some("too\nmany".into()));
        assert_eq!(r.to_string(), "0x97 quota exceeded (too\\nmany)");
        assert!(Reason::new(Reason::NO_MATCHING_SUBSCRIBERS).is_success());
        assert!(!Reason::new(0x80).is_success());
        use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as D;
        assert_eq!(v5::disconnect(D::SessionTakenOver), 0x8e);
        assert_eq!(
            name(v5::disconnect(D::SessionTakenOver)),
            "session taken over"
        );
    }
}
