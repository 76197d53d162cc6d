//! The hypervisor as the reconciler sees it: start, stop and find the VM
//! of a directory, and ask whether its guest answers. [`Qemu`] runs real
//! QEMU processes (KVM or TCG); [`fake::FakeHypervisor`] stands in for it
//! in unit tests.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::accel::Accel;
use crate::jsonsock;
use crate::vm::{self, LaunchSpec, VmDir, VmError};

/// What the reconciler needs from a hypervisor.
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// The accelerator VMs run with.
    fn accel(&self) -> Accel;
    /// The process of the VM in `vm`, if it runs.
    fn running(&self, vm: &VmDir) -> Option<u32>;
    /// What the VM in `vm` was last launched with.
    fn launched(&self, vm: &VmDir) -> Option<LaunchSpec>;
    /// Starts the VM; its pid. The directory, seed and tap exist.
    async fn start(&self, spec: &LaunchSpec, vm: &VmDir) -> Result<u32, VmError>;
    /// Stops the VM: gracefully within `grace`, then by force.
    async fn stop(&self, vm: &VmDir, grace: Duration);
    /// Whether the guest agent answers.
    async fn guest_ready(&self, vm: &VmDir) -> bool;
}

/// Real QEMU processes, daemonized (they outlive the agent).
pub struct Qemu {
    pub binary: PathBuf,
    pub accel: Accel,
}

#[async_trait]
impl Hypervisor for Qemu {
    fn accel(&self) -> Accel {
        self.accel
    }
    fn running(&self, vm: &VmDir) -> Option<u32> {
        vm.pid()
    }
    fn launched(&self, vm: &VmDir) -> Option<LaunchSpec> {
        vm.launched()
    }
    async fn start(&self, spec: &LaunchSpec, vm: &VmDir) -> Result<u32, VmError> {
        vm::start(&self.binary, spec, vm, self.accel).await
    }
    async fn stop(&self, vm: &VmDir, grace: Duration) {
        vm::stop(vm, grace).await;
    }
    async fn guest_ready(&self, vm: &VmDir) -> bool {
        jsonsock::qga(&vm.qga(), self.accel.guest_agent_timeout())
            .await
            .is_ok()
    }
}

pub mod fake {
    //! A fake hypervisor: VMs are entries in memory with made-up pids.
    //! Starting and stopping can be made slow or to fail, a VM can be made
    //! to crash, and its guest to answer or not. It is a fake: no process
    //! runs.

    use std::collections::HashMap;
    use std::sync::{Mutex, MutexGuard};
    use std::time::Duration;

    use async_trait::async_trait;

    use super::Hypervisor;
    use crate::accel::Accel;
    use crate::vm::{LaunchSpec, VmDir, VmError};

    #[derive(Debug, Default)]
    struct State {
        /// Running VMs by uid: pid and spec.
        running: HashMap<String, (u32, LaunchSpec)>,
        /// What each VM was last launched with, running or not.
        launched: HashMap<String, LaunchSpec>,
        next_pid: u32,
        starts: usize,
        stops: usize,
        start_delay: Duration,
        stop_delay: Duration,
        fail_start: Option<String>,
        ignore_stop: bool,
        guest_ready: bool,
    }

    /// The fake hypervisor.
    #[derive(Debug, Default)]
    pub struct FakeHypervisor {
        state: Mutex<State>,
    }

    impl FakeHypervisor {
        pub fn new() -> Self {
            let h = Self::default();
            h.lock().guest_ready = true;
            h
        }
        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }
        /// Every start takes this long (the caller waits).
        pub fn set_start_delay(&self, d: Duration) {
            self.lock().start_delay = d;
        }
        /// Every stop takes this long (the caller waits).
        pub fn set_stop_delay(&self, d: Duration) {
            self.lock().stop_delay = d;
        }
        /// Starts fail with this message (or succeed again with `None`).
        pub fn set_fail_start(&self, why: Option<&str>) {
            self.lock().fail_start = why.map(str::to_owned);
        }
        /// Stops leave the VM running, as a hung QEMU would.
        pub fn set_ignore_stop(&self, ignore: bool) {
            self.lock().ignore_stop = ignore;
        }
        /// Whether guests answer their agent.
        pub fn set_guest_ready(&self, ready: bool) {
            self.lock().guest_ready = ready;
        }
        /// The VM of `uid` dies (as a QEMU that was killed).
        pub fn crash(&self, uid: &str) {
            self.lock().running.remove(uid);
        }
        /// The uids of running VMs, sorted.
        pub fn running_uids(&self) -> Vec<String> {
            let mut v: Vec<String> = self.lock().running.keys().cloned().collect();
            v.sort();
            v
        }
        /// The spec a running VM was started with.
        pub fn spec_of(&self, uid: &str) -> Option<LaunchSpec> {
            self.lock().running.get(uid).map(|(_, s)| s.clone())
        }
        /// How many starts and stops were asked for.
        pub fn counts(&self) -> (usize, usize) {
            let s = self.lock();
            (s.starts, s.stops)
        }
    }

    #[async_trait]
    impl Hypervisor for FakeHypervisor {
        fn accel(&self) -> Accel {
            Accel::Tcg
        }
        fn running(&self, vm: &VmDir) -> Option<u32> {
            self.lock().running.get(&vm.uid()).map(|(pid, _)| *pid)
        }
        fn launched(&self, vm: &VmDir) -> Option<LaunchSpec> {
            self.lock().launched.get(&vm.uid()).cloned()
        }
        async fn start(&self, spec: &LaunchSpec, vm: &VmDir) -> Result<u32, VmError> {
            let delay = {
                let mut s = self.lock();
                s.starts += 1;
                s.start_delay
            };
            tokio::time::sleep(delay).await;
            let mut s = self.lock();
            s.launched.insert(vm.uid(), spec.clone());
            if let Some(why) = &s.fail_start {
                return Err(VmError::Start(why.clone()));
            }
            s.next_pid += 1;
            let pid = 1000 + s.next_pid;
            s.running.insert(vm.uid(), (pid, spec.clone()));
            Ok(pid)
        }
        async fn stop(&self, vm: &VmDir, _grace: Duration) {
            let delay = {
                let mut s = self.lock();
                s.stops += 1;
                s.stop_delay
            };
            tokio::time::sleep(delay).await;
            let mut s = self.lock();
            if !s.ignore_stop {
                s.running.remove(&vm.uid());
            }
        }
        async fn guest_ready(&self, vm: &VmDir) -> bool {
            let s = self.lock();
            s.guest_ready && s.running.contains_key(&vm.uid())
        }
    }
}
