//! Paddock's management API server: the Kubernetes API conventions
//! (discovery, CRUD, watch, patch, selectors, tables, OpenAPI) over the
//! [`paddock_store::Store`], behind TLS and bearer-token authentication.

pub mod agent_proxy;
pub mod api;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod backup;
pub mod binding;
pub mod bootstrap;
pub mod cache;
pub mod discovery;
pub mod duplicates;
pub mod error;
pub mod gc;
pub mod http;
pub mod join;
pub mod kubeconfig;
pub mod leader;
pub mod limits;
pub mod loopback;
pub mod metrics;
pub mod object;
pub mod openapi;
pub mod protobuf;
pub mod resources;
pub mod review;
pub mod route;
pub mod selector;
pub mod session;
pub mod system_secret;
pub mod table;
pub mod tasks;
pub mod tls;
pub mod versions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use paddock_store::{DynStore, EncryptedStore, EtcdOptions, EtcdStore, RedbStore, StoreOptions};
use tokio::net::TcpListener;

pub use api::Api;
pub use auth::{Authenticator, User};
pub use bootstrap::DataDir;

/// Shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    pub api: Api,
    pub auth: Arc<Authenticator>,
    pub clusters: Arc<kubeconfig::ClusterAccess>,
    pub tasks: tasks::Tasks,
    pub leadership: leader::Leadership,
    /// The store as it holds values (Secrets sealed), for backups.
    pub raw_store: DynStore,
    /// The fleet's gauges for `/metrics`.
    pub fleet: Arc<paddock_metrics::Fleet>,
    /// Where audited requests are recorded.
    pub audit: audit::AuditLog,
    /// See [`ServerConfig::console_watch_limit`].
    pub console_watch_limit: Duration,
}

/// Where the server keeps its objects.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// The embedded store in the data directory (one server).
    #[default]
    Embedded,
    /// An etcd cluster that several servers share.
    Etcd(EtcdOptions),
}

/// How often the server compacts etcd's history, and how far back it keeps
/// it: every change of the last interval stays watchable.
const ETCD_COMPACT_EVERY: Duration = Duration::from_secs(300);

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub listen: SocketAddr,
    /// Extra names and addresses for the serving certificate.
    pub sans: Vec<String>,
    pub bookmark_every: Duration,
    pub gc_resync: Duration,
    /// Changes kept for watch resume.
    pub history: usize,
    /// Also serve on this unix socket (for lab hosts in other network namespaces).
    pub unix_socket: Option<PathBuf>,
    /// The key that seals Secrets at rest; `<data>/secrets.key` when unset
    /// (made on first start).
    pub encryption_key_file: Option<PathBuf>,
    /// How workload cluster kubeconfigs are issued.
    pub clusters: kubeconfig::ClusterAccess,
    /// The watch cache that serves lists and watches; `None` serves every
    /// read from the store.
    pub watch_cache: Option<cache::CacheOptions>,
    /// How this server takes part in the leader election on etcd (with the
    /// embedded store it is the only server and always leads). Unset: a
    /// unique identity and the default timings.
    pub election: Option<leader::ElectionConfig>,
    /// How long a watch of a console session may last before the page
    /// opens it again ([`session::WATCH_LIMIT`] unless a test says less).
    pub console_watch_limit: Duration,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            store: StoreConfig::default(),
            listen,
            sans: Vec::new(),
            bookmark_every: Duration::from_secs(30),
            gc_resync: Duration::from_secs(300),
            history: StoreOptions::default().history,
            unix_socket: None,
            encryption_key_file: None,
            clusters: kubeconfig::ClusterAccess::default(),
            watch_cache: Some(cache::CacheOptions::default()),
            election: None,
            console_watch_limit: session::WATCH_LIMIT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("preparing data directory {0}")]
    DataDir(String, #[source] bootstrap::BootstrapError),
    #[error("opening the store")]
    Store(#[from] paddock_store::StoreError),
    #[error("TLS setup")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("cannot listen on unix socket {0}")]
    ListenUnix(String, #[source] std::io::Error),
}

/// The routes, given the shared state.
pub fn router(state: AppState) -> Router {
    let authed = Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::core_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::group_list))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_root))
        .route("/openapi/v3/api/{version}", get(openapi::v3_core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi::v3_group))
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            any(review::self_subject_access_review),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            any(review::subject_access_review),
        )
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            any(review::self_subject_review),
        )
        .route("/paddock/v1/backup", get(backup::get))
        .route("/metrics", get(metrics::handle))
        .route("/paddock/v1/hosts/{host}/metrics", get(metrics::host))
        .route("/paddock/v1/monitoring/targets", get(metrics::targets))
        .route("/paddock/v1/audit", get(audit::query))
        .route("/paddock/v1/kubernetes-versions", get(versions::handle))
        .route("/api/v1/{*rest}", any(http::resource))
        .route("/apis/{group}/{version}/{*rest}", any(http::resource))
        .fallback(|| async { error::ApiError::NoRoute })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_user,
        ))
        // Outside authentication: refusals are counted too.
        .layer(axum::middleware::from_fn(metrics::record))
        // Outside authentication: an oversized request is answered before
        // anything else reads it.
        .layer(axum::middleware::from_fn(limits::enforce))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/paddock/v1/join",
            axum::routing::post(join::handle).layer(axum::middleware::from_fn(limits::enforce)),
        )
        .route(
            "/console/session",
            axum::routing::post(session::sign_in)
                .get(session::current)
                .delete(session::sign_out)
                .layer(axum::middleware::from_fn(limits::enforce)),
        )
        .with_state(state)
        .merge(paddock_console::router())
        .merge(authed)
}

