//! `paddock admin`: backups of the management plane and their restore,
//! which is also how it moves between the embedded store and etcd.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use paddock_store::DynStore;
use tokio::io::AsyncWriteExt;

use crate::store_args::StoreArgs;

#[derive(clap::Subcommand)]
pub enum AdminCommand {
    /// Take a backup of every object at one revision from a running server
    /// (administrators only). Secrets stay sealed in it: keep the server's
    /// secrets.key with it, apart.
    Backup {
        /// Where to write it (written beside, checked, then renamed).
        file: PathBuf,
    },
    /// Write a backup into an empty store, with every server stopped: the
    /// embedded store of --data-dir, or etcd with --store etcd. The backup's
    /// Secrets must open with the sealing key the servers will use.
    Restore {
        /// The backup to restore.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// The data directory of the server(s) that will run on the store.
        #[arg(long, env = "PADDOCK_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The sealing key (default `<data-dir>/secrets.key`).
        #[arg(long)]
        encryption_key_file: Option<PathBuf>,
    },
}

pub async fn run(cmd: AdminCommand, kubeconfig: Option<&Path>) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Backup { file } => backup(&file, kubeconfig).await,
        AdminCommand::Restore {
            file,
            store,
            data_dir,
            encryption_key_file,
        } => {
            let data_dir = data_dir.unwrap_or_else(paddock_cli::default_data_dir);
            let key_file = encryption_key_file.unwrap_or_else(|| data_dir.join("secrets.key"));
            restore(&file, &store, &data_dir, &key_file).await
        }
    }
}

async fn backup(file: &Path, kubeconfig: Option<&Path>) -> anyhow::Result<()> {
    let client = paddock_cli::connect(kubeconfig)
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let req = http::Request::get("/paddock/v1/backup")
        .body(Vec::new())
        .context("building the request")?;
    let body = client
        .request_stream(req)
        .await
        .context("asking the server for a backup")?;
    let mut body = std::pin::pin!(body);
    let partial = file.with_extension("partial");
    let mut out = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = futures::AsyncReadExt::read(&mut body, &mut buf)
            .await
            .context("receiving the backup")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
    }
    out.flush().await?;
    out.sync_all().await?;
    drop(out);
    let check = tokio::fs::File::open(&partial).await?;
    let (info, _) = paddock_store::backup::read(tokio::io::BufReader::new(check))
        .await
        .with_context(|| format!("checking {}", partial.display()))?;
    tokio::fs::rename(&partial, file)
        .await
        .with_context(|| format!("renaming to {}", file.display()))?;
    println!(
        "backup of {} objects at revision {} written to {}",
        info.keys,
        info.revision,
        file.display()
    );
    Ok(())
}

async fn restore(
    file: &Path,
    store: &StoreArgs,
    data_dir: &Path,
    key_file: &Path,
) -> anyhow::Result<()> {
    let input = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let (info, records) = paddock_store::backup::read(tokio::io::BufReader::new(input))
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let sealed: Vec<&(String, bytes::Bytes)> = records
        .iter()
        .filter(|(_, v)| paddock_store::encrypted::is_sealed(v))
        .collect();
    if let Some((k, _)) = sealed.first() {
        let raw = std::fs::read(key_file).with_context(|| {
            format!(
                "the backup's Secrets are sealed ({k} and others): the key is needed at {} (copy secrets.key from the backed-up server, or pass --encryption-key-file)",
                key_file.display()
            )
        })?;
        let key = paddock_store::SealingKey::from_bytes(&raw)
            .with_context(|| format!("{}: not a sealing key", key_file.display()))?;
        if let Some((k, _)) = sealed.iter().find(|(k, v)| !key.opens(k, v)) {
            anyhow::bail!(
                "{k} does not open with the key in {}: the backup was sealed with another key",
                key_file.display()
            );
        }
    }
    let target: DynStore = match store.config()? {
        paddock_apiserver::StoreConfig::Embedded => {
            let dir = data_dir.join("store");
            Arc::new(
                paddock_store::RedbStore::open(&dir, paddock_store::StoreOptions::default())
                    .with_context(|| {
                        format!(
                            "opening the store in {} (is a server running on it?)",
                            dir.display()
                        )
                    })?,
            )
        }
        paddock_apiserver::StoreConfig::Etcd(opts) => Arc::new(
            paddock_store::EtcdStore::connect(opts)
                .await
                .context("connecting to etcd")?,
        ),
    };
    let n = paddock_store::backup::restore(&*target, paddock_apiserver::backup::PREFIX, records)
        .await
        .context("restoring")?;
    println!(
        "restored {n} objects from the backup of revision {} (now at the store's revision {})",
        info.revision,
        target.revision()
    );
    Ok(())
}
