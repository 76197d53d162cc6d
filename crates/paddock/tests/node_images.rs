//! The node image's container images, as `scripts/build-node-images.sh`
//! writes them, load into a real containerd (Debian's, the one the node
//! image runs) and run under runc: every image `kubeadm config images
//! list` names for the node image's Kubernetes is there under exactly that
//! name, so kubeadm never pulls, and each runs its component at the
//! version kubeadm expects. Needs root, containerd, and the images
//! (`PADDOCK_NODE_IMAGES`, default `/var/cache/paddock/node-images`;
//! binaries in `PADDOCK_NODE_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn dir(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// A containerd of the test's own: root, state and socket in a tempdir.
struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\n  address = \"{d}/containerd.sock\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd runs (scripts/deps.sh test installs it)");
        let c = Self { child, dir };
        let t = Instant::now();
        while !c.sock().exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }
    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.sock())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr runs")
    }
    fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Snapshots left mounted by a failed run would keep the tempdir.
        let root = self.dir.path().to_string_lossy().into_owned();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
    }
}

fn kubeadm(bin: &Path, args: &[&str]) -> String {
    let o = Command::new(bin.join("kubeadm"))
        .args(args)
        .output()
        .expect("kubeadm runs");
    assert!(o.status.success(), "kubeadm {args:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn every_image_kubeadm_needs_loads_and_runs() {
    let bin = dir("PADDOCK_NODE_BIN", "/var/cache/paddock/node-bin");
    let images = dir("PADDOCK_NODE_IMAGES", "/var/cache/paddock/node-images");
    let version = kubeadm(&bin, &["version", "-o", "short"]);
    let wanted = kubeadm(
        &bin,
        &["config", "images", "list", "--kubernetes-version", &version],
    );
    let c = Containerd::start();
    let mut archives: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/build-node-images.sh)",
                images.display()
            )
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    archives.sort();
    for a in &archives {
        c.ctr_ok(&["images", "import", &a.to_string_lossy()]);
    }
    let have = c.ctr_ok(&["images", "ls", "-q"]);
    let have: Vec<&str> = have.lines().collect();
    for image in wanted.lines().chain(["paddock.local/busybox:1"]) {
        assert!(have.contains(&image), "{image} is not loaded: {have:?}");
    }

    // Each runs, at the version kubeadm asked for.
    let find = |name: &str| {
        wanted
            .lines()
            .find(|i| {
                i.rsplit('/')
                    .next()
                    .is_some_and(|b| b.starts_with(&format!("{name}:")))
            })
            .unwrap_or_else(|| panic!("kubeadm lists no {name}"))
            .to_owned()
    };
    let tag = |image: &str| image.rsplit(':').next().unwrap_or_default().to_owned();
    let run = |image: &str, id: &str, cmd: &[&str]| -> String {
        let mut args = vec!["run", "--rm", image, id];
        args.extend(cmd);
        c.ctr_ok(&args)
    };
    for (i, comp) in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ]
    .iter()
    .enumerate()
    {
        let out = run(&find(comp), &format!("k{i}"), &[comp, "--version"]);
        assert_eq!(out.trim(), format!("Kubernetes {version}"), "{comp}");
    }
    // kube-proxy's image carries iptables with its extensions (kube-proxy
    // writes rules with comments and conntrack matches).
    let out = run(
        &find("kube-proxy"),
        "iptables",
        &["iptables", "-m", "comment", "--help"],
    );
    assert!(out.contains("comment match options"), "{out}");
    let out = run(
        &find("kube-proxy"),
        "iptables-v",
        &["iptables", "--version"],
    );
    assert!(out.contains("nf_tables"), "{out}");
    let etcd = find("etcd");
    let out = run(&etcd, "etcd", &["etcd", "--version"]);
    let want = tag(&etcd);
    let want = want.split('-').next().unwrap_or_default();
    assert!(out.contains(&format!("etcd Version: {want}")), "{out}");
    let coredns = find("coredns");
    let out = run(&coredns, "coredns", &["/coredns", "-version"]);
    assert!(
        out.contains(&format!(
            "CoreDNS-{}",
            tag(&coredns).trim_start_matches('v')
        )),
        "{out}"
    );
    let out = run(&find("pause"), "pause", &["/pause", "-v"]);
    assert!(out.contains("pause"), "{out}");
    let out = run(
        "paddock.local/busybox:1",
        "busybox",
        &[
            "/bin/sh",
            "-c",
            "echo $((6 * 7)); wget --help 2>&1 | head -1",
        ],
    );
    assert!(out.starts_with("42\n"), "{out}");
}