/// Ready when the store answers and every background task runs; else 503
/// with a line per check, as Kubernetes' `/readyz?verbose` writes them.
/// (Causes go to the log, not to this unauthenticated endpoint.)
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> (::http::StatusCode, String) {
    let mut lines = Vec::new();
    let mut ok = true;
    let store = tokio::time::timeout(Duration::from_secs(2), state.api.store.check()).await;
    match store {
        Ok(Ok(())) => lines.push("[+]store ok".to_owned()),
        Ok(Err(e)) => {
            tracing::error!(error = %error::chain(&e), "readiness: the store check failed");
            ok = false;
            lines.push("[-]store failed".to_owned());
        }
        Err(_) => {
            ok = false;
            lines.push("[-]store failed: no answer within 2s".to_owned());
        }
    }
    for t in state.tasks.states() {
        match t.ended {
            None => lines.push(format!("[+]{} ok", t.name)),
            Some(why) => {
                ok = false;
                lines.push(format!("[-]{} failed: task {why}", t.name));
            }
        }
    }
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    if ok {
        let body = if verbose {
            format!("{}\nreadyz check passed\n", lines.join("\n"))
        } else {
            "ok".to_owned()
        };
        (::http::StatusCode::OK, body)
    } else {
        (
            ::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\nreadyz check failed\n", lines.join("\n")),
        )
    }
}

/// A running server; dropping it does not stop it, [`Running::shutdown`] does.
pub struct Running {
    pub addr: SocketAddr,
    pub data: DataDir,
    pub api: Api,
    /// The supervised background tasks; run the server's other parts
    /// (controllers, gateway) here so that `/readyz` sees them.
    pub tasks: tasks::Tasks,
    /// The server's own client, for the parts that run in its process
    /// ([`loopback`]).
    pub loopback: kube::Client,
    /// The server's own client for the leader's loops: its writes are
    /// fenced by the leader's term, and refused when this server does not
    /// lead. Run those loops with [`Running::spawn_leader_loops`].
    pub controllers: kube::Client,
    /// Whether this server leads now.
    pub leadership: leader::Leadership,
    app: Router,
    tls: rustls::ServerConfig,
}

