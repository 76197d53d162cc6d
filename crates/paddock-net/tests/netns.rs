//! Real netlink against a real kernel, inside a network namespace this test
//! creates and removes: bridge, VXLAN, tap with a locked port, and FDB sync.
//! Needs root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use paddock_net::{FdbEntry, Mac, Net};

/// A named network namespace, removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("pdtest-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip")
            .success();
        assert!(ok, "ip netns add {name}");
        Self(name)
    }
    fn ip(&self, args: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args.split_whitespace())
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Runs `f` on a thread inside the namespace, with its own runtime.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn overlay_devices_and_fdb_converge() {
    let ns = Netns::new("net");
    ns.ip("ip link add underlay0 type veth peer name underlay1");
    ns.ip("ip link set underlay0 mtu 1500 up");
    ns.ip("ip addr add 10.99.0.1/24 dev underlay0");
    let mac: Mac = "52:54:00:00:00:07".parse().expect("mac");
    let remote: Mac = "52:54:00:00:00:08".parse().expect("mac");
    let want: BTreeSet<FdbEntry> = [
        FdbEntry {
            mac: Mac::ZERO,
            dst: Ipv4Addr::new(10, 99, 0, 2),
        },
        FdbEntry {
            mac: Mac::ZERO,
            dst: Ipv4Addr::new(10, 99, 0, 3),
        },
        FdbEntry {
            mac: remote,
            dst: Ipv4Addr::new(10, 99, 0, 3),
        },
    ]
    .into();
    let want2 = want.clone();
    let mtu = ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let net = Net::connect().expect("netlink");
            let mtu = net
                .underlay_mtu(Ipv4Addr::new(10, 99, 0, 1))
                .await
                .expect("underlay")
                - paddock_net::VXLAN_OVERHEAD;
            for _ in 0..2 {
                // Twice: the second pass must change nothing and fail on nothing.
                let br = net.ensure_bridge("pdbr42", mtu).await.expect("bridge");
                let vx = net
                    .ensure_vxlan("pdvx42", 42, Ipv4Addr::new(10, 99, 0, 1), br, mtu)
                    .await
                    .expect("vxlan");
                net.ensure_tap("pdtapabc", br, mtu, mac).await.expect("tap");
                let g = paddock_net::guard::SourceGuard {
                    tap: "pdtapabc".into(),
                    mac,
                    ip: Some(Ipv4Addr::new(10, 100, 0, 7)),
                    routed: Some("192.168.0.0/16".parse().expect("range")),
                };
                paddock_net::guard::apply(&[g]).await.expect("guards");
                net.sync_vxlan_fdb("pdvx42", vx, &want2).await.expect("fdb");
                assert_eq!(net.vxlan_fdb(vx).await.expect("fdb"), want2);
            }
            mtu
        })
    });
    assert_eq!(mtu, 1450);
    let vx = ns.ip("ip -d link show pdvx42");
    for want in [
        "vxlan id 42",
        "local 10.99.0.1",
        "dstport 4789",
        "nolearning",
        "master pdbr42",
        "mtu 1450",
    ] {
        assert!(vx.contains(want), "{want} missing in {vx}");
    }
    let tap = ns.ip("ip -d link show pdtapabc");
    assert!(
        tap.contains("master pdbr42") && tap.contains("locked on") && tap.contains("learning off"),
        "{tap}"
    );
    let fdb = ns.ip("bridge fdb show dev pdvx42");
    assert!(
        fdb.contains("00:00:00:00:00:00 dst 10.99.0.2")
            && fdb.contains("52:54:00:00:00:08 dst 10.99.0.3"),
        "{fdb}"
    );
    let nft = ns.ip("nft list table bridge paddock");
    assert!(
        nft.contains("iifname \"pdtapabc\" ip saddr != { 10.100.0.7, 192.168.0.0/16 } drop"),
        "{nft}"
    );
    let fdb = ns.ip("bridge fdb show dev pdtapabc");
    assert!(
        fdb.contains("52:54:00:00:00:07") && fdb.contains("static"),
        "{fdb}"
    );

    // Shrink the wanted set: stale entries go.
    let one: BTreeSet<FdbEntry> = [FdbEntry {
        mac: Mac::ZERO,
        dst: Ipv4Addr::new(10, 99, 0, 3),
    }]
    .into();
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let net = Net::connect().expect("netlink");
            let vx = net
                .link("pdvx42")
                .await
                .expect("links")
                .expect("vxlan")
                .index;
            net.sync_vxlan_fdb("pdvx42", vx, &one).await.expect("fdb");
            assert_eq!(net.vxlan_fdb(vx).await.expect("fdb"), one);
            paddock_net::guard::apply(&[])
                .await
                .expect("guards removed");
            for l in ["pdtapabc", "pdvx42", "pdbr42"] {
                net.delete(l).await.expect("delete");
                net.delete(l).await.expect("delete twice is fine");
            }
        })
    });
    let links = ns.ip("ip -o link show");
    assert!(!links.contains("pd"), "{links}");
    assert!(!ns.ip("nft list tables").contains("paddock"));
}
