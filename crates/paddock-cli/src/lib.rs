//! The `paddock` user verbs: organizations, clusters, machines and hosts,
//! driven through the management API with kube-rs.

mod audit;
mod client;
mod cluster;
mod output;
mod resources;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use client::{connect, default_data_dir};
use output::Format;

/// Options every user verb takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Kubeconfig to use (else $KUBECONFIG, else the local server's admin kubeconfig).
    #[arg(long, global = true, env = "PADDOCK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Organizations (namespaces): who owns which clusters.
    #[command(subcommand)]
    Org(resources::OrgCommand),
    /// Workload clusters.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Node VMs of workload clusters.
    #[command(subcommand)]
    Machine(resources::MachineCommand),
    /// Machines of the fleet.
    #[command(subcommand)]
    Host(resources::HostCommand),
    /// The server's audit log: who changed what, and what was refused
    /// (platform admins).
    Audit(audit::AuditArgs),
    /// Print shell completions.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Exit statuses, so scripts can tell failures apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    NotFound = 3,
    Conflict = 4,
    Invalid = 5,
    Denied = 6,
    Timeout = 7,
    Unreachable = 8,
}

/// A user-facing failure: one line, and the exit status that goes with it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub exit: Exit,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit,
        }
    }
}

impl From<kube::Error> for CliError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) => {
                let exit = match s.code {
                    404 => Exit::NotFound,
                    409 => Exit::Conflict,
                    422 | 400 => Exit::Invalid,
                    401 | 403 => Exit::Denied,
                    _ => Exit::Failure,
                };
                CliError::new(exit, s.message.clone())
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => CliError::new(
                Exit::Unreachable,
                format!("cannot reach the management API: {}", chain(&e)),
            ),
            _ => CliError::new(Exit::Failure, chain(&e)),
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::new(Exit::Failure, format!("{e:#}"))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let m = x.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = x.source();
    }
    s
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Runs one user verb and turns its outcome into an exit status.
pub async fn run(cmd: Command, global: Global) -> ExitCode {
    let res = match cmd {
        Command::Completion { shell } => {
            completion(shell);
            Ok(())
        }
        cmd => dispatch(cmd, &global).await,
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.exit as u8)
        }
    }
}

async fn dispatch(cmd: Command, g: &Global) -> CliResult {
    let client = client::connect(g.kubeconfig.as_deref()).await?;
    match cmd {
        Command::Org(c) => resources::org(c, &client, g.output).await,
        Command::Cluster(c) => cluster::run(c, &client, g.output).await,
        Command::Machine(c) => resources::machine(c, &client, g.output).await,
        Command::Host(c) => resources::host(c, &client, g.output).await,
        Command::Audit(a) => audit::run(a, &client, g.output).await,
        Command::Completion { .. } => Ok(()),
    }
}

fn completion(shell: clap_complete::Shell) {
    // The completions describe the whole binary, so build its command here.
    let mut cmd = clap::Command::new("paddock");
    cmd = <Command as Subcommand>::augment_subcommands(cmd);
    cmd = <Global as Args>::augment_args(cmd);
    clap_complete::generate(shell, &mut cmd, "paddock", &mut std::io::stdout());
}
