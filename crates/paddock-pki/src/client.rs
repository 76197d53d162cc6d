//! Client certificates with several values of one attribute (Kubernetes
//! groups are the subject's O values), signed by a CA's P-256 key.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::DecodePrivateKey;
use rcgen::{KeyPair, PublicKeyData};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::der::pem::LineEnding;
use x509_cert::der::{Decode, DecodePem, EncodePem};
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, der};

use crate::{CertPair, PkiError};

const ID_KP_CLIENT_AUTH: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2");

fn x509<E: std::fmt::Display>(e: E) -> PkiError {
    PkiError::X509(e.to_string())
}

/// RFC 4514 escaping of one attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = i == 0 && (c == '#' || c == ' ') || i + 1 == v.chars().count() && c == ' ';
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct ClientProfile {
    issuer: Name,
    subject: Name,
    /// The CA's subject key identifier, which the authority key identifier
    /// must repeat (rcgen derives it differently from x509-cert).
    issuer_key_id: Option<SubjectKeyIdentifier>,
}

impl BuilderProfile for ClientProfile {
    fn get_issuer(&self, _subject: &Name) -> Name {
        self.issuer.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut ext: Vec<Extension> = Vec::new();
        ext.push(
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            }
            .to_extension(tbs.subject(), &ext)?,
        );
        ext.push(
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyEncipherment)
                .to_extension(tbs.subject(), &ext)?,
        );
        ext.push(ExtendedKeyUsage(vec![ID_KP_CLIENT_AUTH]).to_extension(tbs.subject(), &ext)?);
        if let Some(SubjectKeyIdentifier(id)) = &self.issuer_key_id {
            ext.push(
                AuthorityKeyIdentifier {
                    key_identifier: Some(id.clone()),
                    authority_cert_issuer: None,
                    authority_cert_serial_number: None,
                }
                .to_extension(tbs.subject(), &ext)?,
            );
        }
        Ok(ext)
    }
}

pub(crate) fn issue(
    ca: &CertPair,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<CertPair, PkiError> {
    let ca_cert = Certificate::from_pem(ca.cert_pem.as_bytes()).map_err(x509)?;
    let signer = SigningKey::from_pkcs8_pem(&ca.key_pem).map_err(x509)?;
    let mut subject = format!("CN={}", escape(user));
    for g in groups {
        subject.push_str(&format!(",O={}", escape(g)));
    }
    let subject = Name::from_str(&subject).map_err(x509)?;
    let key = KeyPair::generate()?;
    let spki = SubjectPublicKeyInfoOwned::from_der(&key.subject_public_key_info()).map_err(x509)?;
    let now = SystemTime::now();
    let validity = Validity::new(
        Time::try_from(now - Duration::from_secs(300)).map_err(x509)?,
        Time::try_from(now + ttl).map_err(x509)?,
    );
    let mut serial: [u8; 16] = rand_bytes()?;
    serial[0] &= 0x7f;
    let tbs = ca_cert.tbs_certificate();
    let profile = ClientProfile {
        issuer: tbs.subject().clone(),
        subject,
        issuer_key_id: tbs
            .get_extension::<SubjectKeyIdentifier>()
            .map_err(x509)?
            .map(|(_, id)| id),
    };
    let builder = CertificateBuilder::new(
        profile,
        SerialNumber::new(&serial).map_err(x509)?,
        validity,
        spki,
    )
    .map_err(x509)?;
    let cert = builder.build::<_, DerSignature>(&signer).map_err(x509)?;
    Ok(CertPair {
        cert_pem: cert.to_pem(LineEnding::LF).map_err(x509)?,
        key_pem: key.serialize_pem(),
    })
}

fn rand_bytes() -> Result<[u8; 16], PkiError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| PkiError::X509("no system random number generator".into()))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape("#x "), "\\#x\\ ");
        assert_eq!(escape("system:masters"), "system:masters");
    }
}
