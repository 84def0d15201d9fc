//! The report as a Markdown table, and the ratios issue 5 asks for.

use super::Report;
use indicatif::HumanBytes;
use std::fmt::Write;

fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let head: Vec<String> = r.steps.iter().map(|st| st.label.clone()).collect();
    writeln!(s, "| pulled by the client | {} | total | stored | layers | build (sum) |", head.join(" | ")).ok();
    writeln!(s, "|---|{}---:|---:|---|---:|", "---:|".repeat(head.len())).ok();
    let cells = |f: &dyn Fn(&super::StepInfo) -> String| r.steps.iter().map(f).collect::<Vec<_>>().join(" | ");
    writeln!(s, "| *image closure (NAR)* | {} | | | | |", cells(&|i| bytes(i.closure_bytes))).ok();
    writeln!(
        s,
        "| *store paths new to the client (NAR)* | {} | {} | | | |",
        cells(&|i| bytes(i.new_path_bytes)),
        bytes(r.steps.iter().map(|i| i.new_path_bytes).sum())
    )
    .ok();
    for row in &r.rows {
        let pulled: Vec<String> = row.steps.iter().map(|st| bytes(st.new_bytes)).collect();
        let layers: Vec<String> = row.steps.iter().map(|st| st.layers.to_string()).collect();
        let build: f64 = row.steps.iter().map(|st| st.build_secs).sum();
        writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} s |",
            row.label,
            pulled.join(" | "),
            bytes(row.total_pulled()),
            bytes(row.stored_bytes),
            layers.join("/"),
            build
        )
        .ok();
    }
    if r.skopeo_checked {
        let per_row: Vec<String> = r
            .rows
            .iter()
            .map(|row| {
                let n: Vec<String> =
                    row.steps.iter().map(|st| st.skopeo_blobs.map_or("-".into(), |b| b.to_string())).collect();
                format!("{} {}", row.label, n.join("/"))
            })
            .collect();
        writeln!(
            s,
            "\nBlobs skopeo added to one OCI layout per pull (manifest included; each matched the count above): {}.",
            per_row.join("; ")
        )
        .ok();
    }
    s
}

fn pct(a: u64, b: u64) -> String {
    if b == 0 {
        return "n/a".into();
    }
    format!("{:.1}%", a as f64 * 100.0 / b as f64)
}

/// The ratio of `size` to the single layer after adding one package (the
/// second step), of `size` to each popularity row at every step, and which
/// strategy won against the default.
pub fn ratios(r: &Report) -> String {
    let mut s = String::new();
    if let (Some(size), Some(single)) = (r.row("size"), r.row("single layer")) {
        if size.steps.len() > 1 {
            let step = &r.steps[1].label;
            let (a, b) = (size.steps[1].new_bytes, single.steps[1].new_bytes);
            writeln!(
                s,
                "size re-downloads {} of what the single layer re-downloads at `{step}` ({} vs {}; goal: at most 10%: {})",
                pct(a, b),
                bytes(a),
                bytes(b),
                verdict(a * 10 <= b)
            )
            .ok();
        }
        for other in r.rows.iter().filter(|row| row.group == "popularity") {
            let per: Vec<String> = size
                .steps
                .iter()
                .zip(&other.steps)
                .zip(&r.steps)
                .map(|((a, b), i)| format!("{} {}", i.label, pct(a.new_bytes, b.new_bytes)))
                .collect();
            // Where size pulled more, by how much: on a first pull every
            // strategy downloads the same store paths, and what differs is
            // per-layer framing (a config entry, tar headers) of more layers.
            let over: Vec<String> = size
                .steps
                .iter()
                .zip(&other.steps)
                .zip(&r.steps)
                .filter(|((a, b), _)| a.new_bytes > b.new_bytes)
                .map(|((a, b), i)| {
                    format!(
                        "`{}` by {} B in {} more blobs",
                        i.label,
                        a.new_bytes - b.new_bytes,
                        a.new_blobs as i64 - b.new_blobs as i64
                    )
                })
                .collect();
            let outcome = if over.is_empty() { "met".to_string() } else { format!("MISSED at {}", over.join(", ")) };
            writeln!(
                s,
                "size / {} per step: {}; total {} (goal: at most 100% at every step: {outcome})",
                other.label,
                per.join(", "),
                pct(size.total_pulled(), other.total_pulled()),
            )
            .ok();
        }
    }
    if let Some(w) = r.winner() {
        writeln!(
            s,
            "fewest bytes over the series (servable rows): {} (`{}`); `strata serve` groups with `{}` by default",
            w.label, w.group, r.default_group
        )
        .ok();
    }
    s
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
