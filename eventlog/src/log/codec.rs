//! The storage form of an event: a versioned envelope encoded with bincode.
//!
//! The first encoded field is the schema version, so a reader can pick the decoder before it
//! decodes anything else. Version 1 is the current form; when an event's shape changes, the old
//! form stays here as `StoredEnvelopeV1` with an upcaster, and `fixtures/events/v1.bin` keeps
//! proving that version 1 logs decode.

use nixfleet_core::{Actor, Event, Seq, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The schema version written today.
pub const SCHEMA_VERSION: u16 = 1;

/// What is stored for each event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    /// Schema version (first, so it can be read alone).
    pub v: u16,
    /// Sequence number.
    pub seq: u64,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// Who caused it.
    pub actor: Actor,
    /// `machine:ID`, `rollout:ID`, …
    pub stream: String,
    /// SHA-256 of the previous record's bytes (zeros for the first).
    pub prev_hash: [u8; 32],
    /// The event.
    pub event: Event,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: Seq,
    /// When it was appended.
    pub at: Timestamp,
    /// Who caused it.
    pub actor: Actor,
    /// Its stream.
    pub stream: String,
    /// Hash of the previous record.
    pub prev_hash: [u8; 32],
    /// The event.
    pub event: Event,
}

impl Record {
    /// The envelope reducers read.
    pub fn envelope(&self) -> nixfleet_core::Envelope {
        nixfleet_core::Envelope {
            seq: self.seq,
            at: self.at,
            actor: self.actor.clone(),
            event: self.event.clone(),
        }
    }
    /// Consumes the record into the envelope reducers read.
    pub fn into_envelope(self) -> nixfleet_core::Envelope {
        nixfleet_core::Envelope {
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            event: self.event,
        }
    }
}

/// Largest record accepted when decoding. The biggest events (a release, a rollout plan, a
/// batch start) list every machine once and come from request bodies of at most 1 MiB; the cap only
/// stops a damaged length prefix from asking for an allocation of exabytes (found by the
/// `decode_record` fuzz target: the process aborted instead of naming the bad record).
pub const RECORD_BYTES_MAX: usize = 64 << 20;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes one record.
pub fn encode_record(
    seq: Seq,
    at: Timestamp,
    actor: &Actor,
    prev_hash: [u8; 32],
    event: &Event,
) -> Vec<u8> {
    encode_record_of(seq, at, actor, &event.stream(), prev_hash, event)
}

/// The stored bytes of a decoded record, for copying it into another log (`EventLog::import`):
/// the storage form is a deterministic encoding, so these are the bytes it was decoded from.
pub fn encode_stored(r: &Record) -> Vec<u8> {
    encode_record_of(r.seq, r.at, &r.actor, &r.stream, r.prev_hash, &r.event)
}

/// [`encode_record`] with the event's stream (`event.stream()`) already at hand, so the append
/// path, which needs it for the stream index too, makes it once. The same bytes.
pub(super) fn encode_record_of(
    seq: Seq,
    at: Timestamp,
    actor: &Actor,
    stream: &str,
    prev_hash: [u8; 32],
    event: &Event,
) -> Vec<u8> {
    // `&str` and `String` serialize alike (a length and the bytes).
    #[derive(Serialize)]
    struct Borrowed<'a> {
        v: u16,
        seq: u64,
        at_ms: u64,
        actor: &'a Actor,
        stream: &'a str,
        prev_hash: [u8; 32],
        event: &'a Event,
    }
    let env = Borrowed {
        v: SCHEMA_VERSION,
        seq: seq.0,
        at_ms: at.0,
        actor,
        stream,
        prev_hash,
        event,
    };
    bincode::serde::encode_to_vec(&env, config()).expect("encoding to a Vec cannot fail")
}

