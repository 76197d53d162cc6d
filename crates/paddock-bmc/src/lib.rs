//! Baseboard management controllers: power and boot control of a machine
//! through its BMC, behind one trait ([`Bmc`]), whatever the protocol.
//!
//! - [`redfish`]: Redfish over HTTPS (sessions, the Systems collection,
//!   `ComputerSystem.Reset`, a one-time boot override).
//! - [`ipmi`]: IPMI 2.0 over LAN (RMCP+: chassis power, boot flags).
//! - [`fake`]: an in-memory BMC, named as a fake, for the controllers'
//!   unit tests.
//!
//! [`connect`] reads a BMC address (`redfish://host/…`, `ipmi://host`) and
//! gives a driver whose every call is bounded by a timeout.

use std::time::Duration;

use async_trait::async_trait;

pub mod address;
pub mod fake;
pub mod ipmi;
pub mod redfish;
mod tls;

pub use address::{AddressError, BmcAddress};

/// A machine's power as its BMC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    /// On its way to `On` (Redfish reports this; IPMI does not).
    PoweringOn,
    /// On its way to `Off`.
    PoweringOff,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "On",
            Self::Off => "Off",
            Self::PoweringOn => "PoweringOn",
            Self::PoweringOff => "PoweringOff",
        }
    }

    /// Whether the machine runs, or is about to.
    pub fn is_on(self) -> bool {
        matches!(self, Self::On | Self::PoweringOn)
    }
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do to a machine's power. Each is idempotent: `On` of a machine
/// that is on does nothing, and `Cycle` of a machine that is off turns it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    On,
    /// Off at once, as pulling the plug (what fencing needs).
    Off,
    /// Asks the operating system to shut down.
    SoftOff,
    /// Off and on again, at once.
    Cycle,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::SoftOff => "soft-off",
            Self::Cycle => "cycle",
        }
    }
}

impl std::str::FromStr for PowerAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "soft-off" => Ok(Self::SoftOff),
            "cycle" => Ok(Self::Cycle),
            other => Err(format!(
                "unknown power action {other:?}: use on, off, soft-off or cycle"
            )),
        }
    }
}

/// Where the machine boots from next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootDevice {
    /// The network (PXE).
    Pxe,
    /// Its own disk.
    Disk,
}

/// A BMC's user name and password. `Debug` does not show the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a BMC's TLS certificate is checked (Redfish over HTTPS).
#[derive(Clone, Debug, Default)]
pub enum TlsVerify {
    /// Against the system's trusted roots.
    #[default]
    SystemRoots,
    /// Against these CA certificates (PEM): a BMC's own or the site's CA.
    Ca(Vec<u8>),
    /// Not at all: the traffic is encrypted but the BMC is not authenticated.
    /// Only for BMCs with self-signed certificates on an isolated network.
    Insecure,
}

/// How a driver talks to its BMC.
#[derive(Clone, Debug)]
pub struct Options {
    /// The most any one call may take, retries inside it included.
    pub timeout: Duration,
    pub tls: TlsVerify,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(20),
            tls: TlsVerify::default(),
        }
    }
}

/// Why a BMC call failed.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("cannot reach the BMC at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the BMC refused the credentials of user {user:?}")]
    Unauthorized { user: String },
    #[error("the BMC's TLS certificate is not trusted: {0}")]
    Tls(String),
    #[error("the BMC did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the BMC refused {action}: {reason}")]
    Refused { action: String, reason: String },
    #[error("the BMC answered what Paddock does not understand: {0}")]
    Protocol(String),
    #[error("the BMC does not support {0}")]
    Unsupported(String),
}

impl BmcError {
    /// Whether trying again may help. Wrong credentials, an untrusted
    /// certificate and an unsupported operation stay wrong until someone
    /// changes something: a controller reports them and does not loop.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout(_) | Self::Refused { .. }
        )
    }

    /// A short CamelCase reason, for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "BMCUnreachable",
            Self::Unauthorized { .. } => "BMCUnauthorized",
            Self::Tls(_) => "BMCCertificateUntrusted",
            Self::Timeout(_) => "BMCTimeout",
            Self::Refused { .. } => "BMCRefused",
            Self::Protocol(_) => "BMCProtocolError",
            Self::Unsupported(_) => "BMCUnsupported",
        }
    }
}

