//! TCP plumbing: sockets made inside a cluster's namespace, health checks
//! of the cluster's VMs, and forwarding a client to the first healthy
//! backend that answers.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// How long a connection to a VM may take before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed checks before a backend is out; one passed check brings it back.
pub const FALL: u32 = 2;

/// Connects to `addr` from inside the namespace at `netns`. Only the
/// socket is made inside it (on a short-lived thread); the connect itself is
/// asynchronous, so no thread waits on a VM that does not answer.
pub async fn connect_in(
    netns: &Path,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let sock = paddock_net::netns::run_in(netns, || {
        if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    })?;
    let s = tokio::time::timeout(timeout, sock.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{addr} did not answer")))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Waits a little after a failed accept (out of file descriptors, say)
/// instead of spinning.
pub async fn accept_failed(e: &io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A listener bound inside the namespace at `netns`.
pub fn listen_in(netns: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    let std = paddock_net::netns::run_in(netns, || std::net::TcpListener::bind(addr))?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// Health of a cluster's backends, by address, as the checks last saw it.
#[derive(Debug, Default)]
pub struct Health {
    state: Mutex<HashMap<SocketAddr, u32>>,
}

impl Health {
    /// Healthy: checked at least once, and fewer than [`FALL`] failures in a row.
    pub fn healthy(&self, a: &SocketAddr) -> bool {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.get(a).copied())
            .is_some_and(|fails| fails < FALL)
    }

    fn record(&self, a: SocketAddr, ok: bool) {
        if let Ok(mut s) = self.state.lock() {
            let fails = s.entry(a).or_insert(FALL);
            *fails = if ok { 0 } else { fails.saturating_add(1) };
        }
    }

    fn retain(&self, keep: &[SocketAddr]) {
        if let Ok(mut s) = self.state.lock() {
            s.retain(|a, _| keep.contains(a));
        }
    }
}

/// What a cluster's forwarders send to: the addresses, refreshed by the
/// gateway's reconcile loop.
#[derive(Debug, Default)]
pub struct Pool {
    pub addrs: Mutex<Vec<SocketAddr>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    pub fn set(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        if let Ok(mut a) = self.addrs.lock() {
            *a = addrs;
        }
    }

    pub fn all(&self) -> Vec<SocketAddr> {
        self.addrs.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Healthy addresses first, in round-robin order; then the others (a
    /// check may be behind), so a request still has somewhere to go.
    fn order(&self, health: &Health) -> Vec<SocketAddr> {
        let all = self.all();
        if all.is_empty() {
            return all;
        }
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % all.len();
        let rotated: Vec<SocketAddr> = all[start..].iter().chain(&all[..start]).copied().collect();
        let (mut up, down): (Vec<_>, Vec<_>) = rotated.into_iter().partition(|a| health.healthy(a));
        up.extend(down);
        up
    }
}

/// Checks every address of `pools` from inside `netns` every `every`.
pub async fn check_loop(
    netns: PathBuf,
    pools: Vec<Arc<Pool>>,
    health: Arc<Health>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let addrs: Vec<SocketAddr> = pools.iter().flat_map(|p| p.all()).collect();
        health.retain(&addrs);
        let checks = addrs.iter().map(|a| {
            let ns = netns.clone();
            let a = *a;
            async move { (a, connect_in(&ns, a, CONNECT_TIMEOUT).await.is_ok()) }
        });
        for (a, ok) in futures::future::join_all(checks).await {
            let was = health.healthy(&a);
            health.record(a, ok);
            if was != health.healthy(&a) {
                tracing::info!(backend = %a, healthy = !was, "backend health changed");
            }
        }
    }
}

/// Connects to the first backend of `pool` that answers, healthy ones first.
pub async fn dial(netns: &Path, pool: &Pool, health: &Health) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no backends");
    for a in pool.order(health) {
        match connect_in(netns, a, CONNECT_TIMEOUT).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::debug!(backend = %a, error = %e, "backend did not answer");
                last = e;
            }
        }
    }
    Err(last)
}

/// TCP keepalive on spliced connections: a peer that vanished without a
/// word (a VM on a host that died, a client whose network went) is found
/// after [`KEEPALIVE_IDLE`] plus three unanswered probes, and its
/// connection closed. Idle but live connections, such as `kubectl get
/// --watch`, are kept: an idle timeout would cut them.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// Sets what a spliced connection needs: no Nagle delay (against delayed
/// ACKs it costs a TLS handshake 40 ms per round trip) and keepalive.
pub fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    socket2::SockRef::from(s).set_tcp_keepalive(&ka)
}

