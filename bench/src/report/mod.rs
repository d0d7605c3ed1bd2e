//! `report.html` for a run directory: self-contained (inline SVG, inline CSS, no scripts).
//!
//! A campaign's: throughput and a latency scatter with fault intervals shaded, latency
//! quantiles over time, each node's role, term and commit index over time, the verdict,
//! config, seed and machine. Latency counts from each operation's intended send time when the
//! load was open loop (`intended_time` in the history), so an outage shows as what clients
//! felt: an op due during it is plotted where it was due, with the wait it suffered.
//!
//! A plain bench run's: `bench.rs`. Everything is read back from the run's files, so `bench
//! report DIR` can redraw either.

mod bench;
pub mod svg;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::campaign::args::CampaignSettings;
use crate::campaign::sampler::Sample;
use crate::campaign::{write_json, CampaignError, Ran};
use svg::{escape, Band, Plot};

/// Most points drawn in the latency scatter: past it `ok` points are thinned evenly (every
/// `fail`/`info` is kept), so the page stays a few MB.
pub const SCATTER_POINTS_MAX: usize = 12_000;
/// Colors by outcome, then by operation (Jepsen's latency-raw colors by both): ok blues and
/// greens, fail reds, info oranges.
const OUTCOME_PALETTES: [(&str, [&str; 4]); 3] = [
    ("ok", ["#1f77b4", "#2ca02c", "#17becf", "#9467bd"]),
    ("fail", ["#d62728", "#e377c2", "#8c1c13", "#ff6f91"]),
    ("info", ["#ff9f1c", "#bcbd22", "#d4a017", "#8c564b"]),
];
const NANOS_PER_SECOND: f64 = 1e9;

/// Writes nemesis.jsonl and metrics.jsonl.
pub(crate) fn write_files(
    _settings: &CampaignSettings,
    ran: &Ran,
    run_dir: &Path,
) -> Result<(), CampaignError> {
    let mut nemesis = String::new();
    for record in &ran.records {
        let line = serde_json::to_string(record).map_err(|e| CampaignError::Io(e.to_string()))?;
        nemesis.push_str(&line);
        nemesis.push('\n');
    }
    crate::output::write(&run_dir.join("nemesis.jsonl"), nemesis.as_bytes())?;
    let mut metrics = String::new();
    for sample in &ran.samples {
        let line = serde_json::to_string(sample).map_err(|e| CampaignError::Io(e.to_string()))?;
        metrics.push_str(&line);
        metrics.push('\n');
    }
    crate::output::write(&run_dir.join("metrics.jsonl"), metrics.as_bytes())?;
    write_json(&run_dir.join("faults.json"), &ran.records)
}

/// Latencies below this are drawn at it (the scatter's log axis needs a floor).
const LATENCY_MS_FLOOR: f64 = 0.001;
/// Operations slower than this are counted in the banner as held up.
const SLOW_OP_MS: f64 = 1000.0;

/// One completed client operation.
struct OpPoint {
    /// When it was due: its intended send time (open loop), else its invocation.
    at_s: f64,
    done_s: f64,
    /// From `at_s` to the completion: what the client felt.
    latency_ms: f64,
    f: String,
    outcome: String,
}

struct RunData {
    summary: Value,
    checker: Value,
    ops: Vec<OpPoint>,
    bands: Vec<Band>,
    samples: Vec<Sample>,
    start_unix_ms: u64,
    x_max_s: f64,
}

/// Reads the run's files and writes `report.html` next to them: a campaign's report, or a
/// plain bench run's.
pub fn render_run(run_dir: &Path) -> Result<(), String> {
    let summary = read_json(&run_dir.join("summary.json"))?;
    let html = if is_campaign(&summary) {
        let data = load(run_dir, summary)?;
        page(&data, &present_files(run_dir))
    } else {
        bench::page(run_dir, &summary, &present_files(run_dir))?
    };
    std::fs::write(run_dir.join("report.html"), html).map_err(|e| e.to_string())
}

/// A campaign's summary says so; older ones are known by their fault list.
fn is_campaign(summary: &Value) -> bool {
    summary["kind"] == "campaign" || summary["faults"].is_array()
}

