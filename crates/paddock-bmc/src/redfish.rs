//! The Redfish driver (DMTF DSP0266): a session (`X-Auth-Token`) when the
//! service offers one, HTTP Basic otherwise; the one system of the
//! `Systems` collection, or the one the address names; `PowerState`;
//! `#ComputerSystem.Reset`; and the one-time boot override
//! (`Boot.BootSourceOverrideTarget` with `BootSourceOverrideEnabled: Once`).

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

use crate::{Bmc, BmcError, BootDevice, Credentials, Options, PowerAction, PowerState, Result};

/// A Redfish service's one computer system.
pub struct Redfish {
    http: reqwest::Client,
    base: Url,
    configured_system: Option<String>,
    creds: Credentials,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    auth: Option<Auth>,
    system: Option<String>,
}

#[derive(Clone)]
enum Auth {
    Session {
        token: String,
        location: Option<String>,
    },
    Basic,
}

/// An answer: its status, `ETag` and JSON body (`Null` when empty).
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Value,
}

impl Redfish {
    pub fn new(
        base: Url,
        system: Option<String>,
        creds: Credentials,
        opts: &Options,
    ) -> Result<Self> {
        let tls = crate::tls::client_config(&opts.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(std::time::Duration::from_secs(10)))
            .build()
            .map_err(|e| BmcError::Protocol(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            configured_system: system,
            creds,
            state: Mutex::default(),
        })
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.base
            .join(path)
            .map_err(|e| BmcError::Protocol(format!("bad path {path:?}: {e}")))
    }

    fn transport(&self, e: reqwest::Error) -> BmcError {
        if let Some(t) = tls_error(&e) {
            return BmcError::Tls(t);
        }
        let chain = error_chain(&e);
        if let Some(i) = chain.find("invalid peer certificate") {
            return BmcError::Tls(chain[i..].to_owned());
        }
        if e.is_timeout() {
            return BmcError::Unreachable {
                address: self.base.to_string(),
                reason: "timed out".into(),
            };
        }
        BmcError::Unreachable {
            address: self.base.to_string(),
            reason: chain,
        }
    }

