//! Batches split over processes (`segment --shard`, `--resume`, `report merge`): the
//! shards together write exactly what one process writes, a killed shard resumes to the
//! same bytes, and the merge names what is missing. Real models, real demo inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{cosam, cosam_command, demo, root, text};

fn spawn(args: &[&str]) -> Child {
    cosam_command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the cosam binary starts")
}

/// The demo cases: four 2D inputs and five slices of a CT volume, with boxes.
fn cases() -> String {
    text(&demo("cases.json"))
}

/// `segment --cases demo` into `out` with `extra` flags (one thread: the shards of the
/// tests share two cores).
fn segment_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["segment", "--cases", &cases(), "-o", &text(out)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--threads", "1"].iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run_ok(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = cosam(&refs);
    assert_eq!(
        o.status.code(),
        Some(0),
        "cosam {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn merge(dir: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
    let mut args = vec!["report", "merge", dir.to_str().unwrap()];
    args.extend(extra);
    let o = cosam(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let report = std::fs::read_to_string(dir.join("report.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (o.status.code(), report, stderr)
}

/// Every output file below `dir` (not the reports), relative path -> bytes.
fn outputs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel == "reports" || rel == "report.json" {
                continue;
            }
            assert!(
                !rel.contains(".partial"),
                "half-written file left: {}",
                p.display()
            );
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_same_outputs(a: &Path, b: &Path) {
    let (oa, ob) = (outputs(a), outputs(b));
    assert_eq!(
        oa.keys().collect::<Vec<_>>(),
        ob.keys().collect::<Vec<_>>(),
        "different files"
    );
    assert!(oa.len() >= 10, "too few outputs: {:?}", oa.keys());
    for (name, bytes) in &oa {
        assert!(&ob[name] == bytes, "{name} differs");
    }
}

/// report.json entries by key, without times and with output paths relative to `dir`.
fn entries(report: &Value, dir: &Path) -> BTreeMap<String, Value> {
    report["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.as_object_mut().unwrap().remove("seconds");
            e.as_object_mut().unwrap().remove("resumed");
            let json = serde_json::to_string(&e)
                .unwrap()
                .replace(&text(dir), "OUT");
            (
                e["key"].as_str().unwrap().to_string(),
                serde_json::from_str(&json).unwrap(),
            )
        })
        .collect()
}

fn report_of(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// One process's outputs and report.json, made once for the tests of this file.
fn single_run(tmp: &Path) -> PathBuf {
    let one = tmp.join("one");
    run_ok(&segment_args(&one, &[]));
    one
}

/// Three shards started together, plus a second process on shard 1 (a replaced pod),
/// write the same masks and, merged, the same report entries as one process.
#[test]
fn three_parallel_shards_write_what_one_process_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let one = single_run(tmp.path());
    let three = tmp.path().join("three");
    let mut children: Vec<(String, Child)> = Vec::new();
    for shard in ["0/3", "1/3", "2/3", "1/3"] {
        let args = segment_args(&three, &["--shard", shard, "--resume"]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        children.push((shard.to_string(), spawn(&refs)));
    }
    for (shard, child) in children {
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "shard {shard}: {stderr}");
        assert!(
            stderr.contains(&format!("shard {shard} (--shard {shard})")),
            "{stderr}"
        );
    }
    let (code, merged, stderr) = merge(&three, &["--expect-shards", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(merged["complete"], true);
    assert_eq!(merged["inputs_total"], 5);
    assert_eq!(merged["shard_runs"].as_array().unwrap().len(), 3);
    assert_same_outputs(&one, &three);
    assert_eq!(entries(&report_of(&one), &one), entries(&merged, &three));
    // each shard took its share of the sorted keys
    for k in 0..3 {
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(three.join(format!("reports/shard-{k}-of-3.json"))).unwrap(),
        )
        .unwrap();
        let keys = r["shard"]["keys"].as_array().unwrap();
        let mine: Vec<&Value> = keys.iter().skip(k).step_by(3).collect();
        let got: Vec<&Value> = r["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["key"])
            .collect();
        assert_eq!(mine.len(), got.len());
        assert!(mine.iter().all(|k| got.contains(k)), "{mine:?} vs {got:?}");
    }
}

fn wait_for(path: &Path, child: &mut Child) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the shard ended before {} appeared",
            path.display()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A shard killed with SIGKILL in the middle of a volume leaves the batch incomplete (the
/// merge says what is missing and exits 3); `--resume` then does only what is missing,
/// recomputes an output that no longer matches its sidecar, and the merged outputs are
/// byte-identical to an uninterrupted run.
#[test]
fn a_killed_shard_resumes_to_the_outputs_of_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference");
    for shard in ["0/2", "1/2"] {
        run_ok(&segment_args(&reference, &["--shard", shard]));
    }
    assert_eq!(merge(&reference, &[]).0, Some(0));

    let out = tmp.path().join("killed");
    run_ok(&segment_args(&out, &["--shard", "0/2", "--resume"]));
    // shard 1 of 2 segments ct_spleen (2D), then five slices of the CT volume
    let args = segment_args(&out, &["--shard", "1/2", "--resume"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = spawn(&refs);
    wait_for(&out.join("reports/done/ct_spleen.json"), &mut child);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!out.join("reports/shard-1-of-2.json").exists());
    assert!(!out.join("reports/done/ct_liver_volume.json").exists());

    let (code, merged, stderr) = merge(&out, &["--expect-shards", "2"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(merged["complete"], false);
    assert_eq!(merged["missing_shards"], serde_json::json!([1]));
    let missing = merged["missing_inputs"].as_array().unwrap();
    assert!(
        missing.contains(&Value::from("ct_abdomen.nii.gz")),
        "{missing:?}"
    );
    assert!(stderr.contains("shard 1/2 has not reported"), "{stderr}");

    // resume: ct_spleen is reused, the volume is segmented
    let o = run_ok(&args);
    let shard1: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("reports/shard-1-of-2.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        shard1["shard"]["resumed"],
        1,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(shard1["ok"], 2);

    // a mask that no longer matches its sidecar (cut short, same name) is recomputed
    let brain = out.join("brain_mask.png");
    let bytes = std::fs::read(&brain).unwrap();
    std::fs::write(&brain, &bytes[..bytes.len() / 2]).unwrap();
    run_ok(&segment_args(&out, &["--shard", "0/2", "--resume"]));
    let shard0: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("reports/shard-0-of-2.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shard0["shard"]["resumed"], 2);
    assert_eq!(std::fs::read(&brain).unwrap(), bytes);

    // other options recompute
    let changed = segment_args(
        &out,
        &["--shard", "0/2", "--resume", "--review-threshold", "0.3"],
    );
    let o = run_ok(&changed);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("already done"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // ... and back: the first options' outputs were overwritten, so again recomputed
    run_ok(&segment_args(&out, &["--shard", "0/2", "--resume"]));

    let (code, merged, stderr) = merge(&out, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_same_outputs(&reference, &out);
    assert_eq!(
        entries(&report_of(&reference), &reference),
        entries(&merged, &out)
    );
}

/// Shard reports of different batches (other inputs) are not merged: exit 2.
#[test]
fn merge_refuses_reports_of_different_batches_and_names_missing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("reports")).unwrap();
    let report = |k: usize, keys: &[&str], digest: &str| {
        serde_json::json!({
            "shard": {"index": k, "count": 3, "source": "--shard", "engine_job_id": null,
                      "host": null, "keys_total": keys.len(), "keys_sha256": digest,
                      "keys": keys, "assigned": 1, "resumed": 0},
            "ok": 1, "failed": 0,
            "inputs": [{"key": keys[k], "id": keys[k], "status": "ok"}],
        })
    };
    let write = |k: usize, v: &Value| {
        std::fs::write(
            dir.join(format!("reports/shard-{k}-of-3.json")),
            serde_json::to_vec(v).unwrap(),
        )
        .unwrap()
    };
    write(0, &report(0, &["a", "b", "c"], "abc"));
    let (code, merged, stderr) = merge(dir, &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert_eq!(merged["missing_shards"], serde_json::json!([1, 2]));
    assert_eq!(merged["missing_inputs"], serde_json::json!(["b", "c"]));
    write(1, &report(1, &["a", "x", "c"], "axc"));
    let (code, _, stderr) = merge(dir, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("different input lists"), "{stderr}");
}

/// A real Slurm: tests/slurm/run.sh starts a single-node cluster (munge, slurmctld,
/// slurmd), submits examples/slurm/segment-array.sbatch as a 3-task array with
/// `--shard auto --resume` on a folder of demo images plus a DICOM slice, requeues one
/// finished task (`scontrol requeue`: same index, everything reused), and merges. The
/// masks and the merged entries equal one process's. Skips (with the reason) when not
/// root or without slurm-wlm/munge, unless COSAM_TEST_SLURM is set (CI sets it).
#[test]
fn slurm_array_job_writes_what_one_process_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for name in [
        "brain_t1.png",
        "mr_abdomen.png",
        "brain_ref.png",
        "mr_liver_ref.png",
    ] {
        std::fs::copy(demo(name), input.join(name)).unwrap();
    }
    let dicom = text(&demo("ct_abdomen_slice.dcm"));
    let flags = ["-i", &dicom, "--box", "10,15,62,74"];
    let one = tmp.path().join("one");
    let (input_text, one_text) = (text(&input), text(&one));
    let mut args = vec![
        "segment",
        "-i",
        &input_text,
        "-o",
        &one_text,
        "--threads",
        "1",
    ];
    args.extend(flags);
    let reference: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_ok(&reference);

    let out = tmp.path().join("slurm");
    let o = Command::new("bash")
        .arg(root().join("tests/slurm/run.sh"))
        .args([
            env!("CARGO_BIN_EXE_cosam"),
            &text(&tmp.path().join("cluster")),
            &text(&out),
            &text(&input),
        ])
        .args(flags)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    if o.status.code() == Some(77) {
        eprintln!("{stderr}");
        return;
    }
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    for k in 0..3 {
        assert!(
            stderr.contains(&format!("shard {k}/3 (Slurm: SLURM_ARRAY_TASK_ID={k}")),
            "{stderr}"
        );
    }
    // task 1, requeued after it finished, reused all it had written
    assert!(stderr.contains("already done)"), "{stderr}");
    let merged = report_of(&out);
    assert_eq!(merged["complete"], true);
    assert_eq!(merged["inputs_total"], 5);
    assert_eq!(merged["shard_runs"][1]["resumed"], 2, "{merged}");
    // no --threads: SLURM_CPUS_PER_TASK (--cpus-per-task=1) sets them, not the cores
    let shard0: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("reports/shard-0-of-3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shard0["threads"], 1, "{shard0}");
    for run in merged["shard_runs"].as_array().unwrap() {
        let job = run["engine_job_id"].as_str().unwrap_or_default();
        assert!(job.contains('_'), "Slurm ARRAYJOB_TASK id expected: {run}");
    }
    assert_same_outputs(&one, &out);
    assert_eq!(entries(&report_of(&one), &one), entries(&merged, &out));
}

/// Each series of a DICOM folder is its own input, keyed by SeriesInstanceUID: two shards
/// take one series each and write the files (ids included) one process writes.
#[test]
fn the_series_of_one_dicom_folder_are_split_by_uid() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = text(&crate::util::fixture("io/series/two_series"));
    let args = |out: &Path, shard: Option<&str>| {
        let mut a: Vec<String> = ["segment", "-i", &folder, "-o", &text(out)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--box", "10,10,60,60", "--threads", "1"].map(String::from));
        if let Some(s) = shard {
            a.extend(["--shard".to_string(), s.to_string()]);
        }
        a
    };
    let one = tmp.path().join("one");
    run_ok(&args(&one, None));
    let two = tmp.path().join("two");
    let mut keys = Vec::new();
    for k in 0..2 {
        run_ok(&args(&two, Some(&format!("{k}/2"))));
        let r: Value = serde_json::from_str(
            &std::fs::read_to_string(two.join(format!("reports/shard-{k}-of-2.json"))).unwrap(),
        )
        .unwrap();
        let inputs = r["inputs"].as_array().unwrap();
        assert_eq!(inputs.len(), 1, "{r}");
        assert_eq!(inputs[0]["key"], inputs[0]["series_uid"]);
        keys.push(inputs[0]["key"].clone());
    }
    assert_ne!(keys[0], keys[1]);
    assert_eq!(merge(&two, &[]).0, Some(0));
    let (a, b) = (outputs(&one), outputs(&two));
    assert_eq!(a, b);
    assert!(
        a.contains_key("two_series-series2_mask.nii.gz"),
        "{:?}",
        a.keys()
    );
    assert_eq!(
        entries(&report_of(&one), &one),
        entries(&report_of(&two), &two)
    );
}
