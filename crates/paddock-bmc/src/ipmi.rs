//! The IPMI 2.0 driver: RMCP+ over UDP ("lanplus": RAKP with HMAC-SHA1,
//! HMAC-SHA1-96 integrity, AES-CBC-128 confidentiality; cipher suite 3,
//! the one every IPMI 2.0 BMC must offer), through the `ipmi` crate.
//! Chassis status and control for power; Set System Boot Options
//! (parameter 5, boot flags) for the one-time boot device.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Bmc, BmcError, BootDevice, Credentials, Options, PowerAction, PowerState, Result};

/// Chassis network function and its Set System Boot Options command.
const NETFN_CHASSIS: u8 = 0x00;
const CMD_SET_BOOT_OPTIONS: u8 = 0x08;
/// Boot flags (parameter 5), byte 1: valid, for the next boot only.
const BOOT_FLAGS_VALID_ONCE: u8 = 0x80;
/// Boot flags, byte 2: the device selector (bits 5:2).
/// PXE is selector 1, the disk selector 2.
const BOOT_PXE: u8 = 0x04;
const BOOT_DISK: u8 = 0x08;

/// One machine's BMC over IPMI 2.0. The `ipmi` crate's client blocks (its
/// async one is not `Send`), so each call runs on tokio's blocking pool.
pub struct Ipmi {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    creds: Credentials,
    timeout: std::time::Duration,
    /// The open session, made on first use and again after a failure.
    client: std::sync::Mutex<Option<ipmi::BlockingClient>>,
}

impl Ipmi {
    pub fn new(host: String, port: u16, creds: Credentials, opts: &Options) -> Self {
        Self {
            inner: Arc::new(Inner {
                host,
                port,
                creds,
                timeout: opts.timeout,
                client: std::sync::Mutex::default(),
            }),
        }
    }

    /// Runs `f` on the session, opening one first if needed; a failed call
    /// drops the session so the next one starts afresh.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ipmi::BlockingClient) -> ipmi::Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.call(f))
            .await
            .map_err(|e| BmcError::Protocol(format!("the IPMI call died: {e}")))?
    }

    async fn chassis(&self, control: ipmi::ChassisControl) -> Result<()> {
        self.with(move |c| c.chassis_control(control)).await
    }
}

impl Inner {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn error(&self, e: ipmi::Error) -> BmcError {
        match e {
            ipmi::Error::AuthenticationFailed(why) => {
                tracing::debug!(why, "IPMI session refused");
                BmcError::Unauthorized {
                    user: self.creds.username.clone(),
                }
            }
            ipmi::Error::Timeout => BmcError::Unreachable {
                address: self.address(),
                reason: "no answer over RMCP+ (UDP)".into(),
            },
            ipmi::Error::Io(e) => BmcError::Unreachable {
                address: self.address(),
                reason: e.to_string(),
            },
            ipmi::Error::CompletionCode { completion_code } => BmcError::Refused {
                action: "the command".into(),
                reason: completion(completion_code),
            },
            ipmi::Error::Unsupported(what) => BmcError::Unsupported(what.into()),
            other => BmcError::Protocol(other.to_string()),
        }
    }

    fn target(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| BmcError::Unreachable {
                address: self.address(),
                reason: "the name does not resolve".into(),
            })
    }

    fn call<T>(&self, f: impl FnOnce(&ipmi::BlockingClient) -> ipmi::Result<T>) -> Result<T> {
        let mut g = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let c = match g.take() {
            Some(c) => c,
            None => ipmi::BlockingClient::builder(self.target()?)
                .username(&self.creds.username)
                .password(&self.creds.password)
                .privilege_level(ipmi::PrivilegeLevel::Administrator)
                .timeout(self.timeout.min(std::time::Duration::from_secs(2)))
                .retries(3)
                .build()
                .map_err(|e| self.error(e))?,
        };
        let out = f(&c).map_err(|e| self.error(e))?;
        // Kept only after a call that worked.
        *g = Some(c);
        Ok(out)
    }
}

/// What an IPMI completion code means (IPMI 2.0, table 5-2).
fn completion(code: u8) -> String {
    let what = match code {
        0xc0 => "node busy",
        0xc1 => "invalid command",
        0xc3 => "timeout while processing",
        0xc9 => "parameter out of range",
        0xcc => "invalid data field",
        0xd4 => "insufficient privilege",
        0xd5 => "not supported in the present state",
        0x80 => "parameter not supported",
        0x81 => "set in progress",
        _ => "unspecified error",
    };
    format!("completion code {code:#04x} ({what})")
}

#[async_trait]
impl Bmc for Ipmi {
    async fn power_state(&self) -> Result<PowerState> {
        let st = self.with(|c| c.get_chassis_status()).await?;
        Ok(if st.system_power_on {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn power(&self, action: PowerAction) -> Result<()> {
        let on = self.power_state().await?.is_on();
        let control = match (action, on) {
            (PowerAction::On, true) | (PowerAction::Off | PowerAction::SoftOff, false) => {
                return Ok(());
            }
            (PowerAction::On, false) | (PowerAction::Cycle, false) => ipmi::ChassisControl::PowerUp,
            (PowerAction::Off, true) => ipmi::ChassisControl::PowerDown,
            (PowerAction::SoftOff, true) => ipmi::ChassisControl::AcpiSoft,
            (PowerAction::Cycle, true) => ipmi::ChassisControl::PowerCycle,
        };
        self.chassis(control).await.map_err(|e| match e {
            BmcError::Refused { reason, .. } => BmcError::Refused {
                action: format!("chassis control {control:?}"),
                reason,
            },
            other => other,
        })?;
        tracing::info!(bmc = %self.inner.address(), ?control, "BMC power action");
        Ok(())
    }

    async fn boot_once(&self, device: BootDevice) -> Result<()> {
        let selector = match device {
            BootDevice::Pxe => BOOT_PXE,
            BootDevice::Disk => BOOT_DISK,
        };
        let data = [5, BOOT_FLAGS_VALID_ONCE, selector, 0, 0, 0];
        let r = self
            .with(move |c| c.send_raw(NETFN_CHASSIS, CMD_SET_BOOT_OPTIONS, &data))
            .await?;
        if r.completion_code != 0 {
            return Err(BmcError::Refused {
                action: format!("a one-time boot from {device:?}"),
                reason: completion(r.completion_code),
            });
        }
        Ok(())
    }

    async fn close(&self) {
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let c = inner
                .client
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(c) = c
                && let Err(e) = c.close_session()
            {
                tracing::debug!(error = %e, "closing the IPMI session");
            }
        })
        .await;
    }
}