    /// One request, with no authentication or with `auth`.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        auth: Option<&Auth>,
        if_match: Option<&str>,
    ) -> Result<(Answer, reqwest::header::HeaderMap)> {
        let mut req = self
            .http
            .request(method, self.url(path)?)
            .header(reqwest::header::ACCEPT, "application/json");
        match auth {
            Some(Auth::Session { token, .. }) => req = req.header("X-Auth-Token", token),
            Some(Auth::Basic) => {
                req = req.basic_auth(&self.creds.username, Some(&self.creds.password))
            }
            None => {}
        }
        if let Some(tag) = if_match {
            req = req.header(reqwest::header::IF_MATCH, tag);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let etag = headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((Answer { status, etag, body }, headers))
    }

    /// Opens a session, or settles for Basic when the service has none.
    async fn login(&self) -> Result<Auth> {
        let (root, _) = self
            .raw(Method::GET, "/redfish/v1/", None, None, None)
            .await?;
        let sessions = root
            .body
            .pointer("/Links/Sessions/@odata.id")
            .and_then(Value::as_str)
            .unwrap_or("/redfish/v1/SessionService/Sessions")
            .to_owned();
        let creds = json!({"UserName": self.creds.username, "Password": self.creds.password});
        let (a, headers) = self
            .raw(Method::POST, &sessions, Some(&creds), None, None)
            .await?;
        match a.status {
            s if s.is_success() => {
                let token = headers
                    .get("X-Auth-Token")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        BmcError::Protocol("a session was made without an X-Auth-Token".into())
                    })?;
                let location = headers
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| {
                        a.body
                            .get("@odata.id")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    });
                Ok(Auth::Session {
                    token: token.to_owned(),
                    location,
                })
            }
            // No session service, or one that wants Basic to be used
            // (sushy-tools answers 401): Basic, which a wrong password
            // fails with 401 in turn.
            StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => Ok(Auth::Basic),
            s => Err(BmcError::Protocol(format!(
                "opening a session answered {s}: {}",
                message(&a.body)
            ))),
        }
    }

    fn unauthorized(&self) -> BmcError {
        BmcError::Unauthorized {
            user: self.creds.username.clone(),
        }
    }

    /// A request made as the user: logs in first, and once again when the
    /// session has expired.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer> {
        for attempt in 0..2 {
            let auth = {
                let mut st = self.state.lock().await;
                match &st.auth {
                    Some(a) => a.clone(),
                    None => {
                        let a = self.login().await?;
                        st.auth = Some(a.clone());
                        a
                    }
                }
            };
            let (a, _) = self
                .raw(method.clone(), path, body, Some(&auth), if_match)
                .await?;
            if a.status == StatusCode::UNAUTHORIZED {
                self.state.lock().await.auth = None;
                if attempt == 0 && matches!(auth, Auth::Session { .. }) {
                    // The session may have expired: one new one.
                    continue;
                }
                return Err(self.unauthorized());
            }
            return Ok(a);
        }
        Err(self.unauthorized())
    }

    async fn get(&self, path: &str) -> Result<Answer> {
        let a = self.call(Method::GET, path, None, None).await?;
        if !a.status.is_success() {
            return Err(BmcError::Protocol(format!(
                "GET {path} answered {}: {}",
                a.status,
                message(&a.body)
            )));
        }
        Ok(a)
    }

    /// The path of the system this driver controls.
    async fn system(&self) -> Result<String> {
        if let Some(s) = &self.configured_system {
            return Ok(s.clone());
        }
        if let Some(s) = &self.state.lock().await.system {
            return Ok(s.clone());
        }
        let root = self.get("/redfish/v1/").await?;
        let systems = root
            .body
            .pointer("/Systems/@odata.id")
            .and_then(Value::as_str)
            .unwrap_or("/redfish/v1/Systems")
            .to_owned();
        let list = self.get(&systems).await?;
        let members: Vec<&str> = list
            .body
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|x| x.get("@odata.id").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        let one = match members.as_slice() {
            [one] => (*one).to_owned(),
            [] => return Err(BmcError::Protocol(format!("{systems} lists no system"))),
            many => {
                return Err(BmcError::Protocol(format!(
                    "the BMC manages {} systems ({}); name one in the address, as redfish://host{}",
                    many.len(),
                    many.join(", "),
                    many[0]
                )));
            }
        };
        self.state.lock().await.system = Some(one.clone());
        Ok(one)
    }

    fn refused(action: &str, a: &Answer) -> BmcError {
        BmcError::Refused {
            action: action.to_owned(),
            reason: format!("{}: {}", a.status, message(&a.body)),
        }
    }
}

#[async_trait]
impl Bmc for Redfish {
    async fn power_state(&self) -> Result<PowerState> {
        let sys = self.system().await?;
        power_state_of(&self.get(&sys).await?.body)
    }

    async fn power(&self, action: PowerAction) -> Result<()> {
        let sys = self.system().await?;
        let a = self.get(&sys).await?;
        let state = power_state_of(&a.body)?;
        let reset = a
            .body
            .get("Actions")
            .and_then(|x| x.get("#ComputerSystem.Reset"));
        let allowed: Option<Vec<&str>> = reset
            .and_then(|r| r.get("ResetType@Redfish.AllowableValues"))
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_str).collect());
        let Some(kind) = reset_type(action, state, allowed.as_deref()) else {
            return Ok(());
        };
        if let Some(allowed) = &allowed
            && !allowed.contains(&kind)
        {
            return Err(BmcError::Unsupported(format!(
                "ResetType {kind} (it allows {})",
                allowed.join(", ")
            )));
        }
        let target = reset
            .and_then(|r| r.get("target"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{sys}/Actions/ComputerSystem.Reset"));
        let r = self
            .call(
                Method::POST,
                &target,
                Some(&json!({"ResetType": kind})),
                None,
            )
            .await?;
        if !r.status.is_success() {
            return Err(Self::refused(&format!("ResetType {kind}"), &r));
        }
        tracing::info!(system = %sys, reset = kind, "BMC power action");
        Ok(())
    }

    async fn boot_once(&self, device: BootDevice) -> Result<()> {
        let sys = self.system().await?;
        let a = self.get(&sys).await?;
        let target = match device {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
        };
        if let Some(allowed) = a
            .body
            .pointer("/Boot/BootSourceOverrideTarget@Redfish.AllowableValues")
            .and_then(Value::as_array)
            && !allowed.iter().any(|v| v.as_str() == Some(target))
        {
            return Err(BmcError::Unsupported(format!(
                "booting from {target} (BootSourceOverrideTarget allows {allowed:?})"
            )));
        }
        let body = json!({"Boot": {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": "Once",
        }});
        let r = self
            .call(Method::PATCH, &sys, Some(&body), a.etag.as_deref())
            .await?;
        if !r.status.is_success() {
            return Err(Self::refused(&format!("a one-time boot from {target}"), &r));
        }
        Ok(())
    }

    async fn close(&self) {
        let auth = self.state.lock().await.auth.take();
        if let Some(Auth::Session {
            location: Some(loc),
            token,
        }) = auth
        {
            let auth = Auth::Session {
                token,
                location: None,
            };
            if let Err(e) = self
                .raw(Method::DELETE, &loc, None, Some(&auth), None)
                .await
            {
                tracing::debug!(error = %e, "closing the Redfish session");
            }
        }
    }
}

