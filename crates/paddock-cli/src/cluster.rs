//! `paddock cluster …`: create, list, get, scale and delete workload clusters.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use paddock_api::cluster::{ControlPlaneSpec, NodePool};
use paddock_api::{Cluster, ClusterPhase, ClusterSpec, Memory};

use crate::output::{Format, age, print_data, table};
use crate::{CliError, CliResult, Exit};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster from flags or from a manifest (-f).
    Create(CreateArgs),
    /// List clusters.
    List {
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        /// All organizations.
        #[arg(short = 'A', long = "all-orgs", conflicts_with = "org")]
        all: bool,
    },
    /// Show one cluster.
    Get {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
    },
    /// Change the number of workers of a node pool.
    Scale {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        #[arg(long)]
        workers: u32,
        /// Node pool to scale (the only pool when omitted).
        #[arg(long)]
        pool: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print a kubeconfig for the cluster's Kubernetes API: a short-lived
    /// client certificate (you as the user, --group as groups), through the gateway.
    Kubeconfig {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        /// How long the certificate is valid, such as 8h or 30m (the server caps it).
        #[arg(long)]
        ttl: Option<String>,
        /// Kubernetes group for the certificate (its O).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Write the kubeconfig to this file (0600) instead of standard output.
        #[arg(long = "output-file")]
        output_file: Option<PathBuf>,
    },
    /// Show the management-plane ports that forward to the cluster's ingress.
    Ingress {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        /// Print a HAProxy configuration for these ports instead.
        #[arg(long)]
        haproxy: bool,
        /// Address the HAProxy frontends bind.
        #[arg(long, default_value = "0.0.0.0", requires = "haproxy")]
        bind: String,
    },
    /// Delete a cluster and its machines.
    Delete {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// Wait until the change is complete, showing progress.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Name of the cluster (optional with -f).
    name: Option<String>,
    /// Organization (namespace); the kubeconfig's namespace when omitted.
    #[arg(short = 'n', long = "org")]
    org: Option<String>,
    /// Control-plane machines: 1 or 3.
    #[arg(long = "control-plane", default_value_t = 1)]
    control_plane: u32,
    /// Workers in the default node pool.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// vCPUs per worker.
    #[arg(long, default_value_t = 2)]
    cpu: u32,
    /// Memory per worker, such as 2Gi.
    #[arg(long, default_value = "2Gi")]
    memory: Memory,
    /// Disk per worker, such as 20Gi.
    #[arg(long, default_value = "20Gi")]
    disk: Memory,
    /// Kubernetes version, one a registered MachineImage carries; the
    /// newest registered when omitted.
    #[arg(long = "kubernetes-version")]
    kubernetes_version: Option<String>,
    /// Create from a YAML or JSON manifest.
    #[arg(short = 'f', long = "filename")]
    file: Option<PathBuf>,
    #[command(flatten)]
    wait: WaitArgs,
}

fn api(client: &Client, org: Option<&str>) -> Api<Cluster> {
    match org {
        Some(o) => Api::namespaced(client.clone(), o),
        None => Api::default_namespaced(client.clone()),
    }
}

fn rows(list: &[Cluster], with_org: bool) -> String {
    let mut headers = vec![];
    if with_org {
        headers.push("org");
    }
    headers.extend([
        "name",
        "phase",
        "control plane",
        "nodes",
        "version",
        "node versions",
        "age",
    ]);
    let rows = list
        .iter()
        .map(|c| {
            let st = c.status.clone().unwrap_or_default();
            let mut r = vec![];
            if with_org {
                r.push(c.namespace().unwrap_or_default());
            }
            r.extend([
                c.name_any(),
                st.phase.map_or("Pending", ClusterPhase::as_str).to_owned(),
                format!(
                    "{}/{}",
                    st.control_plane_ready, c.spec.control_plane.replicas
                ),
                format!("{}/{}", st.nodes_ready, c.spec.worker_replicas()),
                c.spec.kubernetes_version.clone(),
                if st.node_versions.is_empty() {
                    "-".to_owned()
                } else {
                    st.node_versions.join(",")
                },
                age(c.metadata.creation_timestamp.as_ref()),
            ]);
            r
        })
        .collect();
    table(&headers, rows)
}

fn from_file(path: &PathBuf) -> CliResult<Cluster> {
    let raw = std::fs::read_to_string(path).map_err(|e| {
        CliError::new(
            Exit::Invalid,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    serde_saphyr::from_str(&raw).map_err(|e| {
        CliError::new(
            Exit::Invalid,
            format!("{} is not a Cluster manifest: {e}", path.display()),
        )
    })
}

async fn create(a: CreateArgs, client: &Client, out: Format) -> CliResult {
    let mut cluster = match &a.file {
        Some(f) => from_file(f)?,
        None => {
            let name = a.name.clone().ok_or_else(|| {
                CliError::new(Exit::Invalid, "a cluster name is required (or -f FILE)")
            })?;
            let spec = ClusterSpec {
                kubernetes_version: a.kubernetes_version.clone().unwrap_or_default(),
                control_plane: ControlPlaneSpec {
                    replicas: a.control_plane,
                    ..Default::default()
                },
                node_pools: vec![NodePool {
                    name: "default".into(),
                    replicas: a.workers,
                    cpu: a.cpu,
                    memory: a.memory,
                    disk: a.disk,
                    image: None,
                }],
                network: Default::default(),
                ingress: Default::default(),
            };
            Cluster::new(&name, spec)
        }
    };
    if a.file.is_some()
        && let Some(n) = &a.name
    {
        cluster.metadata.name = Some(n.clone());
    }
    let org = a.org.clone().or_else(|| cluster.metadata.namespace.clone());
    let api = api(client, org.as_deref());
    let created = api.create(&PostParams::default(), &cluster).await?;
    if out != Format::Table {
        print_data(out, &created)?;
    } else {
        println!(
            "cluster {} created in org {}",
            created.name_any(),
            created.namespace().unwrap_or_default()
        );
    }
    if a.wait.wait {
        wait_ready(client, &api, &created.name_any(), a.wait.timeout).await?;
    }
    Ok(())
}

/// The hosts, not Ready, that hold deleted Machines of cluster `c`: their
/// VMs cannot be known stopped, so `--wait` does not wait for them.
async fn held_by_lost_hosts(client: &Client, c: &Cluster) -> Result<Vec<String>, CliError> {
    let ns = c.namespace().unwrap_or_default();
    let machines: Api<paddock_api::Machine> = Api::namespaced(client.clone(), &ns);
    let lp =
        ListParams::default().labels(&format!("{}={}", paddock_api::LABEL_CLUSTER, c.name_any()));
    let hosts: Api<paddock_api::Host> = Api::all(client.clone());
    let mut lost = std::collections::BTreeSet::new();
    for m in machines.list(&lp).await?.items {
        if m.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let Some(h) = m.spec.host_name else { continue };
        let ready = hosts.get_opt(&h).await?.and_then(|h| h.status?.phase)
            == Some(paddock_api::HostPhase::Ready);
        if !ready {
            lost.insert(h);
        } else {
            // One of them still stops on a Ready host: wait for it.
            return Ok(Vec::new());
        }
    }
    Ok(lost.into_iter().collect())
}

/// Waits until the cluster is Ready with every desired machine ready and
/// the VMs of removed machines stopped.
async fn wait_ready(client: &Client, api: &Api<Cluster>, name: &str, timeout: u64) -> CliResult {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api.clone(), cfg).boxed();
    let done = async {
        while let Some(ev) = stream.next().await {
            let c = match ev {
                Ok(Event::Apply(c) | Event::InitApply(c)) => c,
                Ok(Event::Delete(_)) => {
                    return Err(CliError::new(
                        Exit::NotFound,
                        format!("cluster {name} was deleted while waiting"),
                    ));
                }
                Ok(_) => continue,
                Err(e) => {
                    return Err(CliError::new(
                        Exit::Failure,
                        format!("watching cluster {name}: {e}"),
                    ));
                }
            };
            let st = c.status.clone().unwrap_or_default();
            let phase = st.phase.map_or("Pending", ClusterPhase::as_str);
            let stopping = match st.deleting_machines {
                0 => String::new(),
                n => format!(", {n} machines stopping"),
            };
            pb.set_message(format!(
                "{name}: {phase}, control plane {}/{}, nodes {}/{}{stopping}",
                st.control_plane_ready,
                c.spec.control_plane.replicas,
                st.nodes_ready,
                c.spec.worker_replicas()
            ));
            let generation_seen = st
                .observed_generation
                .is_some_and(|g| Some(g) >= c.metadata.generation);
            if st.phase == Some(ClusterPhase::Ready)
                && generation_seen
                && st.control_plane_ready == c.spec.control_plane.replicas
                && st.nodes_ready == c.spec.worker_replicas()
            {
                // Scaled down: done once the removed VMs are stopped, but
                // for those on hosts that stopped answering.
                if st.deleting_machines == 0 {
                    return Ok(());
                }
                let lost = held_by_lost_hosts(client, &c).await?;
                if !lost.is_empty() {
                    pb.suspend(|| {
                        eprintln!(
                            "note: removed machines are held by {}, which is not Ready: their VMs may still run there (paddock host delete NAME once it is gone for good)",
                            lost.join(", ")
                        );
                    });
                    return Ok(());
                }
            }
        }
        Err(CliError::new(Exit::Failure, "watch ended"))
    };
    let res = tokio::time::timeout(Duration::from_secs(timeout), done).await;
    pb.finish_and_clear();
    match res {
        Ok(Ok(())) => {
            println!("cluster {name} is Ready");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CliError::new(
            Exit::Timeout,
            format!("cluster {name} not Ready after {timeout}s"),
        )),
    }
}

async fn wait_gone(api: &Api<Cluster>, name: &str, timeout: u64) -> CliResult {
    let pb = ProgressBar::new_spinner();
    pb.enable_steady_tick(Duration::from_millis(120));
    pb.set_message(format!("deleting {name}"));
    let res = tokio::time::timeout(Duration::from_secs(timeout), async {
        loop {
            match api.get_opt(name).await? {
                None => return Ok::<(), CliError>(()),
                Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    });
    let r = res.await;
    pb.finish_and_clear();
    match r {
        Ok(r) => r.map(|()| println!("cluster {name} deleted")),
        Err(_) => Err(CliError::new(
            Exit::Timeout,
            format!("cluster {name} still present after {timeout}s"),
        )),
    }
}

pub async fn run(cmd: ClusterCommand, client: &Client, out: Format) -> CliResult {
    match cmd {
        ClusterCommand::Create(a) => create(a, client, out).await,
        ClusterCommand::List { org, all } => {
            let api: Api<Cluster> = if all {
                Api::all(client.clone())
            } else {
                api(client, org.as_deref())
            };
            let list = api.list(&ListParams::default()).await?;
            match out {
                Format::Table if list.items.is_empty() => {
                    eprintln!("no clusters");
                    Ok(())
                }
                Format::Table => {
                    println!("{}", rows(&list.items, all));
                    Ok(())
                }
                f => print_data(f, &list.items),
            }
        }
        ClusterCommand::Kubeconfig {
            name,
            org,
            ttl,
            groups,
            output_file,
        } => kubeconfig(client, &name, org, ttl, groups, output_file, out).await,
        ClusterCommand::Ingress {
            name,
            org,
            haproxy,
            bind,
        } => {
            let c = api(client, org.as_deref()).get(&name).await?;
            ingress(&c, haproxy.then_some(bind), out)
        }
        ClusterCommand::Get { name, org } => {
            let c = api(client, org.as_deref()).get(&name).await?;
            match out {
                Format::Table => {
                    println!("{}", rows(std::slice::from_ref(&c), false));
                    Ok(())
                }
                f => print_data(f, &c),
            }
        }
        ClusterCommand::Scale {
            name,
            org,
            workers,
            pool,
            wait,
        } => {
            let api = api(client, org.as_deref());
            let c = api.get(&name).await?;
            let pools = &c.spec.node_pools;
            let idx = match &pool {
                Some(p) => pools.iter().position(|x| &x.name == p).ok_or_else(|| {
                    let names: Vec<&str> = pools.iter().map(|x| x.name.as_str()).collect();
                    CliError::new(
                        Exit::NotFound,
                        format!(
                            "cluster {name} has no node pool {p:?} (pools: {})",
                            names.join(", ")
                        ),
                    )
                })?,
                None if pools.len() == 1 => 0,
                None => {
                    return Err(CliError::new(
                        Exit::Invalid,
                        format!(
                            "cluster {name} has {} node pools: choose one with --pool",
                            pools.len()
                        ),
                    ));
                }
            };
            // A JSON patch with a test op: fails if the pool moved meanwhile.
            let patch = serde_json::json!([
                {"op": "test", "path": format!("/spec/nodePools/{idx}/name"), "value": pools[idx].name},
                {"op": "replace", "path": format!("/spec/nodePools/{idx}/replicas"), "value": workers}
            ]);
            let patch: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
            api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await?;
            println!(
                "cluster {name}: pool {} scaled to {workers}",
                pools[idx].name
            );
            if wait.wait {
                wait_ready(client, &api, &name, wait.timeout).await?;
            }
            Ok(())
        }
        ClusterCommand::Delete { name, org, wait } => {
            let api = api(client, org.as_deref());
            api.delete(&name, &DeleteParams::default()).await?;
            if wait.wait {
                wait_gone(&api, &name, wait.timeout).await
            } else {
                println!("cluster {name} deleting");
                Ok(())
            }
        }
    }
}

async fn kubeconfig(
    client: &Client,
    name: &str,
    org: Option<String>,
    ttl: Option<String>,
    groups: Vec<String>,
    output_file: Option<PathBuf>,
    out: Format,
) -> CliResult {
    let ns = org.unwrap_or_else(|| client.default_namespace().to_owned());
    let path = format!(
        "/apis/{}/namespaces/{ns}/clusters/{name}/kubeconfig",
        paddock_api::API_VERSION
    );
    let body = serde_json::json!({
        "apiVersion": paddock_api::API_VERSION,
        "kind": "ClusterKubeconfig",
        "spec": {"ttl": ttl, "groups": groups},
    });
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).map_err(|e| CliError::new(Exit::Failure, e.to_string()))?)
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let resp: serde_json::Value = client.request(req).await?;
    if !matches!(out, Format::Table) {
        return print_data(out, &resp);
    }
    let kc = resp["status"]["kubeconfig"].as_str().ok_or_else(|| {
        CliError::new(
            Exit::Failure,
            "the server's answer has no status.kubeconfig",
        )
    })?;
    match output_file {
        Some(p) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| CliError::new(Exit::Failure, format!("{}: {e}", p.display())))?;
            f.write_all(kc.as_bytes())
                .map_err(|e| CliError::new(Exit::Failure, format!("{}: {e}", p.display())))?;
            eprintln!(
                "wrote {} (valid until {})",
                p.display(),
                resp["status"]["expirationTimestamp"]
                    .as_str()
                    .unwrap_or("?")
            );
        }
        None => print!("{kc}"),
    }
    Ok(())
}

fn ingress(c: &Cluster, haproxy_bind: Option<String>, out: Format) -> CliResult {
    let name = c.name_any();
    let org = c.namespace().unwrap_or_default();
    let Some(ing) = c.status.as_ref().and_then(|s| s.ingress.clone()) else {
        return Err(CliError::new(
            Exit::Failure,
            format!("cluster {name} has no ingress ports yet (no overlay allocated)"),
        ));
    };
    if let Some(bind_address) = haproxy_bind {
        let fe = paddock_lb::Frontend::of(c).ok_or_else(|| {
            CliError::new(
                Exit::Failure,
                "the cluster's ingress has no gateway address yet",
            )
        })?;
        let opts = paddock_lb::haproxy::Options {
            bind_address,
            ..Default::default()
        };
        print!("{}", paddock_lb::haproxy::render(&[fe], &opts));
        return Ok(());
    }
    if !matches!(out, Format::Table) {
        return print_data(out, &ing);
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["PROTOCOL", "GATEWAY PORT", "NODE PORT", "BACKENDS"]);
    let backends = |port: u16, https: bool| {
        let b: Vec<String> = ing
            .backends
            .iter()
            .map(|b| {
                let up = if https { b.https_healthy } else { b.healthy };
                format!("{}:{port} {}", b.machine, if up { "up" } else { "DOWN" })
            })
            .collect();
        if b.is_empty() {
            "none".to_owned()
        } else {
            b.join(", ")
        }
    };
    for (proto, port, node_port, https) in [
        ("http", ing.http_port, c.spec.ingress.http_node_port, false),
        (
            "https",
            ing.https_port,
            c.spec.ingress.https_node_port,
            true,
        ),
    ] {
        t.add_row([
            proto.to_owned(),
            format!("{}:{port}", ing.address.as_deref().unwrap_or("-")),
            node_port.to_string(),
            backends(node_port, https),
        ]);
    }
    println!("cluster {org}/{name}\n{t}");
    Ok(())
}
