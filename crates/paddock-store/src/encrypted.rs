//! Encryption at rest: a [`Store`] wrapper that seals the values under
//! chosen key prefixes (Secrets) with AES-256-GCM before they reach the
//! backend, and opens them on every read and watch.
//!
//! A sealed value is `pdenc1:` + a 12-byte random nonce + ciphertext and tag;
//! the record's key is the associated data, so a sealed value copied to
//! another key does not open. Values without the prefix are read as they are
//! (written before encryption was turned on) and sealed on their next write.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::{
    DynStore, Event, Fence, KeyValue, Page, Precondition, Result, Revision, Store, StoreError,
};

const MAGIC: &[u8] = b"pdenc1:";
/// Length of a key file's key.
pub const KEY_LEN: usize = 32;

/// A 256-bit data-encryption key.
pub struct SealingKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let k = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(k),
        })
    }

    /// Fresh random key bytes from the system's generator.
    pub fn generate() -> Result<[u8; KEY_LEN]> {
        let mut b = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| StoreError::Backend("no system random number generator".into()))?;
        Ok(b)
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Result<Bytes> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Backend("no random nonce".into()))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut buf,
            )
            .map_err(|_| StoreError::Backend("sealing failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(Bytes::from(out))
    }

    /// Whether `stored`, the value of `key`, is plain or opens with this key.
    pub fn opens(&self, key: &str, stored: &Bytes) -> bool {
        self.open(key, stored).is_ok()
    }

    fn open(&self, key: &str, stored: &Bytes) -> Result<Bytes> {
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Ok(stored.clone());
        };
        if rest.len() < NONCE_LEN {
            return Err(StoreError::Corrupt(key.to_owned()));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| StoreError::Corrupt(key.to_owned()))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| StoreError::Corrupt(format!("{key} (does not decrypt with this key)")))?;
        Ok(Bytes::copy_from_slice(plain))
    }
}

/// Whether a stored value was sealed by an [`EncryptedStore`].
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

/// Seals values under `prefixes`, passes the rest through.
pub struct EncryptedStore {
    inner: DynStore,
    key: Arc<SealingKey>,
    prefixes: Vec<String>,
}

impl EncryptedStore {
    pub fn new(inner: DynStore, key: SealingKey, prefixes: Vec<String>) -> Self {
        Self {
            inner,
            key: Arc::new(key),
            prefixes,
        }
    }

    fn sealed(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn open_kv(&self, mut kv: KeyValue) -> Result<KeyValue> {
        if self.sealed(&kv.key) {
            kv.value = self.key.open(&kv.key, &kv.value)?;
        }
        Ok(kv)
    }
}

fn open_event(key: &SealingKey, prefixes: &[String], e: &Event) -> Result<Event> {
    let open = |kv: &KeyValue| -> Result<KeyValue> {
        let mut kv = kv.clone();
        if prefixes.iter().any(|p| kv.key.starts_with(p.as_str())) {
            kv.value = key.open(&kv.key, &kv.value)?;
        }
        Ok(kv)
    };
    Ok(match e {
        Event::Put { kv, prev } => Event::Put {
            kv: open(kv)?,
            prev: prev.as_ref().map(open).transpose()?,
        },
        Event::Delete { prev, revision } => Event::Delete {
            prev: open(prev)?,
            revision: *revision,
        },
    })
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open_kv(kv))
            .transpose()
    }

    async fn count(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        at: Option<Revision>,
    ) -> Result<usize> {
        self.inner.count(prefix, start_after, at).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        at: Option<Revision>,
    ) -> Result<Page> {
        let mut page = self.inner.list(prefix, start_after, limit, at).await?;
        page.items = page
            .items
            .into_iter()
            .map(|kv| self.open_kv(kv))
            .collect::<Result<_>>()?;
        Ok(page)
    }

    async fn put_fenced(
        &self,
        key: &str,
        value: Bytes,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<KeyValue> {
        let stored = if self.sealed(key) {
            self.key.seal(key, &value)?
        } else {
            value.clone()
        };
        let mut kv = self.inner.put_fenced(key, stored, pre, fence).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete_fenced(
        &self,
        key: &str,
        pre: Precondition,
        fence: Option<&Fence>,
    ) -> Result<(KeyValue, Revision)> {
        let (kv, rev) = self.inner.delete_fenced(key, pre, fence).await?;
        Ok((self.open_kv(kv)?, rev))
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<crate::Watch> {
        let w = self.inner.watch(prefix, after)?;
        let touches = self
            .prefixes
            .iter()
            .any(|p| p.starts_with(prefix) || prefix.starts_with(p.as_str()));
        if !touches {
            return Ok(w);
        }
        let (key, prefixes) = (self.key.clone(), self.prefixes.clone());
        Ok(w.map(move |e| open_event(&key, &prefixes, e)))
    }

    fn revision(&self) -> Revision {
        self.inner.revision()
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.inner.current_revision().await
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RedbStore, StoreOptions};

    #[tokio::test]
    async fn secrets_are_sealed_on_disk_and_open_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let raw: DynStore = Arc::new(RedbStore::open(dir.path(), StoreOptions::default()).unwrap());
        let key = SealingKey::generate().unwrap();
        let enc = EncryptedStore::new(
            raw.clone(),
            SealingKey::from_bytes(&key).unwrap(),
            vec!["/s/".into()],
        );
        let mut w = enc.watch("/", 0).unwrap();
        enc.put("/s/a", Bytes::from_static(b"hunter2"), Precondition::None)
            .await
            .unwrap();
        enc.put("/o/b", Bytes::from_static(b"plain"), Precondition::None)
            .await
            .unwrap();
        // The backend holds ciphertext for the secret, plaintext for the rest.
        let on_disk = raw.get("/s/a").await.unwrap().unwrap().value;
        assert!(on_disk.starts_with(MAGIC));
        assert!(!on_disk.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(&raw.get("/o/b").await.unwrap().unwrap().value[..], b"plain");
        // Reads, lists and watches see plaintext.
        assert_eq!(
            &enc.get("/s/a").await.unwrap().unwrap().value[..],
            b"hunter2"
        );
        let page = enc.list("/s/", None, None, None).await.unwrap();
        assert_eq!(&page.items[0].value[..], b"hunter2");
        let ev = w.next().await.unwrap().unwrap();
        assert!(matches!(&*ev, Event::Put { kv, .. } if &kv.value[..] == b"hunter2"));
        // Another key cannot open it, and a value moved to another key does not open.
        let other = EncryptedStore::new(
            raw.clone(),
            SealingKey::from_bytes(&SealingKey::generate().unwrap()).unwrap(),
            vec!["/s/".into()],
        );
        assert!(matches!(
            other.get("/s/a").await,
            Err(StoreError::Corrupt(_))
        ));
        raw.put("/s/moved", on_disk, Precondition::None)
            .await
            .unwrap();
        assert!(enc.get("/s/moved").await.is_err());
    }
}
