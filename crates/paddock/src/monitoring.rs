//! The monitoring Paddock ships (the repository's `monitoring/`, built into
//! the binary): Prometheus' scrape configuration, the alert rules and the
//! Grafana dashboards. `paddock monitoring write DIR` writes them for an
//! installation; `paddock dev up --monitoring` writes them for the lab and
//! runs Debian's Prometheus on them.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The alert rules.
pub const ALERTS: &str = include_str!("../../../monitoring/alerts.yml");
/// Their unit tests (`promtool test rules`), for those who change them.
pub const ALERTS_TEST: &str = include_str!("../../../monitoring/alerts_test.yml");
/// The Grafana dashboards, by file name.
pub const DASHBOARDS: &[(&str, &str)] = &[
    (
        "paddock-fleet.json",
        include_str!("../../../monitoring/dashboards/paddock-fleet.json"),
    ),
    (
        "paddock-control-plane.json",
        include_str!("../../../monitoring/dashboards/paddock-control-plane.json"),
    ),
];

/// Where Prometheus finds the server, and how it proves itself.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// `host:port` of the management API (several for an HA plane).
    pub servers: Vec<String>,
    /// The platform CA, to verify the servers.
    pub ca_file: PathBuf,
    /// A token of a user in group `system:monitoring`.
    pub token_file: PathBuf,
    /// The alert rules file.
    pub rules_file: PathBuf,
    /// Scrape and rule evaluation interval, in seconds.
    pub interval_seconds: u32,
}

/// Prometheus' configuration for `s`.
pub fn prometheus_config(s: &Scrape) -> String {
    let targets = s
        .servers
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let first = s.servers.first().map_or("", String::as_str);
    let auth = format!(
        "    tls_config:\n      ca_file: {ca}\n    authorization:\n      type: Bearer\n      credentials_file: {token}\n",
        ca = s.ca_file.display(),
        token = s.token_file.display(),
    );
    format!(
        "# Prometheus scraping Paddock (written by `paddock monitoring write`).\n\
         global:\n  scrape_interval: {i}s\n  evaluation_interval: {i}s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 # The management API servers.\n\
         \x20 - job_name: paddock-server\n    scheme: https\n    metrics_path: /metrics\n{auth}\
         \x20   static_configs:\n      - targets: [{targets}]\n\
         \x20 # Every host's agent, through the server (agents need not be\n\
         \x20 # reachable from here): one target per Host, discovered from it.\n\
         \x20 - job_name: paddock-agents\n    scheme: https\n{auth}\
         \x20   http_sd_configs:\n      - url: https://{first}/paddock/v1/monitoring/targets\n        refresh_interval: 30s\n\
         \x20       tls_config:\n          ca_file: {ca}\n        authorization:\n          type: Bearer\n          credentials_file: {token}\n",
        i = s.interval_seconds,
        rules = s.rules_file.display(),
        ca = s.ca_file.display(),
        token = s.token_file.display(),
    )
}

/// Writes `prometheus.yml`, `alerts.yml`, `alerts_test.yml` and
/// `dashboards/` into `dir`; returns the configuration's path.
pub fn write(
    dir: &Path,
    servers: Vec<String>,
    ca_file: PathBuf,
    token_file: PathBuf,
    interval_seconds: u32,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("dashboards"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let rules_file = dir.join("alerts.yml");
    std::fs::write(&rules_file, ALERTS)?;
    std::fs::write(dir.join("alerts_test.yml"), ALERTS_TEST)?;
    for (name, body) in DASHBOARDS {
        std::fs::write(dir.join("dashboards").join(name), body)?;
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        prometheus_config(&Scrape {
            servers,
            ca_file,
            token_file,
            rules_file,
            interval_seconds,
        }),
    )?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_names_what_it_needs() {
        let c = prometheus_config(&Scrape {
            servers: vec!["paddock.example:6443".into()],
            ca_file: "/etc/paddock/ca.crt".into(),
            token_file: "/etc/prometheus/paddock.token".into(),
            rules_file: "/etc/prometheus/paddock-alerts.yml".into(),
            interval_seconds: 15,
        });
        for part in [
            "scrape_interval: 15s",
            "- /etc/prometheus/paddock-alerts.yml",
            "ca_file: /etc/paddock/ca.crt",
            "credentials_file: /etc/prometheus/paddock.token",
            "targets: [\"paddock.example:6443\"]",
            "job_name: paddock-server",
            "job_name: paddock-agents",
            "url: https://paddock.example:6443/paddock/v1/monitoring/targets",
        ] {
            assert!(c.contains(part), "{part} missing from\n{c}");
        }
    }

    #[test]
    fn dashboards_are_json_with_queries() {
        for (name, body) in DASHBOARDS {
            let v: serde_json::Value = serde_json::from_str(body).expect(name);
            let panels = v["panels"].as_array().expect("panels");
            assert!(panels.len() > 5, "{name}");
            for p in panels {
                let targets = p["targets"].as_array().expect("targets");
                assert!(
                    targets.iter().all(|t| t["expr"]
                        .as_str()
                        .is_some_and(|e| e.contains("paddock_") || e.contains("up{"))),
                    "{name}: {p}"
                );
            }
        }
    }
}
