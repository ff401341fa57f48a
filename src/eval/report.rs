//! Summaries and report files: per-case CSV and JSON, a Markdown table per domain and
//! method (mean, standard deviation and a 95% bootstrap confidence interval over the
//! case-structure rows), and an SVG bar chart of mean Dice per domain.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::Row;
use crate::io::{write_bytes, WriteError};

/// Bootstrap resamples behind each confidence interval.
const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Fixed seed: identical intervals on every run.
const BOOTSTRAP_SEED: u64 = 0x5eed_c05a_u64;

/// One domain x method cell of the summary table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Task.
    pub task: String,
    /// Domain.
    pub domain: String,
    /// Generated domain shift.
    pub synthetic: bool,
    /// Method.
    pub method: String,
    /// Rows scored (case x structure).
    pub n: usize,
    /// Rows that failed.
    pub failed: usize,
    /// Mean Dice.
    pub dice_mean: f64,
    /// Sample standard deviation of Dice (`None` for one row).
    pub dice_std: Option<f64>,
    /// 95% bootstrap interval of the mean Dice (`None` for one row).
    pub dice_ci95: Option<(f64, f64)>,
    /// Median HD95 over rows, mm (+inf rows count as larger than any value).
    pub hd95_median_mm: Option<f64>,
    /// Rows whose prediction was empty (HD95 = +inf).
    pub empty_predictions: usize,
    /// Mean NSD.
    pub nsd_mean: Option<f64>,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Percentile bootstrap 95% interval of the mean, seeded; `None` for fewer than 2 values.
