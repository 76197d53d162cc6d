//! The workload clusters' own Kubernetes API, as the platform reads it.
//!
//! The workload loop reaches each cluster's API through the gateway (as its
//! users do), with a client certificate it issues itself from the
//! cluster's CA: short-lived ([`CREDENTIAL_TTL`]), held in memory only and
//! renewed well before it expires. On every pass it
//! - records, per Machine, the Node it became and whether that Node is
//!   Ready (`status.node`), which the cluster controller's readiness counts;
//! - drains the Nodes of deleted Machines that hold [`DRAIN_FINALIZER`]:
//!   cordon, evict the pods (PodDisruptionBudgets are honoured: an
//!   eviction they forbid is retried), and after [`Config::drain_timeout`]
//!   a Warning Event and a forced stop; then, for a control plane,
//!   `kubeadm reset` on the node (which removes its etcd member), and the
//!   Node object is deleted. Only then is the finalizer removed, and the
//!   host's agent stops the VM.
//!
//! Each pass reads the world and takes the next step; it can be killed at
//! any line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use paddock_api::machine::{DRAIN_FINALIZER, NodeStatus, without_finalizer};
use paddock_api::{Cluster, Host, HostPhase, Machine, MachineImage, MachineRole};
use serde_json::json;
use tokio::sync::Notify;

use crate::{Config, events};

/// How long the controller's own credential for a workload cluster lasts.
pub const CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// It is renewed when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(20 * 60);
/// Who the controller is in the workload clusters (its certificate's CN).
pub const USER: &str = "paddock:workload-controller";
/// The group kubeadm binds to `cluster-admin`: draining evicts pods,
/// deletes Nodes, and reads them all.
pub const GROUP: &str = "kubeadm:cluster-admins";
/// Bound on one call to a workload cluster's API.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("the cluster's PKI Secret {0} is missing")]
    NoPki(String),
    #[error("the cluster's PKI: {0}")]
    Pki(String),
    #[error("client for the workload cluster: {0}")]
    Config(String),
    #[error("management API")]
    Management(#[from] kube::Error),
    #[error("the workload cluster's API: {0}")]
    Workload(String),
    #[error("the workload cluster's API did not answer within {0:?}")]
    Timeout(Duration),
}

/// Clients for the workload clusters, by cluster uid, with when to renew.
#[derive(Default)]
pub struct Clients {
    cache: Mutex<HashMap<String, (kube::Client, Instant)>>,
}

impl Clients {
    /// A client for `c`'s own API, issuing a new credential when the cached
    /// one is close to expiry.
    pub async fn get(
        &self,
        mgmt: &kube::Client,
        cfg: &Config,
        gateway_url: &str,
        c: &Cluster,
    ) -> Result<kube::Client, WorkloadError> {
        let uid = c.uid().unwrap_or_default();
        if let Ok(cache) = self.cache.lock()
            && let Some((client, renew_at)) = cache.get(&uid)
            && Instant::now() < *renew_at
        {
            return Ok(client.clone());
        }
        let ns = c.namespace().unwrap_or_default();
        let secret_name = paddock_bootstrap::pki::secret_name(&c.name_any());
        let secret = Api::<Secret>::namespaced(mgmt.clone(), &ns)
            .get_opt(&secret_name)
            .await?
            .ok_or_else(|| WorkloadError::NoPki(format!("{ns}/{secret_name}")))?;
        let data = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let pki = paddock_bootstrap::ClusterPki::from_data(&data)
            .map_err(|e| WorkloadError::Pki(e.to_string()))?;
        let ca = pki
            .cluster_ca()
            .map_err(|e| WorkloadError::Pki(e.to_string()))?;
        let cert = ca
            .issue_client(USER, &[GROUP.to_owned()], CREDENTIAL_TTL)
            .map_err(|e| WorkloadError::Pki(e.to_string()))?;
        let server_name = crate::bootstrap::api_name(cfg, c);
        let yaml = paddock_pki::Kubeconfig {
            context: "workload",
            user: USER,
            server: gateway_url,
            server_name: &server_name,
            ca_pem: &pki.ca.cert_pem,
            cert: &cert,
        }
        .render();
        let kc = kube::config::Kubeconfig::from_yaml(&yaml)
            .map_err(|e| WorkloadError::Config(e.to_string()))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| WorkloadError::Config(e.to_string()))?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(CALL_TIMEOUT);
        let client =
            kube::Client::try_from(config).map_err(|e| WorkloadError::Config(e.to_string()))?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                uid,
                (
                    client.clone(),
                    Instant::now() + (CREDENTIAL_TTL - RENEW_BEFORE),
                ),
            );
        }
        tracing::debug!(cluster = %c.name_any(), org = %ns, "issued the workload controller's credential");
        Ok(client)
    }

    /// Drops the clients of clusters that are gone.
    fn retain(&self, uids: &std::collections::HashSet<String>) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|k, _| uids.contains(k));
        }
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, WorkloadError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(WorkloadError::Workload(e.to_string())),
        Err(_) => Err(WorkloadError::Timeout(CALL_TIMEOUT)),
    }
}

