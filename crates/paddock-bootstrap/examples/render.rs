//! Prints the bootstrap data of a sample node: `cargo run -p paddock-bootstrap --example render [init|join|worker]`.
use paddock_bootstrap::{ClusterPki, Node, Role, render};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let role = match std::env::args().nth(1).as_deref() {
        Some("join") => Role::JoinControlPlane,
        Some("worker") => Role::Worker,
        _ => Role::InitControlPlane,
    };
    let pki = ClusterPki::generate("demo")?;
    let node = Node::sample(role, "1.31.2");
    let d = render(&node, &pki)?;
    println!("{}\n--- network-config\n{}", d.user_data, d.network_config);
    Ok(())
}
