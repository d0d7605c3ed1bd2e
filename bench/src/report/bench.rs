//! `report.html` of a plain bench run (no faults): the headline figures, throughput and
//! latency quantiles per second (from `timeseries.csv`; latency from each op's intended send
//! time in open loop), the log-scale latency histogram and the per-operation breakdown (from
//! `summary.json`'s figures), the configuration and the files.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use super::svg::{escape, Plot};
use super::{file_links, plain, STYLE};

/// Width of the longest histogram bar, in percent of its cell.
const BAR_PERCENT_MAX: f64 = 100.0;

/// One row of timeseries.csv.
struct SecondRow {
    second: f64,
    ops: f64,
    errors: f64,
    /// p50, p90, p99, max, in microseconds.
    quantiles_us: [f64; 4],
}

/// Reads `timeseries.csv` (missing or malformed rows are skipped).
fn read_timeseries(run_dir: &Path) -> Vec<SecondRow> {
    let text = std::fs::read_to_string(run_dir.join("timeseries.csv")).unwrap_or_default();
    (text.lines().skip(1))
        .filter_map(|line| {
            let fields: Vec<f64> = line.split(',').filter_map(|f| f.parse().ok()).collect();
            let [second, ops, errors, p50, p90, p99, max] = fields.as_slice() else {
                return None;
            };
            Some(SecondRow {
                second: *second,
                ops: *ops,
                errors: *errors,
                quantiles_us: [*p50, *p90, *p99, *max],
            })
        })
        .collect()
}

/// The page of a plain bench run.
pub(super) fn page(run_dir: &Path, summary: &Value, files: &[String]) -> Result<String, String> {
    let figures = &summary["figures"];
    if !figures.is_object() {
        return Err(format!(
            "{}: neither a campaign's nor a bench run's summary",
            run_dir.join("summary.json").display()
        ));
    }
    let config = &summary["config"];
    let title = format!(
        "bench: {} workload, {} clients",
        plain(&config["workload"]),
        plain(&config["clients"])
    );
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{0}</title>\
         <style>{STYLE}{BENCH_STYLE}</style></head><body><h1>{0}</h1>",
        escape(&title)
    );
    html.push_str(&banner(summary));
    let seconds = read_timeseries(run_dir);
    html.push_str("<h2>Throughput (operations per second, by intended send time)</h2>");
    html.push_str(&throughput_plot(&seconds));
    html.push_str("<h2>Latency quantiles per second (answered operations)</h2>");
    html.push_str(&latency_plot(&seconds));
    html.push_str("<h2>Latency histogram (log scale)</h2>");
    html.push_str(&histogram_table(&figures["histogram"]));
    html.push_str("<h2>Per operation</h2>");
    html.push_str(&per_op_table(&figures["per_op"]));
    html.push_str(&config_table(summary));
    html.push_str(&file_links(files));
    html.push_str("</body></html>\n");
    Ok(html)
}

const BENCH_STYLE: &str = ".bar{background:#1f77b4;height:12px}td.num{text-align:right}\
.banner{padding:10px 14px;font-size:15px;margin:8px 0;background:#eef4fb;\
border:1px solid #7aa6d6}";

/// Microseconds in a JSON value as `1.234 ms`.
fn ms(value: &Value) -> String {
    format!("{:.3} ms", value.as_f64().unwrap_or(0.0) / 1000.0)
}

fn banner(summary: &Value) -> String {
    let figures = &summary["figures"];
    let mut html = format!(
        "<div class=\"banner\"><b>{} operations in {:.1} s: {:.0} ops/s, {} errors.</b><br>\
         Latency p50 {}, p90 {}, p99 {}, p99.9 {}, max {} (mean {}, stddev {}).",
        figures["ops"].as_u64().unwrap_or(0),
        figures["elapsed_s"].as_f64().unwrap_or(0.0),
        figures["ops_per_s"].as_f64().unwrap_or(0.0),
        figures["errors"].as_u64().unwrap_or(0),
        ms(&figures["latency_p50_us"]),
        ms(&figures["latency_p90_us"]),
        ms(&figures["latency_p99_us"]),
        ms(&figures["latency_p999_us"]),
        ms(&figures["latency_max_us"]),
        ms(&figures["latency_mean_us"]),
        ms(&figures["latency_stddev_us"]),
    );
    if summary["config"]["rate"].is_number() {
        html.push_str(" Open loop: latency counts from each operation's intended send time.");
    }
    if let Some(verdict) = summary["check"]["verdict"].as_str() {
        let _ = write!(html, "<br>Checker: {}", escape(verdict));
    }
    html.push_str("</div>");
    html
}

