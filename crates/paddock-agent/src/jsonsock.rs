//! QMP and the QEMU guest agent: JSON commands over a unix socket.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum SockError {
    #[error("connecting to {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("bad reply: {0}")]
    Protocol(String),
    #[error("{class}: {desc}")]
    Command { class: String, desc: String },
}

type Result<T> = std::result::Result<T, SockError>;

pub struct JsonSock {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    timeout: Duration,
}

impl JsonSock {
    async fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let s = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| SockError::Timeout)?
            .map_err(|e| SockError::Connect(path.display().to_string(), e))?;
        let (r, w) = s.into_split();
        Ok(Self {
            rd: BufReader::new(r),
            wr: w,
            timeout,
        })
    }

    async fn read_value(&mut self) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(self.timeout, self.rd.read_line(&mut line))
                .await
                .map_err(|_| SockError::Timeout)??;
            if n == 0 {
                return Err(SockError::Closed);
            }
            // The guest agent may send a 0xFF sync byte before JSON.
            let t =
                line.trim_matches(|c: char| c.is_whitespace() || c == '\u{FFFD}' || c == '\u{FF}');
            if t.is_empty() {
                continue;
            }
            return serde_json::from_str(t).map_err(|e| SockError::Protocol(format!("{e}: {t}")));
        }
    }

    async fn send(&mut self, v: &Value) -> Result<()> {
        let mut b = serde_json::to_vec(v).map_err(|e| SockError::Protocol(e.to_string()))?;
        b.push(b'\n');
        self.wr.write_all(&b).await?;
        Ok(())
    }

    /// Sends a command and returns its `return`, skipping asynchronous events.
    pub async fn call(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        let mut req = json!({"execute": cmd});
        if let Some(a) = args {
            req["arguments"] = a;
        }
        self.send(&req).await?;
        loop {
            let v = self.read_value().await?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(SockError::Command {
                    class: e
                        .get("class")
                        .and_then(Value::as_str)
                        .unwrap_or("Error")
                        .to_owned(),
                    desc: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                });
            }
        }
    }
}

/// A QMP session: greeting read, capabilities negotiated.
pub async fn qmp(path: &Path) -> Result<JsonSock> {
    let mut s = JsonSock::connect(path, Duration::from_secs(3)).await?;
    let greeting = s.read_value().await?;
    if greeting.get("QMP").is_none() {
        return Err(SockError::Protocol(format!(
            "not a QMP greeting: {greeting}"
        )));
    }
    s.call("qmp_capabilities", None).await?;
    Ok(s)
}

/// A guest agent session, synchronised so stale replies are skipped.
pub async fn qga(path: &Path, timeout: Duration) -> Result<JsonSock> {
    let mut s = JsonSock::connect(path, timeout).await?;
    let id: u32 = std::process::id() ^ (jiff::Timestamp::now().subsec_nanosecond() as u32);
    let id = id & 0x7fff_ffff;
    s.send(&json!({"execute": "guest-sync", "arguments": {"id": id}}))
        .await?;
    loop {
        let v = s.read_value().await?;
        if v.get("return").and_then(Value::as_u64) == Some(u64::from(id)) {
            return Ok(s);
        }
    }
}

/// What a command run in the guest did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` in the guest through the guest agent and waits for it.
pub async fn guest_exec(sock: &Path, argv: &[String], timeout: Duration) -> Result<ExecResult> {
    use base64::Engine;
    let (path, args) = argv
        .split_first()
        .ok_or_else(|| SockError::Protocol("empty command".into()))?;
    let mut s = qga(sock, Duration::from_secs(5)).await?;
    let r = s
        .call(
            "guest-exec",
            Some(json!({"path": path, "arg": args, "capture-output": true})),
        )
        .await?;
    let pid = r
        .get("pid")
        .and_then(Value::as_i64)
        .ok_or_else(|| SockError::Protocol(format!("guest-exec: {r}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let st = s
            .call("guest-exec-status", Some(json!({"pid": pid})))
            .await?;
        if st.get("exited").and_then(Value::as_bool) == Some(true) {
            let b64 = base64::engine::general_purpose::STANDARD;
            let text = |k: &str| {
                st.get(k)
                    .and_then(Value::as_str)
                    .and_then(|d| b64.decode(d).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            };
            let exit_code = st.get("exitcode").and_then(Value::as_i64).unwrap_or(
                st.get("signal")
                    .and_then(Value::as_i64)
                    .map_or(-1, |s| 128 + s),
            );
            return Ok(ExecResult {
                exit_code,
                stdout: text("out-data"),
                stderr: text("err-data"),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(SockError::Timeout);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