/// The run's files a report may link, those that exist (`logs/` as a directory).
fn present_files(run_dir: &Path) -> Vec<String> {
    const LINKABLE: [&str; 10] = [
        "checker.html",
        "summary.json",
        "checker.json",
        "history.jsonl",
        "nemesis.jsonl",
        "metrics.jsonl",
        "timeseries.csv",
        "latency.hgrm",
        "faults.json",
        "logs/",
    ];
    (LINKABLE.iter())
        .filter(|name| run_dir.join(name.trim_end_matches('/')).exists())
        .map(|name| name.to_string())
        .collect()
}

/// Links to `files`, as `a, b, c`.
fn file_links(files: &[String]) -> String {
    let links: Vec<String> = (files.iter())
        .map(|file| format!("<a href=\"{0}\">{0}</a>", escape(file)))
        .collect();
    format!("<p>Files: {}</p>", links.join(", "))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn load(run_dir: &Path, summary: Value) -> Result<RunData, String> {
    let checker = read_json(&run_dir.join("checker.json")).unwrap_or(Value::Null);
    let start_unix_ms = summary["start_unix_ms"].as_u64().unwrap_or(0);
    let history = std::fs::read_to_string(run_dir.join("history.jsonl"))
        .map_err(|e| format!("history.jsonl: {e}"))?;
    let ops = client_ops(&history);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    let samples: Vec<Sample> = metrics
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let since = |unix_ms: u64| unix_ms.saturating_sub(start_unix_ms) as f64 / 1000.0;
    let bands = summary["faults"]
        .as_array()
        .map(|faults| {
            (faults.iter())
                .map(|f| fault_band(f, &summary["hosts"], &since))
                .collect()
        })
        .unwrap_or_default();
    let last_op = ops.iter().map(|op| op.done_s).fold(0.0, f64::max);
    let last_sample = samples.last().map_or(0.0, |s| since(s.unix_ms));
    Ok(RunData {
        summary,
        checker,
        ops,
        bands,
        samples,
        start_unix_ms,
        x_max_s: last_op.max(last_sample).ceil(),
    })
}

fn fault_band(fault: &Value, hosts: &Value, since: &dyn Fn(u64) -> f64) -> Band {
    let kind = fault["fault"].as_str().unwrap_or("?");
    let color = match kind {
        "kill" => "#d62728",
        "pause" => "#e08c00",
        "partition" => "#8a3ffc",
        "membership" => "#1192e8",
        _ => "#555",
    };
    let start = fault["start_unix_ms"].as_u64().unwrap_or(0);
    let end = fault["end_unix_ms"].as_u64().unwrap_or(start);
    let targets = node_names(&fault["targets"], hosts);
    Band {
        from_s: since(start),
        to_s: since(end),
        color,
        label: format!(
            "{kind} {} {targets}",
            fault["detail"].as_str().unwrap_or("")
        ),
    }
}

/// `[1, 3]` as `n1,n3` (ssh backend: `n1@10.0.0.1,n3@10.0.0.3`).
fn node_names(ids: &Value, hosts: &Value) -> String {
    let names: Vec<String> = (ids.as_array().into_iter().flatten())
        .map(|id| node_label(id.as_u64().unwrap_or(0), hosts))
        .collect();
    names.join(",")
}

/// A node as the report names it: `n2`, or `n2@<host address>` on the ssh backend (summary
/// `hosts`: node id -> `user@address:port`).
fn node_label(id: u64, hosts: &Value) -> String {
    let host = hosts[id.to_string()].as_str();
    let address = host.map(|h| {
        let after_user = h.rsplit_once('@').map_or(h, |(_, rest)| rest);
        let without_port = after_user.rsplit_once(':').map_or(after_user, |(a, _)| a);
        without_port.trim_start_matches('[').trim_end_matches(']')
    });
    match address {
        Some(address) => format!("n{id}@{address}"),
        None => format!("n{id}"),
    }
}

/// Pairs invocations with completions per process (nemesis lines are skipped). An op counts
/// from its `intended_time` when the history has one (open loop), else from its invocation.
fn client_ops(history: &str) -> Vec<OpPoint> {
    let mut open: HashMap<u64, (f64, String)> = HashMap::new();
    let mut ops = Vec::new();
    for line in history.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(process), Some(kind), Some(time)) = (
            event["process"].as_u64(),
            event["type"].as_str(),
            event["time"].as_u64(),
        ) else {
            continue;
        };
        let at_s = time as f64 / NANOS_PER_SECOND;
        if kind == "invoke" {
            let f = event["f"].as_str().unwrap_or("?").to_string();
            let due_s = event["intended_time"]
                .as_u64()
                .map_or(at_s, |intended| intended as f64 / NANOS_PER_SECOND);
            open.insert(process, (due_s.min(at_s), f));
        } else if let Some((due_s, f)) = open.remove(&process) {
            ops.push(OpPoint {
                at_s: due_s,
                done_s: at_s,
                latency_ms: ((at_s - due_s) * 1000.0).max(LATENCY_MS_FLOOR),
                f,
                outcome: kind.to_string(),
            });
        }
    }
    ops
}

