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

/// One member: its name, URLs and directory.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    dir: PathBuf,
}

impl Member {
    /// Where the member keeps its data (its database and write-ahead log).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Where its output goes when [`LocalCluster`] runs it.
    pub fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

/// The plan of a local cluster: its PKI and members, written in its
/// directory so that a later run (the lab's next `dev up`) finds the same
/// one. [`LocalCluster`] runs it as child processes; the lab runs each
/// member detached with [`Layout::args`].
#[derive(Debug, Clone)]
pub struct Layout {
    pub pki: EtcdPki,
    pub members: Vec<Member>,
    initial: String,
}

/// The file that lists the members: `name client-url peer-url` per line.
const MEMBERS_FILE: &str = "members";

impl Layout {
    /// The layout in `dir`: the one written there before, or a new one of
    /// `size` members (a new CA, certificates and free ports).
    pub fn create_or_load(dir: &Path, size: usize) -> Result<Self> {
        if dir.join(MEMBERS_FILE).exists() {
            return Self::load(dir);
        }
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
        let mut list = String::new();
        for i in 0..size {
            let name = format!("etcd-{i}");
            let mdir = dir.join(&name);
            std::fs::create_dir_all(&mdir)
                .map_err(|e| EtcdError::Io(mdir.display().to_string(), e))?;
            let peer = ca.issue_peer(&name, &sans, validity)?;
            write(&mdir.join("peer.crt"), &peer.cert_pem)?;
            write(&mdir.join("peer.key"), &peer.key_pem)?;
            let m = Member {
                client_url: format!("https://127.0.0.1:{}", free_port()?),
                peer_url: format!("https://127.0.0.1:{}", free_port()?),
                name,
                dir: mdir,
            };
            list.push_str(&format!("{} {} {}\n", m.name, m.client_url, m.peer_url));
            members.push(m);
        }
        // Written last: a layout cut short is made again, not loaded.
        write(&dir.join(MEMBERS_FILE), &list)?;
        Ok(Self::new(pki, members))
    }

    fn load(dir: &Path) -> Result<Self> {
        let read = |f: &str| {
            let p = dir.join(f);
            std::fs::read_to_string(&p).map_err(|e| EtcdError::Io(p.display().to_string(), e))
        };
        let pki = EtcdPki {
            ca_pem: read("ca.crt")?,
            client: CertPair {
                cert_pem: read("client.crt")?,
                key_pem: read("client.key")?,
            },
            ca_file: dir.join("ca.crt"),
            client_cert_file: dir.join("client.crt"),
            client_key_file: dir.join("client.key"),
        };
        let members = read(MEMBERS_FILE)?
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (name, client_url, peer_url) = (f.next()?, f.next()?, f.next()?);
                Some(Member {
                    name: name.to_owned(),
                    client_url: client_url.to_owned(),
                    peer_url: peer_url.to_owned(),
                    dir: dir.join(name),
                })
            })
            .collect();
        Ok(Self::new(pki, members))
    }

    fn new(pki: EtcdPki, members: Vec<Member>) -> Self {
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            pki,
            members,
            initial,
        }
    }

    /// The command line of member `i`, the binary first.
    pub fn args(&self, i: usize, binary: &Path) -> Result<Vec<String>> {
        let m = self.members.get(i).ok_or(EtcdError::NoMember(i))?;
        let data = m.data_dir();
        // A member that has data rejoins; a new one joins the initial cluster.
        let state = if data.exists() { "existing" } else { "new" };
        let (cert, key) = (m.dir.join("peer.crt"), m.dir.join("peer.key"));
        let ca = &self.pki.ca_file;
        Ok(vec![
            binary.display().to_string(),
            format!("--name={}", m.name),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={}", m.client_url),
            format!("--advertise-client-urls={}", m.client_url),
            format!("--listen-peer-urls={}", m.peer_url),
            format!("--initial-advertise-peer-urls={}", m.peer_url),
            format!("--initial-cluster={}", self.initial),
            format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=paddock".into(),
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            format!("--trusted-ca-file={}", ca.display()),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", cert.display()),
            format!("--peer-key-file={}", key.display()),
            format!("--peer-trusted-ca-file={}", ca.display()),
            "--peer-client-cert-auth".into(),
            // Objects up to the API's 3 MiB request limit, sealed.
            "--max-request-bytes=4194304".into(),
            "--log-level=warn".into(),
        ])
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn tls(&self) -> TlsOptions {
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.pki.ca_pem))
            .identity(Identity::from_pem(
                &self.pki.client.cert_pem,
                &self.pki.client.key_pem,
            ))
    }

    /// A client of the whole cluster with Paddock's certificate.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(
            self.endpoints(),
            Some(
                ConnectOptions::new()
                    .with_tls(self.tls())
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(5))
                    .with_require_leader(true),
            ),
        )
        .await
    }

    /// Waits until each of `members` answers a linearizable read.
    pub async fn wait_healthy(&self, members: &[usize], within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        for &i in members {
            let m = self.members.get(i).ok_or(EtcdError::NoMember(i))?;
            loop {
                if self.member_answers(m).await {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(m.log()).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                    return Err(EtcdError::NotHealthy(m.name.clone(), within, tail));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn member_answers(&self, m: &Member) -> bool {
        let opts = ConnectOptions::new()
            .with_tls(self.tls())
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(2))
            .with_require_leader(true);
        let Ok(mut c) = Client::connect([m.client_url.as_str()], Some(opts)).await else {
            return false;
        };
        c.get("/health", None).await.is_ok()
    }
}

/// A cluster of etcd members on 127.0.0.1 run as child processes, TLS
/// between members and to clients, client certificates required. Dropping
/// it kills the members.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    pub pki: EtcdPki,
    layout: Layout,
    children: Vec<Option<Child>>,
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
        let layout = Layout::create_or_load(dir, size)?;
        let mut cluster = Self {
            binary,
            pki: layout.pki.clone(),
            children: (0..layout.members.len()).map(|_| None).collect(),
            layout,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        let all: Vec<usize> = (0..size).collect();
        cluster
            .layout
            .wait_healthy(&all, Duration::from_secs(60))
            .await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let args = self.layout.args(i, &self.binary)?;
        let m = &self.layout.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log())
            .map_err(|e| EtcdError::Io(m.log().display().to_string(), e))?;
        let err = log
            .try_clone()
            .map_err(|e| EtcdError::Io(m.log().display().to_string(), e))?;
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| EtcdError::Io(self.binary.display().to_string(), e))?;
        tracing::debug!(member = m.name, pid = child.id(), "etcd member started");
        self.children[i] = Some(child);
        Ok(())
    }

    /// The members' client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.layout.endpoints()
    }

    pub fn members(&self) -> &[Member] {
        &self.layout.members
    }

    /// A client of the whole cluster with Paddock's certificate.
    pub async fn client(&self) -> Result<Client, etcd_client::Error> {
        self.layout.client().await
    }

    fn signal(&self, i: usize, sig: Signal) -> Result<()> {
        let child = self.children.get(i).ok_or(EtcdError::NoMember(i))?;
        let Some(pid) = child.as_ref().map(Child::id) else {
            return Ok(());
        };
        let pid = i32::try_from(pid).map_err(|_| EtcdError::NoMember(i))?;
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| EtcdError::Signal(self.layout.members[i].name.clone(), e))
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGCONT)?;
        if let Some(mut c) = self.children.get_mut(i).and_then(Option::take) {
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
        for i in 0..self.children.len() {
            let _ = self.kill(i);
        }
    }
}
