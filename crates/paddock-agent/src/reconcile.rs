//! The host reconciler. Level-triggered and idempotent: each pass reads the
//! wanted state (Machines bound here, their Clusters, images, the other
//! hosts) and the actual state (links, FDB entries, VM directories and QEMU
//! processes), and takes the steps that close the gap. It can be killed at
//! any line; the next pass picks up from what it finds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use paddock_api::cluster::OverlayStatus;
use paddock_api::host::Resources;
use paddock_api::machine::VM_FINALIZER;
use paddock_api::{Cluster, Host, Machine, MachineImage, MachinePhase, MachineStatus};
use paddock_net::guard::SourceGuard;
use paddock_net::{FdbEntry, HostNet, Mac};
use tokio::time::Instant;

use crate::hypervisor::Hypervisor;
use crate::platform::Platform;
use crate::seed::Seed;
use crate::vm::{self, Boot, LaunchSpec, VmDir};

/// Settings of the reconciler.
pub struct Settings {
    pub host: String,
    pub underlay: Ipv4Addr,
    pub state_dir: PathBuf,
    pub default_image: String,
    pub stop_grace: Duration,
    pub overlay_mtu: u32,
}

/// The watched world.
pub struct World {
    pub machines: Store<Machine>,
    pub hosts: Store<Host>,
    pub clusters: Store<Cluster>,
    pub images: Store<MachineImage>,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    next: Option<Instant>,
    started: Option<Instant>,
    /// When this agent last started the VM's QEMU (what `startedAt` says;
    /// a VM adopted from an agent before keeps the time it had).
    started_at: Option<Timestamp>,
    last_error: Option<String>,
}

pub struct Reconciler {
    pub settings: Settings,
    pub world: World,
    api: Arc<dyn Platform>,
    net: Arc<dyn HostNet>,
    hv: Arc<dyn Hypervisor>,
    backoff: Mutex<HashMap<String, Backoff>>,
    /// Digests already verified, by (path, size, mtime).
    verified: Arc<Mutex<HashSet<(PathBuf, u64, i64)>>>,
    /// VMs whose status is being read and written right now.
    reporting: Mutex<HashSet<String>>,
    /// Source guards last applied (none yet: apply on the first pass).
    guards: Mutex<Option<Vec<SourceGuard>>>,
}

/// What one Machine should be on this host.
struct Wanted {
    machine: Arc<Machine>,
    spec: Result<LaunchSpec, String>,
    seed: Option<Seed>,
    /// The overlay of the Machine's cluster, once it has one.
    overlay: Option<OverlayStatus>,
    /// The cluster's pod range, which its nodes route between them.
    pod_range: Option<paddock_net::guard::Ipv4Range>,
}

fn key(m: &Machine) -> (String, String) {
    (m.namespace().unwrap_or_default(), m.name_any())
}

/// A stable MAC for a Machine that was given none: 52:54:00 + 3 bytes of its uid.
fn mac_for(m: &Machine) -> String {
    if let Some(mac) = &m.spec.mac {
        return mac.clone();
    }
    let hex: Vec<u8> = m
        .uid()
        .unwrap_or_default()
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(6)
        .collect();
    let h = String::from_utf8_lossy(&hex).into_owned();
    format!(
        "52:54:00:{}:{}:{}",
        &h.get(0..2).unwrap_or("00"),
        &h.get(2..4).unwrap_or("00"),
        &h.get(4..6).unwrap_or("00")
    )
}

fn file_url(url: &str) -> Result<PathBuf, String> {
    url.strip_prefix("file://")
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "{url}: this agent fetches file:// images only; put the image on the host's disk"
            )
        })
}

/// Checks an image file's sha256, streamed (disk images are large), once per
/// (path, size, mtime). Blocking: run it off the async workers.
fn verify(
    verified: &Mutex<HashSet<(PathBuf, u64, i64)>>,
    path: &PathBuf,
    sha: Option<&str>,
) -> Result<(), String> {
    {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(want) = sha else { return Ok(()) };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64);
        let k = (path.clone(), meta.len(), mtime);
        if verified.lock().map(|v| v.contains(&k)).unwrap_or(false) {
            return Ok(());
        }
        use sha2::Digest;
        // Streamed: disk images are large. Done once per (path, size, mtime).
        let mut hasher = sha2::Sha256::new();
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::copy(&mut f, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
        let got: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want {
            return Err(format!(
                "{}: sha256 {got} does not match the image's {want}",
                path.display()
            ));
        }
        if let Ok(mut v) = verified.lock() {
            v.insert(k);
        }
        Ok(())
    }
}

impl Reconciler {
    pub fn new(
        settings: Settings,
        world: World,
        api: Arc<dyn Platform>,
        net: Arc<dyn HostNet>,
        hv: Arc<dyn Hypervisor>,
    ) -> Self {
        Self {
            settings,
            world,
            api,
            net,
            hv,
            backoff: Mutex::default(),
            verified: Arc::default(),
            reporting: Mutex::default(),
            guards: Mutex::default(),
        }
    }

