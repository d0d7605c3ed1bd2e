//! Latency and throughput figures: one HdrHistogram per worker and operation kind (merged at
//! the end; the run's distribution is their sum), per-second buckets for the time series,
//! error counts by kind, and the printed summary in the manner of etcd's benchmark (total,
//! slowest, fastest, average, stddev, ops/s; a per-operation breakdown; a log-scale
//! histogram; the latency distribution).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded, in microseconds; longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Precision of the whole-run histogram (0.1 %).
const SIGNIFICANT_FIGURES: u8 = 3;
/// Precision of the per-second histograms (1 %), which are many.
const SECOND_SIGNIFICANT_FIGURES: u8 = 2;
/// Width of the longest bar of the printed histogram.
const BAR_WIDTH_MAX: u64 = 40;
/// Multipliers of each decade of the log-scale histogram's bucket bounds (1, 2, 5, 10, ...).
const BUCKET_STEPS: [u64; 3] = [1, 2, 5];
/// The percentiles of the printed latency distribution (etcd's, plus the tail).
pub const DISTRIBUTION_PERCENTILES: [f64; 9] =
    [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];

/// An empty latency histogram of the per-second buckets' precision.
pub fn second_histogram() -> Histogram<u64> {
    histogram(SECOND_SIGNIFICANT_FIGURES)
}

fn histogram(figures: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, figures).expect("constant bounds are valid")
}

/// One second of the run.
#[derive(Clone, Debug)]
pub struct Second {
    pub ops: u64,
    pub errors: u64,
    pub latency_us: Histogram<u64>,
}

/// One operation kind's figures (read, write, cas, txn).
#[derive(Clone, Debug)]
pub struct OpStats {
    pub latency_us: Histogram<u64>,
    pub errors: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: histogram(SIGNIFICANT_FIGURES),
            errors: 0,
        }
    }
}

/// What one worker (or, merged, the whole run) measured.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub seconds: Vec<Second>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Per operation kind (`read`, `write`, `cas`, `txn`): latency of operations answered
    /// without a client error, in microseconds; the run's is their sum (`latency_us`), so an
    /// op costs two histogram records, not three.
    pub by_op: BTreeMap<&'static str, OpStats>,
    /// Operations answered (`ok`, or `fail` of an executed cas / aborted transaction).
    pub answered: u64,
    pub errors: u64,
}