/// What a Node says of itself, as a Machine records it.
pub fn node_status(n: &Node) -> NodeStatus {
    let status = n.status.as_ref();
    NodeStatus {
        name: n.name_any(),
        ready: status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        kubelet_version: status
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.kubelet_version.clone())
            .unwrap_or_default(),
        unschedulable: n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
    }
}

/// Whether a cluster's Machines become Kubernetes Nodes: its control
/// plane's image is a Kubernetes node image, not stand-ins.
pub fn runs_kubernetes(c: &Cluster, images: &[Arc<MachineImage>]) -> bool {
    let owned: Vec<MachineImage> = images.iter().map(|i| (**i).clone()).collect();
    let Some(name) = c
        .spec
        .control_plane
        .image
        .clone()
        .or_else(|| paddock_api::version::image_for(&c.spec.kubernetes_version, &owned))
    else {
        return false;
    };
    images
        .iter()
        .find(|i| i.name_any() == name)
        .is_some_and(|i| !i.spec.stand_in && i.spec.kubernetes_version.is_some())
}

/// Pods a drain leaves alone: those of DaemonSets (they run on every node
/// and would come straight back), static pods' mirrors, and pods that
/// have finished.
pub fn evictable(p: &Pod) -> bool {
    let daemon = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let mirror = p.annotations().contains_key("kubernetes.io/config.mirror");
    let done = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    !daemon && !mirror && !done
}

struct Pass<'a> {
    mgmt: &'a kube::Client,
    cfg: &'a Config,
    gateway_url: &'a str,
    clients: &'a Clients,
    hosts: Vec<Arc<Host>>,
}