fn page(data: &RunData, files: &[String]) -> String {
    let name = data.summary["config"]["name"]
        .as_str()
        .unwrap_or("campaign");
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{} campaign report</title>\
         <style>{STYLE}</style></head><body><h1>Campaign {}</h1>",
        escape(name),
        escape(name)
    );
    let counterexample = files.iter().any(|file| file == "checker.html");
    html.push_str(&verdict_section(data, counterexample));
    html.push_str("<h2>Throughput (completions per second)</h2>");
    html.push_str(&rate_plot(data));
    if data.summary["config"]["rate"].is_number() {
        html.push_str(
            "<h2>Latency of every operation (from its intended send time: open loop)</h2>",
        );
    } else {
        html.push_str("<h2>Latency of every operation (from its invocation: closed loop)</h2>");
    }
    html.push_str(&scatter_plot(data));
    html.push_str("<h2>Latency quantiles per second</h2>");
    html.push_str(&quantile_plot(data));
    html.push_str("<h2>Node roles</h2>");
    html.push_str(&role_plot(data));
    html.push_str("<h2>Raft term and commit index per node</h2>");
    html.push_str(&node_line_plot(data, "term", |s| s.term));
    html.push_str(&node_line_plot(data, "commit index", |s| s.commit_index));
    html.push_str(&faults_section(data));
    html.push_str(&config_section(data));
    html.push_str(&file_links(files));
    html.push_str("</body></html>\n");
    html
}

pub(crate) const STYLE: &str =
    "body{font-family:sans-serif;margin:20px 30px;color:#222;max-width:1300px}\
h1{font-size:22px}h2{font-size:16px;margin:22px 0 4px}table{border-collapse:collapse;\
font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}\
.valid{background:#d8f5d8;border:1px solid #3a3}.invalid{background:#fbd5d5;border:1px solid #c33}\
.unknown{background:#fff2c8;border:1px solid #c93}.verdict{padding:10px 14px;font-size:16px;\
margin:8px 0}code{font-size:12px}";

fn verdict_section(data: &RunData, counterexample: bool) -> String {
    let valid = &data.checker["valid"];
    let class = match valid {
        Value::Bool(true) => "valid",
        Value::Bool(false) => "invalid",
        _ => "unknown",
    };
    let verdict = data.summary["verdict"].as_str().unwrap_or("no verdict");
    let mut html = format!(
        "<div class=\"verdict {class}\"><b>Checker: {}</b>",
        escape(verdict)
    );
    if counterexample {
        html.push_str(
            " &mdash; <a href=\"checker.html\">counterexample page</a> \
             (<a href=\"checker.json\">checker.json</a>)",
        );
    }
    let s = &data.summary;
    let number = |value: &Value| value.as_u64().unwrap_or(0);
    let recovery = match s["recovery_ms"].as_u64() {
        Some(ms) => format!("recovery after heal {ms} ms"),
        None => "no recovery after heal".to_string(),
    };
    let _ = write!(
        html,
        "<br>{} operations ({} ok, {} failed or unknown), {:.0} ops/s, {} faults injected, \
         {recovery}, final reads {} ok / {} failed.",
        number(&s["ops"]),
        number(&s["ops_ok"]),
        number(&s["ops_failed"]),
        s["ops_per_s"].as_f64().unwrap_or(0.0),
        number(&s["faults_injected"]),
        number(&s["final_reads"]["ok"]),
        number(&s["final_reads"]["failed"])
    );
    html.push_str(&latency_line(data));
    html.push_str("</div>");
    html
}

