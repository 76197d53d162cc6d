//! Choosing how VMs run: KVM where KVM guests really run, TCG (software
//! emulation) where they do not. `/dev/kvm` existing is not enough: on some
//! machines KVM guests start and then hang, so the probe boots a kernel and
//! waits for it to print.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
    /// The value of QEMU's `-accel`. TCG runs each VM's vCPUs on one host
    /// thread: where TCG is the fallback (a small machine whose KVM does not
    /// work), several multi-vCPU guests share few cores, and multi-threaded
    /// TCG's cross-vCPU work (TLB shoot-downs wait for every vCPU thread)
    /// starved a guest into soft lockups for minutes; one thread per VM
    /// has none of that and asks the host for fewer threads.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=single",
        }
    }
    /// How long the guest agent may take to answer a ping. An emulated
    /// guest that is busy (a control plane starting) answered in more than
    /// 2 s and was reported not ready for minutes.
    pub fn guest_agent_timeout(self) -> Duration {
        match self {
            Accel::Kvm => Duration::from_secs(2),
            Accel::Tcg => Duration::from_secs(10),
        }
    }
    /// The `-cpu` model that goes with it.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

/// A hand-made boot sector: writes 'K' to COM1 and halts. Used when no kernel
/// is at hand to probe with.
fn boot_sector() -> Vec<u8> {
    let code = [0xBA, 0xF8, 0x03, 0xB0, b'K', 0xEE, 0xF4, 0xEB, 0xFE];
    let mut img = code.to_vec();
    img.resize(510, 0);
    img.extend([0x55, 0xAA]);
    img
}

/// Boots a probe guest under KVM and reports whether it ran to the end
/// within `wait`. With a kernel (and no root file system) the end is the
/// kernel's panic, printed and followed by a reboot that ends QEMU: a guest
/// that only gets through its first instructions does not pass.
pub async fn kvm_works(
    qemu: &Path,
    probe_kernel: Option<&Path>,
    work: &Path,
    wait: Duration,
) -> Result<(), String> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Err("/dev/kvm cannot be opened".into());
    }
    std::fs::create_dir_all(work).map_err(|e| format!("probe dir {}: {e}", work.display()))?;
    let out = work.join("kvm-probe.out");
    let _ = std::fs::remove_file(&out);
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-accel",
        "kvm",
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-m",
        "128",
    ]);
    cmd.arg("-serial").arg(format!("file:{}", out.display()));
    match probe_kernel {
        Some(k) => {
            cmd.arg("-kernel")
                .arg(k)
                .args(["-append", "console=ttyS0 panic=-1"]);
        }
        None => {
            let img = work.join("kvm-probe.img");
            std::fs::write(&img, boot_sector()).map_err(|e| format!("probe image: {e}"))?;
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=floppy", img.display()))
                .args(["-boot", "a"]);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", qemu.display()))?;
    let want: &[u8] = if probe_kernel.is_some() {
        b"Kernel panic"
    } else {
        b"K"
    };
    let seen = |out: &Path| {
        std::fs::read(out)
            .map(|b| b.windows(want.len()).any(|w| w == want))
            .unwrap_or(false)
    };
    let deadline = tokio::time::Instant::now() + wait;
    let printed = loop {
        if seen(&out) {
            break true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break seen(&out);
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.kill().await;
    let _ = std::fs::remove_file(&out);
    if printed {
        Ok(())
    } else {
        Err(format!(
            "a KVM probe guest did not finish booting in {}s",
            wait.as_secs()
        ))
    }
}

/// Resolves the operator's choice to an accelerator, with the reason.
pub async fn choose(
    choice: AccelChoice,
    qemu: &Path,
    probe_kernel: Option<&Path>,
    work: &Path,
) -> (Accel, String) {
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, "forced by --accel kvm".into()),
        AccelChoice::Tcg => (Accel::Tcg, "forced by --accel tcg".into()),
        AccelChoice::Auto => {
            match kvm_works(qemu, probe_kernel, work, Duration::from_secs(10)).await {
                Ok(()) => (Accel::Kvm, "KVM probe guest ran".into()),
                Err(why) => (Accel::Tcg, format!("falling back to TCG: {why}")),
            }
        }
    }
}