impl Stats {
    /// Records one `op` sent at `since_start` (its intended send time) that took `latency`;
    /// `error` names the client error kind if it failed.
    pub fn record(
        &mut self,
        since_start: Duration,
        latency: Duration,
        op: &'static str,
        error: Option<&str>,
    ) {
        let second = since_start.as_secs() as usize;
        while self.seconds.len() <= second {
            self.seconds.push(Second {
                ops: 0,
                errors: 0,
                latency_us: histogram(SECOND_SIGNIFICANT_FIGURES),
            });
        }
        let bucket = &mut self.seconds[second];
        let micros = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let by_op = self.by_op.entry(op).or_default();
        match error {
            None => {
                self.answered += 1;
                by_op.latency_us.saturating_record(micros);
                bucket.ops += 1;
                bucket.latency_us.saturating_record(micros);
            }
            Some(kind) => {
                self.errors += 1;
                by_op.errors += 1;
                bucket.errors += 1;
                *self.errors_by_kind.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
    }

    /// Latency of every operation answered without a client error, in microseconds.
    pub fn latency_us(&self) -> Histogram<u64> {
        let mut all = histogram(SIGNIFICANT_FIGURES);
        for stats in self.by_op.values() {
            // Same bounds and precision: adding cannot fail.
            let _ = all.add(&stats.latency_us);
        }
        all
    }

    pub fn merge(&mut self, other: &Stats) {
        for (index, second) in other.seconds.iter().enumerate() {
            if self.seconds.len() <= index {
                self.seconds.push(second.clone());
                continue;
            }
            let mine = &mut self.seconds[index];
            mine.ops += second.ops;
            mine.errors += second.errors;
            let _ = mine.latency_us.add(&second.latency_us);
        }
        for (kind, count) in &other.errors_by_kind {
            *self.errors_by_kind.entry(kind.clone()).or_insert(0) += count;
        }
        for (op, theirs) in &other.by_op {
            let mine = self.by_op.entry(op).or_default();
            let _ = mine.latency_us.add(&theirs.latency_us);
            mine.errors += theirs.errors;
        }
        self.answered += other.answered;
        self.errors += other.errors;
    }

    pub fn figures(&self, elapsed: Duration) -> Figures {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let all = self.latency_us();
        let latency = LatencyFigures::of(&all);
        let per_op = (self.by_op.iter())
            .map(|(op, stats)| {
                let figures = OpFigures {
                    ops: stats.latency_us.len(),
                    errors: stats.errors,
                    ops_per_s: stats.latency_us.len() as f64 / seconds,
                    latency: LatencyFigures::of(&stats.latency_us),
                };
                (op.to_string(), figures)
            })
            .collect();
        Figures {
            ops: self.answered,
            errors: self.errors,
            elapsed_s: elapsed.as_secs_f64(),
            ops_per_s: self.answered as f64 / seconds,
            latency_min_us: latency.min_us,
            latency_mean_us: latency.mean_us,
            latency_stddev_us: latency.stddev_us,
            latency_p50_us: latency.p50_us,
            latency_p90_us: latency.p90_us,
            latency_p99_us: latency.p99_us,
            latency_p999_us: latency.p999_us,
            latency_max_us: latency.max_us,
            distribution: (DISTRIBUTION_PERCENTILES.iter())
                .map(|&percentile| Percentile {
                    percentile,
                    latency_us: all.value_at_percentile(percentile),
                })
                .collect(),
            histogram: log_buckets(&all),
            per_op,
            errors_by_kind: self.errors_by_kind.clone(),
        }
    }

    /// `timeseries.csv`: per second, throughput, errors and latency quantiles.
    pub fn timeseries_csv(&self) -> String {
        let mut csv = String::from("second,ops,errors,p50_us,p90_us,p99_us,max_us\n");
        for (index, second) in self.seconds.iter().enumerate() {
            let latency = &second.latency_us;
            let _ = writeln!(
                csv,
                "{index},{},{},{},{},{},{}",
                second.ops,
                second.errors,
                latency.value_at_quantile(0.5),
                latency.value_at_quantile(0.9),
                latency.value_at_quantile(0.99),
                latency.max()
            );
        }
        csv
    }

    /// `latency.hgrm`: HdrHistogram's percentile distribution format, values in milliseconds
    /// (plot with HdrHistogram's plotter).
    pub fn hgrm(&self) -> String {
        let latency = &self.latency_us();
        let mut text = format!(
            "{:>12} {:>14} {:>10} {:>14}\n\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        let mut total = 0;
        for step in latency.iter_quantiles(1) {
            total += step.count_since_last_iteration();
            let quantile = step.quantile_iterated_to();
            let inverse = if quantile < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - quantile))
            } else {
                format!("{:>14}", "")
            };
            let value_ms = step.value_iterated_to() as f64 / 1000.0;
            let _ = writeln!(
                text,
                "{value_ms:>12.3} {quantile:>14.12} {total:>10} {inverse}"
            );
        }
        let _ = writeln!(
            text,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            latency.mean() / 1000.0,
            latency.stdev() / 1000.0
        );
        let _ = writeln!(
            text,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            latency.max() as f64 / 1000.0,
            latency.len()
        );
        text
    }
}

