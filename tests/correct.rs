//! CoSAM heads and the self-correcting loop with the shipped models on real slices.

use cosam::correct::{chosen_round, correct_slice, CorrectOptions};
use cosam::model::{HeadsSource, ModelError};
use cosam::{io, Error, Segmenter, Transform};

use crate::util::{demo, int8_segmenter, root, segmenter};

fn abdomen() -> cosam::model::TaskHeads {
    segmenter()
        .load_heads(&HeadsSource::Task("abdomen".into()))
        .unwrap_or_else(|e| panic!("shipped abdomen heads: {e}"))
}

/// The loop with the shipped abdomen heads on the demo CT slice's liver, embedded by `seg`;
/// with the slice's transform for mapping the result back.
fn correct_demo_liver(
    seg: &Segmenter,
    options: &CorrectOptions,
) -> (cosam::correct::SliceCorrection, Transform) {
    let heads = abdomen();
    let volume = io::read(&demo("ct_abdomen_slice.dcm")).unwrap();
    let embedded = seg.embed_slice(&volume, 0).unwrap();
    let embedding = embedded.embedding().expect("a CT slice with content");
    let liver = heads.structure_index("liver").unwrap();
    let run = correct_slice(
        &seg.loop_models(&heads),
        embedding,
        embedded.transform(),
        liver,
        options,
    )
    .unwrap();
    (run, *embedded.transform())
}

/// The demo CT slice's reference liver mask.
fn liver_reference() -> ndarray::Array2<u8> {
    io::read(&demo("ct_liver_ref.png"))
        .unwrap()
        .voxels()
        .index_axis(ndarray::Axis(3), 0)
        .index_axis(ndarray::Axis(0), 0)
        .mapv(|v| u8::from(v > 0.0))
}

fn dice(a: &ndarray::Array2<u8>, b: &ndarray::Array2<u8>) -> f64 {
    let inter = a
        .iter()
        .zip(b)
        .filter(|(x, y)| **x != 0 && **y != 0)
        .count();
    let total = a.iter().filter(|v| **v != 0).count() + b.iter().filter(|v| **v != 0).count();
    2.0 * inter as f64 / total.max(1) as f64
}

#[test]
fn unknown_task_lists_the_shipped_ones() {
    let err = segmenter()
        .load_heads(&HeadsSource::Task("prostate".into()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::UnknownTask { .. })),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("prostate") && text.contains("abdomen") && text.contains("brain"),
        "{text}"
    );
}

