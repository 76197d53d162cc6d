//! `paddock org|machine|host …`: organizations and read-only views of
//! machines and hosts.

use std::time::Duration;

use clap::Subcommand;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use paddock_api::host::SYSTEM_NAMESPACE;
use paddock_api::{Host, HostPhase, Machine, MachinePhase};

use crate::output::{Format, age, print_data, table};
use crate::{CliError, CliResult, Exit};

/// Namespaces that belong to the platform, not to an organization.
const SYSTEM: [&str; 1] = ["paddock-system"];

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization.
    Create { name: String },
    /// List organizations.
    List,
    /// Delete an organization and everything in it.
    Delete {
        name: String,
        /// Wait until it is gone.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// List machines.
    List {
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        #[arg(short = 'A', long = "all-orgs", conflicts_with = "org")]
        all: bool,
    },
    /// Run a command inside the VM (through its guest agent); exits with its status.
    Exec {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
        /// Seconds the command may run.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show the VM's serial console log.
    Console {
        name: String,
        /// Organization (namespace); the kubeconfig's namespace when omitted.
        #[arg(short = 'n', long = "org")]
        org: Option<String>,
    },
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecResult {
    exit_code: i64,
    stdout: String,
    stderr: String,
}

fn machine_path(client: &Client, org: Option<&str>, name: &str, sub: &str) -> String {
    let ns = org.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
    format!("/apis/paddock.io/v1alpha1/namespaces/{ns}/machines/{name}/{sub}")
}

async fn exec(
    client: &Client,
    org: Option<&str>,
    name: &str,
    timeout: u64,
    command: Vec<String>,
) -> CliResult {
    let body =
        serde_json::to_vec(&serde_json::json!({"command": command, "timeoutSeconds": timeout}))
            .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let req = http::Request::post(machine_path(client, org, name, "exec"))
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let res: ExecResult = client.request(req).await?;
    print!("{}", res.stdout);
    eprint!("{}", res.stderr);
    if res.exit_code != 0 {
        // The guest command's own status, as ssh and kubectl exec do.
        std::process::exit(i32::try_from(res.exit_code).unwrap_or(1).clamp(1, 255));
    }
    Ok(())
}

async fn console(client: &Client, org: Option<&str>, name: &str) -> CliResult {
    let req = http::Request::get(machine_path(client, org, name, "console"))
        .body(Vec::new())
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    print!("{}", client.request_text(req).await?);
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List hosts.
    List,
    /// Register a machine by its BMC: Paddock keeps it powered on (unless
    /// --offline) through the BMC. The BMC password is read from
    /// --password-file or PADDOCK_BMC_PASSWORD, never from the command line.
    Add {
        name: String,
        /// The BMC: redfish://host[:port][/redfish/v1/Systems/ID],
        /// redfish+http://… or ipmi://host[:port].
        #[arg(long)]
        bmc: String,
        /// The MAC address the machine netboots from.
        #[arg(long)]
        mac: String,
        /// The BMC user.
        #[arg(long, default_value = "admin")]
        username: String,
        /// A file holding the BMC password.
        #[arg(long)]
        password_file: Option<std::path::PathBuf>,
        /// The CA (PEM) the BMC's TLS certificate is checked against
        /// (default: the system's trusted roots).
        #[arg(long, conflicts_with = "insecure_skip_verify")]
        bmc_ca: Option<std::path::PathBuf>,
        /// Do not check the BMC's TLS certificate.
        #[arg(long)]
        insecure_skip_verify: bool,
        /// Register it powered off.
        #[arg(long)]
        offline: bool,
    },
    /// Power a host on or off through its BMC (kept so: `spec.online`),
    /// or show its power.
    Power {
        #[arg(value_enum)]
        action: PowerVerb,
        name: String,
    },
    /// Mark a host unschedulable: no new machines go there.
    Cordon { name: String },
    /// Make a host schedulable again.
    Uncordon { name: String },
    /// Cordon a host and move its machines elsewhere (they are deleted and
    /// their clusters' controllers make replacements).
    Drain {
        name: String,
        /// Wait until no machine is left on the host.
        #[arg(long)]
        wait: bool,
    },
    /// Confirm that a host is powered off and stays so (a host without a
    /// BMC, which Paddock cannot fence itself): once it is NotReady its
    /// Machines are replaced elsewhere. As Kubernetes' out-of-service
    /// taint. `--undo` takes the word back.
    Fence {
        name: String,
        #[arg(long)]
        undo: bool,
    },
    /// Netboot a host with a BMC afresh: boot from the network once, power
    /// cycle, and lift a fence its BMC set.
    Reprovision { name: String },
    /// Remove a host that is gone for good. Its deleted Machines, whose VMs
    /// no agent can stop any more, are released (and with them their
    /// clusters' deletions and overlays). A host whose agent still runs
    /// registers itself again and stops the VMs no Machine wants.
    Delete { name: String },
}

/// What `paddock host power` does.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PowerVerb {
    On,
    Off,
    /// Off and on again (a netbooted host boots the host image afresh;
    /// as `paddock host reprovision`).
    Cycle,
    Status,
}

/// The Secret of a host's BMC credentials, and of its BMC's CA.
/// Labelled with its host: deprovisioning the host deletes it.
fn bmc_secret(host: &str, name: &str, data: &[(&str, &str)]) -> Secret {
    let mut s = Secret::default();
    s.metadata.name = Some(name.to_owned());
    s.metadata.namespace = Some(SYSTEM_NAMESPACE.to_owned());
    s.metadata.labels = Some(
        [(paddock_api::host::HOST_LABEL.to_owned(), host.to_owned())]
            .into_iter()
            .collect(),
    );
    s.string_data = Some(
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    s
}

/// Registers a host by its BMC: the Host first (refused whole if any field
/// is wrong), then its Secrets; if those fail, the Host goes again.
#[allow(clippy::too_many_arguments)]
async fn add_host(
    client: &Client,
    name: &str,
    bmc: &str,
    mac: &str,
    username: &str,
    password_file: Option<&std::path::Path>,
    bmc_ca: Option<&std::path::Path>,
    insecure_skip_verify: bool,
    offline: bool,
) -> CliResult {
    let password = match password_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| {
                CliError::new(
                    Exit::Failure,
                    format!("--password-file {}: {e}", f.display()),
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => std::env::var("PADDOCK_BMC_PASSWORD").map_err(|_| {
            CliError::new(
                Exit::Failure,
                "the BMC password: give --password-file or set PADDOCK_BMC_PASSWORD",
            )
        })?,
    };
    let ca = bmc_ca
        .map(|f| {
            std::fs::read_to_string(f)
                .map_err(|e| CliError::new(Exit::Failure, format!("--bmc-ca {}: {e}", f.display())))
        })
        .transpose()?;
    let driver = if bmc.starts_with("ipmi://") {
        "ipmi"
    } else {
        "redfish"
    };
    let creds = format!("bmc-{name}");
    let ca_secret = ca.as_ref().map(|_| format!("bmc-ca-{name}"));
    let host: Host = serde_json::from_value(serde_json::json!({
        "apiVersion": "paddock.io/v1alpha1", "kind": "Host",
        "metadata": {"name": name, "finalizers": [paddock_api::host::DEPROVISION_FINALIZER]},
        "spec": {
            "bmc": {"driver": driver, "address": bmc, "credentialsSecret": creds,
                    "caSecret": ca_secret, "insecureSkipVerify": insecure_skip_verify},
            "bootMAC": mac,
            "online": !offline,
        },
    }))
    .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let hosts: Api<Host> = Api::all(client.clone());
    hosts.create(&PostParams::default(), &host).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let mut made = vec![bmc_secret(
        name,
        &creds,
        &[("username", username), ("password", &password)],
    )];
    if let (Some(n), Some(pem)) = (&ca_secret, &ca) {
        made.push(bmc_secret(name, n, &[("ca.crt", pem)]));
    }
    for s in &made {
        if let Err(e) = secrets.create(&PostParams::default(), s).await {
            let _ = hosts.delete(name, &DeleteParams::default()).await;
            return Err(e.into());
        }
    }
    println!(
        "host {name} registered by its BMC ({driver}); {}",
        if offline {
            "kept powered off"
        } else {
            "powering on"
        }
    );
    Ok(())
}

async fn power(hosts: &Api<Host>, name: &str, verb: PowerVerb) -> CliResult {
    let h = hosts.get(name).await?;
    if h.spec.bmc.is_none() {
        return Err(CliError::new(
            Exit::Failure,
            format!("host {name} has no BMC: Paddock does not power it"),
        ));
    }
    let online = match verb {
        PowerVerb::On => true,
        PowerVerb::Off => false,
        PowerVerb::Cycle => return reprovision(hosts, name, "power-cycling").await,
        PowerVerb::Status => {
            let st = h.status.unwrap_or_default();
            let want = if h.spec.online.unwrap_or(true) {
                "on"
            } else {
                "off"
            };
            let power = st.power_state.as_deref().unwrap_or("unknown");
            println!("host {name}: power {power}, wanted {want}");
            if let Some(c) = st
                .conditions
                .iter()
                .find(|c| c.type_ == paddock_api::host::BMC_CONDITION)
                .filter(|c| c.status != "True")
            {
                println!("BMC: {} ({})", c.message, c.reason);
            }
            return Ok(());
        }
    };
    let patch = serde_json::json!({"spec": {"online": online}});
    hosts
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    println!(
        "host {name} powering {} through its BMC",
        if online { "on" } else { "off" }
    );
    Ok(())
}

/// Asks the BMC controller for a netboot and a power cycle (a new value
/// of the reprovision annotation).
async fn reprovision(hosts: &Api<Host>, name: &str, what: &str) -> CliResult {
    let h = hosts.get(name).await?;
    if h.spec.bmc.is_none() {
        return Err(CliError::new(
            Exit::Failure,
            format!("host {name} has no BMC: Paddock does not power it"),
        ));
    }
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {
        paddock_api::host::REPROVISION_ANNOTATION: stamp,
    }}});
    hosts
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    println!("host {name} {what} through its BMC");
    Ok(())
}

