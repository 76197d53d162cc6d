//! Backups of a store: every key under a prefix at one revision, in a file
//! that names that revision and ends with a SHA-256 of all it holds; and
//! their restore into an empty store of either backend (which is also how
//! a management plane moves between the embedded store and etcd).
//!
//! Values are written as the store holds them: Secrets stay sealed, so a
//! backup is no more readable than the store, and restoring it needs the
//! same sealing key.
//!
//! Layout: the line `paddock-backup 1 <revision>\n`; then per key a
//! big-endian u32 key length, the key, a u32 value length, the value; then a
//! zero key length, a u64 count of keys and the SHA-256 of everything
//! before it.

use bytes::Bytes;
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Precondition, Revision, Store, StoreError};

const MAGIC: &str = "paddock-backup 1";
/// Largest key or value a backup holds (the API stores objects of at most
/// a few MiB).
const MAX_RECORD: u32 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("reading the store")]
    Store(#[from] StoreError),
    #[error("writing or reading the backup")]
    Io(#[from] std::io::Error),
    #[error("not a Paddock backup: {0}")]
    Format(String),
    #[error("the backup is damaged: its checksum does not match")]
    Checksum,
    #[error(
        "the target store is not empty: it holds {0:?} (restore only into an empty store, or a new etcd prefix)"
    )]
    NotEmpty(String),
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// The store revision every key was read at.
    pub revision: Revision,
    pub keys: u64,
}

/// A writer that hashes what passes through it.
struct Hashed<W> {
    out: W,
    hash: Context,
}

impl<W: AsyncWrite + Unpin> Hashed<W> {
    async fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.hash.update(b);
        self.out.write_all(b).await
    }
}

fn len(n: usize) -> Result<[u8; 4], BackupError> {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_RECORD)
        .map(u32::to_be_bytes)
        .ok_or_else(|| BackupError::Format(format!("a record of {n} bytes is too large")))
}

/// Writes every key under `prefix` as of one revision (the newest, read
/// page by page at the first page's revision, so writes that go on while
/// it runs are not in it).
pub async fn write<W: AsyncWrite + Unpin>(
    store: &dyn Store,
    prefix: &str,
    out: W,
) -> Result<BackupInfo, BackupError> {
    let first = store.list(prefix, None, Some(500), None).await?;
    let revision = first.revision;
    let mut w = Hashed {
        out,
        hash: Context::new(&SHA256),
    };
    w.put(format!("{MAGIC} {revision}\n").as_bytes()).await?;
    let mut keys = 0u64;
    let mut page = first;
    loop {
        for kv in &page.items {
            w.put(&len(kv.key.len())?).await?;
            w.put(kv.key.as_bytes()).await?;
            w.put(&len(kv.value.len())?).await?;
            w.put(&kv.value).await?;
            keys += 1;
        }
        if !page.more {
            break;
        }
        let after = page.items.last().map(|kv| kv.key.clone());
        page = store
            .list(prefix, after.as_deref(), Some(500), Some(revision))
            .await?;
    }
    w.put(&0u32.to_be_bytes()).await?;
    w.put(&keys.to_be_bytes()).await?;
    let digest = w.hash.finish();
    w.out.write_all(digest.as_ref()).await?;
    w.out.flush().await?;
    Ok(BackupInfo { revision, keys })
}

/// A reader that hashes what it reads.
struct Reading<R> {
    input: R,
    hash: Context,
}