pub type Result<T, E = BmcError> = std::result::Result<T, E>;

/// Power and boot control of one machine.
#[async_trait]
pub trait Bmc: Send + Sync {
    /// The machine's power now.
    async fn power_state(&self) -> Result<PowerState>;
    /// Changes the machine's power (idempotent, see [`PowerAction`]).
    async fn power(&self, action: PowerAction) -> Result<()>;
    /// Boots from `device` at the next start only.
    async fn boot_once(&self, device: BootDevice) -> Result<()>;
    /// Ends the driver's session on the BMC, if it holds one (BMCs have
    /// few session slots).
    async fn close(&self) {}
}

/// A driver for the BMC at `address`, each call bounded by `opts.timeout`.
pub fn connect(
    address: &str,
    credentials: Credentials,
    opts: Options,
) -> Result<Box<dyn Bmc>, ConnectError> {
    let timeout = opts.timeout;
    let inner: Box<dyn Bmc> = match address.parse::<BmcAddress>()? {
        BmcAddress::Redfish { base, system } => {
            Box::new(redfish::Redfish::new(base, system, credentials, &opts)?)
        }
        BmcAddress::Ipmi { host, port } => {
            Box::new(ipmi::Ipmi::new(host, port, credentials, &opts))
        }
    };
    Ok(Box::new(Timed { inner, timeout }))
}

/// Why no driver could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error(transparent)]
    Driver(#[from] BmcError),
}

/// Bounds every call of a driver by a timeout.
struct Timed {
    inner: Box<dyn Bmc>,
    timeout: Duration,
}

impl Timed {
    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| BmcError::Timeout(self.timeout))?
    }
}

#[async_trait]
impl Bmc for Timed {
    async fn power_state(&self) -> Result<PowerState> {
        self.bounded(self.inner.power_state()).await
    }

    async fn power(&self, action: PowerAction) -> Result<()> {
        self.bounded(self.inner.power(action)).await
    }

    async fn boot_once(&self, device: BootDevice) -> Result<()> {
        self.bounded(self.inner.boot_once(device)).await
    }

    async fn close(&self) {
        let _ = tokio::time::timeout(self.timeout, self.inner.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BMC that never answers.
    struct Silent;

    #[async_trait]
    impl Bmc for Silent {
        async fn power_state(&self) -> Result<PowerState> {
            std::future::pending().await
        }
        async fn power(&self, _: PowerAction) -> Result<()> {
            std::future::pending().await
        }
        async fn boot_once(&self, _: BootDevice) -> Result<()> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_is_bounded_by_the_timeout() {
        let b = Timed {
            inner: Box::new(Silent),
            timeout: Duration::from_secs(3),
        };
        assert!(matches!(b.power_state().await, Err(BmcError::Timeout(_))));
        assert!(matches!(
            b.power(PowerAction::On).await,
            Err(BmcError::Timeout(_))
        ));
        assert!(matches!(
            b.boot_once(BootDevice::Pxe).await,
            Err(BmcError::Timeout(_))
        ));
    }

    #[test]
    fn credentials_do_not_print_the_password() {
        let c = Credentials {
            username: "admin".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn wrong_credentials_are_not_retried() {
        assert!(
            !BmcError::Unauthorized {
                user: "admin".into()
            }
            .is_retryable()
        );
        assert!(BmcError::Timeout(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn power_actions_parse_with_a_clear_error() {
        assert_eq!("cycle".parse::<PowerAction>(), Ok(PowerAction::Cycle));
        let e = "reboot".parse::<PowerAction>().unwrap_err();
        assert!(e.contains("reboot") && e.contains("cycle"), "{e}");
    }
}
