//! Whatever a BMC sends back: the IPMI driver (the `ipmi` crate's RMCP+
//! parsing, private to it, reached through the socket) returns an error or
//! an answer within its timeout, and never panics. A fake BMC on loopback
//! answers every datagram with the input.
#![no_main]

use std::net::UdpSocket;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use paddock_bmc::{Credentials, Options, TlsVerify};

struct Fake {
    port: u16,
    reply: Arc<Mutex<Vec<u8>>>,
    rt: tokio::runtime::Runtime,
}

fn fake() -> &'static Fake {
    static F: OnceLock<Fake> = OnceLock::new();
    F.get_or_init(|| {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let port = sock.local_addr().expect("addr").port();
        let reply: Arc<Mutex<Vec<u8>>> = Arc::default();
        let r = reply.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = sock.recv_from(&mut buf) {
                let out = r.lock().map(|v| v.clone()).unwrap_or_default();
                let _ = sock.send_to(&out, from);
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Fake { port, reply, rt }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fake();
    if let Ok(mut r) = f.reply.lock() {
        *r = data.to_vec();
    }
    let timeout = Duration::from_millis(200);
    let bmc = paddock_bmc::connect(
        &format!("ipmi://127.0.0.1:{}", f.port),
        Credentials {
            username: "admin".into(),
            password: "password".into(),
        },
        Options {
            timeout,
            tls: TlsVerify::SystemRoots,
        },
    )
    .expect("an ipmi:// address connects lazily");
    let _ = f.rt.block_on(async {
        let r = bmc.power_state().await;
        bmc.close().await;
        r
    });
});
