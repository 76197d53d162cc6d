//! Byte layout of stored records and history entries.

use bytes::Bytes;

use crate::{Event, KeyValue, StoreError};

/// A value record: create revision, mod revision (both LE u64), then the value.
pub(crate) fn encode_record(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(crate) fn decode_record(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 16 {
        return Err(StoreError::Corrupt(key.to_owned()));
    }
    let (c, rest) = raw.split_at(8);
    let (m, value) = rest.split_at(8);
    let create_revision = u64::from_le_bytes(
        c.try_into()
            .map_err(|_| StoreError::Corrupt(key.to_owned()))?,
    );
    let mod_revision = u64::from_le_bytes(
        m.try_into()
            .map_err(|_| StoreError::Corrupt(key.to_owned()))?,
    );
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        create_revision,
        mod_revision,
    })
}

fn put_chunk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    put_chunk(out, kv.key.as_bytes());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    put_chunk(out, &kv.value);
}

/// A history entry: tag (0 put, 1 put with prev, 2 delete), then records.
pub(crate) fn encode_event(ev: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    match ev {
        Event::Put { kv, prev: None } => {
            out.push(0);
            put_kv(&mut out, kv);
        }
        Event::Put { kv, prev: Some(p) } => {
            out.push(1);
            put_kv(&mut out, kv);
            put_kv(&mut out, p);
        }
        Event::Delete { prev, revision } => {
            out.push(2);
            out.extend_from_slice(&revision.to_le_bytes());
            put_kv(&mut out, prev);
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (h, t) = self.0.split_at_checked(8)?;
        self.0 = t;
        Some(u64::from_le_bytes(h.try_into().ok()?))
    }
    fn chunk(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (h, t) = self.0.split_at_checked(n)?;
        self.0 = t;
        Some(h)
    }
    fn kv(&mut self) -> Option<KeyValue> {
        let key = String::from_utf8(self.chunk()?.to_vec()).ok()?;
        let create_revision = self.u64()?;
        let mod_revision = self.u64()?;
        let value = Bytes::copy_from_slice(self.chunk()?);
        Some(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
        })
    }
}

/// The key of a history entry, read without decoding its values.
pub(crate) fn event_key(raw: &[u8]) -> Option<&str> {
    let (&tag, rest) = raw.split_first()?;
    let mut r = Reader(rest);
    if tag == 2 {
        r.u64()?;
    }
    std::str::from_utf8(r.chunk()?).ok()
}

pub(crate) fn decode_event(raw: &[u8]) -> Option<Event> {
    let (&tag, rest) = raw.split_first()?;
    let mut r = Reader(rest);
    match tag {
        0 => Some(Event::Put {
            kv: r.kv()?,
            prev: None,
        }),
        1 => Some(Event::Put {
            kv: r.kv()?,
            prev: Some(r.kv()?),
        }),
        2 => {
            let revision = r.u64()?;
            Some(Event::Delete {
                prev: r.kv()?,
                revision,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str, c: u64, m: u64) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Bytes::from(v.to_owned()),
            create_revision: c,
            mod_revision: m,
        }
    }

    #[test]
    fn event_keys_read_without_decoding() {
        let put = Event::Put {
            kv: kv("/a/1", "x", 1, 2),
            prev: Some(kv("/a/1", "w", 1, 1)),
        };
        let del = Event::Delete {
            prev: kv("/b/2", "y", 3, 3),
            revision: 4,
        };
        assert_eq!(event_key(&encode_event(&put)), Some("/a/1"));
        assert_eq!(event_key(&encode_event(&del)), Some("/b/2"));
        assert_eq!(event_key(&[2, 1]), None);
    }

    #[test]
    fn events_round_trip() {
        for ev in [
            Event::Put {
                kv: kv("/a", "1", 1, 1),
                prev: None,
            },
            Event::Put {
                kv: kv("/a", "2", 1, 2),
                prev: Some(kv("/a", "1", 1, 1)),
            },
            Event::Delete {
                prev: kv("/a", "2", 1, 2),
                revision: 3,
            },
        ] {
            assert_eq!(decode_event(&encode_event(&ev)), Some(ev));
        }
        assert_eq!(decode_event(&[1, 2, 3]), None);
    }

    #[test]
    fn records_round_trip() {
        let raw = encode_record(4, 9, b"hello");
        assert_eq!(decode_record("/k", &raw).unwrap(), kv("/k", "hello", 4, 9));
        assert!(decode_record("/k", &raw[..10]).is_err());
    }
}
