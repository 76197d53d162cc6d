//! Any datagram sent to the TFTP server (async-tftp, whose packet parser
//! is private: it is reached through the socket): the server neither
//! panics nor stops serving, which a real read request checks after each
//! input.
#![no_main]

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use paddock_netboot::tftp::Tftp;

struct Server {
    addr: SocketAddr,
    /// Sends the inputs; kept, so that no later socket inherits its port
    /// (and the server's replies to an earlier input).
    fuzz: UdpSocket,
    /// Make the read requests that check the server still serves, in
    /// turn: by a socket's next turn the server has closed its transfer
    /// (it ignores a request from a peer whose transfer it has not).
    checks: Vec<UdpSocket>,
    turn: std::sync::atomic::AtomicUsize,
    _rt: tokio::runtime::Runtime,
    _tftp: Tftp,
    _root: std::path::PathBuf,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("paddock-fuzz-tftp-{}", std::process::id()));
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("f"), b"paddock").expect("file");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let tftp = rt
            .block_on(Tftp::start("127.0.0.1:0".parse().expect("addr"), &root))
            .expect("tftp");
        let fuzz = UdpSocket::bind("127.0.0.1:0").expect("socket");
        fuzz.set_nonblocking(true).expect("nonblocking");
        let checks = (0..16)
            .map(|_| {
                let c = UdpSocket::bind("127.0.0.1:0").expect("socket");
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .expect("timeout");
                c
            })
            .collect();
        Server {
            addr: tftp.addr(),
            fuzz,
            checks,
            turn: Default::default(),
            _rt: rt,
            _tftp: tftp,
            _root: root,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = server();
    let mut buf = [0u8; 2048];
    // What earlier inputs were answered with does not matter.
    while s.fuzz.recv_from(&mut buf).is_ok() {}
    let _ = s.fuzz.send_to(data, s.addr);
    // Still serving: a read request of the file gets its one block within
    // 5 s (asked again every 200 ms; anything else that arrives is a late
    // retransmission of an earlier check's transfer).
    let check =
        &s.checks[s.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % s.checks.len()];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    'check: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the server stopped serving"
        );
        check
            .send_to(b"\x00\x01f\x00octet\x00", s.addr)
            .expect("send");
        while let Ok((n, from)) = check.recv_from(&mut buf) {
            if &buf[..n] == b"\x00\x03\x00\x01paddock" {
                // Acknowledged, so that the transfer ends.
                let _ = check.send_to(b"\x00\x04\x00\x01", from);
                break 'check;
            }
        }
    }
});