#[test]
fn tampered_heads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("models/heads/abdomen");
    for f in ["heads.json", "decoder.onnx", "error.onnx"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut bytes = std::fs::read(dir.path().join("error.onnx")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(dir.path().join("error.onnx"), bytes).unwrap();
    let err = segmenter()
        .load_heads(&HeadsSource::Dir(dir.path().to_path_buf()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::Checksum { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("error.onnx"), "{err}");
}

/// Heads trained in another model frame (or before the frame existed: no `model_frame`)
/// would see images unlike their training slices; they are refused with the reason.
#[test]
fn heads_of_another_model_frame_are_refused() {
    let src = root().join("models/heads/abdomen");
    let shipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("heads.json")).unwrap()).unwrap();
    assert_eq!(shipped["model_frame"], cosam::io::FRAME_VERSION);
    for frame in [None, Some(0u32), Some(cosam::io::FRAME_VERSION + 1)] {
        let dir = tempfile::tempdir().unwrap();
        for f in ["decoder.onnx", "error.onnx"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        let mut info = shipped.clone();
        match frame {
            Some(v) => info["model_frame"] = v.into(),
            None => {
                info.as_object_mut().unwrap().remove("model_frame");
            }
        }
        std::fs::write(dir.path().join("heads.json"), info.to_string()).unwrap();
        let err = segmenter()
            .load_heads(&HeadsSource::Dir(dir.path().to_path_buf()))
            .unwrap_err();
        assert!(
            matches!(err, Error::Model(ModelError::FrameMismatch { .. })),
            "{err}"
        );
        let found = frame.unwrap_or(0);
        assert!(
            err.to_string()
                .contains(&format!("heads trained in model frame {found}")),
            "{err}"
        );
    }
}

/// The loop on the demo CT slice, prompt-free: it returns the mask with the fewest
/// predicted errors under the stop rule, a full run of every round picks the same one, and
/// the liver it finds overlaps the reference. (This slice's series is in the shipped
/// heads' training data: the Dice is a functional check, not a generalisation figure.)
#[test]
fn loop_on_a_real_slice_follows_the_stop_rule() {
    let options = CorrectOptions::default().with_stop_early(true);
    let (run, t) = correct_demo_liver(segmenter(), &options);
    assert!(run.trace.len() >= 2 && run.trace.len() <= options.max_rounds + 1);
    assert!(run.trace.iter().all(|r| r.error_px.is_some()));
    let counts: Vec<usize> = run.trace.iter().map(|r| r.error_px.unwrap()).collect();
    assert_eq!(
        run.chosen,
        chosen_round(&counts, options.max_rounds, true, false)
    );
    assert_eq!(counts[run.chosen], *counts.iter().min().unwrap());

    let (full, _) = correct_demo_liver(
        segmenter(),
        &options.with_stop_early(false).with_keep_rounds(true),
    );
    assert_eq!(full.maps.len(), options.max_rounds + 1);
    assert_eq!(
        full.chosen, options.max_rounds,
        "fixed T returns the last round"
    );
    assert_eq!(full.logits, full.maps[options.max_rounds]);
    let full_counts: Vec<usize> = full.trace.iter().map(|r| r.error_px.unwrap()).collect();
    assert_eq!(
        &full_counts[..counts.len()],
        &counts[..],
        "rounds are deterministic"
    );
    let picked = chosen_round(&full_counts, options.max_rounds, true, false);
    assert_eq!(picked, run.chosen);
    assert_eq!(full.maps[picked], run.logits);

    let mask = cosam::post::logits_to_mask(run.logits.view(), &t, 0.0).0;
    let reference = liver_reference();
    let d = dice(&mask, &reference);
    println!(
        "prompt-free liver on the demo CT slice: Dice {d:.3}, rounds {:?}, chosen {}",
        counts, run.chosen
    );
    assert!(d > 0.5, "Dice {d}");
}

/// A head made silent (an error threshold no pixel reaches) gives the stop rule no
/// evidence: alone it keeps the coarse mask, with `silent_rounds` it runs the rounds as the
/// fixed T does, and the loop that stops picks what `chosen_round` picks from a full run.
#[test]
fn silent_rounds_run_while_the_error_head_predicts_nothing() {
    let silent = CorrectOptions::default().with_error_threshold(1.0);
    let (strict, _) = correct_demo_liver(segmenter(), &silent);
    assert_eq!(strict.trace[0].error_px, Some(0), "the head is silent");
    assert_eq!(
        strict.chosen, 0,
        "the stop rule alone keeps the coarse mask"
    );

    let options = silent.with_silent_rounds(true);
    let (run, _) = correct_demo_liver(segmenter(), &options);
    let counts: Vec<usize> = run.trace.iter().map(|r| r.error_px.unwrap()).collect();
    assert!(counts.iter().all(|&c| c == 0), "{counts:?}");
    assert_eq!(run.chosen, run.trace.len() - 1);
    assert!(run.chosen >= 1, "at least one round is taken");

    // converged fraction 0: the fixed T then stops only where the stopping loop does
    let (full, _) = correct_demo_liver(
        segmenter(),
        &options
            .with_stop_early(false)
            .with_keep_rounds(true)
            .with_converged_fraction(0.0),
    );
    let full_counts: Vec<usize> = full.trace.iter().map(|r| r.error_px.unwrap()).collect();
    let picked = chosen_round(&full_counts, options.max_rounds, true, true);
    assert_eq!(full.maps[picked], run.logits);
}

/// The heads were trained on fp32 embeddings; with the int8 encoder's embeddings the loop
/// must still find the demo slice's liver and end close to the fp32 encoder's mask.
#[test]
fn loop_with_the_int8_encoder_agrees_with_fp32() {
    let reference = liver_reference();
    let masks: Vec<_> = [segmenter(), int8_segmenter()]
        .into_iter()
        .map(|seg| {
            let (run, t) = correct_demo_liver(seg, &CorrectOptions::default());
            cosam::post::logits_to_mask(run.logits.view(), &t, 0.0).0
        })
        .collect();
    let agreement = dice(&masks[0], &masks[1]);
    let (fp32, int8) = (dice(&masks[0], &reference), dice(&masks[1], &reference));
    println!("prompt-free liver: Dice fp32 {fp32:.3}, int8 {int8:.3}, int8 vs fp32 {agreement:.3}");
    assert!(int8 > 0.5, "int8 Dice {int8}");
    assert!(agreement >= 0.9, "int8 vs fp32 mask Dice {agreement}");
}

/// A coarse mask under `min_coarse_px` is returned as it is: one round in the trace, its
/// predicted errors counted, the same map as the loop's coarse round.
#[test]
fn coarse_mask_under_the_gate_is_not_corrected() {
    let run = |gate: usize| {
        let options = CorrectOptions::default()
            .with_stop_early(false)
            .with_keep_rounds(true)
            .with_min_coarse_px(gate);
        correct_demo_liver(segmenter(), &options).0
    };
    let full = run(0);
    let coarse_px = full.trace[0].area_px;
    assert!(coarse_px > 0 && full.trace.len() == 5);
    let gated = run(coarse_px + 1);
    assert_eq!(gated.trace.len(), 1);
    assert_eq!(gated.chosen, 0);
    assert!(gated.trace[0].error_px.is_some());
    assert_eq!(gated.logits, full.maps[0]);
    // at the coarse mask's own size the loop runs
    assert_eq!(run(coarse_px).trace.len(), 5);
}

/// Once a round gives back the mask it was prompted from, the loop copies the rounds left
/// instead of running them: on every structure of the demo MR volume's slices, masks, IoUs,
/// error counts and the chosen round equal those of running every round, and some rounds
/// were copied (so the shortcut is exercised).
#[test]
fn converged_rounds_are_copied_with_the_results_of_running_them() {
    let seg = segmenter();
    let heads = abdomen();
    let volume = io::read(&demo("mr_abdomen.nii.gz")).unwrap();
    let models = seg.loop_models(&heads);
    let copy = CorrectOptions::default()
        .with_stop_early(false)
        .with_error_threshold(heads.info.error_threshold)
        .with_converged_fraction(0.0)
        .with_keep_rounds(true);
    let run = copy.with_run_converged_rounds(true);
    let mut copied = 0;
    for z in 0..volume.slices() {
        let embedded = seg.embed_slice(&volume, z).unwrap();
        let Some(embedding) = embedded.embedding() else {
            continue;
        };
        for s in 0..heads.info.structures.len() {
            let t = embedded.transform();
            let a = correct_slice(&models, embedding, t, s, &copy).unwrap();
            let b = correct_slice(&models, embedding, t, s, &run).unwrap();
            assert_eq!(a.chosen, b.chosen, "slice {z} structure {s}");
            assert_eq!(a.trace.len(), b.trace.len());
            for (x, y) in a.trace.iter().zip(&b.trace) {
                assert_eq!(
                    (x.round, x.area_px, x.error_px, x.iou),
                    (y.round, y.area_px, y.error_px, y.iou),
                    "slice {z} structure {s}"
                );
            }
            assert!(
                a.maps == b.maps && a.logits == b.logits,
                "slice {z} structure {s}"
            );
            copied += a.trace.iter().filter(|r| r.seconds == 0.0).count();
            assert!(b.trace.iter().all(|r| r.seconds > 0.0));
        }
    }
    assert!(
        copied > 0,
        "no round converged: the shortcut was not exercised"
    );
    println!("{copied} rounds copied");
}

/// On the demo CT volume, the slices where the coarse pass calls a kidney absent (empty
/// mask, every coarse logit below the default `absent_logit`) skip the loop, and running
/// the loop there anyway finds nothing either: the skip saves work without losing voxels.
#[test]
fn slices_called_absent_skip_the_loop_and_the_loop_finds_nothing_there() {
    let seg = segmenter();
    let heads = abdomen();
    let volume = io::read(&demo("ct_abdomen.nii.gz")).unwrap();
    let models = seg.loop_models(&heads);
    let skip = CorrectOptions::default()
        .with_stop_early(false)
        .with_error_threshold(heads.info.error_threshold);
    let run_all = skip.with_absent_logit(None);
    let mut skipped = 0;
    // the kidneys end within the last slices of this crop (the rest is time)
    for z in volume.slices().saturating_sub(12)..volume.slices() {
        let embedded = seg.embed_slice(&volume, z).unwrap();
        let Some(embedding) = embedded.embedding() else {
            continue;
        };
        for name in ["kidney_left", "kidney_right"] {
            let s = heads.structure_index(name).unwrap();
            let t = embedded.transform();
            let a = correct_slice(&models, embedding, t, s, &skip).unwrap();
            if a.trace.len() > 1 {
                continue;
            }
            skipped += 1;
            assert_eq!(a.trace[0].area_px, 0);
            assert_eq!(a.trace[0].error_px, None, "a skipped slice is not checked");
            let b = correct_slice(&models, embedding, t, s, &run_all).unwrap();
            assert_eq!(
                b.trace.len(),
                5,
                "slice {z} {name}: four rounds without the skip"
            );
            assert_eq!(
                b.final_round().area_px,
                0,
                "slice {z} {name}: the loop finds a structure the skip would lose"
            );
        }
    }
    assert!(skipped > 0, "no slice skipped: the rule was not exercised");
    println!("{skipped} slice-structure pairs skipped");
}

/// `cosam::model::calls` counts each completed run per model: one round on the demo CT
/// slice's liver is a coarse pass, an error check, a refinement and a final check. (Other
/// tests of this process run models meanwhile, so the counts can only be lower bounds.)
#[test]
fn model_calls_count_every_run_of_the_loop() {
    let count =
        |calls: &std::collections::BTreeMap<&str, u64>, name| *calls.get(name).unwrap_or(&0);
    let before = cosam::model::calls();
    let (run, _) = correct_demo_liver(segmenter(), &CorrectOptions::default().with_max_rounds(1));
    let after = cosam::model::calls();
    assert!(
        run.trace.len() == 2 && run.trace[1].seconds > 0.0,
        "{:?}",
        run.trace
    );
    assert!(count(&after, "task decoder") >= count(&before, "task decoder") + 2);
    assert!(count(&after, "error decoder") >= count(&before, "error decoder") + 2);
    assert!(count(&after, "encoder") > count(&before, "encoder"));
}

/// `converged_fraction`: a round that changes at most that share of its mask ends the
/// fixed-T loop, and its mask stands for the rounds left (checked, not copied, error count).
/// With a share no round can exceed, four rounds give round 1's mask, as one round does.
#[test]
fn a_round_within_the_converged_fraction_stands_for_the_rounds_left() {
    let fixed = CorrectOptions::default().with_stop_early(false);
    let (one, _) = correct_demo_liver(segmenter(), &fixed.with_max_rounds(1));
    let tolerant = fixed.with_converged_fraction(1e6).with_keep_rounds(true);
    let (four, _) = correct_demo_liver(segmenter(), &tolerant);
    assert_eq!(four.trace.len(), 5);
    assert_eq!(four.chosen, 4);
    assert_eq!(four.logits, one.logits);
    assert_eq!(four.trace[1].error_px, one.trace[1].error_px);
    for r in &four.trace[2..] {
        assert_eq!(r.seconds, 0.0, "round {} was run", r.round);
        assert_eq!(
            (r.area_px, r.error_px),
            (four.trace[1].area_px, four.trace[1].error_px)
        );
    }
}
