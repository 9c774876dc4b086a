//! The node's subscription to its pub/sub channel: what other nodes tell it about sessions
//! attached here.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;

use super::Inner;
use crate::store::{RemoteEvent, RemoteListener};

pub(super) fn tell(listeners: &Mutex<Vec<RemoteListener>>, event: RemoteEvent) {
    let listeners = listeners.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for listener in listeners {
        listener(event);
    }
}

/// A message on this node's channel.
pub(super) fn parse_event(payload: &str) -> Option<RemoteEvent> {
    let mut words = payload.split(' ');
    let event = match (words.next(), words.next(), words.next()) {
        (Some("logged"), Some(token), Some(seq)) => RemoteEvent::Logged {
            session: token.parse().ok()?,
            seq: seq.parse().ok()?,
        },
        (Some("superseded"), Some(token), None) => RemoteEvent::Superseded {
            session: token.parse().ok()?,
        },
        _ => return None,
    };
    words.next().is_none().then_some(event)
}

/// Subscribes to this node's channel and hands what arrives to the listeners; subscribes again
/// (backing off to 5 s) whenever the connection drops, until the store is dropped.
pub(super) async fn subscribe_until_dropped(store: Weak<Inner>, mut alive: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0usize;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let url = inner.pubsub_urls[attempt % inner.pubsub_urls.len().max(1)].clone();
        let channel = inner.channel();
        let listeners = Arc::clone(&inner.listeners);
        let subscribed = inner.subscribed.clone();
        let ever_subscribed = Arc::clone(&inner.ever_subscribed);
        let timeout = inner.timeout * 10;
        drop(inner);
        attempt += 1;
        let pubsub = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, pubsub).await {
            Ok(Ok(mut pubsub)) => {
                delay = Duration::from_millis(100);
                subscribed.send_replace(true);
                ever_subscribed.store(true, Ordering::Release);
                // Whatever was published while not subscribed is lost: read every log again.
                tell(&listeners, RemoteEvent::Missed);
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                let payload = String::from_utf8_lossy(message.get_payload_bytes());
                                if let Some(event) = parse_event(&payload) {
                                    tell(&listeners, event);
                                }
                            }
                            None => break,
                        },
                        closed = alive.changed() => if closed.is_err() { return },
                    }
                }
                subscribed.send_replace(false);
                tracing::warn!("session store's subscription to Redis dropped; subscribing again");
            }
            Ok(Err(error)) => tracing::debug!(%error, "session store cannot subscribe yet"),
            Err(_) => tracing::debug!("session store's subscription timed out"),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            closed = alive.changed() => if closed.is_err() { return },
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::SessionToken;

    #[test]
    fn only_well_formed_channel_messages_are_events() {
        let token = SessionToken::generate();
        assert_eq!(
            parse_event(&format!("logged {token} 7")),
            Some(RemoteEvent::Logged {
                session: token,
                seq: 7
            })
        );
        assert_eq!(
            parse_event(&format!("superseded {token}")),
            Some(RemoteEvent::Superseded { session: token })
        );
        for junk in [
            "",
            "logged",
            "logged xyz 1",
            &format!("logged {token} -1"),
            &format!("logged {token} 1 2"),
            &format!("superseded {token} extra"),
            "superseded 00",
        ] {
            assert_eq!(parse_event(junk), None, "{junk:?}");
        }
    }
}
