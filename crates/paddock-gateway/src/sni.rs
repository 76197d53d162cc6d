//! Reading the server name a TLS client asks for, without terminating TLS:
//! the bytes are fed to rustls' `Acceptor` (which parses the ClientHello)
//! and kept, to be replayed to the backend untouched.

use std::io;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A ClientHello larger than this is refused.
const MAX_HELLO: usize = 64 * 1024;
/// How long a client has to send its ClientHello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS alert record: fatal `unrecognized_name`.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// What the client sent before we decided where it goes.
pub struct Hello {
    /// The SNI server name, lowercased, without a trailing dot.
    pub server_name: Option<String>,
    /// Every byte read so far.
    pub bytes: Vec<u8>,
}

/// Reads until the ClientHello is complete.
pub async fn read_hello(stream: &mut TcpStream) -> io::Result<Hello> {
    tokio::time::timeout(HELLO_TIMEOUT, read(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))?
}

async fn read(stream: &mut TcpStream) -> io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the ClientHello",
            ));
        }
        bytes.extend_from_slice(&buf[..n]);
        if bytes.len() > MAX_HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        acceptor.read_tls(&mut &buf[..n])?;
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted
                    .client_hello()
                    .server_name()
                    .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
                return Ok(Hello { server_name, bytes });
            }
            Ok(None) => continue,
            Err((e, _alert)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a TLS ClientHello: {e}"),
                ));
            }
        }
    }
}

/// Tells the client that no server answers to its name, and closes.
pub async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(&ALERT_UNRECOGNIZED_NAME).await;
    let _ = stream.shutdown().await;
}
