//! Renders the reliability suite's figures into `docs/reliability.md`.
//!
//! `reliability-report DIR FILE` reads every `DIR/*.json` written by
//! `setpoint_tests::figures::record` and replaces the text between the
//! `<!-- figures:begin -->` and `<!-- figures:end -->` markers of FILE with one table.
//! `scripts/reliability` runs the suite and then this.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

const BEGIN: &str = "<!-- figures:begin -->";
const END: &str = "<!-- figures:end -->";

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(file)) = (args.next(), args.next()) else {
        bail!("usage: reliability-report FIGURES_DIR MARKDOWN_FILE");
    };
    let (dir, file) = (PathBuf::from(dir), PathBuf::from(file));
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let row: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a figures record", path.display()))?;
            rows.push(row);
        }
    }
    if rows.is_empty() {
        bail!("no figures in {}: did the suite run?", dir.display());
    }
    rows.sort_by(|a, b| a["test"].as_str().cmp(&b["test"].as_str()));
    let mut table = String::from(
        "| Test | Load held | Faults injected | Bad inputs tried | Trials | Lost | Notes |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        let cell = |k: &str| {
            let v = row[k].as_str().unwrap_or("");
            if v.is_empty() {
                "—".to_owned()
            } else {
                v.replace('|', "\\|").replace('\n', " ")
            }
        };
        table.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} |\n",
            cell("test"),
            cell("load"),
            cell("faults"),
            cell("bad_inputs"),
            cell("trials"),
            cell("lost"),
            cell("notes"),
        ));
    }
    let doc = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{} has no {BEGIN} … {END} markers", file.display());
    };
    let out = format!("{}{BEGIN}\n{table}{}", &doc[..b], &doc[e..]);
    std::fs::write(&file, out)?;
    println!("{} rows written to {}", rows.len(), file.display());
    Ok(())
}
