//! The platform's own Secrets in `paddock-system` (join tokens, host
//! credentials, console sessions): their resource, and their values, kept
//! base64 in `data` as any Secret's.

use base64::Engine;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::resources;

/// The namespace they live in.
pub const NS: &str = paddock_api::host::SYSTEM_NAMESPACE;

/// The Secrets resource.
pub fn resource() -> ApiResult<&'static resources::Resource> {
    resources::find("", "v1", "secrets").ok_or_else(|| ApiError::Internal("no secrets".into()))
}

/// `s` as a value of `data`.
pub fn encode(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The text in `data[key]`, if it is there and is UTF-8.
pub fn field(secret: &Value, key: &str) -> Option<String> {
    let raw = secret.get("data")?.get(key)?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}
