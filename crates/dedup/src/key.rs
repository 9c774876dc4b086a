//! How a request's key is found: a client message id (a JSON field or a header) or the
//! payload's fingerprint, in the window of the request's scope.

mod json_field;

use wsguard_config::{DedupConfig, DedupScope, KeySource};

use crate::fingerprint::{Content, Fingerprint, Fingerprinter, Scope};
use crate::request::{DedupRequest, Payload};

use self::json_field::{FieldId, json_field_id};

/// The key under which `req` is remembered, or `None` if it passes unchecked.
///
/// `content` fingerprints payloads; `ids` hashes explicit ids (a JSON field or a header), with
/// a key every node of a shared store agrees on.
pub(crate) fn message_key<R: DedupRequest>(
    req: &R,
    cfg: &DedupConfig,
    content: &Fingerprinter,
    ids: &Fingerprinter,
) -> Option<Fingerprint> {
    let scope = match cfg.scope {
        DedupScope::Connection => req.connection_id().map(Scope::Connection),
        DedupScope::Client => req.client_id().map(Scope::Client),
        DedupScope::Global => None,
    }
    .unwrap_or(Scope::Global);
    let payload = req.payload().filter(|p| !p.as_bytes().is_empty());
    match cfg.key {
        KeySource::Fingerprint => {}
        KeySource::JsonField => {
            if let Some(Payload::Text(text)) = payload {
                match json_field_id(text.as_bytes(), &cfg.json_field) {
                    Some(FieldId::Str(id)) if !id.is_empty() => {
                        return Some(ids.key(scope, Content::IdStr(id.as_bytes())));
                    }
                    Some(FieldId::Int(id)) => {
                        return Some(ids.key(scope, Content::IdInt(id)));
                    }
                    _ => {}
                }
            }
        }
        KeySource::Header => {
            if let Some(id) = req.header(&cfg.header).filter(|v| !v.is_empty()) {
                return Some(ids.key(scope, Content::IdStr(id)));
            }
        }
    }
    if cfg.key != KeySource::Fingerprint && !cfg.fingerprint_when_missing {
        return None;
    }
    let body = match payload? {
        Payload::Text(text) => Content::Text(text.as_bytes()),
        Payload::Binary(bytes) => Content::Bytes(bytes),
    };
    Some(content.key(scope, body))
}
