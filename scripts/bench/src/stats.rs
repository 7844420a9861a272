//! Medians, percentiles and formatting.

use std::time::Duration;

/// The median of `xs` (mean of the two middle values for an even count); 0 when empty.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile `p` (0..=100) of durations, in milliseconds; 0 when empty.
pub fn percentile_ms(xs: &[Duration], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// One timed round: how many operations in how long, and each one's latency.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Operations completed.
    pub ops: usize,
    /// Wall time of the round.
    pub wall: Duration,
    /// Latency of each operation (may be empty when not measured).
    pub latencies: Vec<Duration>,
}

impl Round {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        let s = self.wall.as_secs_f64();
        if s > 0.0 { self.ops as f64 / s } else { 0.0 }
    }
}

/// Medians over rounds: rate, p50 and p99 latency (ms).
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Median operations per second.
    pub rate: f64,
    /// Median of the rounds' p50 latency, ms.
    pub p50_ms: f64,
    /// Median of the rounds' p99 latency, ms.
    pub p99_ms: f64,
}

/// Summarises rounds by their medians.
pub fn summarize(rounds: &[Round]) -> Summary {
    let rates: Vec<f64> = rounds.iter().map(Round::rate).collect();
    let p50: Vec<f64> = rounds
        .iter()
        .map(|r| percentile_ms(&r.latencies, 50.0))
        .collect();
    let p99: Vec<f64> = rounds
        .iter()
        .map(|r| percentile_ms(&r.latencies, 99.0))
        .collect();
    Summary {
        rate: median(&rates),
        p50_ms: median(&p50),
        p99_ms: median(&p99),
    }
}

/// A ratio as `12.3×`, or `n/a` when the denominator is 0.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1}×", a / b)
    } else {
        "n/a".into()
    }
}

/// A percentage `a / b` as `87 %`.
pub fn percent(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.1} %", 100.0 * a / b)
    } else {
        "n/a".into()
    }
}

/// `met` / `MISSED` for a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**MISSED**" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&d, 50.0), 50.0);
        assert_eq!(percentile_ms(&d, 99.0), 99.0);
        assert_eq!(percentile_ms(&d, 100.0), 100.0);
    }
}