impl Running {
    pub fn shutdown(self) {
        self.tasks.shutdown();
    }

    /// Serves the API on one more listener (one made in another network
    /// namespace, say), as a supervised task named `name`.
    pub fn serve_also(
        &self,
        name: &'static str,
        listener: std::net::TcpListener,
    ) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let l = TcpListener::from_std(listener)?;
        self.tasks
            .spawn_loop(name, tls::serve(l, self.tls.clone(), self.app.clone()));
        Ok(())
    }

    /// Runs the loops `make` gives while this server leads, each a
    /// supervised task of its own name (as `/readyz` lists them).
    pub fn spawn_leader_loops<F>(&self, make: F)
    where
        F: Fn(&leader::Term) -> Vec<(&'static str, leader::LeaderLoop)> + Send + Sync + 'static,
    {
        let any = leader::Term {
            holder: String::new(),
            transitions: 0,
            fence: None,
        };
        // Futures do nothing until polled: this only reads the names.
        let names: Vec<&'static str> = make(&any).into_iter().map(|(n, _)| n).collect();
        let make = Arc::new(make);
        for (i, name) in names.into_iter().enumerate() {
            let make = make.clone();
            self.tasks.spawn_loop(
                name,
                leader::while_leader(self.leadership.clone(), name, move |term| {
                    make(term).into_iter().nth(i).map_or_else(
                        || Box::pin(std::future::pending()) as leader::LeaderLoop,
                        |(_, l)| l,
                    )
                }),
            );
        }
    }
}

/// This process's name in the leader election: host name and a random part.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "paddock".into());
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &id[..8])
}

/// Compacts etcd's history every `every` to the revision it had one
/// interval before, as kube-apiserver does: watchers and paged lists within
/// an interval resume; older ones get `410 Gone` and relist. Replicas that
/// compact the same revision do no harm.
async fn compact_etcd(etcd: Arc<EtcdStore>, every: Duration) {
    let mut previous = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Some(rev) = previous
            && let Err(e) = etcd.compact(rev).await
        {
            tracing::warn!(error = %error::chain(&e), revision = rev, "etcd compaction failed");
        }
        previous = match paddock_store::Store::current_revision(&*etcd).await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %error::chain(&e), "reading etcd's revision failed");
                None
            }
        };
    }
}

