//! Prints the bootstrap data of a sample node: `cargo run -p paddock-bootstrap --example render [init|join|worker]`.
use paddock_bootstrap::{ClusterPki, DEFAULT_CNI_MANIFEST, Node, Role, render};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let role = match std::env::args().nth(1).as_deref() {
        Some("join") => Role::JoinControlPlane,
        Some("worker") => Role::Worker,
        _ => Role::InitControlPlane,
    };
    let pki = ClusterPki::generate("demo")?;
    let node = Node {
        cluster: "demo".into(),
        org: "acme".into(),
        hostname: "demo-cp-abcde".into(),
        role,
        address: "10.64.0.10/24".into(),
        mac: "52:54:00:03:e8:0a".into(),
        gateway: "10.64.0.1".parse()?,
        mtu: 1450,
        kubernetes_version: "1.31.2".into(),
        pod_cidr: "192.168.0.0/16".into(),
        service_cidr: "10.96.0.0/12".into(),
        api_name: "demo.acme.paddock.local".into(),
        cni_manifest: DEFAULT_CNI_MANIFEST.into(),
    };
    let d = render(&node, &pki)?;
    println!("{}\n--- network-config\n{}", d.user_data, d.network_config);
    Ok(())
}