pub fn bootstrap_ci(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < 2 {
        return None;
    }
    let mut state = BOOTSTRAP_SEED;
    let n = values.len();
    let mut means: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            (0..n)
                .map(|_| values[(xorshift(&mut state) % n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| {
        means
            [((q * (BOOTSTRAP_RESAMPLES - 1) as f64).round() as usize).min(BOOTSTRAP_RESAMPLES - 1)]
    };
    Some((at(0.025), at(0.975)))
}

/// Mean, std and CI of Dice per (task, domain, method), in first-appearance order.
pub fn aggregate(rows: &[Row]) -> Vec<Summary> {
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        let key = (r.task.clone(), r.domain.clone(), r.method.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    order
        .into_iter()
        .filter_map(|key| {
            let g = groups.get(&key)?;
            let dice: Vec<f64> = g
                .iter()
                .filter(|r| r.status == "ok")
                .filter_map(|r| r.dice)
                .collect();
            let n = dice.len();
            let mean = if n > 0 {
                dice.iter().sum::<f64>() / n as f64
            } else {
                f64::NAN
            };
            let std = (n > 1).then(|| {
                (dice.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            });
            let ok: Vec<&&Row> = g.iter().filter(|r| r.status == "ok").collect();
            let mut hd95: Vec<f64> = ok.iter().filter_map(|r| r.hd95_mm).collect();
            hd95.sort_by(f64::total_cmp);
            let hd95_median_mm = (!hd95.is_empty()).then(|| {
                let m = hd95.len();
                if m % 2 == 1 {
                    hd95[m / 2]
                } else {
                    (hd95[m / 2 - 1] + hd95[m / 2]) / 2.0
                }
            });
            let nsd: Vec<f64> = ok.iter().filter_map(|r| r.nsd).collect();
            Some(Summary {
                hd95_median_mm,
                empty_predictions: ok.iter().filter(|r| r.pred_voxels == 0).count(),
                nsd_mean: (!nsd.is_empty()).then(|| nsd.iter().sum::<f64>() / nsd.len() as f64),
                task: key.0.clone(),
                domain: key.1.clone(),
                synthetic: g.first().is_some_and(|r| r.synthetic),
                method: key.2.clone(),
                n,
                failed: g.iter().filter(|r| r.status != "ok").count(),
                dice_mean: mean,
                dice_std: std,
                dice_ci95: bootstrap_ci(&dice),
            })
        })
        .collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.6}"))
}

/// Writes `cases.csv`, `cases.json`, `summary.md` (with `header` above the table),
/// `summary.json` and `dice_by_domain.svg` into `dir`; returns the files written.
///
/// # Errors
/// [`WriteError`] when a file cannot be written.
pub fn write_reports(
    dir: &Path,
    header: &str,
    rows: &[Row],
    summaries: &[Summary],
) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    let mut csv = String::from(
        "case,task,domain,synthetic,structure,method,status,dice,iou,hd_mm,hd95_mm,assd_mm,nsd,pred_voxels,ref_voxels,seconds,error,label_kind,quality\n",
    );
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{},{},{}",
            csv_field(&r.case),
            csv_field(&r.task),
            csv_field(&r.domain),
            r.synthetic,
            csv_field(&r.structure),
            csv_field(&r.method),
            r.status,
            opt(r.dice),
            opt(r.iou),
            opt(r.hd_mm),
            opt(r.hd95_mm),
            opt(r.assd_mm),
            opt(r.nsd),
            r.pred_voxels,
            r.ref_voxels,
            r.seconds,
            csv_field(r.error.as_deref().unwrap_or("")),
            csv_field(&r.label_kind),
            opt(r.quality)
        );
    }
    let path = dir.join("cases.csv");
    write_bytes(&path, csv.as_bytes())?;
    written.push(path);
    let json = |v: &dyn erased::Json| v.to_json();
    for (name, body) in [
        ("cases.json", json(&rows)),
        ("summary.json", json(&summaries)),
    ] {
        let path = dir.join(name);
        write_bytes(&path, body.as_bytes())?;
        written.push(path);
    }
    let path = dir.join("summary.md");
    let mut md = markdown(header, summaries);
    let review = review_flag(rows, REVIEW_DICE, REVIEW_THRESHOLD);
    if !review.is_empty() {
        md.push_str(&review_markdown(&review));
    }
    write_bytes(&path, md.as_bytes())?;
    written.push(path);
    let path = dir.join("dice_by_domain.svg");
    let svg = bar_chart(summaries).map_err(|reason| WriteError::Encode {
        path: path.clone(),
        reason,
    })?;
    write_bytes(&path, svg.as_bytes())?;
    written.push(path);
    if let Some(svg) = iteration_chart(summaries) {
        let path = dir.join("dice_by_iteration.svg");
        let svg = svg.map_err(|reason| WriteError::Encode {
            path: path.clone(),
            reason,
        })?;
        write_bytes(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

/// Dice below which a case counts as one a clinician should have reviewed.
pub const REVIEW_DICE: f64 = 0.8;
/// The review threshold of the report: `cosam segment`'s default.
pub const REVIEW_THRESHOLD: f64 = crate::correct::DEFAULT_REVIEW_THRESHOLD;

/// How well a method's quality score flags its bad cases.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReviewSummary {
    /// Method.
    pub method: String,
    /// Rows with a quality score and a Dice.
    pub n: usize,
    /// Rows with Dice below the bad-case cut.
    pub bad: usize,
    /// Area under the ROC curve of `1 - quality` for "Dice below the cut" (`None` when
    /// all rows are good or all bad).
    pub auroc: Option<f64>,
    /// Bad rows flagged at the threshold (quality below it).
    pub flagged_bad: usize,
    /// Good rows flagged at the threshold.
    pub flagged_good: usize,
}

/// Per method with quality scores: AUROC of the score against `Dice < bad_dice`, and what
/// the flag at `threshold` catches. Ties count one half (the Mann-Whitney statistic).
pub fn review_flag(rows: &[Row], bad_dice: f64, threshold: f64) -> Vec<ReviewSummary> {
    let mut by_method: BTreeMap<&str, Vec<(f64, bool)>> = BTreeMap::new();
    for r in rows {
        if let (Some(q), Some(d)) = (r.quality, r.dice) {
            by_method
                .entry(&r.method)
                .or_default()
                .push((q, d < bad_dice));
        }
    }
    by_method
        .into_iter()
        .map(|(method, v)| {
            let bad: Vec<f64> = v.iter().filter(|x| x.1).map(|x| x.0).collect();
            let good: Vec<f64> = v.iter().filter(|x| !x.1).map(|x| x.0).collect();
            let auroc = (!bad.is_empty() && !good.is_empty()).then(|| {
                let mut wins = 0.0;
                for b in &bad {
                    for g in &good {
                        wins += match b.total_cmp(g) {
                            std::cmp::Ordering::Less => 1.0,
                            std::cmp::Ordering::Equal => 0.5,
                            std::cmp::Ordering::Greater => 0.0,
                        };
                    }
                }
                wins / (bad.len() * good.len()) as f64
            });
            ReviewSummary {
                method: method.to_string(),
                n: v.len(),
                bad: bad.len(),
                auroc,
                flagged_bad: bad.iter().filter(|&&q| q < threshold).count(),
                flagged_good: good.iter().filter(|&&q| q < threshold).count(),
            }
        })
        .collect()
}

fn review_markdown(review: &[ReviewSummary]) -> String {
    let mut md = format!(
        "\n## Review flag\n\nQuality score against bad cases (Dice < {REVIEW_DICE}), per case and \
         structure: AUROC, and what `needs_review` (quality < {REVIEW_THRESHOLD}) flags.\n\n\
         | method | n | bad | AUROC | bad flagged | good flagged |\n|---|---|---|---|---|---|\n"
    );
    for r in review {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {}/{} | {}/{} |",
            r.method,
            r.n,
            r.bad,
            r.auroc.map_or("n/a".into(), |a| format!("{a:.3}")),
            r.flagged_bad,
            r.bad,
            r.flagged_good,
            r.n - r.bad
        );
    }
    md
}

/// The loop round a method stands for: `coarse` is 0, `PREFIX:T` is T (`prefix` is
/// `cosam:` or `cosam-fixed:`).
fn iteration_of(method: &str, prefix: &str) -> Option<u32> {
    match method {
        "coarse" => Some(0),
        m => m.strip_prefix(prefix).and_then(|t| t.parse().ok()),
    }
}

/// Mean Dice against the loop's rounds T (0 = coarse), one line per domain: after exactly
/// T rounds (`cosam-fixed:T`) when those ran, else at most T (`cosam:T`); `None` when
/// fewer than two such methods ran.
fn iteration_chart(summaries: &[Summary]) -> Option<Result<String, String>> {
    let prefix = if summaries
        .iter()
        .any(|s| s.method.starts_with("cosam-fixed:"))
    {
        "cosam-fixed:"
    } else {
        "cosam:"
    };
    let mut lines: BTreeMap<String, Vec<(u32, f64)>> = BTreeMap::new();
    for s in summaries {
        if let (Some(t), true) = (iteration_of(&s.method, prefix), s.dice_mean.is_finite()) {
            lines
                .entry(format!("{}/{}", s.task, s.domain))
                .or_default()
                .push((t, s.dice_mean));
        }
    }
    let max_t = lines.values().flatten().map(|p| p.0).max()?;
    if max_t == 0 {
        return None;
    }
    let mut svg = String::new();
    let result = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "mean Dice vs loop rounds T (0 = coarse)",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(40)
            .right_y_label_area_size(10)
            .build_cartesian_2d(0.0..f64::from(max_t) + 0.2, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(max_t as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("T")
            .y_desc("Dice")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (domain, mut points)) in lines.into_iter().enumerate() {
            points.sort_by_key(|p| p.0);
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|&(t, d)| (f64::from(t), d)),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(domain)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], colour));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    })();
    Some(result.map(|()| svg))
}

