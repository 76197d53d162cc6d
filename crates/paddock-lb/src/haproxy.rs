//! HAProxy: the configuration Paddock renders for the ingress of its
//! clusters, and a driver that keeps it in a file.
//!
//! Each cluster gets a frontend per protocol that listens on the same port
//! number as the gateway, and a backend with every gateway address as a
//! server, health-checked by TCP connect. TLS passes through (mode tcp):
//! the cluster's ingress controller terminates it.

use std::fmt::Write;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::{Frontend, LbError, LoadBalancer};

/// How the rendered configuration listens and checks.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address the frontends bind.
    pub bind_address: String,
    /// Seconds between health checks.
    pub check_interval_s: u32,
    /// Failed checks before a server is out, passed checks before it is back.
    pub fall: u32,
    pub rise: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bind_address: "0.0.0.0".into(),
            check_interval_s: 2,
            fall: 2,
            rise: 1,
        }
    }
}

fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A complete HAProxy configuration for `frontends`.
pub fn render(frontends: &[Frontend], o: &Options) -> String {
    let mut s = String::from(
        "# Rendered by Paddock: ingress of its workload clusters.\n\
         # Each frontend takes one cluster's traffic to the Paddock gateway's port\n\
         # for it; the gateway forwards to the cluster's healthy workers.\n\
         global\n    log stderr format short local0 notice\n\n\
         defaults\n    mode tcp\n    option dontlognull\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n    timeout check 2s\n",
    );
    let mut fes = frontends.to_vec();
    fes.sort();
    fes.dedup();
    for f in &fes {
        for (proto, port) in [("http", f.http_port), ("https", f.https_port)] {
            let name = ident(&format!("{}-{proto}", f.name));
            let _ = write!(
                s,
                "\nfrontend {name}\n    bind {}:{port}\n    default_backend {name}\n\
                 backend {name}\n    balance roundrobin\n    server gateway {}:{port} check inter {}s fall {} rise {}\n",
                o.bind_address, f.gateway_address, o.check_interval_s, o.fall, o.rise
            );
        }
    }
    s
}

/// Keeps a HAProxy configuration file current; runs `reload` after a change.
pub struct ConfigFile {
    pub path: PathBuf,
    pub options: Options,
    /// Program and arguments run after the file changed, such as
    /// `systemctl reload haproxy`.
    pub reload: Option<Vec<String>>,
}

#[async_trait]
impl LoadBalancer for ConfigFile {
    async fn sync(&self, frontends: &[Frontend]) -> Result<(), LbError> {
        let want = render(frontends, &self.options);
        if tokio::fs::read_to_string(&self.path).await.ok().as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        let err = |source| LbError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        tokio::fs::write(&tmp, &want).await.map_err(err)?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(err)?;
        tracing::info!(path = %self.path.display(), frontends = frontends.len(), "HAProxy configuration written");
        if let Some((prog, args)) = self.reload.as_ref().and_then(|r| r.split_first()) {
            let out = tokio::process::Command::new(prog)
                .args(args)
                .output()
                .await
                .map_err(|e| LbError::Reload {
                    command: prog.clone(),
                    detail: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(LbError::Reload {
                    command: prog.clone(),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(name: &str, port: u16) -> Frontend {
        Frontend {
            name: name.into(),
            gateway_address: "10.0.0.5".into(),
            http_port: port,
            https_port: port + 1,
        }
    }

    #[test]
    fn one_frontend_and_backend_per_cluster_and_protocol() {
        let s = render(
            &[
                fe("acme-demo", 32000),
                fe("acme-demo", 32000),
                fe("b.x", 32002),
            ],
            &Options::default(),
        );
        assert_eq!(s.matches("\nfrontend ").count(), 4, "{s}");
        assert!(
            s.contains("frontend acme-demo-http\n    bind 0.0.0.0:32000"),
            "{s}"
        );
        assert!(
            s.contains("server gateway 10.0.0.5:32001 check inter 2s fall 2 rise 1"),
            "{s}"
        );
        assert!(s.contains("frontend b_x-https"), "{s}");
    }

    #[tokio::test]
    async fn config_file_is_rewritten_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        let marker = dir.path().join("reloaded");
        let lb = ConfigFile {
            path: path.clone(),
            options: Options::default(),
            reload: Some(vec![
                "sh".into(),
                "-c".into(),
                format!("echo x >> {}", marker.display()),
            ]),
        };
        lb.sync(&[fe("a-b", 32000)]).await.unwrap();
        lb.sync(&[fe("a-b", 32000)]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
        lb.sync(&[]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2);
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains("\nfrontend ")
        );
    }
}
