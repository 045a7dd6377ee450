//! Latency distributions: a sorted sample and its quantiles, in milliseconds.

use serde_json::{json, Value};
use std::time::Duration;

#[derive(Default)]
pub struct Sample {
    micros: Vec<u64>,
}

impl Sample {
    pub fn push(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// The value at quantile `q` (0..=1), nearest-rank, in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> Option<f64> {
        if self.micros.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let rank = ((q * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len());
        Some(self.micros[rank - 1] as f64 / 1000.0)
    }

    pub fn summary(&mut self) -> Value {
        let count = self.micros.len();
        let mut round = |q: f64| self.quantile_ms(q).map(|v| (v * 1000.0).round() / 1000.0);
        json!({
            "count": count,
            "p50_ms": round(0.5),
            "p90_ms": round(0.9),
            "p99_ms": round(0.99),
            "max_ms": round(1.0),
        })
    }
}