impl<R: AsyncRead + Unpin> Reading<R> {
    async fn exact(&mut self, n: usize) -> Result<Vec<u8>, BackupError> {
        let mut buf = vec![0; n];
        self.input.read_exact(&mut buf).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                BackupError::Format("the file ends early (a backup cut short?)".into())
            } else {
                BackupError::Io(e)
            }
        })?;
        self.hash.update(&buf);
        Ok(buf)
    }

    async fn u32(&mut self) -> Result<u32, BackupError> {
        let b = self.exact(4).await?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if n > MAX_RECORD {
            return Err(BackupError::Format(format!("a record claims {n} bytes")));
        }
        Ok(n)
    }

    async fn header(&mut self) -> Result<Revision, BackupError> {
        let mut line = Vec::new();
        loop {
            let b = self.exact(1).await?;
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
            if line.len() > 64 {
                return Err(BackupError::Format("no backup header".into()));
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        line.strip_prefix(MAGIC)
            .and_then(|r| r.trim().parse().ok())
            .ok_or_else(|| BackupError::Format(format!("header {line:?}")))
    }
}

/// Reads a backup whole and checks it: its records, or why it is not one.
pub async fn read<R: AsyncRead + Unpin>(
    input: R,
) -> Result<(BackupInfo, Vec<(String, Bytes)>), BackupError> {
    let mut r = Reading {
        input,
        hash: Context::new(&SHA256),
    };
    let revision = r.header().await?;
    let mut records = Vec::new();
    loop {
        let klen = r.u32().await?;
        if klen == 0 {
            break;
        }
        let key = String::from_utf8(r.exact(klen as usize).await?)
            .map_err(|_| BackupError::Format("a key is not UTF-8".into()))?;
        let vlen = r.u32().await?;
        let value = Bytes::from(r.exact(vlen as usize).await?);
        records.push((key, value));
    }
    let count = r.exact(8).await?;
    let count = u64::from_be_bytes(
        count
            .try_into()
            .map_err(|_| BackupError::Format("count".into()))?,
    );
    let digest = r.hash.finish();
    let mut sum = [0u8; 32];
    r.input
        .read_exact(&mut sum)
        .await
        .map_err(|_| BackupError::Checksum)?;
    if sum != digest.as_ref() || count != records.len() as u64 {
        return Err(BackupError::Checksum);
    }
    Ok((
        BackupInfo {
            revision,
            keys: count,
        },
        records,
    ))
}

/// Writes `records` into `store`, which must hold nothing under `prefix`;
/// each key is created (a key that appears meanwhile fails the restore).
pub async fn restore(
    store: &dyn Store,
    prefix: &str,
    records: Vec<(String, Bytes)>,
) -> Result<u64, BackupError> {
    let existing = store.list(prefix, None, Some(1), None).await?;
    if let Some(kv) = existing.items.first() {
        return Err(BackupError::NotEmpty(kv.key.clone()));
    }
    let mut n = 0;
    for (key, value) in records {
        if !key.starts_with(prefix) {
            return Err(BackupError::Format(format!(
                "key {key:?} is outside {prefix:?}"
            )));
        }
        store.put(&key, value, Precondition::MustNotExist).await?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RedbStore, StoreOptions};

    #[tokio::test]
    async fn round_trip_and_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = RedbStore::open(&dir.path().join("a"), StoreOptions::default()).expect("open");
        for i in 0..1200 {
            s.put(
                &format!("/registry/x/{i:05}"),
                Bytes::from(vec![b'v'; i % 50]),
                Precondition::None,
            )
            .await
            .expect("put");
        }
        s.put("/leader/term", Bytes::from_static(b"t"), Precondition::None)
            .await
            .expect("put");
        let mut file = Vec::new();
        let info = write(&s, "/registry/", &mut file).await.expect("backup");
        assert_eq!(info.keys, 1200);
        let (read_info, records) = read(&file[..]).await.expect("read");
        assert_eq!(read_info, info);
        let t = RedbStore::open(&dir.path().join("b"), StoreOptions::default()).expect("open");
        assert_eq!(
            restore(&t, "/registry/", records.clone())
                .await
                .expect("restore"),
            1200
        );
        let got = t.list("/registry/", None, None, None).await.expect("list");
        assert_eq!(got.items.len(), 1200);
        assert!(t.get("/leader/term").await.expect("get").is_none());
        // Not into a store that holds objects.
        assert!(matches!(
            restore(&t, "/registry/", records).await,
            Err(BackupError::NotEmpty(_))
        ));
        // A flipped byte, and a file cut short.
        let mut bad = file.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(read(&bad[..]).await.is_err());
        assert!(matches!(
            read(&file[..file.len() - 40]).await,
            Err(BackupError::Format(_) | BackupError::Checksum)
        ));
        assert!(matches!(
            read(&b"hello\n"[..]).await,
            Err(BackupError::Format(_))
        ));
    }
}
