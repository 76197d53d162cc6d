//! `paddock dev bmc`: the lab's virtual BMC. One small Redfish service (a
//! lab fake of a BMC, on loopback) for the lab's "bare-metal" machines,
//! each a QEMU VM with a blank disk and a NIC on the lab's fabric whose
//! iPXE ROM netboots it. Powering a system on starts its VM, powering it
//! off stops it; a VM that runs is a system that is On, so the state
//! survives this process. Sessions (X-Auth-Token) and Basic both work.
//! Redfish's independent implementation in the tests is sushy-tools; this
//! one exists to drive real VMs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

/// One lab machine.
#[derive(Debug, Clone)]
pub struct LabMachine {
    pub name: String,
    pub mac: String,
    /// Its tap on the fabric bridge, in `netns`.
    pub tap: String,
    pub disk: PathBuf,
    pub console: PathBuf,
    pub pidfile: PathBuf,
}

/// The lab machines of data directory `d`: `bm-1`…`bm-N`.
pub fn machines(d: &Path, n: usize) -> Vec<LabMachine> {
    (1..=n)
        .map(|i| {
            let name = format!("bm-{i}");
            let dir = d.join("bare-metal");
            LabMachine {
                mac: format!("52:54:00:b0:00:{i:02x}"),
                tap: format!("pdbm{i}"),
                disk: dir.join(format!("{name}.img")),
                console: dir.join(format!("{name}.console.log")),
                pidfile: dir.join(format!("{name}.pid")),
                name,
            }
        })
        .collect()
}

pub struct Settings {
    pub listen: SocketAddr,
    pub username: String,
    pub password: String,
    pub netns: String,
    pub machines: Vec<LabMachine>,
    pub memory_mib: u32,
    pub cpus: u32,
}

struct Lab {
    s: Settings,
    sessions: Mutex<HashMap<String, String>>,
    /// One-time boot overrides asked for, by system.
    boot: Mutex<HashMap<String, String>>,
}

fn pid_of(m: &LabMachine) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(&m.pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Alive, and not a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .to_owned();
    (state != "Z" && state != "X").then_some(pid)
}

fn power_on(s: &Settings, m: &LabMachine) -> anyhow::Result<()> {
    if pid_of(m).is_some() {
        return Ok(());
    }
    let st = std::process::Command::new("ip")
        .args(["netns", "exec", &s.netns, "qemu-system-x86_64"])
        .args(["-name", &m.name, "-machine", "pc", "-accel", "tcg"])
        .args(["-m", &s.memory_mib.to_string(), "-smp", &s.cpus.to_string()])
        .args(["-display", "none", "-boot", "order=n"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", m.disk.display()))
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={},script=no,downscript=no", m.tap),
        ])
        .args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={}", m.mac),
        ])
        .arg("-chardev")
        .arg(format!("file,id=s0,path={},append=on", m.console.display()))
        .args(["-serial", "chardev:s0"])
        .arg("-pidfile")
        .arg(&m.pidfile)
        .arg("-daemonize")
        .status()
        .context("starting QEMU")?;
    if !st.success() {
        anyhow::bail!("QEMU for {} exited with {st}", m.name);
    }
    tracing::info!(machine = %m.name, "powered on");
    Ok(())
}

fn power_off(m: &LabMachine) {
    if let Some(pid) = pid_of(m) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        for _ in 0..50 {
            if pid_of(m).is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        tracing::info!(machine = %m.name, "powered off");
    }
}

fn status(code: StatusCode, msg: &str) -> Response {
    (
        code,
        Json(json!({"error": {"code": "Base.1.0.GeneralError", "message": msg}})),
    )
        .into_response()
}

impl Lab {
    fn authorized(&self, h: &HeaderMap) -> bool {
        if let Some(t) = h.get("X-Auth-Token").and_then(|v| v.to_str().ok()) {
            return self.sessions.lock().is_ok_and(|s| s.contains_key(t));
        }
        let Some(basic) = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
        else {
            return false;
        };
        let want = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.s.username, self.s.password));
        basic.trim() == want
    }

    /// System `id`, for a caller who authenticated; else the error.
    fn find(&self, h: &HeaderMap, id: &str) -> Result<&LabMachine, (StatusCode, &'static str)> {
        if !self.authorized(h) {
            return Err((StatusCode::UNAUTHORIZED, "authentication required"));
        }
        self.s
            .machines
            .iter()
            .find(|m| m.name == id)
            .ok_or((StatusCode::NOT_FOUND, "no such system"))
    }

    fn system(&self, m: &LabMachine) -> Value {
        let on = pid_of(m).is_some();
        let path = format!("/redfish/v1/Systems/{}", m.name);
        let target = self
            .boot
            .lock()
            .ok()
            .and_then(|b| b.get(&m.name).cloned())
            .unwrap_or_else(|| "None".into());
        json!({
            "@odata.id": path, "Id": m.name, "Name": m.name,
            "PowerState": if on { "On" } else { "Off" },
            "Boot": {
                "BootSourceOverrideTarget": target,
                "BootSourceOverrideEnabled": if target == "None" { "Disabled" } else { "Once" },
                "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd"],
            },
            "Actions": {"#ComputerSystem.Reset": {
                "target": format!("{path}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"],
            }},
        })
    }
}

