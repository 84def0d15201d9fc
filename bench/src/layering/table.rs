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
    writeln!(s, "\n| re-downloaded (store paths the client had) | {} | total |", head.join(" | ")).ok();
    writeln!(s, "|---|{}---:|", "---:|".repeat(head.len())).ok();
    for row in &r.rows {
        let again: Vec<String> = row.steps.iter().map(|st| bytes(st.redownloaded)).collect();
        writeln!(s, "| {} | {} | {} |", row.label, again.join(" | "), bytes(row.total_redownloaded())).ok();
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
            "\nBlobs skopeo added to one OCI layout per pull (manifest included, as in the counts above, which each matched): {}.",
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

/// Issue 5's goals, on re-downloads (what layering decides): `size` after
/// adding one package against the single layer, and against each
/// popularity row at every step; then the same on all bytes pulled, new
/// store paths included, where extra layers cost their framing; and which
/// strategy won against the default.
pub fn ratios(r: &Report) -> String {
    let mut s = String::new();
    if let (Some(size), Some(single)) = (r.row("size"), r.row("single layer")) {
        if size.steps.len() > 1 {
            let step = &r.steps[1].label;
            let (a, b) = (&size.steps[1], &single.steps[1]);
            writeln!(
                s,
                "size re-downloads {} of what the single layer re-downloads at `{step}` ({} vs {}; goal: at most 10%: {}); of all bytes pulled there, {} ({} vs {})",
                pct(a.redownloaded, b.redownloaded),
                bytes(a.redownloaded),
                bytes(b.redownloaded),
                verdict(a.redownloaded * 10 <= b.redownloaded),
                pct(a.new_bytes, b.new_bytes),
                bytes(a.new_bytes),
                bytes(b.new_bytes),
            )
            .ok();
        }
        for other in r.rows.iter().filter(|row| row.group == "popularity") {
            let pairs = || size.steps.iter().zip(&other.steps).zip(&r.steps);
            let again: Vec<String> = pairs()
                .map(|((a, b), i)| format!("{} {} vs {}", i.label, bytes(a.redownloaded), bytes(b.redownloaded)))
                .collect();
            let pulled: Vec<String> =
                pairs().map(|((a, b), i)| format!("{} {}", i.label, pct(a.new_bytes, b.new_bytes))).collect();
            let over_again: Vec<String> = pairs()
                .filter(|((a, b), _)| a.redownloaded > b.redownloaded)
                .map(|((a, b), i)| format!("`{}` by {} B", i.label, a.redownloaded - b.redownloaded))
                .collect();
            writeln!(
                s,
                "re-downloaded, size vs {} per step: {}; total {} vs {} (goal: no more at any step: {})",
                other.label,
                again.join(", "),
                bytes(size.total_redownloaded()),
                bytes(other.total_redownloaded()),
                outcome(&over_again),
            )
            .ok();
            // Where size pulled more in all: on a pull of (nearly) only new
            // store paths every strategy downloads the same paths, and what
            // differs is the framing (manifest and config entries, tar
            // headers) of more layers.
            let over: Vec<String> = pairs()
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
            writeln!(
                s,
                "pulled in all, size / {} per step: {}; total {} ({})",
                other.label,
                pulled.join(", "),
                pct(size.total_pulled(), other.total_pulled()),
                if over.is_empty() { "never more".to_string() } else { format!("more at {}", over.join(", ")) },
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

fn outcome(over: &[String]) -> String {
    if over.is_empty() {
        "met".into()
    } else {
        format!("MISSED at {}", over.join(", "))
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
