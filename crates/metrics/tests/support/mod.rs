//! A message type and services shared by the behaviour tests.
#![allow(dead_code)]

use std::borrow::Cow;
use std::sync::Arc;

use tower::{Service, ServiceExt};
use wsguard_config::MetricsConfig;
use wsguard_metrics::{ClientIdOptions, ClientRequest, ConnectionSlot};

/// A WebSocket-like message: optional client, size, optional connection slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Msg {
    pub(crate) client: Option<String>,
    pub(crate) size: Option<u64>,
    pub(crate) slot: Option<Arc<ConnectionSlot>>,
    pub(crate) fail: bool,
}

impl Msg {
    pub(crate) fn from(client: &str) -> Self {
        Self {
            client: Some(client.to_owned()),
            size: Some(10),
            ..Self::default()
        }
    }

    pub(crate) fn on(slot: &Arc<ConnectionSlot>, client: &str) -> Self {
        Self {
            slot: Some(slot.clone()),
            ..Self::from(client)
        }
    }

    pub(crate) fn failing(mut self) -> Self {
        self.fail = true;
        self
    }
}

impl ClientRequest for Msg {
    fn client_id(&self, _: &ClientIdOptions) -> Option<Cow<'_, str>> {
        self.client.as_deref().map(Cow::Borrowed)
    }

    fn size(&self) -> Option<u64> {
        self.size
    }

    fn connection_slot(&self) -> Option<&ConnectionSlot> {
        self.slot.as_deref()
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Answers `Ok(())`, or an error for a message marked failing.
pub(crate) async fn echo(msg: Msg) -> Result<(), BoxError> {
    if msg.fail {
        Err("handler failed".into())
    } else {
        Ok(())
    }
}

/// One call through `svc`, which must succeed.
pub(crate) async fn send<S>(svc: &mut S, msg: Msg)
where
    S: Service<Msg>,
    S::Error: std::fmt::Debug,
{
    svc.ready().await.unwrap().call(msg).await.unwrap();
}

/// Every call sampled, small table, short TTL.
pub(crate) fn config() -> MetricsConfig {
    MetricsConfig {
        sample_rate: 1.0,
        ..MetricsConfig::testing()
    }
}
