//! Execution providers: OpenVINO against the CPU provider, and the CPU fallback.

use cosam::model::{EncoderPrecision, Provider};

use crate::util::{
    cosam, demo, fixture, openvino_fetched, openvino_required_or_present, report, root,
    segmenter_on, text,
};

/// The same fp32 graph on OpenVINO and on ONNX Runtime's CPU provider, in one runtime:
/// embeddings of the parity images agree to 1e-4 (3e-6 measured).
#[test]
fn openvino_embeddings_match_the_cpu_provider() {
    if !openvino_required_or_present("openvino_embeddings_match_the_cpu_provider") {
        return;
    }
    let ov = segmenter_on(Provider::OpenVino);
    let cpu = segmenter_on(Provider::Cpu);
    assert_eq!(ov.model().provider(), Provider::OpenVino);
    assert_eq!(cpu.model().provider(), Provider::Cpu);
    assert_eq!(ov.model().encoder_precision(), EncoderPrecision::Fp32);
    for image in ["brain.png", "mr_liver.png"] {
        let volume = cosam::io::read(&fixture("parity").join(image)).unwrap();
        let a = ov.embed_slice(&volume, 0).unwrap();
        let b = cpu.embed_slice(&volume, 0).unwrap();
        let (a, b) = (a.embedding().unwrap(), b.embedding().unwrap());
        let worst = a
            .tensor()
            .iter()
            .zip(b.tensor())
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("{image}: max |embedding diff| OpenVINO vs CPU {worst:.2e}");
        assert!(worst <= 1e-4, "{image}: {worst}");
    }
}

