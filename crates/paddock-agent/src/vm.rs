//! One VM: its directory under the agent's state directory, the QEMU
//! command that runs it, and finding, starting and stopping that QEMU. QEMU
//! daemonizes, so VMs outlive the agent; the next agent finds them by their
//! pidfile and command line and adopts them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::jsonsock;

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Boot {
    /// Direct kernel boot, with a root disk when the image has one.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root_disk: Option<RootDisk>,
    },
    /// A qcow2 overlay on a cached base image, booted by the firmware.
    Disk { base: PathBuf, size_bytes: u64 },
}

/// A VM's root disk: a qcow2 overlay on a cached base image, kept across
/// restarts of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootDisk {
    pub base: PathBuf,
    pub size_bytes: u64,
}

impl Boot {
    /// The base image and size of the VM's root disk, if it has one.
    pub fn root_disk(&self) -> Option<(&Path, u64)> {
        match self {
            Boot::Kernel {
                root_disk: Some(r), ..
            } => Some((&r.base, r.size_bytes)),
            Boot::Kernel { .. } => None,
            Boot::Disk { base, size_bytes } => Some((base, *size_bytes)),
        }
    }
}

/// Everything a VM is launched with. Stored beside it: a VM whose launch
/// spec no longer matches is restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSpec {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub cpu: u32,
    pub memory_mib: u64,
    pub accel: String,
    pub boot: Boot,
    pub tap: String,
    pub mac: String,
}

/// The files of one VM.
#[derive(Debug, Clone)]
pub struct VmDir {
    pub dir: PathBuf,
}

impl VmDir {
    pub fn new(state: &Path, uid: &str) -> Self {
        Self {
            dir: state.join("vms").join(uid),
        }
    }
    pub fn uid(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn qga(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.img")
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    fn spec_file(&self) -> PathBuf {
        self.dir.join("launch.json")
    }

    pub fn launched(&self) -> Option<LaunchSpec> {
        serde_json::from_slice(&std::fs::read(self.spec_file()).ok()?).ok()
    }

    /// The running QEMU of this VM, if any: the pidfile's process, and only if
    /// its command line names this directory (pids are reused).
    pub fn pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = self.dir.to_string_lossy();
        let text = String::from_utf8_lossy(&cmdline);
        // A zombie has an empty command line.
        text.contains(needle.as_ref()).then_some(pid)
    }
}

/// Lists the VM directories under `state`.
pub fn list(state: &Path) -> Vec<VmDir> {
    let Ok(rd) = std::fs::read_dir(state.join("vms")) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| VmDir { dir: e.path() })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("preparing {0}")]
    Io(String, #[source] std::io::Error),
    #[error("qemu-img failed: {0}")]
    QemuImg(String),
    #[error("qemu failed to start: {0}")]
    Start(String),
}

fn io(what: &Path) -> impl Fn(std::io::Error) -> VmError + '_ {
    move |e| VmError::Io(what.display().to_string(), e)
}

/// The QEMU command line for `spec`.
pub fn qemu_args(spec: &LaunchSpec, vm: &VmDir, accel: Accel) -> Vec<String> {
    let d = |p: PathBuf| p.display().to_string();
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("{}/{},debug-threads=on", spec.namespace, spec.name),
        "-accel".into(),
        accel.qemu_arg().into(),
        "-cpu".into(),
        accel.cpu_model().into(),
        "-smp".into(),
        spec.cpu.to_string(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", d(vm.console())),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", d(vm.qmp())),
        "-chardev".into(),
        format!("socket,id=qga0,path={},server=on,wait=off", d(vm.qga())),
        "-device".into(),
        "virtio-serial-pci".into(),
        "-device".into(),
        "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0".into(),
        "-netdev".into(),
        format!("tap,id=net0,ifname={},script=no,downscript=no", spec.tap),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", spec.mac),
        "-pidfile".into(),
        d(vm.pidfile()),
        "-daemonize".into(),
    ];
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
            ..
        } => {
            a.extend([
                "-kernel".into(),
                d(kernel.clone()),
                "-append".into(),
                cmdline.clone(),
            ]);
            if let Some(i) = initrd {
                a.extend(["-initrd".into(), d(i.clone())]);
            }
        }
        Boot::Disk { .. } => {}
    }
    if spec.boot.root_disk().is_some() {
        // The root disk first (vda), and the one the firmware boots.
        a.extend([
            "-drive".into(),
            format!("file={},format=qcow2,if=none,id=root", d(vm.disk())),
            "-device".into(),
            "virtio-blk-pci,drive=root,bootindex=1".into(),
        ]);
    }
    a.extend([
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=seed,readonly=on",
            d(vm.seed())
        ),
        "-device".into(),
        "virtio-blk-pci,drive=seed".into(),
    ]);
    a
}

/// Starts QEMU for `spec`; returns its pid. The directory, seed and tap must exist.
pub async fn start(
    qemu: &Path,
    spec: &LaunchSpec,
    vm: &VmDir,
    accel: Accel,
) -> Result<u32, VmError> {
    std::fs::create_dir_all(&vm.dir).map_err(io(&vm.dir))?;
    if let Some((base, size_bytes)) = spec.boot.root_disk()
        && !vm.disk().exists()
    {
        // The overlay survives VM restarts; only a new Machine gets a new one.
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(vm.disk())
            .arg(size_bytes.to_string())
            .output()
            .await
            .map_err(io(Path::new("qemu-img")))?;
        if !out.status.success() {
            return Err(VmError::QemuImg(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
    }
    let raw =
        serde_json::to_vec_pretty(spec).map_err(|e| VmError::Io("launch.json".into(), e.into()))?;
    std::fs::write(vm.spec_file(), raw).map_err(io(&vm.dir))?;
    let _ = std::fs::remove_file(vm.pidfile());
    let out = tokio::process::Command::new(qemu)
        .args(qemu_args(spec, vm, accel))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(io(qemu))?;
    if !out.status.success() {
        return Err(VmError::Start(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    vm.pid()
        .ok_or_else(|| VmError::Start("no running process after daemonizing".into()))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

/// Stops the VM: ACPI power button, then QMP `quit`, then SIGKILL.
pub async fn stop(vm: &VmDir, grace: Duration) {
    let Some(pid) = vm.pid() else { return };
    if let Ok(mut q) = jsonsock::qmp(&vm.qmp()).await {
        let _ = q.call("system_powerdown", None).await;
        let deadline = tokio::time::Instant::now() + grace;
        while alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if alive(pid) {
            let _ = q.call("quit", None).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid) {
        tracing::warn!(pid, vm = %vm.dir.display(), "QEMU ignored quit; killing");
        kill(pid);
    }
}

#[allow(unsafe_code)]
fn kill(pid: u32) {
    if let Ok(p) = libc::pid_t::try_from(pid) {
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}