/// Latency quantiles of every completed op as clients felt them (from the intended send time
/// in open loop), and how many waited over `SLOW_OP_MS`.
fn latency_line(data: &RunData) -> String {
    let mut latencies: Vec<f64> = data.ops.iter().map(|op| op.latency_ms).collect();
    if latencies.is_empty() {
        return String::new();
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let slow = latencies.iter().filter(|&&ms| ms > SLOW_OP_MS).count();
    let from = if data.summary["config"]["rate"].is_number() {
        "from the intended send time"
    } else {
        "from the invocation"
    };
    format!(
        "<br>Latency {from}: p50 {:.2} ms, p99 {:.1} ms, max {:.0} ms; {slow} operations took \
         over {:.0} s.",
        at(0.5),
        at(0.99),
        at(1.0),
        SLOW_OP_MS / 1000.0
    )
}

fn rate_plot(data: &RunData) -> String {
    let seconds = data.x_max_s as usize + 1;
    let mut counts: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for op in &data.ops {
        let series = counts
            .entry((op.f.clone(), op.outcome.clone()))
            .or_insert_with(|| vec![0.0; seconds]);
        if let Some(slot) = series.get_mut(op.done_s as usize) {
            *slot += 1.0;
        }
    }
    let y_max = counts.values().flatten().fold(1.0, |a: f64, b| a.max(*b)) * 1.1;
    let mut plot = Plot::new(300.0, data.x_max_s, 0.0, y_max, false);
    plot.y_label = "ops/s".into();
    plot.bands(&data.bands);
    let dashes = ["", "6,3", "2,2", "8,3,2,3"];
    let fs: Vec<String> = unique(data.ops.iter().map(|op| op.f.clone()));
    for ((f, outcome), series) in &counts {
        let f_index = fs.iter().position(|x| x == f).unwrap_or(0);
        let color = outcome_color(outcome, f_index);
        let dash = dashes[f_index % dashes.len()];
        let points: Vec<(f64, f64)> = (series.iter().enumerate())
            .map(|(i, count)| (i as f64 + 0.5, *count))
            .collect();
        plot.line(&points, color, dash, &format!("{f} {outcome}"));
    }
    plot.render(true)
}

fn scatter_plot(data: &RunData) -> String {
    let infos = data.ops.iter().filter(|op| op.outcome == "info").count();
    let thinned = data.ops.len() - infos;
    // Every info is drawn (they are few and matter most); ok and fail share the rest evenly.
    let stride = thinned
        .div_ceil(SCATTER_POINTS_MAX.saturating_sub(infos).max(1))
        .max(1);
    let (plot, series) = scatter(data, stride);
    let mut plot = plot;
    for (points, color, shape, label) in &series {
        plot.points(points, color, shape, label);
    }
    let mut html = plot.render(true);
    if stride > 1 {
        let _ = write!(
            html,
            "<p><small>1 in {stride} ok and fail operations drawn ({thinned} in all); every \
             info is drawn.</small></p>"
        );
    }
    html
}

/// The power of ten at or below the smallest of `latencies_ms` (at least `LATENCY_MS_FLOOR`;
/// 0.1 ms if there are none): the bottom of a log latency axis that clips no point.
fn log_floor(latencies_ms: impl Iterator<Item = f64>) -> f64 {
    let fastest = latencies_ms.fold(f64::INFINITY, f64::min);
    let fastest = if fastest.is_finite() { fastest } else { 0.1 };
    10f64.powf(fastest.max(LATENCY_MS_FLOOR).log10().floor())
}

/// One series of the scatter: points, color, shape, legend label.
type Series = (Vec<(f64, f64)>, &'static str, &'static str, String);

/// The scatter's axes and its series: every op at (when it was due, latency from then), ok
/// and fail thinned to every `stride`-th. The y axis spans the fastest to the slowest op.
fn scatter(data: &RunData, stride: usize) -> (Plot, Vec<Series>) {
    let y_max = data.ops.iter().map(|op| op.latency_ms).fold(10.0, f64::max);
    let y_min = log_floor(data.ops.iter().map(|op| op.latency_ms));
    let mut plot = Plot::new(420.0, data.x_max_s, y_min, y_max * 1.5, true);
    plot.y_label = "latency (ms, log)".into();
    plot.bands(&data.bands);
    let shapes = ["circle", "square", "triangle"];
    let fs: Vec<String> = unique(data.ops.iter().map(|op| op.f.clone()));
    let mut series = Vec::new();
    for (outcome, _) in OUTCOME_PALETTES {
        for (index, f) in fs.iter().enumerate() {
            let color = outcome_color(outcome, index);
            let step = if outcome == "info" { 1 } else { stride };
            let points: Vec<(f64, f64)> = (data.ops.iter())
                .filter(|op| op.outcome == outcome && &op.f == f)
                .step_by(step)
                .map(|op| (op.at_s, op.latency_ms))
                .collect();
            let shape = shapes[index % shapes.len()];
            series.push((points, color, shape, format!("{f} {outcome} ({shape})")));
        }
    }
    (plot, series)
}

fn quantile_plot(data: &RunData) -> String {
    let seconds = data.x_max_s as usize + 1;
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); seconds];
    for op in data.ops.iter().filter(|op| op.outcome == "ok") {
        if let Some(bucket) = buckets.get_mut(op.at_s as usize) {
            bucket.push(op.latency_ms);
        }
    }
    let quantiles = [
        (0.5, "p50", "#2a7ab9"),
        (0.95, "p95", "#2ca02c"),
        (0.99, "p99", "#e08c00"),
        (1.0, "max", "#d62728"),
    ];
    let mut series: Vec<Vec<(f64, f64)>> = vec![Vec::new(); quantiles.len()];
    for (second, bucket) in buckets.iter_mut().enumerate() {
        if bucket.is_empty() {
            continue;
        }
        bucket.sort_by(f64::total_cmp);
        for (i, (q, _, _)) in quantiles.iter().enumerate() {
            let rank = ((bucket.len() - 1) as f64 * q).round() as usize;
            series[i].push((second as f64 + 0.5, bucket[rank]));
        }
    }
    let y_max = series.iter().flatten().map(|p| p.1).fold(10.0, f64::max);
    let y_min = log_floor(series.iter().flatten().map(|p| p.1));
    let mut plot = Plot::new(300.0, data.x_max_s, y_min, y_max * 1.5, true);
    plot.y_label = "ok latency (ms, log)".into();
    plot.bands(&data.bands);
    for (points, (_, label, color)) in series.iter().zip(quantiles) {
        plot.line(points, color, "", label);
    }
    plot.render(true)
}

