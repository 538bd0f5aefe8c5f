//! Samples and their order statistics, and the report they end up in.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Timings of one measurement.
pub(crate) struct Samples(Vec<Duration>);

impl Samples {
    /// Runs `f` `warmup` times untimed, then `n` times timed.
    pub(crate) fn measure(warmup: usize, n: usize, mut f: impl FnMut()) -> Samples {
        for _ in 0..warmup {
            f();
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            f();
            v.push(t.elapsed());
        }
        Samples::from(v)
    }

    /// The quantile at `per_mille`/1000, nearest rank.
    pub(crate) fn quantile(&self, per_mille: usize) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let last = self.0.len() - 1;
        let rank = (last * per_mille.min(1000) + 500) / 1000;
        self.0[rank]
    }

    /// Median.
    pub(crate) fn p50(&self) -> Duration {
        self.quantile(500)
    }

    /// 99th percentile.
    pub(crate) fn p99(&self) -> Duration {
        self.quantile(990)
    }

    /// Largest.
    pub(crate) fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// Number of samples.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl From<Vec<Duration>> for Samples {
    fn from(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Samples(v)
    }
}

/// `83 µs`, `1.42 ms`, `2.1 s`.
pub(crate) fn human(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn micros(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// One row of the report.
pub(crate) struct Row {
    /// What was measured.
    pub(crate) what: String,
    /// The figure (p50 / p99 / max, a rate, a size).
    pub(crate) figure: String,
    /// The target it is held against, if any.
    pub(crate) target: String,
    /// A comparison (ratio to a baseline or a peer measured in the same run).
    pub(crate) compare: String,
    /// The same, for the JSON output.
    pub(crate) json: Value,
}

/// The whole report.
#[derive(Default)]
pub(crate) struct Report {
    /// Rows in order.
    pub(crate) rows: Vec<Row>,
}

impl Report {
    /// A latency row from samples.
    pub(crate) fn latency(
        &mut self,
        key: &str,
        what: &str,
        s: &Samples,
        target: &str,
        compare: String,
    ) {
        self.rows.push(Row {
            what: what.to_owned(),
            figure: format!(
                "p50 {} · p99 {} · max {}",
                human(s.p50()),
                human(s.p99()),
                human(s.max())
            ),
            target: target.to_owned(),
            compare,
            json: json!({"key": key, "n": s.len(), "p50_us": micros(s.p50()),
                         "p99_us": micros(s.p99()), "max_us": micros(s.max())}),
        });
    }

    /// Any other row.
    pub(crate) fn other(
        &mut self,
        key: &str,
        what: &str,
        figure: String,
        target: &str,
        compare: String,
        value: Value,
    ) {
        self.rows.push(Row {
            what: what.to_owned(),
            figure,
            target: target.to_owned(),
            compare,
            json: json!({"key": key, "value": value}),
        });
    }

    /// The markdown table.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::from(
            "| measurement | result | target | comparison (same run) |\n|---|---|---|---|\n",
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.what, r.figure, r.target, r.compare
            ));
        }
        out
    }

    /// Every row as JSON.
    pub(crate) fn json(&self) -> Value {
        Value::Array(self.rows.iter().map(|r| r.json.clone()).collect())
    }
}

/// `a / b` as `1.23×`.
pub(crate) fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "–".to_owned();
    }
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let s = Samples::from((1..=100).map(Duration::from_micros).collect::<Vec<_>>());
        assert_eq!(s.p50(), Duration::from_micros(51));
        assert_eq!(s.p99(), Duration::from_micros(99));
        assert_eq!(s.max(), Duration::from_micros(100));
        assert_eq!(human(Duration::from_micros(83)), "83 µs");
        assert_eq!(human(Duration::from_micros(1420)), "1.42 ms");
        assert_eq!(
            ratio(Duration::from_millis(3), Duration::from_millis(2)),
            "1.50×"
        );
    }
}
