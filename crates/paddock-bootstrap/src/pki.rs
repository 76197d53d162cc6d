//! A workload cluster's PKI: its CA, etcd CA, front-proxy CA, the
//! service-account signing key and the kubeadm join token. Made once by the
//! cluster controller and kept in the Secret `<cluster>-pki`; never
//! regenerated while the cluster lives (its nodes trust it).

use std::collections::BTreeMap;
use std::time::Duration;

use paddock_pki::{Ca, CertPair, PkiError};

use crate::BootstrapError;

/// How long a node's API server certificate is valid.
pub const APISERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The `type` of the Secret that holds a cluster's PKI.
pub const SECRET_TYPE: &str = "paddock.io/cluster-pki";

/// The Secret that holds a cluster's PKI.
pub fn secret_name(cluster: &str) -> String {
    format!("{cluster}-pki")
}

/// Keys of the PKI Secret, named as the files kubeadm reads.
mod keys {
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const ETCD_CA_CRT: &str = "etcd-ca.crt";
    pub const ETCD_CA_KEY: &str = "etcd-ca.key";
    pub const FRONT_PROXY_CA_CRT: &str = "front-proxy-ca.crt";
    pub const FRONT_PROXY_CA_KEY: &str = "front-proxy-ca.key";
    pub const SA_KEY: &str = "sa.key";
    pub const SA_PUB: &str = "sa.pub";
    pub const JOIN_TOKEN: &str = "join-token";
}

/// Everything a cluster's nodes must share.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    pub ca: CertPair,
    pub etcd_ca: CertPair,
    pub front_proxy_ca: CertPair,
    /// Service-account signing key: `key_pem` private, `cert_pem` the public key.
    pub sa: CertPair,
    /// kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub join_token: String,
}

fn token_part(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

impl ClusterPki {
    /// New CAs and keys for `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let pair = |ca: Ca| CertPair {
            cert_pem: ca.cert_pem().to_owned(),
            key_pem: ca.key_pem().to_owned(),
        };
        Ok(Self {
            ca: pair(Ca::generate(&format!("{cluster}-ca"))?),
            etcd_ca: pair(Ca::generate(&format!("{cluster}-etcd-ca"))?),
            front_proxy_ca: pair(Ca::generate(&format!("{cluster}-front-proxy-ca"))?),
            sa: paddock_pki::generate_signing_key()?,
            join_token: format!("{}.{}", token_part(6), token_part(16)),
        })
    }

    /// The Secret's `stringData`.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        use keys::*;
        [
            (CA_CRT, &self.ca.cert_pem),
            (CA_KEY, &self.ca.key_pem),
            (ETCD_CA_CRT, &self.etcd_ca.cert_pem),
            (ETCD_CA_KEY, &self.etcd_ca.key_pem),
            (FRONT_PROXY_CA_CRT, &self.front_proxy_ca.cert_pem),
            (FRONT_PROXY_CA_KEY, &self.front_proxy_ca.key_pem),
            (SA_PUB, &self.sa.cert_pem),
            (SA_KEY, &self.sa.key_pem),
            (JOIN_TOKEN, &self.join_token),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect()
    }

    /// Reads the Secret's (decoded) `data`.
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, BootstrapError> {
        use keys::*;
        let get = |k: &str| -> Result<String, BootstrapError> {
            let v = data
                .get(k)
                .ok_or_else(|| BootstrapError::MissingKey(k.to_owned()))?;
            String::from_utf8(v.clone()).map_err(|_| BootstrapError::MissingKey(k.to_owned()))
        };
        let pair = |c: &str, k: &str| -> Result<CertPair, BootstrapError> {
            Ok(CertPair {
                cert_pem: get(c)?,
                key_pem: get(k)?,
            })
        };
        Ok(Self {
            ca: pair(CA_CRT, CA_KEY)?,
            etcd_ca: pair(ETCD_CA_CRT, ETCD_CA_KEY)?,
            front_proxy_ca: pair(FRONT_PROXY_CA_CRT, FRONT_PROXY_CA_KEY)?,
            sa: pair(SA_PUB, SA_KEY)?,
            join_token: get(JOIN_TOKEN)?,
        })
    }

    /// The cluster CA, ready to sign.
    pub fn cluster_ca(&self) -> Result<Ca, PkiError> {
        Ca::from_pem(&self.ca.cert_pem, &self.ca.key_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_secret_data() {
        let p = ClusterPki::generate("demo").unwrap();
        let data: BTreeMap<String, Vec<u8>> = p
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let q = ClusterPki::from_data(&data).unwrap();
        assert_eq!(q.ca.cert_pem, p.ca.cert_pem);
        assert_eq!(q.join_token, p.join_token);
        let (id, secret) = p.join_token.split_once('.').unwrap();
        assert_eq!((id.len(), secret.len()), (6, 16));
        let mut partial = data.clone();
        partial.remove("sa.key");
        assert!(matches!(
            ClusterPki::from_data(&partial),
            Err(BootstrapError::MissingKey(k)) if k == "sa.key"
        ));
    }
}
