//! What the gateway costs: a TLS connection (handshake + one GET) to a
//! cluster's API through the gateway's SNI port, beside the same connection
//! made straight to the control-plane VM from inside the cluster's gateway
//! namespace (the floor); and an HTTP GET through an ingress port beside the
//! same GET straight to the worker. Same run, interleaved, real VMs (TCG).
//! Needs root, QEMU and the dev image. `cargo bench -p paddock --bench gateway`

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lab::{self, Lab};
use kube::api::{Api, ListParams};
use paddock_api::{Cluster, ClusterPhase, Machine, MachineRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUNDS: usize = 100;
const GW: &str = "127.79.0.1:16443";
const DOMAIN: &str = "paddock.bench";

fn connect_in(ns: &Path, addr: SocketAddr) -> TcpStream {
    let s = paddock_net::netns::run_in(ns, || std::net::TcpStream::connect(addr))
        .expect("connect in netns");
    s.set_nonblocking(true).expect("nonblocking");
    TcpStream::from_std(s).expect("tokio stream")
}

async fn tls_get(tcp: TcpStream, tls: &tokio_rustls::TlsConnector, name: &str) {
    let sn = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let mut s = tls.connect(sn, tcp).await.expect("TLS handshake verifies");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    assert!(
        buf.starts_with(b"HTTP/1.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..buf.len().min(80)])
    );
}

async fn http_get(mut tcp: TcpStream) {
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf).contains("paddock-dev ingress"));
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, via: &mut [Duration], floor: &mut [Duration]) {
    let (g50, g99, f50, f99) = (
        pct(via, 0.5),
        pct(via, 0.99),
        pct(floor, 0.5),
        pct(floor, 0.99),
    );
    println!(
        "{what}: through the gateway p50 {:.2} ms p99 {:.2} ms; direct p50 {:.2} ms p99 {:.2} ms; ratio p50 {:.2}x, added {:.2} ms",
        g50.as_secs_f64() * 1e3,
        g99.as_secs_f64() * 1e3,
        f50.as_secs_f64() * 1e3,
        f99.as_secs_f64() * 1e3,
        g50.as_secs_f64() / f50.as_secs_f64(),
        (g50.as_secs_f64() - f50.as_secs_f64()) * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let image = lab::dev_image();
    let s = common::TestServer::start_with(|c| {
        c.unix_socket = Some(c.data_dir.join("api.sock"));
        c.clusters.base_domain = DOMAIN.into();
    })
    .await;
    let socket = s.data_dir().join("api.sock");
    let mut lab = Lab::new(s.dir.path(), 2);
    let underlay = lab.add_management();
    let s = s.with_controllers(paddock_controllers::Config {
        base_domain: DOMAIN.into(),
        gateway_vtep: Some("10.77.0.2".parse().expect("ip")),
        initialization_recorded: true,
        ..Default::default()
    });
    let prefix = lab.gateway_prefix();
    let gw_addr: SocketAddr = GW.parse().expect("addr");
    let gateway = tokio::spawn(paddock_gateway::run(
        s.client.clone(),
        lab::gateway_config(
            &lab,
            underlay,
            gw_addr,
            DOMAIN,
            s.running.as_ref().expect("running").addr,
        ),
    ));
    s.kubectl_ok(&["create", "namespace", "acme"]);
    lab::create_dev_image(&s.client, &image).await;
    for h in 0..2 {
        lab.start_agent(h, &s, &socket, &image);
    }
    s.apply(
        "apiVersion: paddock.io/v1alpha1\nkind: Cluster\nmetadata: {name: demo, namespace: acme}\nspec:\n  controlPlane: {replicas: 1, memory: 512Mi, disk: 2Gi}\n  nodePools:\n  - {name: default, replicas: 1, cpu: 1, memory: 256Mi, disk: 2Gi}\n",
    );
    let clusters: Api<Cluster> = Api::namespaced(s.client.clone(), "acme");
    let c = common::eventually(240, "demo Ready with a healthy ingress", || async {
        let c = clusters.get("demo").await.ok()?;
        let st = c.status.as_ref()?;
        (st.phase == Some(ClusterPhase::Ready)
            && st.ingress.as_ref()?.backends.iter().all(|b| b.healthy)
            && !st.ingress.as_ref()?.backends.is_empty())
        .then_some(c)
    })
    .await;
    let ca = s
        .secret_data("acme", "demo-pki", "ca.crt")
        .expect("cluster CA")
        .into_bytes();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.expect("cert")).expect("root");
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ));
    let machines: Api<Machine> = Api::namespaced(s.client.clone(), "acme");
    let ms = machines
        .list(&ListParams::default())
        .await
        .expect("machines")
        .items;
    let ip = |role: MachineRole| -> std::net::IpAddr {
        ms.iter()
            .find(|m| m.spec.role == role)
            .and_then(|m| m.spec.ip.as_deref()?.split('/').next()?.parse().ok())
            .expect("ip")
    };
    let (cp, worker) = (ip(MachineRole::ControlPlane), ip(MachineRole::Worker));
    let vni = c
        .status
        .as_ref()
        .and_then(|s| s.overlay.as_ref())
        .expect("overlay")
        .vni;
    let ns: PathBuf = paddock_net::netns::path(&format!("{prefix}{vni}"));
    let name = format!("demo.acme.{DOMAIN}");
    let ingress: SocketAddr = SocketAddr::new(
        gw_addr.ip(),
        c.status
            .as_ref()
            .and_then(|s| s.ingress.as_ref())
            .expect("ingress")
            .http_port,
    );

    // Warm up, then interleave.
    tls_get(TcpStream::connect(gw_addr).await.expect("gw"), &tls, &name).await;
    let (mut api_gw, mut api_direct, mut ing_gw, mut ing_direct) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        tls_get(TcpStream::connect(gw_addr).await.expect("gw"), &tls, &name).await;
        api_gw.push(t.elapsed());
        let t = Instant::now();
        tls_get(connect_in(&ns, SocketAddr::new(cp, 6443)), &tls, &name).await;
        api_direct.push(t.elapsed());
        let t = Instant::now();
        http_get(TcpStream::connect(ingress).await.expect("ingress")).await;
        ing_gw.push(t.elapsed());
        let t = Instant::now();
        http_get(connect_in(&ns, SocketAddr::new(worker, 30080))).await;
        ing_direct.push(t.elapsed());
    }
    println!("gateway bench: {ROUNDS} rounds, 1 control plane + 1 worker VM (TCG), interleaved");
    report(
        "cluster API (TLS handshake + GET)",
        &mut api_gw,
        &mut api_direct,
    );
    report("ingress (HTTP GET)", &mut ing_gw, &mut ing_direct);

    s.kubectl_ok(&["-n", "acme", "delete", "cluster", "demo"]);
    common::eventually(60, "gateway namespaces removed", || async {
        paddock_net::netns::list(&prefix).is_empty().then_some(())
    })
    .await;
    gateway.abort();
}