fn node_ids(data: &RunData) -> Vec<u64> {
    unique(data.samples.iter().map(|s| s.node))
}

fn sample_s(data: &RunData, sample: &Sample) -> f64 {
    sample.unix_ms.saturating_sub(data.start_unix_ms) as f64 / 1000.0
}

fn role_plot(data: &RunData) -> String {
    let nodes = node_ids(data);
    let lanes = nodes.len().max(1) as f64;
    let mut plot = Plot::new(40.0 + 30.0 * lanes, data.x_max_s, 0.0, lanes, false);
    plot.bands(&data.bands);
    for (lane, node) in nodes.iter().enumerate() {
        let mine: Vec<&Sample> = data.samples.iter().filter(|s| s.node == *node).collect();
        let top = lanes - lane as f64;
        for (i, sample) in mine.iter().enumerate() {
            let from = sample_s(data, sample);
            let to = mine
                .get(i + 1)
                .map_or(from + 1.0, |next| sample_s(data, next));
            let role = sample.role.as_deref().unwrap_or("unreachable");
            let color = role_color(role);
            let term = sample
                .term
                .map_or("unknown".to_string(), |term| term.to_string());
            let title = format!(
                "{} {role}, term {term}, at {from:.1} s",
                node_label(*node, &data.summary["hosts"])
            );
            plot.rect(from, to, top - 0.8, top - 0.2, color, &title);
            plot.legend_entry(role, color);
        }
        // The lane keeps the short name (the margin is narrow); the title names the host.
        plot.text_left(top - 0.5, &format!("n{node}"));
    }
    plot.render(false)
}