/// Log-scale buckets (bounds 1, 2, 5 x 10^k µs) from the one holding the fastest op to the
/// one holding the slowest; each counts the ops above the previous bound up to its own.
fn log_buckets(latency: &Histogram<u64>) -> Vec<Bucket> {
    if latency.is_empty() {
        return Vec::new();
    }
    let (low, high) = (latency.min(), latency.max());
    let mut bounds = Vec::new();
    let mut decade = 1u64;
    'decades: loop {
        for step in BUCKET_STEPS {
            let bound = step * decade;
            if bound >= low || !bounds.is_empty() {
                bounds.push(bound);
            }
            if bound >= high {
                break 'decades;
            }
        }
        decade *= 10;
    }
    let mut below = 0;
    let mut previous = 0;
    (bounds.iter())
        .map(|&bound| {
            // Counts are by HdrHistogram's equivalent ranges: within its 0.1 % precision.
            let upto = latency.count_between(0, bound);
            let count = upto.saturating_sub(below);
            below = upto;
            let bucket = Bucket {
                above_us: previous,
                upto_us: bound,
                count,
            };
            previous = bound;
            bucket
        })
        .collect()
}

/// One bar of the log-scale histogram: ops with latency in (`above_us`, `upto_us`].
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub above_us: u64,
    pub upto_us: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Percentile {
    pub percentile: f64,
    pub latency_us: u64,
}

/// Latency figures of one histogram, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyFigures {
    pub min_us: u64,
    pub mean_us: f64,
    pub stddev_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencyFigures {
    fn of(latency: &Histogram<u64>) -> LatencyFigures {
        if latency.is_empty() {
            return LatencyFigures::default();
        }
        LatencyFigures {
            min_us: latency.min(),
            mean_us: latency.mean(),
            stddev_us: latency.stdev(),
            p50_us: latency.value_at_quantile(0.5),
            p90_us: latency.value_at_quantile(0.9),
            p99_us: latency.value_at_quantile(0.99),
            p999_us: latency.value_at_quantile(0.999),
            max_us: latency.max(),
        }
    }
}

/// One operation kind's headline figures.
#[derive(Clone, Debug, Serialize)]
pub struct OpFigures {
    pub ops: u64,
    pub errors: u64,
    pub ops_per_s: f64,
    pub latency: LatencyFigures,
}

/// The headline figures of a run (also `summary.json`'s `figures`).
#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub ops: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub ops_per_s: f64,
    pub latency_min_us: u64,
    pub latency_mean_us: f64,
    pub latency_stddev_us: f64,
    pub latency_p50_us: u64,
    pub latency_p90_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
    /// The latency distribution (`10% in ...`).
    pub distribution: Vec<Percentile>,
    /// The log-scale latency histogram.
    pub histogram: Vec<Bucket>,
    /// By operation kind: `read`, `write`, `cas`, `txn`.
    pub per_op: BTreeMap<String, OpFigures>,
    pub errors_by_kind: BTreeMap<String, u64>,
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

impl Figures {
    /// The summary printed at the end of a run.
    pub fn summary_text(&self) -> String {
        let mut text = String::from("Summary:\n");
        let rows = [
            (
                "Total",
                format!("{} ops in {:.2} s", self.ops, self.elapsed_s),
            ),
            ("Slowest", ms(self.latency_max_us as f64)),
            ("Fastest", ms(self.latency_min_us as f64)),
            ("Average", ms(self.latency_mean_us)),
            ("Stddev", ms(self.latency_stddev_us)),
            ("Ops/sec", format!("{:.1}", self.ops_per_s)),
            ("Errors", self.errors_text()),
        ];
        for (name, value) in rows {
            let _ = writeln!(text, "  {:<10}{value}", format!("{name}:"));
        }
        text.push_str(&self.per_op_text());
        text.push_str("\nLatency histogram (log scale, upper bounds):\n");
        text.push_str(&self.histogram_text());
        text.push_str("\nLatency distribution:\n");
        for point in &self.distribution {
            let _ = writeln!(
                text,
                "  {}% in {}",
                point.percentile,
                ms(point.latency_us as f64)
            );
        }
        text
    }

