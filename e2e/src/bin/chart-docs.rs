//! Writes the values table of `charts/kosmos-plugins/README.md` from the `# --` comments of the
//! chart's `values.yaml` (between the README's `<!-- values:start -->` and `<!-- values:end -->`
//! markers), or with `--check`, fails if the README's table differs. Every leaf key must carry a
//! `# --` comment; a commented key's children are part of its default and get no row.
//!
//! Usage: chart-docs [--check] [CHART_DIR]      (default: charts/kosmos-plugins)

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use serde_yaml::Value;

const START: &str = "<!-- values:start -->";
const END: &str = "<!-- values:end -->";

/// One documented key.
struct Row {
    path: Vec<String>,
    description: String,
}

/// Reads the `# --` comments and the keys they stand above, by indentation.
fn documented_keys(text: &str) -> Result<(Vec<Row>, Vec<Vec<String>>)> {
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut pending: Option<String> = None;
    // Paths of undocumented keys: checked afterwards, as only leaves need a comment.
    let mut undocumented = Vec::new();
    // Indentation of the documented key whose children we are inside, if any.
    let mut documented_parent: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix("# --") {
            pending = Some(rest.trim().to_owned());
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('#') {
            if let Some(text) = pending.as_mut() {
                text.push(' ');
                text.push_str(rest.trim());
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            bail!("values.yaml line {}: expected `key: value`", number + 1);
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        if documented_parent.is_some_and(|i| indent <= i) {
            documented_parent = None;
        }
        stack.push((indent, key.trim().to_owned()));
        if documented_parent.is_some() {
            // Part of a documented key's default.
            pending = None;
            continue;
        }
        let path: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
        match pending.take() {
            Some(description) => {
                rows.push(Row { path, description });
                documented_parent = Some(indent);
            }
            None => undocumented.push(path),
        }
    }
    Ok((rows, undocumented))
}

fn lookup<'a>(values: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(values, |v, key| v.as_mapping()?.get(key.as_str()))
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Sequence(_) => "list",
        Value::Mapping(_) => "object",
        Value::Tagged(_) => "tagged",
    }
}

/// The table, one row per documented key, in file order.
fn table(values_text: &str) -> Result<String> {
    let values: Value = serde_yaml::from_str(values_text).context("parsing values.yaml")?;
    let (rows, undocumented) = documented_keys(values_text)?;
    for path in &undocumented {
        let value = lookup(&values, path);
        let is_container = value
            .and_then(Value::as_mapping)
            .is_some_and(|m| !m.is_empty());
        if !is_container {
            bail!(
                "values.yaml: {} has no `# --` comment; every value needs one",
                path.join(".")
            );
        }
    }
    let mut out = String::from("| Key | Type | Default | Description |\n|---|---|---|---|\n");
    for row in rows {
        let key = row.path.join(".");
        let value = lookup(&values, &row.path)
            .with_context(|| format!("values.yaml: {key} not found after parsing"))?;
        let default = serde_json::to_string(value)
            .with_context(|| format!("values.yaml: {key} is not representable as JSON"))?;
        out.push_str(&format!(
            "| `{key}` | {} | `{}` | {} |\n",
            type_of(value),
            default.replace('|', "\\|"),
            row.description.replace('|', "\\|")
        ));
    }
    Ok(out)
}

fn run() -> Result<bool> {
    let mut check = false;
    let mut dir = PathBuf::from("charts/kosmos-plugins");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: chart-docs [--check] [CHART_DIR]");
                return Ok(true);
            }
            other => dir = PathBuf::from(other),
        }
    }
    let values_path = dir.join("values.yaml");
    let readme_path = dir.join("README.md");
    let values_text = std::fs::read_to_string(&values_path)
        .with_context(|| format!("reading {}", values_path.display()))?;
    let readme = std::fs::read_to_string(&readme_path)
        .with_context(|| format!("reading {}", readme_path.display()))?;
    let (Some(start), Some(end)) = (readme.find(START), readme.find(END)) else {
        bail!(
            "{} lacks the {START} and {END} markers",
            readme_path.display()
        );
    };
    if end < start {
        bail!("{}: {END} comes before {START}", readme_path.display());
    }
    let table = table(&values_text)?;
    let updated = format!("{}{START}\n{table}{}", &readme[..start], &readme[end..]);
    if updated == readme {
        return Ok(true);
    }
    if check {
        eprintln!(
            "chart-docs: the values table in {} differs from {}; run `make chart-docs`",
            readme_path.display(),
            values_path.display()
        );
        return Ok(false);
    }
    std::fs::write(&readme_path, updated)
        .with_context(|| format!("writing {}", readme_path.display()))?;
    println!("wrote {}", readme_path.display());
    Ok(true)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chart-docs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