fn node_line_plot(data: &RunData, what: &str, value: fn(&Sample) -> Option<u64>) -> String {
    let values = data.samples.iter().filter_map(value);
    let (low, high) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let low = if low == u64::MAX { 0 } else { low };
    let mut plot = Plot::new(220.0, data.x_max_s, low as f64, high as f64 + 1.0, false);
    plot.y_label = what.to_string();
    plot.bands(&data.bands);
    let palette = [
        "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    for (i, node) in node_ids(data).iter().enumerate() {
        let points: Vec<(f64, f64)> = (data.samples.iter())
            .filter(|s| s.node == *node)
            .filter_map(|s| value(s).map(|v| (sample_s(data, s), v as f64)))
            .collect();
        let dash = if i % 2 == 0 { "" } else { "5,3" };
        plot.line(
            &points,
            palette[i % palette.len()],
            dash,
            &node_label(*node, &data.summary["hosts"]),
        );
    }
    plot.render(true)
}

fn faults_section(data: &RunData) -> String {
    let mut html = String::from(
        "<h2>Faults</h2><table><tr><th>#</th><th>fault</th><th>target</th><th>nodes</th>\
         <th>start (s)</th><th>end (s)</th><th>what happened</th></tr>",
    );
    for (i, band) in data.bands.iter().enumerate() {
        let fault = &data.summary["faults"][i];
        let notes: Vec<&str> = fault["notes"]
            .as_array()
            .map(|notes| notes.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td>\
             <td>{}</td></tr>",
            i + 1,
            escape(fault["fault"].as_str().unwrap_or("")),
            escape(fault["detail"].as_str().unwrap_or("")),
            escape(&node_names(&fault["targets"], &data.summary["hosts"])),
            band.from_s,
            band.to_s,
            escape(&notes.join("; "))
        );
    }
    html.push_str("</table>");
    html.push_str(&node_state(&data.summary));
    if let Some(errors) = data.summary["fault_errors"]
        .as_array()
        .filter(|e| !e.is_empty())
    {
        html.push_str("<p>Faults not injected:</p><ul>");
        for error in errors {
            let _ = write!(html, "<li>{}</li>", escape(error.as_str().unwrap_or("")));
        }
        html.push_str("</ul>");
    }
    html
}

/// The nodes' state at the end: all serving, which started by repairing their data (a torn
/// WAL tail ended, a corrupt snapshot skipped) and which refused to start and why (a node may
/// refuse on corrupt data, proto-docs/storage.md; the history is still checked).
fn node_state(summary: &Value) -> String {
    let Some(refused) = summary["nodes_refused"].as_object() else {
        return String::new();
    };
    let empty = serde_json::Map::new();
    let repaired = summary["nodes_repaired"].as_object().unwrap_or(&empty);
    if refused.is_empty() && repaired.is_empty() {
        return "<p>Node state at the end: every node started and served.</p>".to_string();
    }
    let mut html = String::from(
        "<p>Node state at the end (refused nodes stay down; repaired ones serve on):</p><ul>",
    );
    for (node, line) in repaired {
        let _ = write!(
            html,
            "<li>n{}: repaired (last repair): {}</li>",
            escape(node),
            escape(line.as_str().unwrap_or(""))
        );
    }
    for (node, reason) in refused {
        let _ = write!(
            html,
            "<li>n{}: refused to start: {}</li>",
            escape(node),
            escape(reason.as_str().unwrap_or(""))
        );
    }
    html.push_str("</ul>");
    html
}

