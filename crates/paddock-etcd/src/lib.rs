//! A local etcd cluster on loopback: one CA, a peer certificate per member,
//! a client certificate for Paddock, and the member processes. The lab
//! (`paddock dev up --ha`) and the tests that need a real etcd run it; the
//! fault tests stop, kill and restart its members.
//!
//! The etcd binary is the one the node image builds from etcd's Go module
//! (`scripts/build-node-binaries.sh`, `etcd` in its output): see
//! [`find_binary`].

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use paddock_pki::{Ca, CertPair};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "no etcd binary: set PADDOCK_ETCD, or build it with scripts/build-node-binaries.sh (PADDOCK_NODE_BIN)"
    )]
    NoBinary,
    #[error("writing {0}")]
    Io(String, #[source] std::io::Error),
    #[error("making etcd's certificates")]
    Pki(#[from] paddock_pki::PkiError),
    #[error("etcd member {0} did not become healthy within {1:?}; its log: {2}")]
    NotHealthy(String, Duration, String),
    #[error("no member {0}")]
    NoMember(usize),
    #[error("signalling etcd member {0}")]
    Signal(String, #[source] nix::Error),
}

type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// Where the etcd binary is: `$PADDOCK_ETCD`, else `etcd` in
/// `$PADDOCK_NODE_BIN` (default `/var/cache/paddock/node-bin`), else `etcd`
/// on the `PATH`.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PADDOCK_ETCD") {
        return Ok(PathBuf::from(p));
    }
    let node_bin = std::env::var_os("PADDOCK_NODE_BIN").map_or_else(
        || PathBuf::from("/var/cache/paddock/node-bin"),
        PathBuf::from,
    );
    let built = node_bin.join("etcd");
    if built.is_file() {
        return Ok(built);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or(EtcdError::NoBinary)
}

/// The certificates of a local etcd cluster, as files in its directory.
#[derive(Debug, Clone)]
pub struct EtcdPki {
    pub ca_pem: String,
    /// What Paddock presents to etcd.
    pub client: CertPair,
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

/// One member: its name, URLs, data directory and (while it runs) process.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// Where the member keeps its data (its database and write-ahead log).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

/// A cluster of etcd members on 127.0.0.1, TLS between members and to
/// clients, client certificates required. Dropping it kills the members.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    pub pki: EtcdPki,
    members: Vec<Member>,
    initial: String,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| EtcdError::Io("a free port".into(), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| EtcdError::Io("a free port".into(), e))
}

fn write(path: &Path, data: &str) -> Result<()> {
    std::fs::write(path, data).map_err(|e| EtcdError::Io(path.display().to_string(), e))
}

impl LocalCluster {
    /// Makes the PKI and starts `size` members under `dir`, then waits until
    /// the cluster has a leader and answers.
    pub async fn start(dir: &Path, size: usize) -> Result<Self> {
        let binary = find_binary()?;
        std::fs::create_dir_all(dir).map_err(|e| EtcdError::Io(dir.display().to_string(), e))?;
        let ca = Ca::generate("paddock-etcd-ca")?;
        let validity = Duration::from_secs(365 * 24 * 3600);
        let client = ca.issue_client("paddock-server", &[], validity)?;
        let pki = EtcdPki {
            ca_pem: ca.cert_pem().to_owned(),
            client: client.clone(),
            ca_file: dir.join("ca.crt"),
            client_cert_file: dir.join("client.crt"),
            client_key_file: dir.join("client.key"),
        };
        write(&pki.ca_file, &pki.ca_pem)?;
        write(&pki.client_cert_file, &client.cert_pem)?;
        write(&pki.client_key_file, &client.key_pem)?;
        let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("etcd-{i}");
            let mdir = dir.join(&name);
            std::fs::create_dir_all(&mdir)
                .map_err(|e| EtcdError::Io(mdir.display().to_string(), e))?;
            let peer = ca.issue_peer(&name, &sans, validity)?;
            write(&mdir.join("peer.crt"), &peer.cert_pem)?;
            write(&mdir.join("peer.key"), &peer.key_pem)?;
            members.push(Member {
                client_url: format!("https://127.0.0.1:{}", free_port()?),
                peer_url: format!("https://127.0.0.1:{}", free_port()?),
                name,
                dir: mdir,
                child: None,
            });
        }
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            binary,
            pki,
            members,
            initial,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let (ca, initial, binary) = (
            self.pki.ca_file.clone(),
            self.initial.clone(),
            self.binary.clone(),
        );
        let m = self.members.get_mut(i).ok_or(EtcdError::NoMember(i))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log())
            .map_err(|e| EtcdError::Io(m.log().display().to_string(), e))?;
        let err = log
            .try_clone()
            .map_err(|e| EtcdError::Io(m.log().display().to_string(), e))?;
        let data = m.dir.join("data");
        // A member that has data rejoins; a new one joins the initial cluster.
        let state = if data.exists() { "existing" } else { "new" };
        let (cert, key) = (m.dir.join("peer.crt"), m.dir.join("peer.key"));
        let child = Command::new(&binary)
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", m.client_url))
            .arg(format!("--advertise-client-urls={}", m.client_url))
            .arg(format!("--listen-peer-urls={}", m.peer_url))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url))
            .arg(format!("--initial-cluster={initial}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=paddock")
            .arg(format!("--cert-file={}", cert.display()))
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--trusted-ca-file={}", ca.display()))
            .arg("--client-cert-auth")
            .arg(format!("--peer-cert-file={}", cert.display()))
            .arg(format!("--peer-key-file={}", key.display()))
            .arg(format!("--peer-trusted-ca-file={}", ca.display()))
            .arg("--peer-client-cert-auth")
            // Objects up to the API's 3 MiB request limit, sealed.
            .arg("--max-request-bytes=4194304")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| EtcdError::Io(binary.display().to_string(), e))?;
        tracing::debug!(member = m.name, pid = child.id(), "etcd member started");
        m.child = Some(child);
        Ok(())
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A client of the whole cluster with Paddock's certificate.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.pki.ca_pem))
            .identity(Identity::from_pem(
                &self.pki.client.cert_pem,
                &self.pki.client.key_pem,
            ));
        Client::connect(
            self.endpoints(),
            Some(
                ConnectOptions::new()
                    .with_tls(tls)
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5))
                    .with_require_leader(true),
            ),
        )
        .await
    }

    /// Waits until every running member answers a linearizable read.
    pub async fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                if self.member_answers(m).await {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(m.log()).unwrap_or_default();
                    let tail: String = log
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n");
                    return Err(EtcdError::NotHealthy(m.name.clone(), within, tail));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn member_answers(&self, m: &Member) -> bool {
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.pki.ca_pem))
            .identity(Identity::from_pem(
                &self.pki.client.cert_pem,
                &self.pki.client.key_pem,
            ));
        let opts = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(2))
            .with_require_leader(true);
        let Ok(mut c) = Client::connect([m.client_url.as_str()], Some(opts)).await else {
            return false;
        };
        c.get("/health", None).await.is_ok()
    }

    fn signal(&self, i: usize, sig: Signal) -> Result<()> {
        let m = self.members.get(i).ok_or(EtcdError::NoMember(i))?;
        let Some(pid) = m.pid() else { return Ok(()) };
        let pid = i32::try_from(pid).map_err(|_| EtcdError::NoMember(i))?;
        kill(Pid::from_raw(pid), sig).map_err(|e| EtcdError::Signal(m.name.clone(), e))
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGCONT)?;
        let m = self.members.get_mut(i).ok_or(EtcdError::NoMember(i))?;
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        Ok(())
    }

    /// Freezes member `i` (SIGSTOP): it holds its sockets but answers nothing.
    pub fn pause(&self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGSTOP)
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGCONT)
    }

    /// Starts member `i` again on its data (after [`LocalCluster::kill`]).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i)?;
        self.spawn(i)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill(i);
        }
    }
}