    fn errors_text(&self) -> String {
        let kinds: Vec<String> = (self.errors_by_kind.iter())
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect();
        if kinds.is_empty() {
            self.errors.to_string()
        } else {
            format!("{} ({})", self.errors, kinds.join(", "))
        }
    }

    fn per_op_text(&self) -> String {
        let mut text = String::from("\nPer operation (latency in ms):\n");
        let _ = writeln!(
            text,
            "  {:<8}{:>10}{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "op", "ops", "ops/s", "mean", "stddev", "p50", "p99", "max", "errors"
        );
        for (op, figures) in &self.per_op {
            let latency = &figures.latency;
            let ms = |us: f64| format!("{:.3}", us / 1000.0);
            let _ = writeln!(
                text,
                "  {op:<8}{:>10}{:>10.1}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
                figures.ops,
                figures.ops_per_s,
                ms(latency.mean_us),
                ms(latency.stddev_us),
                ms(latency.p50_us as f64),
                ms(latency.p99_us as f64),
                ms(latency.max_us as f64),
                figures.errors
            );
        }
        text
    }

    /// The log-scale histogram as bars (etcd draws `∎`).
    pub fn histogram_text(&self) -> String {
        if self.histogram.is_empty() {
            return "  (no answered operations)\n".to_string();
        }
        let most = self
            .histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut text = String::new();
        for bucket in &self.histogram {
            let mut bar = "∎".repeat((bucket.count * BAR_WIDTH_MAX / most) as usize);
            if bar.is_empty() && bucket.count > 0 {
                bar.push('▏');
            }
            let _ = writeln!(
                text,
                "  {:>12} [{:>8}] |{bar}",
                ms(bucket.upto_us as f64),
                bucket.count
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merge_and_figures_agree() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for micros in 1..=100u64 {
            let op = if micros % 2 == 0 { "read" } else { "write" };
            let at = Duration::from_millis(micros * 10);
            a.record(at, Duration::from_micros(micros), op, None);
        }
        let late = Duration::from_millis(2500);
        b.record(late, Duration::from_millis(1), "write", Some("timeout"));
        a.merge(&b);
        let figures = a.figures(Duration::from_secs(2));
        assert_eq!((figures.ops, figures.errors), (100, 1));
        assert_eq!(figures.latency_max_us, 100);
        assert_eq!(figures.latency_p50_us, 50);
        assert!((figures.latency_stddev_us - 28.866).abs() < 0.01);
        assert_eq!(figures.errors_by_kind.get("timeout"), Some(&1));
        assert_eq!(figures.per_op["read"].ops, 50);
        assert_eq!(figures.per_op["write"].errors, 1);
        assert_eq!(figures.per_op["read"].latency.max_us, 100);
        let csv = a.timeseries_csv();
        assert_eq!(csv.lines().count(), 1 + 3);
        assert!(csv.lines().nth(3).unwrap().starts_with("2,0,1,"));
        assert!(a.hgrm().contains("Total count"));
        let text = figures.summary_text();
        for needle in ["Stddev:", "Slowest:", "read", "99.9% in", "log scale"] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn the_histogram_is_log_scale_and_counts_every_op() {
        let mut stats = Stats::default();
        // 99.7 % fast, a slow tail: a linear scale would put nearly all in the first bar.
        for index in 0..1000u64 {
            let latency = if index < 997 { 150 } else { 40_000 };
            stats.record(Duration::ZERO, Duration::from_micros(latency), "read", None);
        }
        let buckets = stats.figures(Duration::from_secs(1)).histogram;
        let bounds: Vec<u64> = buckets.iter().map(|b| b.upto_us).collect();
        assert_eq!(bounds, [200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000]);
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 1000);
        assert_eq!((buckets[0].count, buckets[7].count), (997, 3));
    }
}