type Shared = State<Arc<Lab>>;

async fn root() -> Json<Value> {
    Json(json!({
        "@odata.id": "/redfish/v1/", "Id": "RootService", "RedfishVersion": "1.6.0",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
    }))
}

async fn login(State(lab): Shared, Json(body): Json<Value>) -> Response {
    let user = body.get("UserName").and_then(Value::as_str);
    let pass = body.get("Password").and_then(Value::as_str);
    if user != Some(lab.s.username.as_str()) || pass != Some(lab.s.password.as_str()) {
        return status(StatusCode::UNAUTHORIZED, "wrong user name or password");
    }
    let id = format!("{:016x}", rand_u64());
    let token = format!(
        "{:032x}",
        (u128::from(rand_u64()) << 64) | u128::from(rand_u64())
    );
    if let Ok(mut s) = lab.sessions.lock() {
        s.insert(token.clone(), id.clone());
    }
    let loc = format!("/redfish/v1/SessionService/Sessions/{id}");
    (
        StatusCode::CREATED,
        [
            ("X-Auth-Token", token),
            (header::LOCATION.as_str(), loc.clone()),
        ],
        Json(json!({"@odata.id": loc, "Id": id})),
    )
        .into_response()
}

fn rand_u64() -> u64 {
    rand::random()
}

async fn logout(State(lab): Shared, UrlPath(id): UrlPath<String>) -> Response {
    if let Ok(mut s) = lab.sessions.lock() {
        s.retain(|_, v| *v != id);
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn systems(State(lab): Shared, h: HeaderMap) -> Response {
    if !lab.authorized(&h) {
        return status(StatusCode::UNAUTHORIZED, "authentication required");
    }
    let members: Vec<Value> = lab
        .s
        .machines
        .iter()
        .map(|m| json!({"@odata.id": format!("/redfish/v1/Systems/{}", m.name)}))
        .collect();
    Json(json!({"@odata.id": "/redfish/v1/Systems", "Members@odata.count": members.len(), "Members": members}))
        .into_response()
}

async fn system(State(lab): Shared, h: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    match lab.find(&h, &id) {
        Ok(m) => Json(lab.system(m)).into_response(),
        Err((code, msg)) => status(code, msg),
    }
}

async fn patch_system(
    State(lab): Shared,
    h: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Response {
    let m = match lab.find(&h, &id) {
        Ok(m) => m,
        Err((code, msg)) => return status(code, msg),
    };
    if let Some(t) = body
        .pointer("/Boot/BootSourceOverrideTarget")
        .and_then(Value::as_str)
    {
        if !["None", "Pxe", "Hdd"].contains(&t) {
            return status(
                StatusCode::BAD_REQUEST,
                "BootSourceOverrideTarget: not allowed",
            );
        }
        // The lab's machines boot from the network whatever is set: their
        // disks hold no boot loader.
        if let Ok(mut b) = lab.boot.lock() {
            b.insert(m.name.clone(), t.to_owned());
        }
    }
    Json(lab.system(m)).into_response()
}

async fn reset(
    State(lab): Shared,
    h: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Response {
    let m = match lab.find(&h, &id) {
        Ok(m) => m.clone(),
        Err((code, msg)) => return status(code, msg),
    };
    let kind = body
        .get("ResetType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let lab2 = lab.clone();
    let r = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        match kind.as_str() {
            "On" => power_on(&lab2.s, &m),
            "ForceOff" | "GracefulShutdown" => {
                power_off(&m);
                Ok(())
            }
            "ForceRestart" | "PowerCycle" => {
                power_off(&m);
                power_on(&lab2.s, &m)
            }
            other => anyhow::bail!("ResetType {other:?} is not supported"),
        }
    })
    .await;
    match r {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => status(StatusCode::BAD_REQUEST, &format!("{e:#}")),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Serves until the process is stopped.
pub async fn run(s: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(s.listen)
        .await
        .with_context(|| format!("listening on {}", s.listen))?;
    let lab = Arc::new(Lab {
        s,
        sessions: Mutex::default(),
        boot: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/redfish/v1", get(root))
        .route("/redfish/v1/", get(root))
        .route("/redfish/v1/SessionService/Sessions", post(login))
        .route(
            "/redfish/v1/SessionService/Sessions/{id}",
            axum::routing::delete(logout),
        )
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/{id}", get(system).patch(patch_system))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .with_state(lab);
    tracing::info!(addr = %listener.local_addr()?, "lab BMC serving Redfish");
    axum::serve(listener, app).await?;
    Ok(())
}