/// Prepares the data directory, opens the store and starts serving.
pub async fn start(config: ServerConfig) -> Result<Running, ServerError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Listen(config.listen, e))?;
    let data = DataDir::prepare(&config.data_dir, addr, &config.sans)
        .map_err(|e| ServerError::DataDir(config.data_dir.display().to_string(), e))?;
    let key_file = config
        .encryption_key_file
        .clone()
        .unwrap_or_else(|| data.root.join("secrets.key"));
    let mut etcd = None;
    let raw: DynStore = match &config.store {
        StoreConfig::Embedded => Arc::new(RedbStore::open(
            &data.store_dir(),
            StoreOptions {
                history: config.history,
            },
        )?),
        StoreConfig::Etcd(opts) => {
            let s = Arc::new(EtcdStore::connect(opts.clone()).await?);
            etcd = Some(s.clone());
            s
        }
    };
    let secrets: Vec<String> = resources::find("", "v1", "secrets")
        .map(|r| r.prefix(None))
        .into_iter()
        .collect();
    if !key_file.exists() {
        // A new key would make every sealed Secret unreadable: refuse.
        for prefix in &secrets {
            let page = raw.list(prefix, None, Some(1000), None).await?;
            if page
                .items
                .iter()
                .any(|kv| paddock_store::encrypted::is_sealed(&kv.value))
            {
                return Err(ServerError::DataDir(
                    config.data_dir.display().to_string(),
                    bootstrap::BootstrapError::Key(
                        key_file.display().to_string(),
                        "is missing, but the store holds Secrets sealed with a key: restore that key file (or pass --encryption-key-file)".into(),
                    ),
                ));
            }
        }
    }
    let key = bootstrap::sealing_key(&key_file)
        .map_err(|e| ServerError::DataDir(config.data_dir.display().to_string(), e))?;
    let store: DynStore = Arc::new(metrics::Metered(Arc::new(EncryptedStore::new(
        raw.clone(),
        key,
        secrets,
    ))));
    let mut api = Api::new(store.clone());
    api.bookmark_every = config.bookmark_every;
    let cache = config.watch_cache.clone().map(cache::WatchCache::new);
    api.cache.clone_from(&cache);
    bootstrap::ensure_system_namespaces(&api).await;
    let tasks = tasks::Tasks::default();
    let leadership = match &config.store {
        StoreConfig::Embedded => leader::Leadership::sole(),
        StoreConfig::Etcd(_) => leader::Leadership::candidate(),
    };
    let (audit_log, audit_writer) =
        audit::AuditLog::new(audit::AuditConfig::new(data.root.join("audit")));
    let state = AppState {
        api: api.clone(),
        auth: Arc::new(data.authenticator.clone()),
        clusters: Arc::new(config.clusters.clone()),
        console_watch_limit: config.console_watch_limit,
        tasks: tasks.clone(),
        leadership: leadership.clone(),
        raw_store: raw.clone(),
        fleet: Arc::new(paddock_metrics::Fleet::new()),
        audit: audit_log,
    };
    let fleet = state.fleet.clone();
    let tls = tls::server_config(&data.serving.cert_pem, &data.serving.key_pem)?;
    let app = router(state);
    let loopback = loopback::client(app.clone(), &data.authenticator);
    let controllers = loopback::client_as(app.clone(), &data.authenticator, loopback::CONTROLLERS);
    // Everything that can fail first: an error leaves no task running.
    let unix = match &config.unix_socket {
        Some(path) => {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ServerError::ListenUnix(path.display().to_string(), e));
                }
                _ => {}
            }
            Some(
                tokio::net::UnixListener::bind(path)
                    .map_err(|e| ServerError::ListenUnix(path.display().to_string(), e))?,
            )
        }
        None => None,
    };
    tasks.spawn_loop("serve", tls::serve(listener, tls.clone(), app.clone()));
    if let Some(ul) = unix {
        tasks.spawn_loop("serve-unix", tls::serve_unix(ul, tls.clone(), app.clone()));
    }
    if let Some(cache) = cache {
        tasks.spawn_loop("watch-cache", cache.run(store));
    }
    tasks.spawn_loop("audit-log", audit_writer);
    tasks.spawn_loop(
        "console-session-sweep",
        session::sweep_every(api.clone(), Duration::from_secs(600)),
    );
    tasks.spawn_loop(
        "fleet-metrics",
        metrics::refresh_fleet(
            api.clone(),
            fleet,
            leadership.clone(),
            data.serving.cert_pem.clone(),
            data.ca_pem.clone(),
        ),
    );
    if let Some(etcd) = etcd {
        tasks.spawn_loop("etcd-compactor", compact_etcd(etcd, ETCD_COMPACT_EVERY));
        let election = config
            .election
            .clone()
            .unwrap_or_else(|| leader::ElectionConfig::new(default_identity()));
        tracing::info!(
            identity = election.identity,
            "taking part in the leader election"
        );
        tasks.spawn_loop(
            "leader-election",
            leader::elect(api.clone(), loopback.clone(), election, leadership.clone()),
        );
    }
    let running = Running {
        addr,
        data,
        api: api.clone(),
        tasks,
        loopback,
        controllers,
        leadership,
        app,
        tls,
    };
    let (gc_api, resync) = (api, config.gc_resync);
    running.spawn_leader_loops(move |term| {
        vec![(
            "garbage-collector",
            Box::pin(gc::run(gc_api.fenced(term.fence.clone()), resync)) as leader::LeaderLoop,
        )]
    });
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "paddock server listening");
    Ok(running)
}
