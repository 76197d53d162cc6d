//! BMC addresses, written as Metal3 writes them:
//!
//! - `redfish://host[:port][/redfish/v1/Systems/ID]`: Redfish over HTTPS
//!   (`redfish+https://` says the same; `redfish+http://` is plain HTTP,
//!   for emulators and labs). Without a system path the BMC must manage
//!   exactly one system.
//! - `ipmi://host[:port]`: IPMI 2.0 over LAN (RMCP+), port 623 by default.

use std::str::FromStr;

use url::Url;

/// Where a BMC is and which protocol it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BmcAddress {
    Redfish {
        /// `https://host:port` (or `http://`).
        base: Url,
        /// The system's path, e.g. `/redfish/v1/Systems/1`, when given.
        system: Option<String>,
    },
    Ipmi {
        host: String,
        port: u16,
    },
}

/// Why a BMC address cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("BMC address {0:?} is not a URL: {1}")]
    NotAUrl(String, String),
    #[error(
        "BMC address {0:?}: unknown scheme {1:?}; use redfish://, redfish+https://, redfish+http:// or ipmi://"
    )]
    Scheme(String, String),
    #[error("BMC address {0:?} names no host")]
    NoHost(String),
    #[error("BMC address {0:?}: {1}")]
    Invalid(String, &'static str),
}

impl BmcAddress {
    /// The driver's name, as `Host.spec.bmc` shows it.
    pub fn driver(&self) -> &'static str {
        match self {
            Self::Redfish { .. } => "redfish",
            Self::Ipmi { .. } => "ipmi",
        }
    }
}

impl FromStr for BmcAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let u = Url::parse(s).map_err(|e| AddressError::NotAUrl(s.into(), e.to_string()))?;
        let host = match u.host_str() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => return Err(AddressError::NoHost(s.into())),
        };
        if !u.username().is_empty() || u.password().is_some() {
            return Err(AddressError::Invalid(
                s.into(),
                "credentials belong in the Secret, not in the address",
            ));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(AddressError::Invalid(
                s.into(),
                "a BMC address takes no query or fragment",
            ));
        }
        let web = |scheme: &str| -> Result<BmcAddress, AddressError> {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let base = Url::parse(&format!("{scheme}://{host}{port}"))
                .map_err(|e| AddressError::NotAUrl(s.into(), e.to_string()))?;
            let path = u.path().trim_end_matches('/');
            let system = match path {
                "" => None,
                p if p.starts_with("/redfish/v1/Systems/") && p.len() > 20 => Some(p.to_owned()),
                _ => {
                    return Err(AddressError::Invalid(
                        s.into(),
                        "the path, when given, is a system's: /redfish/v1/Systems/ID",
                    ));
                }
            };
            Ok(BmcAddress::Redfish { base, system })
        };
        match u.scheme() {
            "redfish" | "redfish+https" => web("https"),
            "redfish+http" => web("http"),
            "ipmi" => {
                if !matches!(u.path(), "" | "/") {
                    return Err(AddressError::Invalid(
                        s.into(),
                        "an IPMI address takes no path",
                    ));
                }
                Ok(BmcAddress::Ipmi {
                    host,
                    port: u.port().unwrap_or(623),
                })
            }
            other => Err(AddressError::Scheme(s.into(), other.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redfish_addresses() {
        let a: BmcAddress = "redfish://10.0.0.5/redfish/v1/Systems/1".parse().unwrap();
        assert_eq!(
            a,
            BmcAddress::Redfish {
                base: Url::parse("https://10.0.0.5").unwrap(),
                system: Some("/redfish/v1/Systems/1".into())
            }
        );
        let a: BmcAddress = "redfish+http://127.0.0.1:8000".parse().unwrap();
        assert_eq!(
            a,
            BmcAddress::Redfish {
                base: Url::parse("http://127.0.0.1:8000").unwrap(),
                system: None
            }
        );
        assert_eq!(a.driver(), "redfish");
    }

    #[test]
    fn ipmi_addresses() {
        let a: BmcAddress = "ipmi://bmc-7.rack2:6230".parse().unwrap();
        assert_eq!(
            a,
            BmcAddress::Ipmi {
                host: "bmc-7.rack2".into(),
                port: 6230
            }
        );
        let a: BmcAddress = "ipmi://10.0.0.9".parse().unwrap();
        assert!(matches!(a, BmcAddress::Ipmi { port: 623, .. }));
    }

    #[test]
    fn bad_addresses_say_why() {
        for (addr, want) in [
            ("10.0.0.5", "not a URL"),
            ("http://10.0.0.5", "unknown scheme \"http\""),
            ("ipmi://10.0.0.5/x", "no path"),
            ("redfish://10.0.0.5/x/y", "/redfish/v1/Systems/ID"),
            ("redfish://admin:pw@10.0.0.5", "in the Secret"),
            ("redfish://10.0.0.5?x=1", "no query"),
        ] {
            let e = addr.parse::<BmcAddress>().unwrap_err().to_string();
            assert!(e.contains(want), "{addr}: {e}");
        }
    }
}