mod erased {
    /// Serialises any serde value to pretty JSON (never fails for plain data).
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        }
    }
}

/// The summary as a Markdown document: `header`, then [`markdown_table`].
pub fn markdown(header: &str, summaries: &[Summary]) -> String {
    format!("{header}\n\n{}", markdown_table(summaries))
}

/// The summary table, one row per domain and method.
pub fn markdown_table(summaries: &[Summary]) -> String {
    let mut md = String::from(
        "| task | domain | method | n | Dice mean | std | 95% CI | HD95 median (mm) | NSD@tol mean | empty pred | failed |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let _ = writeln!(
            md,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.task,
            s.domain,
            if s.synthetic { " (synthetic)" } else { "" },
            s.method,
            s.n,
            if s.dice_mean.is_finite() {
                format!("{:.3}", s.dice_mean)
            } else {
                "n/a".into()
            },
            s.dice_std.map_or("n/a".into(), |v| format!("{v:.3}")),
            s.dice_ci95
                .map_or("n/a".into(), |(a, b)| format!("{a:.3}-{b:.3}")),
            s.hd95_median_mm.map_or("n/a".into(), |v| if v.is_finite() {
                format!("{v:.1}")
            } else {
                "inf".into()
            }),
            s.nsd_mean.map_or("n/a".into(), |v| format!("{v:.3}")),
            s.empty_predictions,
            s.failed
        );
    }
    md
}