/// Decodes one record, upcasting older versions.
pub fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    let v = *bytes.first().ok_or("empty record")?;
    match u16::from(v) {
        1 => {
            if bytes.len() > RECORD_BYTES_MAX {
                return Err(format!(
                    "record of {} bytes is over the {RECORD_BYTES_MAX}-byte cap",
                    bytes.len()
                ));
            }
            let (env, used): (StoredEnvelope, usize) =
                bincode::serde::decode_from_slice(bytes, config().with_limit::<RECORD_BYTES_MAX>())
                    .map_err(|e| format!("undecodable record: {e}"))?;
            if used != bytes.len() {
                return Err(format!(
                    "{} trailing bytes after the record",
                    bytes.len() - used
                ));
            }
            Ok(Record {
                seq: Seq(env.seq),
                at: Timestamp(env.at_ms),
                actor: env.actor,
                stream: env.stream,
                prev_hash: env.prev_hash,
                event: env.event,
            })
        }
        other => Err(format!(
            "unknown schema version {other}; this build reads versions 1..={SCHEMA_VERSION}"
        )),
    }
}

/// A record's envelope without its event: what the archiver checks and indexes.
pub(super) struct RecordHead {
    pub(super) seq: u64,
    pub(super) stream: String,
    pub(super) prev_hash: [u8; 32],
}

/// Decodes only the envelope's fields before the event (the event, most of the bytes and of the
/// decoding work, is left as it is); the schema version is checked as in [`decode_record`].
pub(super) fn decode_record_head(bytes: &[u8]) -> Result<RecordHead, String> {
    #[derive(Deserialize)]
    struct Head {
        #[allow(dead_code)]
        v: u16,
        seq: u64,
        #[allow(dead_code)]
        at_ms: u64,
        #[allow(dead_code)]
        actor: Actor,
        stream: String,
        prev_hash: [u8; 32],
    }
    let v = *bytes.first().ok_or("empty record")?;
    if u16::from(v) != SCHEMA_VERSION || bytes.len() > RECORD_BYTES_MAX {
        // Anything unusual gets the full decoder's checks and error.
        let r = decode_record(bytes)?;
        return Ok(RecordHead {
            seq: r.seq.0,
            stream: r.stream,
            prev_hash: r.prev_hash,
        });
    }
    let (h, _): (Head, usize) =
        bincode::serde::decode_from_slice(bytes, config().with_limit::<RECORD_BYTES_MAX>())
            .map_err(|e| format!("undecodable record: {e}"))?;
    Ok(RecordHead {
        seq: h.seq,
        stream: h.stream,
        prev_hash: h.prev_hash,
    })
}

/// SHA-256 of a record's bytes.
pub fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nixfleet_core::ids::{KeyName, MachineId};

    #[test]
    fn the_head_decoder_reads_what_the_full_decoder_reads() {
        let actors = [
            Actor::System,
            Actor::Key(KeyName::parse("ops").unwrap()),
            Actor::Machine(MachineId::parse("web-1").unwrap()),
        ];
        for (i, actor) in actors.iter().enumerate() {
            let event = Event::ApiKeyRevoked {
                name: KeyName::parse(&format!("k{i}")).unwrap(),
            };
            let prev = [i as u8 + 1; 32];
            let bytes = encode_record(Seq(40 + i as u64), Timestamp(7), actor, prev, &event);
            let stream = event.stream();
            let of = encode_record_of(
                Seq(40 + i as u64),
                Timestamp(7),
                actor,
                &stream,
                prev,
                &event,
            );
            assert_eq!(of, bytes, "the same bytes with the stream given");
            let full = decode_record(&bytes).unwrap();
            let head = decode_record_head(&bytes).unwrap();
            assert_eq!(
                (head.seq, head.stream, head.prev_hash),
                (full.seq.0, full.stream, full.prev_hash)
            );
        }
        assert!(
            decode_record_head(&[9, 0, 0]).is_err(),
            "an unknown version"
        );
        assert!(decode_record_head(&[1, 5]).is_err(), "a cut record");
    }
}
