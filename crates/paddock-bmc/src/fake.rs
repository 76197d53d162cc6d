//! `FakeBmc`: an in-memory BMC for unit tests of what drives BMCs (the
//! host controller, fencing). It is a fake: no protocol is spoken. The
//! drivers themselves are tested against independent Redfish and IPMI
//! implementations.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{Bmc, BmcError, BootDevice, PowerAction, PowerState, Result};

/// What a [`FakeBmc`] holds, shared with the test that made it.
#[derive(Debug)]
pub struct FakeState {
    pub power: PowerState,
    pub boot_once: Option<BootDevice>,
    /// Every power action and boot override asked, in order.
    pub calls: Vec<String>,
    /// When set, every call fails with this (e.g. wrong credentials).
    pub fail: Option<fn() -> BmcError>,
}

/// An in-memory BMC; clones share one machine.
#[derive(Clone, Debug)]
pub struct FakeBmc(pub Arc<Mutex<FakeState>>);

impl FakeBmc {
    pub fn new(power: PowerState) -> Self {
        Self(Arc::new(Mutex::new(FakeState {
            power,
            boot_once: None,
            calls: Vec::new(),
            fail: None,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> Result<T> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fail) = g.fail {
            return Err(fail());
        }
        Ok(f(&mut g))
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .clone()
    }
}

#[async_trait]
impl Bmc for FakeBmc {
    async fn power_state(&self) -> Result<PowerState> {
        self.with(|s| s.power)
    }

    async fn power(&self, action: PowerAction) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("power {}", action.as_str()));
            s.power = match action {
                PowerAction::On | PowerAction::Cycle => PowerState::On,
                PowerAction::Off | PowerAction::SoftOff => PowerState::Off,
            };
        })
    }

    async fn boot_once(&self, device: BootDevice) -> Result<()> {
        self.with(|s| {
            s.calls.push(format!("boot once {device:?}"));
            s.boot_once = Some(device);
        })
    }
}