impl Pass<'_> {
    /// One cluster: record its Nodes on its Machines, and drain the Nodes
    /// of its deleted Machines.
    async fn cluster(&self, c: &Cluster, machines: Vec<Arc<Machine>>, kube_nodes: bool) {
        let name = c.name_any();
        let deleting = c.metadata.deletion_timestamp.is_some();
        // A cluster being deleted, or one of stand-ins, has nothing to
        // drain: its Machines are let go at once.
        if deleting || !kube_nodes {
            for m in machines
                .iter()
                .filter(|m| paddock_api::machine::draining(m))
            {
                self.release(m).await;
            }
            return;
        }
        let initialized = c
            .status
            .as_ref()
            .and_then(|s| s.initialization.as_ref())
            .is_some_and(|i| i.control_plane_initialized);
        if !initialized {
            for m in machines
                .iter()
                .filter(|m| paddock_api::machine::draining(m))
            {
                self.release(m).await;
            }
            return;
        }
        let client = match self
            .clients
            .get(self.mgmt, self.cfg, self.gateway_url, c)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(cluster = %name, error = %e, "workload API not reachable yet");
                self.release_unreachable(&machines).await;
                return;
            }
        };
        let nodes: Api<Node> = Api::all(client.clone());
        let list = match bounded(nodes.list(&ListParams::default())).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(cluster = %name, error = %e, "cannot list the cluster's Nodes");
                self.release_unreachable(&machines).await;
                return;
            }
        };
        for m in &machines {
            let want = list
                .iter()
                .find(|n| n.name_any() == m.name_any())
                .map(node_status);
            let have = m.status.as_ref().and_then(|s| s.node.clone());
            if want != have {
                let api: Api<Machine> =
                    Api::namespaced(self.mgmt.clone(), &m.namespace().unwrap_or_default());
                match api
                    .patch_status(
                        &m.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"node": want}})),
                    )
                    .await
                {
                    Ok(_) => {}
                    // Deleted since the list: nothing left to record on.
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(machine = %m.name_any(), error = %e, "cannot record the machine's node");
                    }
                }
            }
        }
        for m in machines
            .iter()
            .filter(|m| paddock_api::machine::draining(m))
        {
            let node = list.iter().find(|n| n.name_any() == m.name_any());
            if let Err(e) = self.drain(&client, m, node).await {
                tracing::warn!(machine = %m.name_any(), error = %e, "drain step failed; retrying");
            }
        }
    }

    /// While the cluster's API does not answer, a deleted Machine is let go
    /// once the drain timeout has passed (its VM is stopped without a
    /// drain), and at once when its host is gone or not Ready.
    async fn release_unreachable(&self, machines: &[Arc<Machine>]) {
        for m in machines
            .iter()
            .filter(|m| paddock_api::machine::draining(m))
        {
            if self.host_lost(m) || self.overdue(m) {
                self.release(m).await;
            }
        }
    }

    fn host_lost(&self, m: &Machine) -> bool {
        let Some(h) = m.spec.host_name.as_deref() else {
            return true;
        };
        !self.hosts.iter().any(|x| {
            x.name_any() == h && x.status.as_ref().and_then(|s| s.phase) == Some(HostPhase::Ready)
        })
    }

    fn overdue(&self, m: &Machine) -> bool {
        let Some(t) = &m.metadata.deletion_timestamp else {
            return false;
        };
        let since = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
        since.as_secs() >= self.cfg.drain_timeout.as_secs() as i64
    }

    async fn release(&self, m: &Machine) {
        let api: Api<Machine> =
            Api::namespaced(self.mgmt.clone(), &m.namespace().unwrap_or_default());
        let patch = without_finalizer(m, DRAIN_FINALIZER);
        match api
            .patch(
                &m.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => tracing::info!(machine = %m.name_any(), "drained: the VM may stop"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(machine = %m.name_any(), error = %e, "cannot release the machine")
            }
        }
    }

    /// One step of a drain: cordon, evict, wait (bounded), reset a control
    /// plane's kubeadm state (its etcd member), delete the Node, release.
    async fn drain(
        &self,
        client: &kube::Client,
        m: &Machine,
        node: Option<&Node>,
    ) -> Result<(), WorkloadError> {
        let name = m.name_any();
        let Some(node) = node else {
            // Never joined, or its Node is deleted already.
            self.release(m).await;
            return Ok(());
        };
        if self.host_lost(m) {
            // The VM may be gone with its host: nothing to evict from, but
            // the Node object goes, so its pods are rescheduled.
            delete_node(client, &name).await?;
            self.release(m).await;
            return Ok(());
        }
        let nodes: Api<Node> = Api::all(client.clone());
        if !node_status(node).unschedulable {
            bounded(nodes.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            ))
            .await?;
            events::record(
                self.mgmt,
                m,
                false,
                "Cordoned",
                format!("node {name} cordoned for its drain"),
            )
            .await;
        }
        let pods: Api<Pod> = Api::all(client.clone());
        let on_node =
            bounded(pods.list(&ListParams::default().fields(&format!("spec.nodeName={name}"))))
                .await?
                .items;
        let left: Vec<&Pod> = on_node.iter().filter(|p| evictable(p)).collect();
        let mut blocked = 0;
        for p in &left {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ns = p.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match tokio::time::timeout(
                CALL_TIMEOUT,
                api.evict(&p.name_any(), &EvictParams::default()),
            )
            .await
            {
                Ok(Ok(_)) => {}
                // Not allowed now by a PodDisruptionBudget: asked again next pass.
                Ok(Err(kube::Error::Api(e))) if e.code == 429 => blocked += 1,
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
                Ok(Err(e)) => return Err(WorkloadError::Workload(e.to_string())),
                Err(_) => return Err(WorkloadError::Timeout(CALL_TIMEOUT)),
            }
        }
        if !left.is_empty() {
            if !self.overdue(m) {
                tracing::info!(machine = %name, pods = left.len(), blocked, "draining");
                return Ok(());
            }
            events::record(
                self.mgmt,
                m,
                true,
                "DrainTimeout",
                format!(
                    "{} pods still on node {name} after {}s ({blocked} held by PodDisruptionBudgets): stopping it anyway",
                    left.len(),
                    self.cfg.drain_timeout.as_secs()
                ),
            )
            .await;
        }
        if m.spec.role == MachineRole::ControlPlane {
            // kubeadm reset removes the node's etcd member (and its own
            // state) before the VM goes; a failure is reported, not fatal:
            // the VM is stopped anyway.
            if let Err(e) = reset(self.mgmt, m).await {
                events::record(
                    self.mgmt,
                    m,
                    true,
                    "ResetFailed",
                    format!("kubeadm reset on {name}: {e}"),
                )
                .await;
            }
        }
        delete_node(client, &name).await?;
        events::record(
            self.mgmt,
            m,
            false,
            "Drained",
            format!("node {name} drained and deleted"),
        )
        .await;
        self.release(m).await;
        Ok(())
    }
}