fn config_section(data: &RunData) -> String {
    let mut html = String::from("<h2>Configuration and machine</h2><table>");
    let s = &data.summary;
    let mut rows: Vec<(String, String)> = Vec::new();
    if let Some(config) = s["config"].as_object() {
        rows.extend(config.iter().map(|(k, v)| (k.clone(), plain(v))));
    }
    if let Some(hosts) = s["hosts"].as_object() {
        let names: Vec<String> = (hosts.iter())
            .map(|(id, host)| format!("n{id}: {}", host.as_str().unwrap_or("-")))
            .collect();
        rows.push(("hosts".into(), names.join(", ")));
    }
    if let Some(machine) = s["machine"].as_object() {
        rows.extend(
            machine
                .iter()
                .map(|(k, v)| (format!("machine.{k}"), plain(v))),
        );
    }
    rows.push(("history events".into(), plain(&s["history_events"])));
    for (key, value) in rows {
        let _ = write!(
            html,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    html.push_str("</table>");
    html
}

/// A JSON value as a user reads it: strings bare, lists joined with commas, nothing for null.
pub(crate) fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        // 0.2, not 0.20000000000000007.
        Value::Number(number) if number.is_f64() => {
            let text = format!("{:.3}", number.as_f64().unwrap_or(0.0));
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        }
        other => other.to_string(),
    }
}

fn unique<T: Ord + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let set: std::collections::BTreeSet<T> = items.collect();
    set.into_iter().collect()
}

fn outcome_color(outcome: &str, f_index: usize) -> &'static str {
    OUTCOME_PALETTES
        .iter()
        .find(|(name, _)| *name == outcome)
        .map_or("#555", |(_, colors)| colors[f_index % colors.len()])
}