fn x_max(seconds: &[SecondRow]) -> f64 {
    seconds.last().map_or(1.0, |row| row.second + 1.0)
}

fn throughput_plot(seconds: &[SecondRow]) -> String {
    let y_max = seconds
        .iter()
        .map(|r| r.ops.max(r.errors))
        .fold(1.0, f64::max)
        * 1.1;
    let mut plot = Plot::new(300.0, x_max(seconds), 0.0, y_max, false);
    plot.y_label = "ops/s".into();
    let at = |row: &SecondRow| row.second + 0.5;
    let ops: Vec<(f64, f64)> = seconds.iter().map(|r| (at(r), r.ops)).collect();
    let errors: Vec<(f64, f64)> = seconds.iter().map(|r| (at(r), r.errors)).collect();
    plot.line(&ops, "#1f77b4", "", "answered");
    if errors.iter().any(|(_, count)| *count > 0.0) {
        plot.line(&errors, "#d62728", "6,3", "errors");
    }
    plot.render(true)
}

fn latency_plot(seconds: &[SecondRow]) -> String {
    let answered: Vec<&SecondRow> = seconds.iter().filter(|r| r.ops > 0.0).collect();
    let values = answered
        .iter()
        .flat_map(|r| r.quantiles_us.iter().map(|us| us / 1000.0));
    let (low, high) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y_min = 10f64.powf(low.clamp(0.001, 1.0).log10().floor());
    let mut plot = Plot::new(300.0, x_max(seconds), y_min, high.max(1.0) * 1.5, true);
    plot.y_label = "latency (ms, log)".into();
    let names = [
        ("p50", "#2a7ab9"),
        ("p90", "#2ca02c"),
        ("p99", "#e08c00"),
        ("max", "#d62728"),
    ];
    for (index, (name, color)) in names.iter().enumerate() {
        let points: Vec<(f64, f64)> = (answered.iter())
            .map(|r| (r.second + 0.5, r.quantiles_us[index] / 1000.0))
            .collect();
        plot.line(&points, color, "", name);
    }
    plot.render(true)
}

/// The log-scale histogram as a table of bars (one row per bucket).
fn histogram_table(buckets: &Value) -> String {
    let Some(buckets) = buckets.as_array().filter(|b| !b.is_empty()) else {
        return "<p>No answered operations.</p>".to_string();
    };
    let count = |bucket: &Value| bucket["count"].as_u64().unwrap_or(0);
    let most = buckets.iter().map(count).max().unwrap_or(1).max(1) as f64;
    let total: u64 = buckets.iter().map(count).sum();
    let mut html = String::from(
        "<table><tr><th>latency up to</th><th>operations</th><th>share</th>\
         <th style=\"width:420px\"></th></tr>",
    );
    for bucket in buckets {
        let width = count(bucket) as f64 / most * BAR_PERCENT_MAX;
        let _ = write!(
            html,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.2} %\
             </td><td><div class=\"bar\" style=\"width:{width:.1}%\"></div></td></tr>",
            ms(&bucket["upto_us"]),
            count(bucket),
            count(bucket) as f64 * 100.0 / total.max(1) as f64
        );
    }
    html.push_str("</table>");
    html
}

fn per_op_table(per_op: &Value) -> String {
    let Some(per_op) = per_op.as_object().filter(|ops| !ops.is_empty()) else {
        return "<p>No per-operation figures in this summary.</p>".to_string();
    };
    let mut html = String::from(
        "<table><tr><th>operation</th><th>ops</th><th>ops/s</th><th>mean</th><th>stddev</th>\
         <th>p50</th><th>p99</th><th>max</th><th>errors</th></tr>",
    );
    for (op, figures) in per_op {
        let latency = &figures["latency"];
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(op),
            figures["ops"].as_u64().unwrap_or(0),
            figures["ops_per_s"].as_f64().unwrap_or(0.0),
            ms(&latency["mean_us"]),
            ms(&latency["stddev_us"]),
            ms(&latency["p50_us"]),
            ms(&latency["p99_us"]),
            ms(&latency["max_us"]),
            figures["errors"].as_u64().unwrap_or(0),
        );
    }
    html.push_str("</table>");
    html
}

fn config_table(summary: &Value) -> String {
    let mut html = String::from("<h2>Configuration and machine</h2><table>");
    let mut rows: Vec<(String, String)> = Vec::new();
    for section in ["config", "machine", "cpu"] {
        if let Some(fields) = summary[section].as_object() {
            for (key, value) in fields {
                let name = if section == "config" {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                rows.push((name, plain(value)));
            }
        }
    }
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
