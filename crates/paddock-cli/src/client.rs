//! Finding the management API: `--kubeconfig`, `$KUBECONFIG`, or the local
//! server's admin kubeconfig.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::{CliError, CliResult, Exit};

/// The data directory a server uses when given none.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("paddock");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/paddock"),
        None => PathBuf::from("/var/lib/paddock"),
    }
}

async fn from_file(path: &Path) -> CliResult<Config> {
    let kc = Kubeconfig::read_from(path).map_err(|e| {
        CliError::new(
            Exit::Failure,
            format!("cannot read kubeconfig {}: {e}", path.display()),
        )
    })?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| {
            CliError::new(
                Exit::Failure,
                format!("invalid kubeconfig {}: {e}", path.display()),
            )
        })
}

pub async fn connect(kubeconfig: Option<&Path>) -> CliResult<Client> {
    let config = match kubeconfig {
        Some(p) => from_file(p).await?,
        None if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) => {
            Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|e| CliError::new(Exit::Failure, format!("invalid $KUBECONFIG: {e}")))?
        }
        None => {
            let local = default_data_dir().join("admin.kubeconfig");
            if !local.exists() {
                return Err(CliError::new(
                    Exit::Unreachable,
                    format!(
                        "no kubeconfig: pass --kubeconfig, set KUBECONFIG, or start `paddock server` here (it writes {})",
                        local.display()
                    ),
                ));
            }
            from_file(&local).await?
        }
    };
    Client::try_from(config)
        .map_err(|e| CliError::new(Exit::Failure, format!("cannot build a client: {e}")))
}