fn role_color(role: &str) -> &'static str {
    match role {
        "leader" => "#2ca02c",
        "follower" => "#9ecae1",
        "candidate" => "#ff9f1c",
        _ => "#bbbbbb",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_by_their_host_on_the_ssh_backend() {
        let hosts = serde_json::json!({"1": "root@10.0.0.1:22", "3": "kv@[fd00::3]:2222"});
        assert_eq!(
            node_names(&serde_json::json!([1, 2, 3]), &hosts),
            "n1@10.0.0.1,n2,n3@fd00::3"
        );
        assert_eq!(node_label(2, &Value::Null), "n2");
    }

    #[test]
    fn client_ops_pair_by_process_and_skip_the_nemesis() {
        let history = r#"{"index":0,"time":1000000000,"process":0,"type":"invoke","f":"read"}
{"process":"nemesis","type":"invoke","f":"kill","time":1100000000}
{"index":1,"time":1500000000,"process":0,"type":"info","f":"read"}
{"index":2,"time":2000000000,"process":1,"type":"invoke","f":"write","value":1}
"#;
        let ops = client_ops(history);
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].at_s, ops[0].done_s), (1.0, 1.5));
        assert_eq!(ops[0].outcome, "info");
        assert!((ops[0].latency_ms - 500.0).abs() < 1e-6);
    }

    /// An open-loop op due at 1 s, held up by a 6 s outage, sent at 7 s and answered 1 ms
    /// later: the client felt 6 s. It is plotted at 1 s with that latency, not at 7 s with 1 ms.
    #[test]
    fn an_op_delayed_by_an_outage_is_plotted_with_its_delayed_latency() {
        let events = [
            serde_json::json!({"workload": "register", "version": 1}),
            serde_json::json!({"index": 0, "time": 7_000_000_000u64,
                "intended_time": 1_000_000_000u64, "process": 0, "type": "invoke",
                "f": "read", "key": 1}),
            serde_json::json!({"index": 1, "time": 7_001_000_000u64, "process": 0,
                "type": "ok", "f": "read", "key": 1, "value": 1}),
            serde_json::json!({"index": 2, "time": 7_100_000_000u64,
                "intended_time": 7_100_000_000u64, "process": 1, "type": "invoke",
                "f": "write", "key": 1, "value": 2}),
            serde_json::json!({"index": 3, "time": 7_100_050_000u64, "process": 1,
                "type": "ok", "f": "write", "key": 1, "value": 2}),
        ];
        let history: String = events.iter().map(|event| format!("{event}\n")).collect();
        let ops = client_ops(&history);
        assert_eq!(ops[0].at_s, 1.0);
        assert!(
            (ops[0].latency_ms - 6001.0).abs() < 1e-3,
            "{}",
            ops[0].latency_ms
        );
        let data = RunData {
            summary: serde_json::json!({"kind": "campaign", "config": {"rate": 100.0}}),
            checker: Value::Null,
            ops,
            bands: Vec::new(),
            samples: Vec::new(),
            start_unix_ms: 0,
            x_max_s: 8.0,
        };
        let (plot, series) = scatter(&data, 1);
        let drawn = |at_s: f64, latency_ms: f64| {
            let (x, y) = (plot.x(at_s), plot.y(latency_ms));
            series
                .iter()
                .flat_map(|s| &s.0)
                .any(|&(px, py)| (plot.x(px) - x).abs() < 0.05 && (plot.y(py) - y).abs() < 0.05)
        };
        assert!(
            drawn(1.0, 6001.0),
            "the delayed op is drawn where it was due"
        );
        assert!(!drawn(7.0, 1.0), "not where it was sent");
        // A 0.05 ms read stays above the bottom of the axis (no 0.1 ms clipping).
        assert!(plot.y(0.05) < plot.y(plot.y_min) - 1.0);
        let svg = scatter_plot(&data);
        let (x, y) = (plot.x(1.0), plot.y(6001.0 - 1e-6));
        assert!(
            svg.contains(&format!(r#"cx="{x:.1}" cy="{y:.1}""#)),
            "{svg}"
        );
        let banner = latency_line(&data);
        assert!(banner.contains("from the intended send time"), "{banner}");
        assert!(banner.contains("1 operations took over 1 s"), "{banner}");
    }

    fn write_run(dir: &Path, summary: &Value, files: &[(&str, &str)]) {
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn a_plain_bench_run_gets_its_own_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut stats = crate::stats::Stats::default();
        for index in 0..300u64 {
            let at = std::time::Duration::from_millis(index * 10);
            let latency = std::time::Duration::from_micros(80 + index);
            stats.record(
                at,
                latency,
                if index % 2 == 0 { "read" } else { "write" },
                None,
            );
        }
        let figures = stats.figures(std::time::Duration::from_secs(3));
        // An older bench summary has no "kind": it is still known as a bench run's.
        let summary = serde_json::json!({
            "config": {"workload": "mixed", "clients": 4, "rate": null},
            "figures": figures,
        });
        write_run(
            dir.path(),
            &summary,
            &[("timeseries.csv", &stats.timeseries_csv())],
        );
        render_run(dir.path()).unwrap();
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.contains("bench: mixed workload, 4 clients"), "{html}");
        for absent in ["Campaign", "null operations", ">null<", "history.jsonl"] {
            assert!(!html.contains(absent), "{absent} in the page");
        }
        for present in [
            "<svg",
            "Latency histogram",
            "read",
            "write",
            "timeseries.csv",
        ] {
            assert!(html.contains(present), "{present} missing");
        }
        assert!(html.contains("0.100 ms"), "log-scale buckets in ms: {html}");
    }

    #[test]
    fn a_campaign_report_links_only_files_that_exist_and_shows_no_rust_formatting() {
        let dir = tempfile::tempdir().unwrap();
        let summary = serde_json::json!({
            "kind": "campaign",
            "config": {"name": "register-kill", "faults": ["kill"], "backend": "local"},
            "start_unix_ms": 1000,
            "faults": [{"fault": "kill", "detail": "leader", "targets": [3],
                        "start_unix_ms": 2000, "end_unix_ms": 4000}],
            "ops": 1, "ops_ok": 1, "ops_failed": 0,
        });
        let history = "{\"index\":0,\"time\":1,\"process\":0,\"type\":\"invoke\",\"f\":\"read\"}\n\
                       {\"index\":1,\"time\":2,\"process\":0,\"type\":\"ok\",\"f\":\"read\"}\n";
        let sample = "{\"node\":1,\"unix_ms\":1500,\"role\":\"leader\",\"term\":2,\
                      \"commit_index\":5,\"error\":null}\n";
        write_run(
            dir.path(),
            &summary,
            &[("history.jsonl", history), ("metrics.jsonl", sample)],
        );
        render_run(dir.path()).unwrap();
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.contains("href=\"history.jsonl\""));
        assert!(
            !html.contains("href=\"checker.json\""),
            "checker.json does not exist"
        );
        assert!(!html.contains("href=\"nemesis.jsonl\""));
        for debug in ["Some(", "None", "[Kill]", "Local", "[3]"] {
            assert!(!html.contains(debug), "{debug} in the page");
        }
        assert!(html.contains("n1 leader, term 2"), "{html}");
        assert!(html.contains("kill leader n3"));
    }
}