async fn delete_node(client: &kube::Client, name: &str) -> Result<(), WorkloadError> {
    let nodes: Api<Node> = Api::all(client.clone());
    match tokio::time::timeout(CALL_TIMEOUT, nodes.delete(name, &DeleteParams::default())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        Ok(Err(e)) => Err(WorkloadError::Workload(e.to_string())),
        Err(_) => Err(WorkloadError::Timeout(CALL_TIMEOUT)),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecResult {
    exit_code: i64,
    #[serde(default)]
    stderr: String,
}

/// `kubeadm reset --force` in the guest, through its host's agent (the
/// Machine's `exec` subresource).
async fn reset(mgmt: &kube::Client, m: &Machine) -> Result<(), String> {
    let ns = m.namespace().unwrap_or_default();
    let path = format!(
        "/apis/paddock.io/v1alpha1/namespaces/{ns}/machines/{}/exec",
        m.name_any()
    );
    let body = serde_json::to_vec(
        &json!({"command": ["kubeadm", "reset", "--force"], "timeoutSeconds": 300}),
    )
    .map_err(|e| e.to_string())?;
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    let res: ExecResult = mgmt.request(req).await.map_err(|e| e.to_string())?;
    if res.exit_code != 0 {
        return Err(format!("exit {}: {}", res.exit_code, res.stderr.trim()));
    }
    Ok(())
}

/// The workload loop (see the module's documentation). Runs only when the
/// controllers know where the gateway is.
pub async fn run(client: kube::Client, cfg: Arc<Config>) {
    let Some(gateway_url) = cfg.gateway_url.clone() else {
        tracing::info!("no gateway: the workload clusters' APIs are not read");
        return std::future::pending().await;
    };
    let notify = Arc::new(Notify::new());
    let mut watchers = paddock_watch::Watchers::default();
    let clusters: Store<Cluster> = watchers.store(Api::all(client.clone()), notify.clone());
    let machines: Store<Machine> = watchers.store(Api::all(client.clone()), notify.clone());
    let images: Store<MachineImage> = watchers.store(Api::all(client.clone()), notify.clone());
    let hosts: Store<Host> = watchers.store(Api::all(client.clone()), notify.clone());
    let clients = Clients::default();
    loop {
        let started = std::time::Instant::now();
        let all_machines = machines.state();
        let image_list = images.state();
        let pass = Pass {
            mgmt: &client,
            cfg: &cfg,
            gateway_url: &gateway_url,
            clients: &clients,
            hosts: hosts.state(),
        };
        let list = clusters.state();
        clients.retain(&list.iter().filter_map(|c| c.uid()).collect());

        // Machines by (namespace, cluster), built once per pass: a pass
        // costs the fleet's size, not clusters times machines.
        let mut by_cluster: HashMap<(Option<String>, String), Vec<Arc<Machine>>> = HashMap::new();
        for m in all_machines {
            if let Some(c) = m.labels().get(paddock_api::LABEL_CLUSTER) {
                by_cluster
                    .entry((m.namespace(), c.clone()))
                    .or_default()
                    .push(m);
            }
        }
        let mut work = Vec::with_capacity(list.len());
        for c in list {
            let mine = by_cluster
                .remove(&(c.namespace(), c.name_any()))
                .unwrap_or_default();
            let kube_nodes = runs_kubernetes(&c, &image_list);
            let pass = &pass;
            work.push(async move { pass.cluster(&c, mine, kube_nodes).await });
        }
        futures::stream::iter(work)
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        paddock_metrics::reconciled("workload", true, started.elapsed());
        // Nodes are polled (their changes are not watched here); changes
        // of Clusters and Machines start a pass at once.
        tokio::select! {
            _ = notify.notified() => tokio::time::sleep(Duration::from_millis(500)).await,
            _ = tokio::time::sleep(cfg.node_status_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_reports_readiness_version_and_cordon() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "demo-w-abcde"},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.35.4", "machineID": "", "systemUUID": "", "bootID": "",
                         "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64"}}
        }))
        .unwrap();
        let s = node_status(&n);
        assert_eq!(
            s,
            NodeStatus {
                name: "demo-w-abcde".into(),
                ready: true,
                kubelet_version: "v1.35.4".into(),
                unschedulable: true
            }
        );
        let fresh: Node = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(!node_status(&fresh).ready);
    }

    #[test]
    fn drains_leave_daemonsets_mirrors_and_finished_pods() {
        let pod = |extra: serde_json::Value| -> Pod {
            let mut p = json!({"metadata": {"name": "p", "namespace": "default"}});
            if let (Some(m), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    if k == "metadata" {
                        for (mk, mv) in v.as_object().unwrap() {
                            m["metadata"][mk] = mv.clone();
                        }
                    } else {
                        m.insert(k.clone(), v.clone());
                    }
                }
            }
            serde_json::from_value(p).unwrap()
        };
        assert!(evictable(&pod(json!({}))));
        assert!(!evictable(&pod(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy", "uid": "u", "controller": true}]}}))));
        assert!(evictable(&pod(json!({"metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u", "controller": true}]}}))));
        assert!(!evictable(&pod(
            json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "x"}}})
        )));
        assert!(!evictable(&pod(json!({"status": {"phase": "Succeeded"}}))));
    }

    #[test]
    fn the_controllers_kubeconfig_names_the_cluster_at_the_gateway() {
        let cert = paddock_pki::CertPair {
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        };
        let y = paddock_pki::Kubeconfig {
            context: "workload",
            user: USER,
            server: "https://127.0.0.1:16443",
            server_name: "demo.acme.paddock.local",
            ca_pem: "CA",
            cert: &cert,
        }
        .render();
        let kc = kube::config::Kubeconfig::from_yaml(&y).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:16443"));
        assert_eq!(
            cluster.tls_server_name.as_deref(),
            Some("demo.acme.paddock.local")
        );
    }
}
