//! Certificate authorities and the certificates they sign: the management
//! plane's own CA and serving certificate today, each workload cluster's
//! CAs later. PEM in, PEM out.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

mod client;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("client certificate: {0}")]
    X509(String),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate authority that can sign certificates.
pub struct Ca {
    pair: CertPair,
    issuer: Issuer<'static, KeyPair>,
}

/// How long a CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a serving certificate is valid.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

fn validity(params: &mut CertificateParams, ttl: Duration) {
    let now = OffsetDateTime::now_utc();
    // Back-date a little for clock skew between hosts.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + ttl;
}

impl Ca {
    /// Makes a new self-signed CA.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let pair = CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            pair,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            pair: CertPair {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }
    pub fn key_pem(&self) -> &str {
        &self.pair.key_pem
    }

    /// The SHA-256 of the CA's SubjectPublicKeyInfo (DER), in hex: what
    /// `kubeadm join --discovery-token-ca-cert-hash sha256:<hash>` pins.
    pub fn spki_sha256(&self) -> Result<String, PkiError> {
        let key = KeyPair::from_pem(&self.pair.key_pem)?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let d = ring::digest::digest(&ring::digest::SHA256, &spki);
        Ok(d.as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A TLS server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        common_name: &str,
        sans: &[String],
        ttl: Duration,
    ) -> Result<CertPair, PkiError> {
        self.issue_leaf(
            common_name,
            sans,
            ttl,
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )
    }

    /// A serving certificate like [`Ca::issue_server`] for the key pair
    /// `key_pem` (PKCS#8 PEM) rather than a new one: a server re-issued its
    /// certificate at each start keeps the key that clients may have pinned.
    pub fn issue_server_for_key(
        &self,
        common_name: &str,
        sans: &[String],
        ttl: Duration,
        key_pem: &str,
    ) -> Result<CertPair, PkiError> {
        let params = leaf_params(
            common_name,
            sans,
            ttl,
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        self.sign_with(params, KeyPair::from_pem(key_pem)?)
    }

    /// A certificate that both serves and authenticates as a client, for
    /// the names and addresses given (an etcd member talks to its peers
    /// both ways with one).
    pub fn issue_peer(
        &self,
        common_name: &str,
        sans: &[String],
        ttl: Duration,
    ) -> Result<CertPair, PkiError> {
        self.issue_leaf(
            common_name,
            sans,
            ttl,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn issue_leaf(
        &self,
        common_name: &str,
        sans: &[String],
        ttl: Duration,
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<CertPair, PkiError> {
        self.sign(leaf_params(common_name, sans, ttl, usages)?)
    }

    /// A TLS client certificate: the user as CN, each group as an O (as
    /// Kubernetes reads them). Written with `x509-cert`, since rcgen keeps
    /// one value per attribute type.
    pub fn issue_client(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<CertPair, PkiError> {
        client::issue(&self.pair, user, groups, ttl)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertPair, PkiError> {
        self.sign_with(params, KeyPair::generate()?)
    }

    fn sign_with(&self, params: CertificateParams, key: KeyPair) -> Result<CertPair, PkiError> {
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A leaf certificate's parameters: its name, addresses, validity and uses.
fn leaf_params(
    common_name: &str,
    sans: &[String],
    ttl: Duration,
    usages: &[ExtendedKeyUsagePurpose],
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages.to_vec();
    validity(&mut params, ttl);
    Ok(params)
}

/// When the first certificate in `pem` expires, in Unix seconds; `None`
/// if there is none that parses.
pub fn not_after(pem: &str) -> Option<i64> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem.trim_start().as_bytes()).ok()?;
    let t = cert
        .tbs_certificate()
        .validity()
        .not_after
        .to_unix_duration();
    i64::try_from(t.as_secs()).ok()
}

/// A key pair for signing (the service-account key of a cluster): PKCS#8
/// private key and SubjectPublicKeyInfo public key, both PEM.
pub fn generate_signing_key() -> Result<CertPair, PkiError> {
    let key = KeyPair::generate()?;
    Ok(CertPair {
        cert_pem: key.public_key_pem(),
        key_pem: key.serialize_pem(),
    })
}

fn san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = s
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidSan(s.to_owned()))?;
    Ok(SanType::DnsName(name))
}

/// A kubeconfig of one cluster, one user and one context: `server` is
/// where to connect, `server_name` the name the server's certificate
/// carries (sent as SNI, `tls-server-name`), `cert` the user's client
/// certificate.
pub struct Kubeconfig<'a> {
    pub context: &'a str,
    pub user: &'a str,
    pub server: &'a str,
    pub server_name: &'a str,
    pub ca_pem: &'a str,
    pub cert: &'a CertPair,
}

impl Kubeconfig<'_> {
    /// The kubeconfig as YAML.
    pub fn render(&self) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (context, user) = (self.context, self.user);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: {}\n    tls-server-name: {}\n    certificate-authority-data: {}\n\
             users:\n- name: {user}@{context}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: {user}@{context}\ncurrent-context: {context}\n",
            self.server,
            self.server_name,
            b64(self.ca_pem),
            b64(&self.cert.cert_pem),
            b64(&self.cert.key_pem),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_and_signs() {
        let ca = Ca::generate("test-ca").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let srv = again
            .issue_server(
                "srv",
                &["localhost".into(), "127.0.0.1".into()],
                SERVING_VALIDITY,
            )
            .unwrap();
        assert!(srv.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(san("10.0.0.1"), Ok(SanType::IpAddress(_))));
        assert!(matches!(san("api.example"), Ok(SanType::DnsName(_))));
    }

    #[test]
    fn expiry_is_read_from_the_certificate() {
        let ca = Ca::generate("test-ca").unwrap();
        let srv = ca
            .issue_server("srv", &["localhost".into()], Duration::from_secs(3600))
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let t = not_after(&srv.cert_pem).unwrap();
        assert!((t - now - 3600).abs() < 120, "{t} vs {now}");
        assert!(not_after(ca.cert_pem()).unwrap() > now + 300 * 86400);
        assert_eq!(not_after("not a certificate"), None);
    }

    #[test]
    fn a_server_reissued_for_its_key_keeps_it() {
        let ca = Ca::generate("test-ca").unwrap();
        let first = ca
            .issue_server("srv", &["localhost".into()], SERVING_VALIDITY)
            .unwrap();
        let again = ca
            .issue_server_for_key(
                "srv",
                &["localhost".into(), "api.example".into()],
                SERVING_VALIDITY,
                &first.key_pem,
            )
            .unwrap();
        assert_eq!(again.key_pem, first.key_pem);
        assert_ne!(again.cert_pem, first.cert_pem);
        let public = |pem: &str| KeyPair::from_pem(pem).unwrap().public_key_raw().to_vec();
        assert_eq!(public(&again.key_pem), public(&first.key_pem));
        assert!(
            ca.issue_server_for_key("srv", &[], SERVING_VALIDITY, "not a key")
                .is_err()
        );
    }
}
