//! Reads the criterion results of `benches/mutate.rs` into the report: the median time of each
//! step of one review, per review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// Flags of `kosmos-bench criterion`.
#[derive(Clone, Debug, clap::Args)]
pub struct CriterionArgs {
    /// criterion's output folder (`<target dir>/criterion`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Where `mutate.json` and `mutate.md` go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// Writes `mutate.json` and `mutate.md`.
pub fn run(args: &CriterionArgs) -> Result<()> {
    let mut results: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for group in ["pvpath", "uri"] {
        let dir = args.dir.join(group);
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries.flatten() {
            let new = entry.path().join("new");
            let (Ok(benchmark), Ok(estimates)) = (
                read(&new.join("benchmark.json")),
                read(&new.join("estimates.json")),
            ) else {
                continue;
            };
            let function = benchmark["function_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ns = |what: &str| {
                estimates[what]["point_estimate"]
                    .as_f64()
                    .unwrap_or_default()
            };
            results.entry(group.to_owned()).or_default().insert(
                function,
                json!({
                    "median_ns": ns("median"),
                    "low_ns": estimates["median"]["confidence_interval"]["lower_bound"],
                    "high_ns": estimates["median"]["confidence_interval"]["upper_bound"],
                }),
            );
        }
    }
    anyhow::ensure!(
        !results.is_empty(),
        "no criterion results in {}",
        args.dir.display()
    );
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("mutate.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let mut md = String::from(
        "### One review, in isolation (criterion)\n\nCaches of 1,000 plugins and 1,000 VirtualClusters; median \
         time per call, µs (95% interval of the median).\n\n| step | pvpath | uri |\n|---|---|---|\n",
    );
    let steps: Vec<String> = results
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for step in steps {
        let cell = |group: &str| {
            results
                .get(group)
                .and_then(|m| m.get(&step))
                .map(|v| {
                    let us = |k: &str| v[k].as_f64().unwrap_or_default() / 1000.0;
                    format!(
                        "{:.2} ({:.2}–{:.2})",
                        us("median_ns"),
                        us("low_ns"),
                        us("high_ns")
                    )
                })
                .unwrap_or_else(|| "–".to_owned())
        };
        md.push_str(&format!(
            "| {step} | {} | {} |\n",
            cell("pvpath"),
            cell("uri")
        ));
    }
    md.push('\n');
    std::fs::write(args.out.join("mutate.md"), md)?;
    Ok(())
}

fn read(path: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}
