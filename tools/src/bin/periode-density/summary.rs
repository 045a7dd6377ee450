//! `periode-density summarize FILE...`: reads reports written by earlier runs (one JSON object
//! per file, or per line) and prints one Markdown row per label, each figure the median of the
//! runs that carry that label.

use serde_json::Value;
use std::collections::BTreeMap;

/// (column title, JSON pointer into a report, decimals)
const COLUMNS: &[(&str, &str, usize)] = &[
    ("streams", "/connect/established", 0),
    ("streams/s to 99 %", "/connect/streams_per_s_to_99pct", 0),
    ("server µs CPU per connect", "/connect/server_run_us_per_stream", 0),
    ("first event p99 ms", "/connect/first_event/p99_ms", 1),
    ("RSS B/stream", "/memory/rss_growth_per_stream_bytes", 0),
    ("PSS B/stream", "/memory/pss_growth_per_stream_bytes", 0),
    ("fan-out p50 ms", "/fanout/to_last_stream/p50_ms", 2),
    ("fan-out p99 ms", "/fanout/to_last_stream/p99_ms", 2),
    ("first→last p99 ms", "/fanout/first_to_last_stream/p99_ms", 2),
    ("POST answer p50 ms", "/fanout/post_response/p50_ms", 2),
    ("µs CPU/fan-out event", "/fanout/server_cpu_us_per_event", 2),
    ("µs CPU/heartbeat", "/heartbeat/cpu_us_per_heartbeat", 2),
    ("µs user/heartbeat", "/heartbeat/user_us_per_heartbeat", 2),
    ("heartbeats/s delivered", "/heartbeat/per_s", 0),
    ("heartbeats/s due", "/heartbeat/expected_per_s", 0),
    ("writes/s paced", "/writers_paced/writes_per_s", 0),
    ("probe fan-out p99 ms (paced writes)", "/writers_paced/probe_fanout_to_last_stream/p99_ms", 1),
    ("writes/s", "/writers/writes_per_s", 0),
    ("probe fan-out p99 ms (writing)", "/writers/probe_fanout_to_last_stream/p99_ms", 1),
    ("startup ms (existing db)", "/startup/existing_db_ms", 1),
    ("failures", "/failure_count", 0),
];

pub fn run(files: &[String]) -> Result<(), String> {
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let report: Value =
                serde_json::from_str(line).map_err(|e| format!("{file}: not a report: {e}"))?;
            let label = report["label"].as_str().map(str::to_string).unwrap_or_else(|| {
                format!(
                    "{} N={}",
                    report["target"].as_str().unwrap_or("?"),
                    report["streams_requested"]
                )
            });
            if !groups.contains_key(&label) {
                order.push(label.clone());
            }
            groups.entry(label).or_default().push(report);
        }
    }
    // Only the columns that some report fills.
    let used: Vec<&(&str, &str, usize)> = COLUMNS
        .iter()
        .filter(|(_, ptr, _)| {
            groups.values().flatten().any(|r| r.pointer(ptr).and_then(Value::as_f64).is_some())
        })
        .collect();
    let mut header = String::from("| run | runs |");
    let mut rule = String::from("|---|---|");
    for (title, _, _) in &used {
        header.push_str(&format!(" {title} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    for label in order {
        let reports = &groups[&label];
        let mut row = format!("| {label} | {} |", reports.len());
        for (_, ptr, digits) in &used {
            let mut values: Vec<f64> =
                reports.iter().filter_map(|r| r.pointer(ptr).and_then(Value::as_f64)).collect();
            let cell = median(&mut values)
                .map(|v| format!("{v:.digits$}", digits = *digits))
                .unwrap_or_else(|| "–".into());
            row.push_str(&format!(" {cell} |"));
        }
        println!("{row}");
    }
    Ok(())
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}