/// Grouped bars of mean Dice: one group per domain, one bar per method.
fn bar_chart(summaries: &[Summary]) -> Result<String, String> {
    let mut domains: Vec<String> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    for s in summaries {
        let d = format!("{}/{}", s.task, s.domain);
        if !domains.contains(&d) {
            domains.push(d);
        }
        if !methods.contains(&s.method) {
            methods.push(s.method.clone());
        }
    }
    let mut svg = String::new();
    {
        let width = (120 + 60 * domains.len().max(1) * methods.len().max(1)).min(4000) as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let groups = domains.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("mean Dice per domain", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(140)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..groups, 0.0..1.0)
            .map_err(|e| e.to_string())?;
        let names = domains.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(domains.len().max(1) * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.01 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("Dice")
            .draw()
            .map_err(|e| e.to_string())?;
        let width_each = 0.8 / methods.len().max(1) as f64;
        for (mi, method) in methods.iter().enumerate() {
            let colour = Palette99::pick(mi).to_rgba();
            let bars = summaries
                .iter()
                .filter(|s| &s.method == method)
                .filter_map(|s| {
                    let d = domains
                        .iter()
                        .position(|d| *d == format!("{}/{}", s.task, s.domain))?
                        as f64;
                    let x0 = d + 0.1 + mi as f64 * width_each;
                    let v = if s.dice_mean.is_finite() {
                        s.dice_mean
                    } else {
                        0.0
                    };
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width_each * 0.9, v)],
                        colour.filled(),
                    ))
                });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(method.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(domain: &str, method: &str, dice: f64) -> Row {
        Row {
            case: format!("{domain}/c"),
            task: "t".into(),
            domain: domain.into(),
            synthetic: false,
            label_kind: String::new(),
            structure: "s".into(),
            method: method.into(),
            status: "ok".into(),
            error: None,
            dice: Some(dice),
            iou: None,
            hd_mm: None,
            hd95_mm: Some(1.0),
            assd_mm: None,
            nsd: Some(0.5),
            pred_voxels: 1,
            ref_voxels: 1,
            seconds: 0.0,
            quality: None,
        }
    }

    #[test]
    fn review_auroc_counts_pairs_and_ties() {
        let scored = |dice: f64, q: f64| Row {
            quality: Some(q),
            ..row("d", "cosam:4", dice)
        };
        // bad cases (Dice < 0.8) score 0.2 and 0.6, good ones 0.6 and 0.9: of the four
        // bad-good pairs, three rank the bad case lower (one of them a tie)
        let rows = [
            scored(0.5, 0.2),
            scored(0.7, 0.6),
            scored(0.9, 0.6),
            scored(0.95, 0.9),
            row("d", "gt-box", 0.9),
        ];
        let r = review_flag(&rows, 0.8, 0.5);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].n, r[0].bad), (4, 2));
        assert!((r[0].auroc.unwrap() - 3.5 / 4.0).abs() < 1e-12);
        assert_eq!((r[0].flagged_bad, r[0].flagged_good), (1, 0));
    }

    #[test]
    fn summary_by_hand() {
        let rows = vec![row("a", "m", 0.5), row("a", "m", 0.7), row("b", "m", 0.9)];
        let s = aggregate(&rows);
        assert_eq!(s.len(), 2);
        assert!((s[0].dice_mean - 0.6).abs() < 1e-12);
        assert!((s[0].dice_std.unwrap() - 0.1414213562).abs() < 1e-9);
        let (lo, hi) = s[0].dice_ci95.unwrap();
        assert!(
            (0.5..=0.6).contains(&lo) && (0.6..=0.7).contains(&hi),
            "{lo} {hi}"
        );
        assert_eq!(s[1].n, 1);
        assert!(s[1].dice_std.is_none() && s[1].dice_ci95.is_none());
    }

    #[test]
    fn bootstrap_is_deterministic() {
        let v = [0.1, 0.4, 0.35, 0.8, 0.9];
        assert_eq!(bootstrap_ci(&v), bootstrap_ci(&v));
        assert!(bootstrap_ci(&[1.0]).is_none());
    }

    #[test]
    fn reports_are_written_with_an_svg_chart() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            row("a", "full-box", 0.5),
            row("a", "gt-box", 0.9),
            row("b", "gt-box", 0.8),
        ];
        let files = write_reports(dir.path(), "# test", &rows, &aggregate(&rows)).unwrap();
        assert_eq!(files.len(), 5);
        let svg = std::fs::read_to_string(dir.path().join("dice_by_domain.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<rect"));
        let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(
            md.contains("| t | a | gt-box | 1 | 0.900 | n/a | n/a | 1.0 | 0.500 | 0 | 0 |"),
            "{md}"
        );
    }
}