/// A connection of `cluster` (`<org>/<name>`, or `management`), counted in
/// `paddock_gateway_connections_open` while it lives.
struct Open(paddock_metrics::ClusterLabels);

impl Open {
    fn new(cluster: &str) -> Self {
        let l = paddock_metrics::ClusterLabels {
            cluster: cluster.to_owned(),
        };
        let g = &paddock_metrics::global().gateway;
        g.connections.get_or_create(&l).inc();
        g.open.get_or_create(&l).inc();
        Self(l)
    }

    /// Counts bytes carried (added when the connection ends).
    fn carried(&self, inbound: u64, outbound: u64) {
        let g = &paddock_metrics::global().gateway;
        for (direction, n) in [("in", inbound), ("out", outbound)] {
            g.bytes
                .get_or_create(&paddock_metrics::TrafficLabels {
                    cluster: self.0.cluster.clone(),
                    direction: direction.to_owned(),
                })
                .inc_by(n);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        paddock_metrics::global()
            .gateway
            .open
            .get_or_create(&self.0)
            .dec();
    }
}

/// Copies both ways until either side closes; `first` is sent ahead.
/// Counted for `cluster` in the gateway's metrics.
pub async fn splice(mut client: TcpStream, mut upstream: TcpStream, first: &[u8], cluster: &str) {
    let open = Open::new(cluster);
    for s in [&client, &upstream] {
        if let Err(e) = tune(s) {
            tracing::debug!(error = %e, "cannot tune a spliced connection");
        }
    }
    if !first.is_empty() && upstream.write_all(first).await.is_err() {
        return;
    }
    if let Ok((inbound, outbound)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    {
        open.carried(inbound + first.len() as u64, outbound);
    }
}

/// Resolves when the cluster's presence on the gateway ends: its
/// [`watch::Sender`] is dropped. Connections to the cluster end with it.
pub async fn ended(mut alive: watch::Receiver<()>) {
    while alive.changed().await.is_ok() {}
}

/// Accepts on `listener` and forwards each connection to `pool`, until
/// `alive`'s sender goes.
pub async fn serve_pool(
    listener: TcpListener,
    netns: PathBuf,
    pool: Arc<Pool>,
    health: Arc<Health>,
    alive: watch::Receiver<()>,
    cluster: String,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let (ns, pool, health, alive, cluster) = (
            netns.clone(),
            pool.clone(),
            health.clone(),
            alive.clone(),
            cluster.clone(),
        );
        tokio::spawn(async move {
            let forward = async {
                match dial(&ns, &pool, &health).await {
                    Ok(up) => splice(client, up, &[], &cluster).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "no backend for connection"),
                }
            };
            tokio::select! {
                _ = forward => {}
                _ = ended(alive) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spliced_connection_is_counted_for_its_cluster() {
        use tokio::io::AsyncReadExt;
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let back = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (fa, ba) = (
            front.local_addr().expect("addr"),
            back.local_addr().expect("addr"),
        );
        let gateway = tokio::spawn(async move {
            let (client, _) = front.accept().await.expect("accept");
            let up = TcpStream::connect(ba).await.expect("upstream");
            splice(client, up, b"hello ", "acme/unit").await;
        });
        let mut client = TcpStream::connect(fa).await.expect("connect");
        let (mut server, _) = back.accept().await.expect("accept upstream");
        client.write_all(b"world").await.expect("write");
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello world");
        server.write_all(b"ok").await.expect("answer");
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("read answer");
        drop(client);
        gateway.await.expect("gateway");
        let text = paddock_metrics::encode(None);
        for line in [
            "paddock_gateway_connections_total{cluster=\"acme/unit\"} 1",
            "paddock_gateway_connections_open{cluster=\"acme/unit\"} 0",
            "paddock_gateway_bytes_total{cluster=\"acme/unit\",direction=\"in\"} 11",
            "paddock_gateway_bytes_total{cluster=\"acme/unit\",direction=\"out\"} 2",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[tokio::test]
    async fn spliced_connections_get_keepalive_and_no_delay() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (c, (a, _)) = (c.expect("connect"), accepted.expect("accept"));
        for s in [&c, &a] {
            tune(s).expect("tune");
            let r = socket2::SockRef::from(s);
            assert!(r.keepalive().expect("SO_KEEPALIVE"));
            assert_eq!(
                r.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                KEEPALIVE_IDLE
            );
            assert_eq!(r.tcp_keepalive_retries().expect("TCP_KEEPCNT"), 3);
            assert!(s.nodelay().expect("TCP_NODELAY"));
        }
    }
}