/// The Redfish `ResetType` that brings a machine in `state` to what
/// `action` asks, or `None` when it is there already.
fn reset_type(
    action: PowerAction,
    state: PowerState,
    allowed: Option<&[&str]>,
) -> Option<&'static str> {
    let can = |t: &str| allowed.is_none_or(|a| a.contains(&t));
    match action {
        PowerAction::On if state.is_on() => None,
        PowerAction::On => Some("On"),
        PowerAction::Off | PowerAction::SoftOff if state == PowerState::Off => None,
        PowerAction::Off => Some("ForceOff"),
        PowerAction::SoftOff => Some("GracefulShutdown"),
        PowerAction::Cycle if !state.is_on() => Some("On"),
        PowerAction::Cycle if can("PowerCycle") => Some("PowerCycle"),
        PowerAction::Cycle => Some("ForceRestart"),
    }
}

fn power_state_of(system: &Value) -> Result<PowerState> {
    match system.get("PowerState").and_then(Value::as_str) {
        Some("On") => Ok(PowerState::On),
        Some("Off") => Ok(PowerState::Off),
        Some("PoweringOn") => Ok(PowerState::PoweringOn),
        Some("PoweringOff") => Ok(PowerState::PoweringOff),
        Some(other) => Err(BmcError::Protocol(format!("unknown PowerState {other:?}"))),
        None => Err(BmcError::Protocol("the system shows no PowerState".into())),
    }
}

/// The message of a Redfish error body, or what there is.
fn message(body: &Value) -> String {
    let e = body.get("error");
    let extended = e
        .and_then(|e| e.get("@Message.ExtendedInfo"))
        .and_then(Value::as_array)
        .and_then(|v| v.first())
        .and_then(|m| m.get("Message"))
        .and_then(Value::as_str);
    extended
        .or_else(|| e.and_then(|e| e.get("message")).and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| match body {
            Value::Null => "no details".into(),
            other => other.to_string().chars().take(200).collect(),
        })
}

/// The TLS failure inside a transport error, if that is what it is.
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(t.to_string());
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_types_are_idempotent() {
        use PowerAction::*;
        use PowerState as S;
        assert_eq!(reset_type(On, S::On, None), None);
        assert_eq!(reset_type(On, S::PoweringOn, None), None);
        assert_eq!(reset_type(On, S::Off, None), Some("On"));
        assert_eq!(reset_type(Off, S::Off, None), None);
        assert_eq!(reset_type(Off, S::On, None), Some("ForceOff"));
        assert_eq!(reset_type(SoftOff, S::On, None), Some("GracefulShutdown"));
        assert_eq!(reset_type(Cycle, S::Off, None), Some("On"));
        assert_eq!(reset_type(Cycle, S::On, None), Some("PowerCycle"));
        assert_eq!(
            reset_type(Cycle, S::On, Some(&["On", "ForceOff", "ForceRestart"])),
            Some("ForceRestart")
        );
    }

    #[test]
    fn error_messages_come_from_the_body() {
        let b = json!({"error": {"code": "Base.1.0.GeneralError", "message": "general",
            "@Message.ExtendedInfo": [{"Message": "The action is not supported."}]}});
        assert_eq!(message(&b), "The action is not supported.");
        assert_eq!(message(&json!({"error": {"message": "no"}})), "no");
        assert_eq!(message(&Value::Null), "no details");
    }

    #[test]
    fn unknown_power_states_are_errors() {
        assert_eq!(
            power_state_of(&json!({"PowerState": "On"})).unwrap(),
            PowerState::On
        );
        assert!(power_state_of(&json!({"PowerState": "Paused"})).is_err());
        assert!(power_state_of(&json!({})).is_err());
    }
}