async fn fence(api: &Api<Host>, name: &str, on: bool) -> CliResult {
    let patch = serde_json::json!({"spec": {"outOfService": on}});
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    if on {
        println!(
            "host {name} fenced: you confirm it is off; once NotReady its Machines are replaced elsewhere"
        );
    } else {
        println!("host {name} no longer fenced");
    }
    Ok(())
}

async fn set_unschedulable(api: &Api<Host>, name: &str, on: bool) -> CliResult {
    let patch = serde_json::json!({"spec": {"unschedulable": on}});
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    println!("host {name} {}", if on { "cordoned" } else { "uncordoned" });
    Ok(())
}

pub async fn org(cmd: OrgCommand, client: &Client, out: Format) -> CliResult {
    let api: Api<Namespace> = Api::all(client.clone());
    match cmd {
        OrgCommand::Create { name } => {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.clone());
            let created = api.create(&PostParams::default(), &ns).await?;
            match out {
                Format::Table => println!("org {name} created"),
                f => print_data(f, &created)?,
            }
            Ok(())
        }
        OrgCommand::List => {
            let list = api.list(&ListParams::default()).await?;
            let orgs: Vec<&Namespace> = list
                .items
                .iter()
                .filter(|n| !SYSTEM.contains(&n.name_any().as_str()))
                .collect();
            match out {
                Format::Table => {
                    let rows = orgs
                        .iter()
                        .map(|n| {
                            let phase = n
                                .status
                                .as_ref()
                                .and_then(|s| s.phase.clone())
                                .unwrap_or_default();
                            vec![
                                n.name_any(),
                                phase,
                                age(n.metadata.creation_timestamp.as_ref()),
                            ]
                        })
                        .collect();
                    println!("{}", table(&["name", "status", "age"], rows));
                    Ok(())
                }
                f => print_data(f, &orgs),
            }
        }
        OrgCommand::Delete { name, wait } => {
            if SYSTEM.contains(&name.as_str()) {
                return Err(CliError::new(
                    Exit::Invalid,
                    format!("{name} belongs to the platform and cannot be deleted"),
                ));
            }
            api.delete(&name, &DeleteParams::default()).await?;
            if wait {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                while api.get_opt(&name).await?.is_some() {
                    if tokio::time::Instant::now() > deadline {
                        return Err(CliError::new(
                            Exit::Timeout,
                            format!("org {name} still terminating after 600s"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                println!("org {name} deleted");
            } else {
                println!("org {name} deleting");
            }
            Ok(())
        }
    }
}

pub async fn machine(cmd: MachineCommand, client: &Client, out: Format) -> CliResult {
    let (org, all) = match cmd {
        MachineCommand::List { org, all } => (org, all),
        MachineCommand::Exec {
            name,
            org,
            timeout,
            command,
        } => return exec(client, org.as_deref(), &name, timeout, command).await,
        MachineCommand::Console { name, org } => {
            return console(client, org.as_deref(), &name).await;
        }
    };
    let api: Api<Machine> = match (all, org) {
        (true, _) => Api::all(client.clone()),
        (false, Some(o)) => Api::namespaced(client.clone(), &o),
        (false, None) => Api::default_namespaced(client.clone()),
    };
    let list = api.list(&ListParams::default()).await?;
    if out != Format::Table {
        return print_data(out, &list.items);
    }
    let mut headers = vec![];
    if all {
        headers.push("org");
    }
    headers.extend(["name", "cluster", "role", "host", "ip", "phase", "age"]);
    let rows = list
        .items
        .iter()
        .map(|m| {
            let mut r = vec![];
            if all {
                r.push(m.namespace().unwrap_or_default());
            }
            r.extend([
                m.name_any(),
                m.spec.cluster_name.clone(),
                m.spec.role.as_str().to_owned(),
                m.spec.host_name.clone().unwrap_or_else(|| "<none>".into()),
                m.spec.ip.clone().unwrap_or_else(|| "<none>".into()),
                m.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or("Pending", MachinePhase::as_str)
                    .to_owned(),
                age(m.metadata.creation_timestamp.as_ref()),
            ]);
            r
        })
        .collect();
    println!("{}", table(&headers, rows));
    Ok(())
}

pub async fn host(cmd: HostCommand, client: &Client, out: Format) -> CliResult {
    let hosts: Api<Host> = Api::all(client.clone());
    match cmd {
        HostCommand::List => {}
        HostCommand::Add {
            name,
            bmc,
            mac,
            username,
            password_file,
            bmc_ca,
            insecure_skip_verify,
            offline,
        } => {
            return add_host(
                client,
                &name,
                &bmc,
                &mac,
                &username,
                password_file.as_deref(),
                bmc_ca.as_deref(),
                insecure_skip_verify,
                offline,
            )
            .await;
        }
        HostCommand::Power { action, name } => return power(&hosts, &name, action).await,
        HostCommand::Cordon { name } => return set_unschedulable(&hosts, &name, true).await,
        HostCommand::Fence { name, undo } => return fence(&hosts, &name, !undo).await,
        HostCommand::Reprovision { name } => {
            return reprovision(&hosts, &name, "reprovisioning (netboot, power cycle)").await;
        }
        HostCommand::Uncordon { name } => return set_unschedulable(&hosts, &name, false).await,
        HostCommand::Delete { name } => {
            hosts.delete(&name, &DeleteParams::default()).await?;
            println!("host {name} deleted; the Machines it held are released");
            return Ok(());
        }
        HostCommand::Drain { name, wait } => {
            hosts.get(&name).await?;
            set_unschedulable(&hosts, &name, true).await?;
            let machines: Api<Machine> = Api::all(client.clone());
            let lp = ListParams::default().fields(&format!("spec.hostName={name}"));
            for m in machines.list(&lp).await?.items {
                let api: Api<Machine> =
                    Api::namespaced(client.clone(), &m.namespace().unwrap_or_default());
                api.delete(&m.name_any(), &DeleteParams::default()).await?;
                println!(
                    "machine {}/{} evicted",
                    m.namespace().unwrap_or_default(),
                    m.name_any()
                );
            }
            if wait {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                while !machines.list(&lp).await?.items.is_empty() {
                    if tokio::time::Instant::now() > deadline {
                        return Err(CliError::new(
                            Exit::Timeout,
                            format!("machines still on host {name} after 600s"),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                println!("host {name} drained");
            }
            return Ok(());
        }
    }
    let list = Api::<Host>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    if out != Format::Table {
        return print_data(out, &list.items);
    }
    let rows = list
        .items
        .iter()
        .map(|h| {
            let st = h.status.clone().unwrap_or_default();
            let alloc = st.allocatable.clone().unwrap_or_default();
            let used = st.allocated.clone().unwrap_or_default();
            vec![
                h.name_any(),
                st.phase.map_or("Registering", HostPhase::as_str).to_owned(),
                (!h.spec.unschedulable).to_string(),
                format!("{}/{}", used.cpu, alloc.cpu),
                format!("{}/{}", used.memory, alloc.memory),
                st.underlay_ip.unwrap_or_else(|| "<none>".into()),
                st.power_state.unwrap_or_else(|| "-".into()),
                age(h.metadata.creation_timestamp.as_ref()),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "name",
                "phase",
                "schedulable",
                "cpu",
                "memory",
                "underlay",
                "power",
                "age"
            ],
            rows
        )
    );
    Ok(())
}