    /// [`verify`] on the blocking pool, so that hashing a large image never
    /// holds up the async workers (the heartbeat among them).
    async fn verify(&self, path: &std::path::Path, sha: Option<&str>) -> Result<(), String> {
        let (verified, path, sha) = (
            self.verified.clone(),
            path.to_path_buf(),
            sha.map(str::to_owned),
        );
        tokio::task::spawn_blocking(move || verify(&verified, &path, sha.as_deref()))
            .await
            .map_err(|e| format!("verifying an image: {e}"))?
    }

    /// The image files a Machine boots, each checked against its digest.
    async fn verify_image(&self, image: &MachineImage) -> Result<(), String> {
        let files = [&image.spec.kernel, &image.spec.initrd]
            .into_iter()
            .flatten()
            .map(|a| (&a.url, &a.sha256))
            .chain(image.spec.disk.iter().map(|d| (&d.url, &d.sha256)));
        for (url, sha) in files {
            self.verify(&file_url(url)?, sha.as_deref()).await?;
        }
        Ok(())
    }

    async fn wanted(&self, m: Arc<Machine>) -> Wanted {
        let (ns, name) = key(&m);
        let cluster = self.world.clusters.state().into_iter().find(|c| {
            c.namespace().as_deref() == Some(ns.as_str()) && c.name_any() == m.spec.cluster_name
        });
        let overlay = cluster
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.overlay.clone());
        let mac = mac_for(&m);
        let mtu = self.settings.overlay_mtu;
        let uid = m.uid().unwrap_or_default();
        let image_name = m
            .spec
            .image
            .clone()
            .unwrap_or_else(|| self.settings.default_image.clone());
        let image = self
            .world
            .images
            .state()
            .into_iter()
            .find(|i| i.name_any() == image_name);
        let checked = match &image {
            Some(i) if overlay.is_some() => self.verify_image(i).await,
            _ => Ok(()),
        };
        let spec = (|| -> Result<LaunchSpec, String> {
            let overlay = overlay.as_ref().ok_or_else(|| {
                format!("cluster {} has no overlay network yet", m.spec.cluster_name)
            })?;
            let image = image
                .clone()
                .ok_or_else(|| format!("MachineImage {image_name:?} not found"))?;
            checked.clone()?;
            let boot = match (&image.spec.kernel, &image.spec.disk) {
                (Some(k), _) => {
                    let kernel = file_url(&k.url)?;
                    let initrd = match &image.spec.initrd {
                        Some(i) => {
                            let p = file_url(&i.url)?;
                            Some(p)
                        }
                        None => None,
                    };
                    let mut cmdline = format!(
                        "console=ttyS0 paddock.hostname={name} paddock.mtu={mtu} paddock.gw={}",
                        overlay.gateway
                    );
                    if let Some(ip) = &m.spec.ip {
                        cmdline.push_str(&format!(" paddock.ip={ip}"));
                    }
                    if let Some(extra) = &image.spec.cmdline {
                        cmdline.push(' ');
                        cmdline.push_str(extra);
                    }
                    let root_disk = match &image.spec.disk {
                        Some(d) => {
                            let base = file_url(&d.url)?;
                            Some(vm::RootDisk {
                                base,
                                size_bytes: m.spec.disk.bytes(),
                            })
                        }
                        None => None,
                    };
                    Boot::Kernel {
                        kernel,
                        initrd,
                        cmdline,
                        root_disk,
                    }
                }
                (None, Some(d)) => {
                    let base = file_url(&d.url)?;
                    Boot::Disk {
                        base,
                        size_bytes: m.spec.disk.bytes(),
                    }
                }
                (None, None) => {
                    return Err(format!(
                        "MachineImage {image_name:?} has neither kernel nor disk"
                    ));
                }
            };
            Ok(LaunchSpec {
                uid: uid.clone(),
                namespace: ns.clone(),
                name: name.clone(),
                cpu: m.spec.cpu,
                memory_mib: m.spec.memory.mib(),
                accel: self.hv.accel().as_str().into(),
                boot,
                tap: paddock_net::tap_name(&uid),
                mac: mac.clone(),
            })
        })();
        let seed = m.spec.ip.clone().map(|address| Seed {
            instance_id: uid.clone(),
            hostname: name.clone(),
            mac: mac.clone(),
            address,
            gateway: overlay.as_ref().and_then(|o| o.gateway.parse().ok()),
            mtu,
            user_data: String::new(),
            network_config: None,
        });
        Wanted {
            pod_range: cluster
                .as_ref()
                .and_then(|c| c.spec.network.pod_cidr.parse().ok()),
            machine: m,
            spec,
            seed,
            overlay,
        }
    }

    /// One pass over the whole host.
    pub async fn pass(self: &Arc<Self>) -> anyhow::Result<Resources> {
        let me = &self.settings.host;
        let all = self.world.machines.state();
        let (mine, leaving): (Vec<Arc<Machine>>, Vec<Arc<Machine>>) = all
            .iter()
            .filter(|m| m.spec.host_name.as_deref() == Some(me.as_str()))
            .cloned()
            // A Machine being drained keeps its VM until its Node is gone.
            .partition(|m| {
                m.metadata.deletion_timestamp.is_none() || paddock_api::machine::draining(m)
            });
        paddock_metrics::agent_vms(
            mine.iter()
                .filter_map(|m| m.status.as_ref().and_then(|s| s.phase))
                .map(|p| p.as_str()),
        );
        let mut wanted: Vec<Wanted> = Vec::with_capacity(mine.len());
        for m in mine {
            wanted.push(self.wanted(m).await);
        }

        // Networks: one bridge and VXLAN per cluster carried here.
        let hosts = self.world.hosts.state();
        let vtep =
            |h: &str| -> Option<Ipv4Addr> { hosts.iter().find(|x| x.name_any() == h)?.vtep() };
        let mut vnis: BTreeSet<u32> = BTreeSet::new();
        let mut bridges: HashMap<u32, u32> = HashMap::new();
        // A failure is recorded and the pass goes on: one overlay that cannot
        // be made must not keep other clusters' VMs from stopping or their
        // Machines from being released.
        let mut failures: Vec<anyhow::Error> = Vec::new();
        for w in &wanted {
            let Some(overlay) = &w.overlay else { continue };
            let vni = overlay.vni;
            if !vnis.insert(vni) {
                continue;
            }
            match self.ensure_overlay(w, overlay, &all, &vtep).await {
                Ok(br) => {
                    bridges.insert(vni, br);
                }
                Err(e) => {
                    failures.push(anyhow::Error::new(e).context(format!("overlay of VNI {vni}")))
                }
            }
        }

        // Source guards before any VM can send.
        let guards: Vec<SourceGuard> = wanted
            .iter()
            .filter_map(|w| {
                let spec = w.spec.as_ref().ok()?;
                Some(SourceGuard {
                    tap: spec.tap.clone(),
                    mac: spec.mac.parse().ok()?,
                    ip: w
                        .machine
                        .spec
                        .ip
                        .as_deref()
                        .and_then(|c| c.split('/').next())
                        .and_then(|a| a.parse().ok()),
                    routed: w.pod_range,
                })
            })
            .collect();
        let applied = self
            .guards
            .lock()
            .map(|g| g.as_ref() == Some(&guards))
            .unwrap_or(false);
        let mut guarded = true;
        if !applied {
            match self.net.apply_guards(&guards).await {
                Ok(()) => {
                    if let Ok(mut g) = self.guards.lock() {
                        *g = Some(guards);
                    }
                }
                Err(e) => {
                    guarded = false;
                    failures.push(anyhow::Error::new(e).context("source guards"));
                }
            }
        }

        // VMs: start what is missing first; status is read afterwards, so a
        // slow guest agent never delays a VM's start.
        let mut allocated = Resources::default();
        let mut keep_vms: HashSet<String> = HashSet::new();
        let mut keep_taps: HashSet<String> = HashSet::new();
        let mut outcomes = Vec::with_capacity(wanted.len());
        for w in &wanted {
            let uid = w.machine.uid().unwrap_or_default();
            keep_vms.insert(uid.clone());
            allocated.cpu += w.machine.spec.cpu;
            allocated.memory = allocated.memory.saturating_add(w.machine.spec.memory);
            let vm = VmDir::new(&self.settings.state_dir, &uid);
            let outcome = if guarded {
                self.converge_vm(w, &vm, &bridges).await
            } else {
                // No VM starts before its tap's source guard is in place.
                match self.hv.running(&vm) {
                    Some(pid) => Ok(pid),
                    None => Err("waiting for the source guards to apply".to_owned()),
                }
            };
            if let Ok(spec) = &w.spec {
                keep_taps.insert(spec.tap.clone());
            }
            outcomes.push((w, vm, outcome));
        }
        for (w, vm, outcome) in outcomes {
            let uid = vm.uid();
            let fresh = self
                .reporting
                .lock()
                .map(|mut r| r.insert(uid.clone()))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let (this, machine, spec_ok) = (self.clone(), w.machine.clone(), w.spec.is_ok());
            tokio::spawn(async move {
                this.report(&machine, spec_ok, &vm, outcome).await;
                if let Ok(mut r) = this.reporting.lock() {
                    r.remove(&uid);
                }
            });
        }

        // Whatever no Machine asks for anymore, all at once: each stop may
        // take its grace period.
        let unwanted: Vec<VmDir> = vm::list(&self.settings.state_dir)
            .into_iter()
            .filter(|vm| !keep_vms.contains(&vm.uid()))
            .collect();
        futures::future::join_all(unwanted.iter().map(|vm| async move {
            if self.hv.running(vm).is_some() {
                tracing::info!(vm = %vm.uid(), "stopping VM no Machine wants");
                self.hv.stop(vm, self.settings.stop_grace).await;
            }
            if self.hv.running(vm).is_none() {
                if let Err(e) = std::fs::remove_dir_all(&vm.dir) {
                    tracing::warn!(vm = %vm.uid(), error = %e, "cannot remove VM directory");
                }
                if let Ok(mut b) = self.backoff.lock() {
                    b.remove(&vm.uid());
                }
            } else {
                tracing::warn!(vm = %vm.uid(), "VM still runs after stopping; next pass tries again");
            }
        }))
        .await;
        let links = match self.net.links().await {
            Ok(l) => l,
            Err(e) => {
                failures.push(anyhow::Error::new(e).context("listing links"));
                Vec::new()
            }
        };
        for link in links {
            let stale = if link.name.starts_with(paddock_net::TAP_PREFIX) {
                !keep_taps.contains(&link.name)
            } else if let Some(v) = link
                .name
                .strip_prefix(paddock_net::VXLAN_PREFIX)
                .or_else(|| link.name.strip_prefix(paddock_net::BRIDGE_PREFIX))
            {
                v.parse::<u32>()
                    .map(|v| !vnis.contains(&v))
                    .unwrap_or(false)
            } else {
                false
            };
            if stale && let Err(e) = self.net.delete(&link.name).await {
                failures.push(anyhow::Error::new(e).context(format!("deleting {}", link.name)));
            }
        }
        if let Err(e) = self.release(&leaving, &vnis).await {
            failures.push(e);
        }
        match failures.len() {
            0 => Ok(allocated),
            1 => Err(failures.remove(0)),
            n => Err(failures
                .remove(0)
                .context(format!("{n} steps failed; the first"))),
        }
    }

    /// The bridge and VXLAN device of one overlay, with forwarding entries
    /// towards every other host that carries the cluster and towards the
    /// gateway. Returns the bridge's index.
    async fn ensure_overlay(
        &self,
        w: &Wanted,
        overlay: &OverlayStatus,
        all: &[Arc<Machine>],
        vtep: &(dyn Fn(&str) -> Option<Ipv4Addr> + Sync),
    ) -> Result<u32, paddock_net::HostNetError> {
        let (vni, mtu, me) = (overlay.vni, self.settings.overlay_mtu, &self.settings.host);
        let br = self
            .net
            .ensure_bridge(&paddock_net::bridge_name(vni), mtu)
            .await?;
        let vx = self
            .net
            .ensure_vxlan(
                &paddock_net::vxlan_name(vni),
                vni,
                self.settings.underlay,
                br,
                mtu,
            )
            .await?;
        let (ns, cluster) = (
            w.machine.namespace().unwrap_or_default(),
            w.machine.spec.cluster_name.clone(),
        );
        let mut fdb = BTreeSet::new();
        for peer in all.iter().filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str()) && p.spec.cluster_name == cluster
        }) {
            let Some(h) = peer.spec.host_name.as_deref().filter(|h| *h != me.as_str()) else {
                continue;
            };
            let Some(dst) = vtep(h) else { continue };
            fdb.insert(FdbEntry {
                mac: Mac::ZERO,
                dst,
            });
            if let Ok(mac) = mac_for(peer).parse::<Mac>() {
                fdb.insert(FdbEntry { mac, dst });
            }
        }
        // The management plane's gateway joins the overlay too.
        if let Some(dst) = overlay.gateway_vtep.as_deref().and_then(|v| v.parse().ok()) {
            fdb.insert(FdbEntry {
                mac: Mac::ZERO,
                dst,
            });
            if let Some(mac) = overlay.gateway_mac.as_deref().and_then(|m| m.parse().ok()) {
                fdb.insert(FdbEntry { mac, dst });
            }
        }
        self.net
            .sync_vxlan_fdb(&paddock_net::vxlan_name(vni), vx, &fdb)
            .await?;
        Ok(br)
    }

    /// Releases deleted Machines whose VM is gone, with its directory and
    /// tap, and the overlay's bridge and VXLAN device unless another Machine
    /// of the cluster still runs here: only then may the cluster's overlay
    /// (its VNI) go back to the pool.
    async fn release(&self, leaving: &[Arc<Machine>], vnis: &BTreeSet<u32>) -> anyhow::Result<()> {
        let held: Vec<&Arc<Machine>> = leaving
            .iter()
            .filter(|m| m.finalizers().iter().any(|f| f == VM_FINALIZER))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let links: HashSet<String> = self
            .net
            .links()
            .await?
            .into_iter()
            .map(|l| l.name)
            .collect();
        for m in held {
            let uid = m.uid().unwrap_or_default();
            let vm = VmDir::new(&self.settings.state_dir, &uid);
            let mut left = Vec::new();
            if self.hv.running(&vm).is_some() {
                left.push("its VM".to_owned());
            }
            if vm.dir.exists() {
                left.push(vm.dir.display().to_string());
            }
            let tap = paddock_net::tap_name(&uid);
            if links.contains(&tap) {
                left.push(tap);
            }
            if let Some(vni) = self.overlay_of(m).map(|o| o.vni)
                && !vnis.contains(&vni)
            {
                for dev in [paddock_net::bridge_name(vni), paddock_net::vxlan_name(vni)] {
                    if links.contains(&dev) {
                        left.push(dev);
                    }
                }
            }
            if !left.is_empty() {
                tracing::info!(machine = %m.name_any(), left = ?left, "deleted machine not released yet");
                continue;
            }
            match self.api.release(m).await {
                Ok(()) => tracing::info!(machine = %m.name_any(), "VM and links gone; released"),
                Err(e) => {
                    tracing::warn!(machine = %m.name_any(), error = %e, "cannot release machine")
                }
            }
        }
        Ok(())
    }

    fn overlay_of(&self, m: &Machine) -> Option<OverlayStatus> {
        let ns = m.namespace();
        self.world
            .clusters
            .state()
            .into_iter()
            .find(|c| c.namespace() == ns && c.name_any() == m.spec.cluster_name)?
            .status
            .as_ref()?
            .overlay
            .clone()
    }

    /// Makes one VM run as wanted. Returns whether QEMU runs, or why not.
    async fn converge_vm(
        &self,
        w: &Wanted,
        vm: &VmDir,
        bridges: &HashMap<u32, u32>,
    ) -> Result<u32, String> {
        let spec = w.spec.clone()?;
        let vni = w.overlay.as_ref().ok_or("no overlay")?.vni;
        let br = *bridges.get(&vni).ok_or("no bridge")?;
        let mac: Mac = spec.mac.parse().map_err(|e: String| e)?;
        self.net
            .ensure_tap(&spec.tap, br, self.settings.overlay_mtu, mac)
            .await
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        if let Some(pid) = self.hv.running(vm) {
            if self.hv.launched(vm).as_ref() == Some(&spec) {
                if let Ok(mut b) = self.backoff.lock() {
                    let e = b.entry(spec.uid.clone()).or_default();
                    if e.started
                        .is_some_and(|s| s.elapsed() > Duration::from_secs(60))
                    {
                        e.failures = 0;
                    }
                }
                return Ok(pid);
            }
            tracing::info!(machine = %spec.name, "launch spec changed; restarting VM");
            self.hv.stop(vm, self.settings.stop_grace).await;
        }
        // Not running: start, unless backing off after failures.
        let now = Instant::now();
        {
            let b = self.backoff.lock().map_err(|_| "lock")?;
            if let Some(e) = b.get(&spec.uid)
                && e.next.is_some_and(|n| now < n)
            {
                return Err(e
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "restarting after a crash (backing off)".into()));
            }
        }
        std::fs::create_dir_all(&vm.dir).map_err(|e| format!("{}: {e}", vm.dir.display()))?;
        if let Some(seed) = &w.seed {
            let mut seed = seed.clone();
            if let Some(secret) = &w.machine.spec.bootstrap_secret {
                let (ud, nc) = self.bootstrap_data(&w.machine, secret).await?;
                seed.user_data = ud;
                seed.network_config = nc;
            }
            seed.write(&vm.seed())
                .map_err(|e| format!("writing seed: {e}"))?;
        } else if !vm.seed().exists() {
            Seed {
                instance_id: spec.uid.clone(),
                hostname: spec.name.clone(),
                mac: spec.mac.clone(),
                address: String::new(),
                gateway: None,
                mtu: self.settings.overlay_mtu,
                user_data: String::new(),
                network_config: None,
            }
            .write(&vm.seed())
            .map_err(|e| format!("writing seed: {e}"))?;
        }
        let was_started = self.hv.launched(vm).is_some();
        let res = self.hv.start(&spec, vm).await;
        let mut b = self.backoff.lock().map_err(|_| "lock")?;
        let e = b.entry(spec.uid.clone()).or_default();
        match res {
            Ok(pid) => {
                if was_started {
                    e.failures += 1;
                    tracing::warn!(machine = %spec.name, pid, restarts = e.failures, "QEMU was not running; restarted");
                } else {
                    tracing::info!(machine = %spec.name, pid, accel = %spec.accel, "started VM");
                }
                e.started = Some(now);
                // Whole seconds, as the API keeps a Time: the status read
                // back compares equal and is not written again.
                e.started_at = Timestamp::from_second(Timestamp::now().as_second()).ok();
                e.next = Some(now + Duration::from_secs(1 << e.failures.min(5)));
                e.last_error = None;
                Ok(pid)
            }
            Err(err) => {
                e.failures += 1;
                e.next = Some(now + Duration::from_secs(1 << e.failures.min(5)));
                let msg = format!("{:#}", anyhow::Error::new(err));
                e.last_error = Some(msg.clone());
                tracing::warn!(machine = %spec.name, error = %msg, "VM failed to start");
                Err(msg)
            }
        }
    }

    /// The Machine's bootstrap data: user-data, and network-config if the
    /// Secret has one. A missing Secret is "not yet", not an empty seed.
    async fn bootstrap_data(
        &self,
        m: &Machine,
        secret: &str,
    ) -> Result<(String, Option<String>), String> {
        let ns = m.namespace().unwrap_or_default();
        let data = match self.api.secret_data(&ns, secret).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(format!("waiting for bootstrap data Secret {ns}/{secret}")),
            Err(e) => return Err(format!("reading bootstrap data Secret {ns}/{secret}: {e}")),
        };
        let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        let ud = text(paddock_bootstrap::USER_DATA).ok_or_else(|| {
            format!(
                "bootstrap data Secret {ns}/{secret} has no {:?}",
                paddock_bootstrap::USER_DATA
            )
        })?;
        Ok((ud, text(paddock_bootstrap::NETWORK_CONFIG)))
    }

    /// Writes the Machine's status if it changed.
    async fn report(&self, m: &Machine, spec_ok: bool, vm: &VmDir, outcome: Result<u32, String>) {
        let old = m.status.clone().unwrap_or_default();
        let guest_ready = match &outcome {
            Ok(_) => self.hv.guest_ready(vm).await,
            Err(_) => false,
        };
        let phase = match (&outcome, guest_ready) {
            (Ok(_), true) => MachinePhase::Running,
            (Ok(_), false) => MachinePhase::Starting,
            (Err(_), _) if !spec_ok => MachinePhase::Pending,
            (Err(_), _) => MachinePhase::Failed,
        };
        let cond = |t: &str, ok: bool, reason: &str, msg: String| -> Condition {
            let status = if ok { "True" } else { "False" }.to_owned();
            let prev = old.conditions.iter().find(|c| c.type_ == t);
            let since = match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Time(Timestamp::now()),
            };
            Condition {
                type_: t.into(),
                status,
                reason: reason.into(),
                message: msg,
                last_transition_time: since,
                observed_generation: m.metadata.generation,
            }
        };
        let running = match &outcome {
            Ok(pid) => cond(
                "Running",
                true,
                "QemuRunning",
                format!("QEMU pid {pid} ({})", self.hv.accel().as_str()),
            ),
            Err(e) => cond(
                "Running",
                false,
                if spec_ok { "StartFailed" } else { "Waiting" },
                e.clone(),
            ),
        };
        let ready = if guest_ready {
            cond(
                "GuestReady",
                true,
                "GuestAgentAnswered",
                "the guest agent answers".into(),
            )
        } else {
            cond(
                "GuestReady",
                false,
                "NoGuestAgent",
                "the guest agent does not answer yet".into(),
            )
        };
        let started_here = self.backoff.lock().ok().and_then(|b| {
            b.get(&m.uid().unwrap_or_default())
                .and_then(|e| e.started_at)
        });
        let started_at = match (&outcome, started_here, old.started_at.clone()) {
            // A QEMU this agent started (again, after a crash): its time.
            (Ok(_), Some(t), _) => Some(Time(t)),
            (Ok(_), None, Some(t)) => Some(t),
            (Ok(_), None, None) => Some(Time(Timestamp::now())),
            (Err(_), _, _) => None,
        };
        // Conditions other controllers own (Scheduled) stay as they are.
        let mut conditions: Vec<Condition> = old
            .conditions
            .iter()
            .filter(|c| c.type_ != "Running" && c.type_ != "GuestReady")
            .cloned()
            .collect();
        conditions.extend([running, ready]);
        let new = MachineStatus {
            phase: Some(phase),
            conditions,
            observed_generation: m.metadata.generation,
            started_at,
            console_log: Some(vm.console().display().to_string()),
            // The platform's node-status loop owns it; a merge keeps it.
            node: None,
        };
        let same = old.phase == new.phase
            && old.observed_generation == new.observed_generation
            && old.console_log == new.console_log
            && old.started_at == new.started_at
            && old.conditions.len() == new.conditions.len()
            && old.conditions.iter().zip(&new.conditions).all(|(a, b)| {
                a.type_ == b.type_
                    && a.status == b.status
                    && a.reason == b.reason
                    && a.message == b.message
            });
        if same {
            return;
        }
        // A VM whose guest agent answers for the first time since it started: booted.
        if new.phase == Some(MachinePhase::Running)
            && old.phase != Some(MachinePhase::Running)
            && let Some(t) = &new.started_at
        {
            let secs = Timestamp::now().duration_since(t.0).as_secs_f64();
            paddock_metrics::global().agent.boot.observe(secs.max(0.0));
        }
        let (ns, name) = key(m);
        if let Err(e) = self.api.write_status(&ns, &name, &new).await {
            tracing::warn!(machine = %name, error = %e, "cannot write machine status");
        }
    }

    /// The VM directory of a Machine bound here, by namespace and name.
    pub fn vm_of(&self, ns: &str, name: &str) -> Option<VmDir> {
        let m = self
            .world
            .machines
            .state()
            .into_iter()
            .find(|m| m.namespace().as_deref() == Some(ns) && m.name_any() == name)?;
        if m.spec.host_name.as_deref() != Some(self.settings.host.as_str()) {
            return None;
        }
        Some(VmDir::new(&self.settings.state_dir, &m.uid()?))
    }
}

