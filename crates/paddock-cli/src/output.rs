//! Printing: aligned tables for people, JSON and YAML for scripts.

use comfy_table::{Table, presets};
use serde::Serialize;

use crate::{CliError, CliResult, Exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A kubectl-style table: upper-case headers, no borders.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(headers.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    // comfy-table pads the first column with a space; kubectl does not.
    t.to_string()
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn print_data<T: Serialize>(format: Format, value: &T) -> CliResult {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?,
        Format::Yaml | Format::Table => serde_saphyr::to_string(value)
            .map_err(|e| CliError::new(Exit::Failure, e.to_string()))?,
    };
    println!("{}", text.trim_end());
    Ok(())
}

/// Human age of a timestamp, as kubectl prints it.
pub fn age(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = t else {
        return "<unknown>".into();
    };
    let secs = (k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