fn segment_mr(extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = vec![
        "segment".to_string(),
        "-i".into(),
        text(&demo("mr_abdomen.png")),
        "-o".into(),
        text(&tmp.path().join("o")),
        "--box".into(),
        "20,15,90,75".into(),
        "--threads".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    (cosam(&args), tmp)
}

/// `--provider openvino` on a runtime without the provider: exit 2, naming the missing
/// file and the fix.
#[test]
fn openvino_without_its_library_is_a_setup_error_with_the_fix() {
    let plain = text(&root().join("third_party/onnxruntime"));
    let (o, _tmp) = segment_mr(&["--provider", "openvino", "--ort-lib", &plain]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("no OpenVINO execution provider")
            && e.contains("libonnxruntime_providers_openvino.so")
            && e.contains("scripts/fetch-onnxruntime")
            && e.contains("--provider cpu"),
        "{e}"
    );
}

/// `--provider auto` on a runtime without OpenVINO runs on the CPU provider, says so in
/// one line, and report.json names the provider that ran.
#[test]
fn auto_falls_back_to_the_cpu_provider_with_a_notice() {
    let plain = text(&root().join("third_party/onnxruntime"));
    let (o, tmp) = segment_mr(&["--ort-lib", &plain]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    let notices: Vec<&str> = e.lines().filter(|l| l.contains("notice:")).collect();
    assert_eq!(notices.len(), 1, "{e}");
    assert!(
        notices[0].contains("CPU provider") && notices[0].contains("fetch-onnxruntime"),
        "{e}"
    );
    let r = report(&tmp.path().join("o"));
    assert_eq!(r["provider"], "cpu");
    assert_eq!(r["encoder"], EncoderPrecision::for_this_cpu().name());
}

/// The default where OpenVINO is fetched: the fp32 encoder on OpenVINO, no notice, and the
/// same mask as the CPU provider.
#[test]
fn default_runs_openvino_where_fetched_and_writes_the_cpu_providers_mask() {
    if !openvino_required_or_present("default_runs_openvino_where_fetched") {
        return;
    }
    let (o, tmp) = segment_mr(&[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(!e.contains("notice:"), "{e}");
    let r = report(&tmp.path().join("o"));
    assert_eq!(r["provider"], "openvino");
    assert_eq!(r["encoder"], "fp32");
    assert!(
        r["onnxruntime"]
            .as_str()
            .unwrap()
            .contains("onnxruntime-openvino"),
        "{r}"
    );
    let (o, cpu_tmp) = segment_mr(&["--provider", "cpu", "--encoder", "fp32"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(report(&cpu_tmp.path().join("o"))["provider"], "cpu");
    let a = std::fs::read(tmp.path().join("o/mr_abdomen_mask.png")).unwrap();
    let b = std::fs::read(cpu_tmp.path().join("o/mr_abdomen_mask.png")).unwrap();
    assert!(a == b, "OpenVINO and CPU masks differ");
}

/// OpenVINO missing from the search path entirely is reported with every place looked in.
#[test]
fn openvino_not_found_lists_the_places_and_the_fix() {
    let e = cosam::model::ModelError::OpenVinoNotFound {
        tried: vec![
            root().join("third_party/onnxruntime-openvino/libonnxruntime_providers_openvino.so")
        ],
    };
    let m = e.to_string();
    assert!(
        m.contains("third_party/onnxruntime-openvino") && m.contains("scripts/fetch-onnxruntime"),
        "{m}"
    );
    assert!(e.is_setup());
    let _ = openvino_fetched();
}

/// Processes started together on an empty OpenVINO cache (shards of one batch): each one
/// runs OpenVINO, none reads another's half-written compiled model and falls back to the
/// CPU provider, and all write the same mask. Before the cache lock, 1 to 2 of 8 processes
/// started 0.1 s apart fell back in most trials.
#[test]
fn processes_sharing_a_cold_openvino_cache_all_run_openvino() {
    if !openvino_required_or_present("processes_sharing_a_cold_openvino_cache") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("openvino-cache");
    let children: Vec<_> = (0..10)
        .map(|i| {
            let child = crate::util::cosam_command(&[
                "segment",
                "-i",
                &text(&demo("brain_t1.png")),
                "--box",
                "20,23,158,189",
                "--threads",
                "1",
                "-o",
                &text(&tmp.path().join(format!("o{i}"))),
            ])
            .env("COSAM_OPENVINO_CACHE", &cache)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            child
        })
        .collect();
    let mut masks = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "process {i}: {e}");
        assert!(!e.contains("notice:"), "process {i}: {e}");
        let dir = tmp.path().join(format!("o{i}"));
        assert_eq!(report(&dir)["provider"], "openvino", "process {i}");
        masks.push(std::fs::read(dir.join("brain_t1_mask.png")).unwrap());
    }
    assert!(masks.windows(2).all(|w| w[0] == w[1]), "masks differ");
}

/// An embedding cache shared by runs on both providers hands each its own embeddings:
/// OpenVINO's, looked up after the CPU provider filled the cache, equal OpenVINO's own.
#[test]
fn the_embedding_cache_keeps_the_providers_apart() {
    if !openvino_required_or_present("the_embedding_cache_keeps_the_providers_apart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = cosam::eval::DiskCache::new(dir.path(), 1 << 30).unwrap();
    let volume = cosam::io::read(&fixture("parity").join("mr_liver.png")).unwrap();
    let (cpu, ov) = (
        segmenter_on(Provider::Cpu),
        segmenter_on(Provider::OpenVino),
    );
    let embed = |seg: &cosam::Segmenter, cache: Option<&dyn cosam::pipeline::EmbeddingCache>| {
        let map = seg.intensity_map(&volume).unwrap();
        let slice = seg.embed_slice_cached(&volume, 0, &map, cache).unwrap();
        slice.embedding().unwrap().tensor().to_owned()
    };
    let from_cpu = embed(cpu, Some(&cache));
    let own = embed(ov, None);
    assert!(
        own != from_cpu,
        "the providers' embeddings are identical: nothing to tell apart"
    );
    assert_eq!(embed(ov, Some(&cache)), own);
    assert_eq!(embed(cpu, Some(&cache)), from_cpu);
}
