//! The flags that say where the management plane's objects are kept, shared
//! by `paddock server` and `paddock admin restore`.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Embedded,
    Etcd,
}

#[derive(clap::Args)]
pub struct StoreArgs {
    /// Where objects are kept: `embedded` (a store in the data directory,
    /// one server) or `etcd` (an etcd cluster that several servers share).
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// Client URLs of the etcd members, comma-separated
    /// (`https://10.0.0.1:2379,https://10.0.0.2:2379`).
    #[arg(long, value_delimiter = ',', required_if_eq("store", "etcd"))]
    pub etcd_endpoints: Vec<String>,
    /// CA that signed the etcd members' certificates (PEM).
    #[arg(long)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate presented to etcd (PEM).
    #[arg(long, requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// Key of --etcd-cert-file (PEM).
    #[arg(long, requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// Every key Paddock writes to etcd starts with this.
    #[arg(long, default_value = "/paddock")]
    pub etcd_prefix: String,
}

impl StoreArgs {
    /// The store the flags name; every file is read here, so that a wrong
    /// path is named before anything starts.
    pub fn config(&self) -> anyhow::Result<paddock_apiserver::StoreConfig> {
        Ok(match self.store {
            StoreKind::Embedded => paddock_apiserver::StoreConfig::Embedded,
            StoreKind::Etcd => paddock_apiserver::StoreConfig::Etcd(self.etcd_options()?),
        })
    }

    fn etcd_options(&self) -> anyhow::Result<paddock_store::EtcdOptions> {
        let read = |flag: &str, p: &PathBuf| {
            std::fs::read(p).with_context(|| format!("{flag} {}: cannot read it", p.display()))
        };
        for e in &self.etcd_endpoints {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                anyhow::bail!("--etcd-endpoints {e:?}: not a URL such as https://10.0.0.1:2379");
            }
        }
        let tls = self
            .etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"));
        if tls && self.etcd_ca_file.is_none() {
            anyhow::bail!("--etcd-ca-file is required for https:// etcd endpoints");
        }
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.len() < 2 {
            anyhow::bail!(
                "--etcd-prefix {:?}: must start with / and name something (such as /paddock)",
                self.etcd_prefix
            );
        }
        let mut opts = paddock_store::EtcdOptions::new(self.etcd_endpoints.clone());
        opts.root = self.etcd_prefix.clone();
        opts.ca_pem = self
            .etcd_ca_file
            .as_ref()
            .map(|p| read("--etcd-ca-file", p))
            .transpose()?;
        if let (Some(c), Some(k)) = (&self.etcd_cert_file, &self.etcd_key_file) {
            opts.client_cert_pem =
                Some((read("--etcd-cert-file", c)?, read("--etcd-key-file", k)?));
        }
        Ok(opts)
    }
}
