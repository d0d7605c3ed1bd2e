//! `results/index.html`: every run under `results/<name>/<date-time>/` (campaigns and bench
//! runs), newest first, with its verdict and links. Regenerated after each campaign and by
//! `bench index`.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::report::svg::escape;

/// One run directory with a summary.json.
#[derive(Debug)]
pub struct RunEntry {
    pub name: String,
    pub stamp: String,
    pub dir: PathBuf,
    pub summary: Value,
}

/// Runs found under `results`, newest first (stamps are UTC and sort as text).
pub fn find_runs(results: &Path) -> Vec<RunEntry> {
    let mut runs = Vec::new();
    let Ok(names) = std::fs::read_dir(results) else {
        return runs;
    };
    for name in names.flatten() {
        let name_path = name.path();
        // `latest` is a link to a run already listed under bench/.
        if name_path.is_symlink() || !name_path.is_dir() {
            continue;
        }
        // A run kept directly under its name (results/reference/).
        // Its date-time is its start's, from the summary.
        if let Ok(text) = std::fs::read_to_string(name_path.join("summary.json")) {
            let summary = serde_json::from_str(&text).unwrap_or(Value::Null);
            let stamp = (summary["start_unix_ms"].as_u64())
                .map(|ms| crate::output::utc_stamp(UNIX_EPOCH + Duration::from_millis(ms)))
                .unwrap_or_default();
            runs.push(RunEntry {
                name: name.file_name().to_string_lossy().into_owned(),
                stamp,
                dir: name_path.clone(),
                summary,
            });
            continue;
        }
        let Ok(stamps) = std::fs::read_dir(&name_path) else {
            continue;
        };
        for stamp in stamps.flatten() {
            let dir = stamp.path();
            let Ok(text) = std::fs::read_to_string(dir.join("summary.json")) else {
                continue;
            };
            let summary = serde_json::from_str(&text).unwrap_or(Value::Null);
            runs.push(RunEntry {
                name: name.file_name().to_string_lossy().into_owned(),
                stamp: stamp.file_name().to_string_lossy().into_owned(),
                dir,
                summary,
            });
        }
    }
    runs.sort_by(|a, b| b.stamp.cmp(&a.stamp).then(a.name.cmp(&b.name)));
    runs
}

/// "valid", "invalid" or "unknown" (bench runs keep theirs under `check`).
fn validity(summary: &Value) -> &'static str {
    let valid = match &summary["valid"] {
        Value::Null => &summary["check"]["valid"],
        other => other,
    };
    match valid {
        Value::Bool(true) => "valid",
        Value::Bool(false) => "invalid",
        Value::Null => "not checked",
        _ => "unknown",
    }
}

/// Writes `<results>/index.html`.
pub fn write_index(results: &Path) -> std::io::Result<PathBuf> {
    let html = render_index(results);
    std::fs::create_dir_all(results)?;
    let path = results.join("index.html");
    std::fs::write(&path, html)?;
    Ok(path)
}

/// The index page of the runs under `results` (links relative to `results`).
pub fn render_index(results: &Path) -> String {
    let runs = find_runs(results);
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Campaign results</title>\
         <style>body{font-family:sans-serif;margin:20px}table{border-collapse:collapse;\
         font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}.valid{background:#d8f5d8}\
         .invalid{background:#fbd5d5}.unknown{background:#fff2c8}</style></head><body>\
         <h1>Results</h1><table><tr><th>date-time (UTC)</th><th>run</th><th>verdict</th>\
         <th>ops</th><th>faults</th><th>seed</th><th>nodes on</th><th>links</th></tr>",
    );
    for run in &runs {
        let class = validity(&run.summary);
        let relative = run.dir.strip_prefix(results).unwrap_or(&run.dir);
        let link = |file: &str| format!("{}/{file}", relative.display());
        let main = if run.dir.join("report.html").exists() {
            format!("<a href=\"{}\">report</a>", escape(&link("report.html")))
        } else {
            String::new()
        };
        let verdict = run.summary["verdict"]
            .as_str()
            .or(run.summary["check"]["verdict"].as_str())
            .unwrap_or(class);
        let ops = match &run.summary["ops"] {
            Value::Null => &run.summary["figures"]["ops"],
            other => other,
        };
        let _ =
            write!(
            html,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{main} <a href=\"{}\">summary.json</a> \
             <a href=\"{}/\">files</a></td></tr>",
            class.replace(' ', "-"),
            escape(if run.stamp.is_empty() { "-" } else { &run.stamp }),
            escape(&run.name),
            escape(verdict),
            ops,
            run.summary["faults_injected"].as_u64().map_or("-".into(), |n| n.to_string()),
            run.summary["seed"]
                .as_u64()
                .or(run.summary["config"]["seed"].as_u64())
                .map_or("-".into(), |n| n.to_string()),
            escape(&nodes_on(&run.summary)),
            escape(&link("summary.json")),
            escape(&relative.display().to_string())
        );
    }
    html.push_str("</table></body></html>\n");
    html
}

/// Where a run's nodes ran: its hosts (ssh backend), else the backend's name.
fn nodes_on(summary: &Value) -> String {
    if let Some(hosts) = summary["hosts"].as_object() {
        let names: Vec<&str> = hosts.values().filter_map(Value::as_str).collect();
        return names.join(", ");
    }
    summary["config"]["backend"]
        .as_str()
        .unwrap_or("-")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_runs_newest_first_with_verdicts() {
        let results = tempfile::tempdir().unwrap();
        let write = |name: &str, stamp: &str, summary: &str| {
            let dir = results.path().join(name).join(stamp);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("summary.json"), summary).unwrap();
        };
        write(
            "register-kill",
            "2026-01-01T00-00-00Z",
            r#"{"valid":true,"ops":5,"hosts":{"1":"root@10.0.0.1:22","2":"kv@10.0.0.2:22"}}"#,
        );
        write(
            "list-append-pause",
            "2026-01-02T00-00-00Z",
            r#"{"valid":false}"#,
        );
        write(
            "bench",
            "2025-12-31T00-00-00Z",
            r#"{"check":{"valid":"unknown"}}"#,
        );
        // A run kept directly under its name is dated by its start (2026-01-01 12:00 UTC).
        std::fs::create_dir_all(results.path().join("reference")).unwrap();
        let reference = r#"{"valid":true,"start_unix_ms":1767268800000}"#;
        std::fs::write(results.path().join("reference/summary.json"), reference).unwrap();
        let runs = find_runs(results.path());
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["list-append-pause", "reference", "register-kill", "bench"]
        );
        assert_eq!(runs[1].stamp, "2026-01-01T12-00-00Z");
        let path = write_index(results.path()).unwrap();
        let html = std::fs::read_to_string(path).unwrap();
        let pause = html.find("list-append-pause").unwrap();
        assert!(pause < html.find("register-kill").unwrap());
        assert!(html.contains("class=\"invalid\"") && html.contains("class=\"unknown\""));
        assert!(
            html.contains("<td>root@10.0.0.1:22, kv@10.0.0.2:22</td>"),
            "{html}"
        );
    }
}