#[cfg(test)]
mod tests {
    //! The reconciler on a fake hypervisor, host network and API: no root,
    //! QEMU or netlink, milliseconds each.

    use super::*;
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::platform::fake::FakePlatform;
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher;
    use paddock_net::fake::FakeNet;
    use serde_json::json;

    struct Lab {
        r: Arc<Reconciler>,
        hv: Arc<FakeHypervisor>,
        net: Arc<FakeNet>,
        api: Arc<FakePlatform>,
        machines: Writer<Machine>,
        clusters: Writer<Cluster>,
        _dir: tempfile::TempDir,
    }

    fn machine(name: &str, host: &str, idx: u8) -> Machine {
        serde_json::from_value(json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": name, "namespace": "acme", "uid": format!("uid-{name}"),
                         "finalizers": [VM_FINALIZER], "resourceVersion": "1"},
            "spec": {"clusterName": "demo", "role": "worker", "cpu": 1, "memory": "256Mi",
                     "disk": "1Gi", "hostName": host, "image": "dev",
                     "ip": format!("10.64.0.{idx}/24"), "mac": format!("52:54:00:00:00:{idx:02x}")}
        }))
        .expect("machine")
    }

    fn deleting(mut m: Machine) -> Machine {
        m.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        m
    }

    fn lab() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"a kernel").expect("kernel");
        let (machines, mw) = reflector::store::<Machine>();
        let (hosts, mut hw) = reflector::store::<Host>();
        let (clusters, mut cw) = reflector::store::<Cluster>();
        let (images, mut iw) = reflector::store::<MachineImage>();
        for (h, ip) in [("h1", "192.0.2.1"), ("h2", "192.0.2.2")] {
            let host: Host = serde_json::from_value(json!({
                "apiVersion": "paddock.io/v1alpha1", "kind": "Host",
                "metadata": {"name": h}, "spec": {}, "status": {"underlayIp": ip}
            }))
            .expect("host");
            hw.apply_watcher_event(&watcher::Event::Apply(host));
        }
        let cluster: Cluster = serde_json::from_value(json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "demo", "namespace": "acme"}, "spec": {},
            "status": {"overlay": {"vni": 1000, "subnet": "10.64.0.0/24", "gateway": "10.64.0.1"}}
        }))
        .expect("cluster");
        cw.apply_watcher_event(&watcher::Event::Apply(cluster));
        let image: MachineImage = serde_json::from_value(json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "MachineImage",
            "metadata": {"name": "dev"},
            "spec": {"kernel": {"url": format!("file://{}", kernel.display())}}
        }))
        .expect("image");
        iw.apply_watcher_event(&watcher::Event::Apply(image));
        let (hv, net, api) = (
            Arc::new(FakeHypervisor::new()),
            Arc::new(FakeNet::default()),
            Arc::new(FakePlatform::default()),
        );
        let r = Arc::new(Reconciler::new(
            Settings {
                host: "h1".into(),
                underlay: "192.0.2.1".parse().expect("ip"),
                state_dir: dir.path().join("state"),
                default_image: "dev".into(),
                stop_grace: Duration::from_secs(10),
                overlay_mtu: 1450,
            },
            World {
                machines,
                hosts,
                clusters,
                images,
            },
            api.clone(),
            net.clone(),
            hv.clone(),
        ));
        Lab {
            r,
            hv,
            net,
            api,
            machines: mw,
            clusters: cw,
            _dir: dir,
        }
    }

    impl Lab {
        fn put(&mut self, m: Machine) {
            self.machines.apply_watcher_event(&watcher::Event::Apply(m));
        }
        /// The API removes a Machine once released.
        fn gone(&mut self, name: &str) {
            self.machines
                .apply_watcher_event(&watcher::Event::Delete(machine(name, "h1", 0)));
        }
        async fn pass(&self) {
            self.r.pass().await.expect("pass");
        }
        async fn status(&self, name: &str) -> MachineStatus {
            for _ in 0..200 {
                if let Some(s) = self.api.status("acme", name) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("no status written for {name}");
        }
    }

    #[tokio::test]
    async fn runs_its_machines_on_the_cluster_overlay() {
        let mut lab = lab();
        lab.put(machine("m1", "h1", 10));
        lab.put(machine("m2", "h2", 11));
        lab.pass().await;
        assert_eq!(
            lab.hv.running_uids(),
            ["uid-m1"],
            "only the machine bound here runs"
        );
        let tap = paddock_net::tap_name("uid-m1");
        let br = lab.net.link("pdbr1000").expect("bridge");
        let vx = lab.net.link("pdvx1000").expect("vxlan");
        assert_eq!((vx.vni, vx.controller), (Some(1000), Some(br.index)));
        let t = lab.net.link(&tap).expect("tap");
        assert_eq!(t.controller, Some(br.index));
        assert_eq!(t.mac, Some("52:54:00:00:00:0a".parse().expect("mac")));
        // Floods and m2's MAC go to h2's VTEP.
        let h2: Ipv4Addr = "192.0.2.2".parse().expect("ip");
        let want: BTreeSet<FdbEntry> = [
            FdbEntry {
                mac: Mac::ZERO,
                dst: h2,
            },
            FdbEntry {
                mac: "52:54:00:00:00:0b".parse().expect("mac"),
                dst: h2,
            },
        ]
        .into();
        assert_eq!(vx.fdb, want);
        let guards = lab.net.guards();
        assert_eq!(guards.len(), 1);
        assert_eq!(guards[0].ip, Some("10.64.0.10".parse().expect("ip")));
        let st = lab.status("m1").await;
        assert_eq!(st.phase, Some(MachinePhase::Running));
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "GuestReady" && c.status == "True")
        );
        // A second pass changes nothing.
        lab.pass().await;
        assert_eq!(lab.hv.counts(), (1, 0));
    }

    #[tokio::test]
    async fn a_deleted_machine_is_released_only_once_its_vm_and_links_are_gone() {
        let mut lab = lab();
        lab.put(machine("m1", "h1", 10));
        lab.put(machine("m3", "h1", 12));
        lab.pass().await;
        assert_eq!(lab.hv.running_uids(), ["uid-m1", "uid-m3"]);

        // m1 goes, but its QEMU hangs: nothing is released.
        lab.put(deleting(machine("m1", "h1", 10)));
        lab.hv.set_ignore_stop(true);
        lab.pass().await;
        assert_eq!(lab.hv.running_uids(), ["uid-m1", "uid-m3"]);
        assert!(lab.api.released().is_empty(), "released while its VM runs");
        // It stops: m1 is released; the bridge stays for m3, m1's tap goes.
        lab.hv.set_ignore_stop(false);
        lab.pass().await;
        assert_eq!(lab.hv.running_uids(), ["uid-m3"]);
        assert!(lab.net.link(&paddock_net::tap_name("uid-m1")).is_none());
        assert!(lab.net.link("pdbr1000").is_some());
        assert_eq!(lab.api.released(), [("acme".to_owned(), "m1".to_owned())]);
        lab.gone("m1");

        // The last machine of the cluster here: bridge and VXLAN go first.
        lab.put(deleting(machine("m3", "h1", 12)));
        lab.pass().await;
        assert!(lab.hv.running_uids().is_empty());
        assert_eq!(lab.net.names(), Vec::<String>::new());
        assert!(lab.net.guards().is_empty());
        assert_eq!(lab.api.released().len(), 2);
        assert!(
            !lab.r.settings.state_dir.join("vms/uid-m3").exists(),
            "VM directory removed"
        );
    }

    #[tokio::test]
    async fn links_it_does_not_own_are_left_alone() {
        let mut lab = lab();
        lab.net.add_foreign("eth0");
        lab.net.add_foreign("pdbrx");
        lab.put(machine("m1", "h1", 10));
        lab.pass().await;
        lab.put(deleting(machine("m1", "h1", 10)));
        lab.pass().await;
        assert_eq!(lab.net.names(), ["eth0", "pdbrx"]);
    }

    #[tokio::test(start_paused = true)]
    async fn unwanted_vms_are_stopped_at_once_not_one_after_another() {
        let mut lab = lab();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            lab.put(machine(n, "h1", 20 + i as u8));
        }
        lab.pass().await;
        lab.hv.set_stop_delay(Duration::from_secs(10));
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            lab.put(deleting(machine(n, "h1", 20 + i as u8)));
        }
        let t = Instant::now();
        lab.pass().await;
        let took = t.elapsed();
        assert!(lab.hv.running_uids().is_empty());
        assert!(
            took < Duration::from_secs(15),
            "three 10 s stops took {took:?}"
        );
        assert_eq!(lab.api.released().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_vm_comes_back_with_backoff() {
        let mut lab = lab();
        lab.put(machine("m1", "h1", 10));
        lab.pass().await;
        lab.hv.crash("uid-m1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        lab.pass().await;
        assert_eq!(lab.hv.counts().0, 2, "restarted");
        lab.hv.crash("uid-m1");
        lab.pass().await;
        assert_eq!(lab.hv.counts().0, 2, "backing off");
        tokio::time::sleep(Duration::from_secs(3)).await;
        lab.pass().await;
        assert_eq!(lab.hv.counts().0, 3);
        assert_eq!(lab.hv.running_uids(), ["uid-m1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_is_reported_and_a_changed_spec_restarts() {
        let mut lab = lab();
        lab.hv.set_fail_start(Some("no such accelerator"));
        lab.put(machine("m1", "h1", 10));
        lab.pass().await;
        let st = lab.status("m1").await;
        assert_eq!(st.phase, Some(MachinePhase::Failed));
        assert!(
            st.conditions
                .iter()
                .any(|c| c.type_ == "Running" && c.message.contains("no such accelerator")),
            "{st:?}"
        );
        lab.hv.set_fail_start(None);
        let r = lab.r.clone();
        r.backoff.lock().expect("lock").clear();
        lab.pass().await;
        assert_eq!(lab.hv.running_uids(), ["uid-m1"]);
        let mut bigger = machine("m1", "h1", 10);
        bigger.spec.cpu = 2;
        lab.put(bigger);
        lab.pass().await;
        // Stopped at once; started again once its backoff has passed.
        assert!(lab.hv.running_uids().is_empty());
        tokio::time::sleep(Duration::from_secs(3)).await;
        lab.pass().await;
        assert_eq!(lab.hv.spec_of("uid-m1").map(|s| s.cpu), Some(2));
        assert_eq!(lab.hv.counts().1, 1, "stopped once to restart");
    }

    #[tokio::test]
    async fn an_overlay_that_cannot_be_made_holds_up_no_other_cluster() {
        let mut lab = lab();
        lab.put(machine("m1", "h1", 10));
        lab.pass().await;
        let two: Cluster = serde_json::from_value(json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "two", "namespace": "acme"}, "spec": {},
            "status": {"overlay": {"vni": 1001, "subnet": "10.64.1.0/24", "gateway": "10.64.1.1"}}
        }))
        .expect("cluster");
        lab.clusters
            .apply_watcher_event(&watcher::Event::Apply(two));
        lab.net.fail("pdvx1001");
        let mut other = machine("t1", "h1", 10);
        other.spec.cluster_name = "two".into();
        other.metadata.uid = Some("uid-f00d".into());
        lab.put(other);
        lab.put(deleting(machine("m1", "h1", 10)));
        let err = lab.r.pass().await.expect_err("VNI 1001 fails");
        assert!(
            format!("{err:#}").contains("overlay of VNI 1001"),
            "{err:#}"
        );
        assert_eq!(lab.api.released(), [("acme".to_owned(), "m1".to_owned())]);
        assert!(lab.net.link("pdvx1000").is_none(), "demo's devices went");
        assert!(lab.hv.running_uids().is_empty(), "t1 waits for its overlay");
        let st = lab.status("t1").await;
        assert_ne!(st.phase, Some(MachinePhase::Running));
    }
}
