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
        Server { addr: tftp.addr(), _rt: rt, _tftp: tftp, _root: root }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = server();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
    sock.set_read_timeout(Some(Duration::from_millis(2))).expect("timeout");
    let _ = sock.send_to(data, s.addr);
    let mut buf = [0u8; 1024];
    let _ = sock.recv_from(&mut buf);
    // Still serving: a read request of the file gets its one block.
    let rrq = b"\x00\x01f\x00octet\x00";
    let check = UdpSocket::bind("127.0.0.1:0").expect("socket");
    check.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    check.send_to(rrq, s.addr).expect("send");
    let (n, from) = check.recv_from(&mut buf).expect("the server still answers");
    assert_eq!(&buf[..n], b"\x00\x03\x00\x01paddock", "DATA block 1");
    // Acknowledge it, so that the transfer ends.
    let _ = check.send_to(b"\x00\x04\x00\x01", from);
});
