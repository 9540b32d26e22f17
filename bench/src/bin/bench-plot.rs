//! `bench-plot`: an SVG chart of `bench-serving` results (JSON lines): output throughput and median end-to-end
//! latency per system, one group of bars per workload.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

#[derive(Debug, Parser)]
struct Args {
    /// JSON lines written by bench-serving --output-jsonl.
    #[arg(long)]
    input: PathBuf,
    #[arg(long, default_value = "bench-out/serving.svg")]
    output: PathBuf,
    /// Print radixserve / peer ratios per workload with this label as radixserve.
    #[arg(long, default_value = "radixserve")]
    baseline: String,
    /// The no-cache run's label and llama.cpp's, for the summary line.
    #[arg(long, default_value = "radixserve-nocache")]
    nocache: String,
    #[arg(long, default_value = "llama-server")]
    llamacpp: String,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rows: Vec<Value> =
        std::fs::read_to_string(&a.input)?.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    anyhow::ensure!(!rows.is_empty(), "no results in {}", a.input.display());
    // Last result per (dataset, label).
    let mut table: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    let mut labels: Vec<String> = Vec::new();
    for r in rows {
        let (d, l) = (r["dataset"].as_str().unwrap_or("?").to_string(), r["label"].as_str().unwrap_or("?").to_string());
        if !labels.contains(&l) {
            labels.push(l.clone());
        }
        table.entry(d).or_default().insert(l, r);
    }
    let datasets: Vec<String> = table.keys().cloned().collect();
    if let Some(dir) = a.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(&a.output, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    for (panel, (title, key)) in panels.iter().zip([
        ("Output throughput (tok/s, higher is better)", "output_throughput"),
        ("Median end-to-end latency (ms, lower is better)", "e2e_ms"),
    ]) {
        let value = |r: &Value| if key == "e2e_ms" { r[key]["median"].as_f64() } else { r[key].as_f64() };
        let max = table.values().flat_map(|m| m.values()).filter_map(value).fold(0.0f64, f64::max).max(1e-9);
        let n = labels.len() as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..datasets.len() as f64, 0.0..max * 1.15)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(datasets.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 {
                    datasets.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()?;
        for (li, label) in labels.iter().enumerate() {
            let color = COLORS[li % COLORS.len()];
            let bars = datasets.iter().enumerate().filter_map(|(di, d)| {
                let v = table[d].get(label).and_then(value)?;
                let x0 = di as f64 + 0.1 + 0.8 * li as f64 / n;
                Some(Rectangle::new([(x0, 0.0), (x0 + 0.8 / n * 0.9, v)], color.filled()))
            });
            chart
                .draw_series(bars)?
                .label(label.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    println!("chart: {}", a.output.display());
    print_ratios(&a, &table, &labels);
    Ok(())
}

/// One table per workload: each peer's numbers and radixserve's ratio to it; then the summary line.
fn print_ratios(a: &Args, table: &BTreeMap<String, BTreeMap<String, Value>>, labels: &[String]) {
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
        _ => "n/a".into(),
    };
    for (d, runs) in table {
        let Some(base) = runs.get(&a.baseline) else { continue };
        println!("\n{d}: {:<22} {:>10} {:>12} {:>12} {:>10} {:>9} | ratios {} / peer: req/s, output tok/s, median TTFT, median E2E", "system", "req/s", "out tok/s", "TTFT p50 ms", "E2E p50 ms", "failed", a.baseline);
        for l in labels {
            let Some(r) = runs.get(l) else { continue };
            let f = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.2}"));
            println!(
                "{d}: {l:<22} {:>10} {:>12} {:>12} {:>10} {:>9} | {} {} {} {}",
                f(r["request_throughput"].as_f64()),
                f(r["output_throughput"].as_f64()),
                f(r["ttft_ms"]["median"].as_f64()),
                f(r["e2e_ms"]["median"].as_f64()),
                r["failed"],
                ratio(base["request_throughput"].as_f64(), r["request_throughput"].as_f64()),
                ratio(base["output_throughput"].as_f64(), r["output_throughput"].as_f64()),
                // Latency: peer / radixserve, so above 1x means radixserve is faster.
                ratio(r["ttft_ms"]["median"].as_f64(), base["ttft_ms"]["median"].as_f64()),
                ratio(r["e2e_ms"]["median"].as_f64(), base["e2e_ms"]["median"].as_f64()),
            );
        }
    }
    let tp = |d: &str, l: &str| table.get(d).and_then(|m| m.get(l)).and_then(|r| r["request_throughput"].as_f64());
    let gsp = "generatedsharedprefix";
    let valid = table
        .get("jsonschema")
        .and_then(|m| m.get(&a.baseline))
        .and_then(|r| r["valid_share"].as_f64())
        .map_or("n/a".into(), |v| format!("{:.1}", v * 100.0));
    println!(
        "\nshared-prefix throughput vs llama.cpp {}, vs no-cache {}; json-schema valid {valid}%",
        ratio(tp(gsp, &a.baseline), tp(gsp, &a.llamacpp)),
        ratio(tp(gsp, &a.baseline), tp(gsp, &a.nocache)),
    );
}
