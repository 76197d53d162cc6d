//! Any datagram through the DHCP server's parsing and its answer, in full
//! and proxy mode, for a known and an unknown machine, on both ports: no
//! panic, and every answer encodes and decodes again.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use dhcproto::Encodable;
use libfuzzer_sys::fuzz_target;
use paddock_netboot::dhcp::{self, Boot, Config, Lookup, Mode, Pool};

fuzz_target!(
    init: {
        // `dhcp::decode` catches panics inside dhcproto (see its comment);
        // libfuzzer-sys's hook would abort on them first. A panic anywhere
        // else still fails the run: libfuzzer-sys catches what unwinds
        // out of the target.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| {
    let Some(req) = dhcp::decode(data) else { return };
    let _ = dhcp::firmware(&req);
    let pool = Pool {
        first: Ipv4Addr::new(10, 0, 0, 100),
        last: Ipv4Addr::new(10, 0, 0, 200),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 1)],
        lease: Duration::from_secs(3600),
    };
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 68);
    for mode in [Mode::Full(pool), Mode::Proxy] {
        let cfg = Config {
            server: Ipv4Addr::new(10, 0, 0, 2),
            mode,
            boot: Boot {
                http_base: "http://10.0.0.2:8080".into(),
                ..Boot::default()
            },
        };
        for found in [
            Lookup::Unknown,
            Lookup::Known { address: None },
            Lookup::Known { address: Some(Ipv4Addr::new(10, 0, 0, 150)) },
        ] {
            for port in [67, dhcp::PXE_PORT] {
                let Some((reply, _)) = dhcp::answer(&cfg, &req, from, port, &found) else {
                    continue;
                };
                assert!(found != Lookup::Unknown, "an unknown machine was answered");
                let bytes = reply.to_vec().expect("an answer encodes");
                assert!(dhcp::decode(&bytes).is_some(), "an answer decodes");
            }
        }
    }
    }
);
