//! MQTT 5 request/response for commands: `pub command --wait-reply` names
//! `devices/ID/replies` as the response topic and the command id as the
//! correlation data, and waits for the device's [`CommandReply`] there
//! (`sub command --reply` sends it). The subscription to the reply topic is
//! in place before the command goes out, so no reply can be missed.

use std::time::Duration;

use anyhow::{bail, Result};
use bytes::Bytes;
use prost::Message as _;
use rumqttc::QoS;
use serde::Serialize;

use crate::mqtt::poller::Poller;
use crate::mqtt::{reply_topic, Client, Endpoint, Event, Message, Props, Protocol};
use crate::proto::CommandReply;

/// One command's wait for its reply.
pub(crate) struct ReplyWait {
    pub topic: String,
    correlation: Bytes,
    timeout: Duration,
    device: String,
}

/// The reply as `--json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct ReplyJson {
    pub id: String,
    pub device_id: String,
    pub ok: bool,
    pub message: String,
    pub time_unix_nano: u64,
}

impl ReplyWait {
    pub fn new(endpoint: &Endpoint, device: &str, id: &str, timeout: Duration) -> Result<Self> {
        if endpoint.protocol == Protocol::V311 {
            bail!("--wait-reply: MQTT 3.1.1 has no response topics; drop -V 311 (MQTT 5 is the default)");
        }
        Ok(ReplyWait {
            topic: reply_topic(device),
            correlation: Bytes::copy_from_slice(id.as_bytes()),
            timeout,
            device: device.to_string(),
        })
    }

    /// Adds the response topic and correlation data to the command's properties.
    pub fn ask(&self, props: &mut Option<Props>) {
        let p = props.get_or_insert_with(Props::default);
        p.response_topic = Some(self.topic.clone());
        p.correlation_data = Some(self.correlation.clone());
    }

    /// Subscribes to the reply topic and waits for the SUBACK.
    pub async fn subscribe(&self, client: &Client, poller: &mut Poller) -> Result<()> {
        let filters = [(self.topic.clone(), QoS::AtLeastOnce)];
        if client.subscribe(&filters).await.is_err() {
            bail!(
                "--wait-reply: the connection closed before subscribing to {}",
                self.topic
            );
        }
        let describe = "the broker";
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match poller.next().await {
                    Ok(Event::SubAck { codes, .. }) => return Ok(codes),
                    Ok(_) => {}
                    Err(e) => bail!("{e}"),
                }
            }
        })
        .await;
        let codes = match answered {
            Ok(codes) => codes?,
            Err(_) => bail!(
                "--wait-reply: no SUBACK from {describe} for {} within 30 s",
                self.topic
            ),
        };
        if client.protocol() == Protocol::V311 {
            bail!("--wait-reply: the broker speaks only MQTT 3.1.1, which has no response topics");
        }
        if let Some(Err(reason)) = codes.first() {
            bail!("--wait-reply: the broker refused the subscription to {} ({reason}); its ACL must let this identity read the device's replies (`mqttkit broker up` renders devices/+/replies for the server identities)", self.topic);
        }
        Ok(())
    }

    /// The reply whose correlation data is ours, within the timeout.
    pub async fn wait(&self, poller: &mut Poller, early: Vec<Message>) -> Result<CommandReply> {
        if let Some(r) = early.iter().find_map(|m| self.reply_in(m)) {
            return r;
        }
        let got = tokio::time::timeout(self.timeout, async {
            loop {
                match poller.next().await {
                    Ok(Event::Message(m)) => {
                        if let Some(r) = self.reply_in(&m) {
                            return r;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => bail!("the connection was lost while waiting for the reply: {e}"),
                }
            }
        })
        .await;
        got.unwrap_or_else(|_| {
            bail!(
                "no reply from {} on {} within {:?}; is a `mqttkit sub command --reply --device-id {}` (or the device) running?",
                self.device,
                self.topic,
                self.timeout,
                self.device
            )
        })
    }

    /// `Some` when `m` answers our command.
    fn reply_in(&self, m: &Message) -> Option<Result<CommandReply>> {
        let props = m.props.as_deref()?;
        if m.topic != self.topic || props.correlation_data.as_ref() != Some(&self.correlation) {
            return None;
        }
        Some(CommandReply::decode(m.payload.as_ref()).map_err(|e| {
            anyhow::anyhow!("the reply on {} is not a CommandReply ({e})", self.topic)
        }))
    }
}

impl From<CommandReply> for ReplyJson {
    fn from(r: CommandReply) -> Self {
        ReplyJson {
            id: r.id,
            device_id: r.device_id,
            ok: r.ok,
            message: r.message,
            time_unix_nano: r.time_unix_nano,
        }
    }
}
