//! `paddock audit`: the server's audit log, filtered (platform admins).

use kube::Client;
use serde_json::Value;

use crate::output::{Format, print_data, table};
use crate::{CliError, CliResult, Exit};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only this user's requests.
    #[arg(long)]
    pub user: Option<String>,
    /// Only requests on this resource (plural: clusters, machines, …).
    #[arg(long)]
    pub resource: Option<String>,
    /// Only this verb (create, update, patch, delete, …).
    #[arg(long)]
    pub verb: Option<String>,
    /// Only in this organization.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// From this long ago (30m, 2h, 1d) or this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Until this long ago or this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
}

/// `30m`, `2h`, `1d` back from now, or an RFC 3339 time as it is.
fn when(field: &str, v: &str) -> Result<String, CliError> {
    if v.parse::<jiff::Timestamp>().is_ok() {
        return Ok(v.to_owned());
    }
    let (n, unit) = v.split_at(v.len().saturating_sub(1));
    let secs = match (n.parse::<u64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n * 60,
        (Ok(n), "h") => n * 3600,
        (Ok(n), "d") => n * 86400,
        _ => {
            return Err(CliError::new(
                Exit::Invalid,
                format!(
                    "--{field} {v:?}: want a duration such as 30m, 2h or 1d, or an RFC 3339 time"
                ),
            ));
        }
    };
    let t = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(
            i64::try_from(secs).unwrap_or(i64::MAX),
        ))
        .map_err(|e| CliError::new(Exit::Invalid, format!("--{field} {v:?}: {e}")))?;
    Ok(t.to_string())
}

pub async fn run(a: AuditArgs, client: &Client, out: Format) -> CliResult {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("user", a.user.clone()),
        ("resource", a.resource.clone()),
        ("verb", a.verb.clone()),
        ("namespace", a.namespace.clone()),
        (
            "since",
            a.since.as_deref().map(|s| when("since", s)).transpose()?,
        ),
        (
            "until",
            a.until.as_deref().map(|s| when("until", s)).transpose()?,
        ),
        ("limit", Some(a.limit.to_string())),
    ] {
        if let Some(v) = v {
            q.append_pair(k, &v);
        }
    }
    let req = http::Request::get(format!("/paddock/v1/audit?{}", q.finish()))
        .body(Vec::new())
        .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?;
    let list: Value = client.request(req).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if out != Format::Table {
        return print_data(out, &items);
    }
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
    let rows = items
        .iter()
        .map(|r| {
            let mut what = s(r, "resource");
            if let Some(sub) = r["subresource"].as_str() {
                what = format!("{what}/{sub}");
            }
            let obj = match (r["namespace"].as_str(), r["name"].as_str()) {
                (Some(ns), Some(n)) => format!("{ns}/{n}"),
                (None, Some(n)) => n.to_owned(),
                (Some(ns), None) => format!("{ns}/"),
                (None, None) => s(r, "path"),
            };
            vec![
                s(r, "time"),
                match s(r, "user") {
                    u if u.is_empty() => "(unauthenticated)".to_owned(),
                    u => u,
                },
                s(r, "source"),
                s(r, "verb"),
                what,
                obj,
                r["code"]
                    .as_u64()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                s(r, "decision"),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "time", "user", "source", "verb", "resource", "object", "code", "decision"
            ],
            rows
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_durations_back_or_rfc3339() {
        assert_eq!(
            when("since", "2026-12-08T10:00:00Z").unwrap(),
            "2026-12-08T10:00:00Z"
        );
        let t: jiff::Timestamp = when("since", "2h").unwrap().parse().unwrap();
        let ago = jiff::Timestamp::now().as_second() - t.as_second();
        assert!((7199..=7201).contains(&ago), "{ago}");
        let e = when("since", "yesterday").unwrap_err();
        assert!(e.message.contains("--since"), "{}", e.message);
    }
}
