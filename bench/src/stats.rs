//! Latency and throughput figures: one HdrHistogram per worker (merged at the end), per-second
//! buckets for the time series, error counts by kind, and the printed summary.

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
/// Buckets of the printed latency histogram, as etcd's benchmark prints.
const SUMMARY_BUCKETS: u64 = 10;
/// Width of the longest bar of the printed histogram.
const BAR_WIDTH_MAX: u64 = 40;

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

/// What one worker (or, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency of operations answered without a client error, in microseconds.
    pub latency_us: Histogram<u64>,
    pub seconds: Vec<Second>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Operations answered (`ok`, or `fail` of an executed cas / aborted transaction).
    pub answered: u64,
    pub errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency_us: histogram(SIGNIFICANT_FIGURES),
            seconds: Vec::new(),
            errors_by_kind: BTreeMap::new(),
            answered: 0,
            errors: 0,
        }
    }
}

impl Stats {
    /// Records one operation sent at `since_start` (its intended send time) that took
    /// `latency`; `error` names the client error kind if it failed.
    pub fn record(&mut self, since_start: Duration, latency: Duration, error: Option<&str>) {
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
        match error {
            None => {
                self.answered += 1;
                self.latency_us.saturating_record(micros);
                bucket.ops += 1;
                bucket.latency_us.saturating_record(micros);
            }
            Some(kind) => {
                self.errors += 1;
                bucket.errors += 1;
                *self.errors_by_kind.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
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
        self.answered += other.answered;
        self.errors += other.errors;
    }

    pub fn figures(&self, elapsed: Duration) -> Figures {
        let latency = &self.latency_us;
        let quantile = |q: f64| latency.value_at_quantile(q);
        Figures {
            ops: self.answered,
            errors: self.errors,
            elapsed_s: elapsed.as_secs_f64(),
            ops_per_s: self.answered as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            latency_min_us: if latency.is_empty() { 0 } else { latency.min() },
            latency_mean_us: latency.mean(),
            latency_p50_us: quantile(0.5),
            latency_p90_us: quantile(0.9),
            latency_p99_us: quantile(0.99),
            latency_p999_us: quantile(0.999),
            latency_max_us: latency.max(),
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
        let latency = &self.latency_us;
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

    /// The latency histogram etcd's benchmark prints: equal-width buckets from min to max.
    pub fn histogram_text(&self) -> String {
        let latency = &self.latency_us;
        if latency.is_empty() {
            return "  (no answered operations)\n".to_string();
        }
        let (low, high) = (latency.min(), latency.max());
        let width = ((high - low) / SUMMARY_BUCKETS).max(1);
        let mut buckets = Vec::new();
        let mut start = low;
        while start <= high && (buckets.len() as u64) < SUMMARY_BUCKETS {
            let end = if buckets.len() as u64 == SUMMARY_BUCKETS - 1 {
                high
            } else {
                start + width
            };
            let count = latency.count_between(start, end.saturating_sub(1).max(start));
            buckets.push((end, count));
            start = end;
        }
        let most = buckets
            .iter()
            .map(|(_, count)| *count)
            .max()
            .unwrap_or(1)
            .max(1);
        let mut text = String::new();
        for (end, count) in buckets {
            let bar = "∎".repeat((count * BAR_WIDTH_MAX / most) as usize);
            let _ = writeln!(text, "  {:>10.3} ms [{count}]\t|{bar}", end as f64 / 1000.0);
        }
        text
    }
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
    pub latency_p50_us: u64,
    pub latency_p90_us: u64,
    pub latency_p99_us: u64,
    pub latency_p999_us: u64,
    pub latency_max_us: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
}

impl Figures {
    pub fn summary_text(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut text = String::from("Summary:\n");
        let _ = writeln!(
            text,
            "  Total:\t{} ops in {:.2} s",
            self.ops, self.elapsed_s
        );
        let _ = writeln!(text, "  Ops/sec:\t{:.1}", self.ops_per_s);
        let _ = writeln!(
            text,
            "  Latency:\tmin {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms \
             (mean {:.3})",
            ms(self.latency_min_us),
            ms(self.latency_p50_us),
            ms(self.latency_p90_us),
            ms(self.latency_p99_us),
            ms(self.latency_p999_us),
            ms(self.latency_max_us),
            self.latency_mean_us / 1000.0
        );
        let kinds: Vec<String> = self
            .errors_by_kind
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect();
        if kinds.is_empty() {
            let _ = writeln!(text, "  Errors:\t{}", self.errors);
        } else {
            let _ = writeln!(text, "  Errors:\t{} ({})", self.errors, kinds.join(", "));
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
            a.record(
                Duration::from_millis(micros * 10),
                Duration::from_micros(micros),
                None,
            );
        }
        b.record(
            Duration::from_millis(2500),
            Duration::from_millis(1),
            Some("timeout"),
        );
        a.merge(&b);
        let figures = a.figures(Duration::from_secs(2));
        assert_eq!((figures.ops, figures.errors), (100, 1));
        assert_eq!(figures.latency_max_us, 100);
        assert_eq!(figures.latency_p50_us, 50);
        assert_eq!(figures.errors_by_kind.get("timeout"), Some(&1));
        let csv = a.timeseries_csv();
        assert_eq!(csv.lines().count(), 1 + 3);
        assert!(csv.lines().nth(3).unwrap().starts_with("2,0,1,"));
        assert!(a.hgrm().contains("Total count"));
        assert_eq!(a.histogram_text().lines().count(), SUMMARY_BUCKETS as usize);
    }
}
