//! The client's messages that the server has not acknowledged.

use std::collections::VecDeque;

use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsguard_session::protocol::{ClientFrame, encode_binary};

use crate::message::Message;

/// A message waiting to be taken by the connection task, with the room it holds in the
/// unacknowledged buffer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) message: Message,
    pub(crate) permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    message: Message,
    // Dropped with the entry on acknowledgement, which frees room for a waiting sender.
    _permit: OwnedSemaphorePermit,
}

/// Numbered messages not yet acknowledged, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    entries: VecDeque<Entry>,
    next_id: u64,
}

impl Outbox {
    pub(crate) fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Numbers `out` and holds it; the frame to send.
    pub(crate) fn push(&mut self, out: Outgoing) -> WsMessage {
        let id = self.next_id;
        self.next_id += 1;
        let frame = frame(id, &out.message);
        self.entries.push_back(Entry {
            id,
            message: out.message,
            _permit: out.permit,
        });
        frame
    }

    /// Frees every message up to `id` (a cumulative ack, or a `session` frame's `last`).
    pub(crate) fn acknowledge(&mut self, id: u64) {
        while self.entries.front().is_some_and(|e| e.id <= id) {
            self.entries.pop_front();
        }
    }

    /// The frames of every message held, in order (the resend after a resume).
    pub(crate) fn frames(&self) -> impl Iterator<Item = WsMessage> + '_ {
        self.entries.iter().map(|e| frame(e.id, &e.message))
    }

    /// Numbers what is held from 1 again, for a new session.
    pub(crate) fn renumber(&mut self) {
        self.next_id = 1;
        for entry in &mut self.entries {
            entry.id = self.next_id;
            self.next_id += 1;
        }
    }

    /// Takes every message held out (freeing their room); the next id is 1.
    pub(crate) fn take(&mut self) -> Vec<Message> {
        self.next_id = 1;
        self.entries.drain(..).map(|e| e.message).collect()
    }

    #[cfg(test)]
    fn ids(&self) -> Vec<u64> {
        self.entries.iter().map(|e| e.id).collect()
    }
}

/// The wire frame of message `id`.
pub(crate) fn frame(id: u64, message: &Message) -> WsMessage {
    match message {
        Message::Text(text) => WsMessage::text(
            ClientFrame::Msg {
                id,
                data: Message::to_data(text),
            }
            .to_text(),
        ),
        Message::Binary(payload) => WsMessage::binary(encode_binary(id, payload)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    fn push(outbox: &mut Outbox, room: &Arc<Semaphore>, message: Message) -> WsMessage {
        let permit = room.clone().try_acquire_owned().unwrap();
        outbox.push(Outgoing { message, permit })
    }

    #[test]
    fn messages_are_numbered_from_1_and_framed_as_the_protocol_says() {
        let room = Arc::new(Semaphore::new(4));
        let mut outbox = Outbox::new();
        assert_eq!(
            push(&mut outbox, &room, Message::text("plain")),
            WsMessage::text(r#"{"type":"msg","id":1,"data":"plain"}"#)
        );
        assert_eq!(
            push(&mut outbox, &room, Message::text(r#"{"k":1}"#)),
            WsMessage::text(r#"{"type":"msg","id":2,"data":{"k":1}}"#)
        );
        assert_eq!(
            push(&mut outbox, &room, Message::binary(vec![7u8])),
            WsMessage::binary(vec![0, 0, 0, 0, 0, 0, 0, 3, 7])
        );
        assert_eq!(room.available_permits(), 1);
    }

    #[test]
    fn a_cumulative_ack_frees_room_and_what_is_left_is_resent_with_its_ids() {
        let room = Arc::new(Semaphore::new(3));
        let mut outbox = Outbox::new();
        for text in ["a", "b", "c"] {
            push(&mut outbox, &room, Message::text(text));
        }
        assert_eq!(room.available_permits(), 0);
        outbox.acknowledge(2);
        assert_eq!(room.available_permits(), 2);
        assert_eq!(outbox.ids(), [3]);
        assert_eq!(
            outbox.frames().collect::<Vec<_>>(),
            [WsMessage::text(r#"{"type":"msg","id":3,"data":"c"}"#)]
        );
        // An old or repeated ack changes nothing.
        outbox.acknowledge(1);
        assert_eq!(outbox.ids(), [3]);
    }

    #[test]
    fn a_new_session_renumbers_from_1_or_hands_the_messages_back() {
        let room = Arc::new(Semaphore::new(4));
        let mut outbox = Outbox::new();
        for text in ["a", "b", "c", "d"] {
            push(&mut outbox, &room, Message::text(text));
        }
        outbox.acknowledge(1);
        outbox.renumber();
        assert_eq!(outbox.ids(), [1, 2, 3]);
        assert_eq!(
            push(&mut outbox, &room, Message::text("e")),
            WsMessage::text(r#"{"type":"msg","id":4,"data":"e"}"#)
        );
        let taken = outbox.take();
        assert_eq!(taken.len(), 4);
        assert_eq!(taken[0], Message::text("b"));
        assert_eq!(room.available_permits(), 4);
        assert_eq!(
            push(&mut outbox, &room, Message::text("f")),
            WsMessage::text(r#"{"type":"msg","id":1,"data":"f"}"#)
        );
    }
}
