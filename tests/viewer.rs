//! What a viewer needs from the library: click refinement through the previous
//! logits, embeddings cached as bytes, an embed on one thread while another thread
//! predicts, and a cancelled embed. The demo CT slice and its liver box throughout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cosam::model::{CancelToken, ModelError, Provider};
use cosam::{BoxXyxy, EmbeddedSlice, Error, Point, PointLabel, Prompts, Segmenter};
use ndarray::Array2;

use crate::util::{demo, int8_segmenter, openvino_required_or_present, segmenter, segmenter_on};

/// The liver box of case ct_liver in data/demo/cases.json.
const LIVER_BOX: [f64; 4] = [102.0, 194.0, 283.0, 379.0];

fn ct_slice() -> cosam::Volume {
    cosam::io::read(&demo("ct_abdomen_slice.dcm")).unwrap()
}

fn liver_box() -> Prompts {
    Prompts::from_box(BoxXyxy::new(LIVER_BOX[0], LIVER_BOX[1], LIVER_BOX[2], LIVER_BOX[3]).unwrap())
}

fn embedded(seg: &Segmenter) -> EmbeddedSlice {
    seg.embed_slice(&ct_slice(), 0).unwrap()
}

#[test]
fn a_click_refines_the_previous_mask_through_its_logits() {
    let seg = segmenter();
    let slice = embedded(seg);
    let first = seg.predict(&slice, &liver_box(), None).unwrap();
    assert_eq!(first.logits.dim(), (256, 256));
    assert_eq!(first.mask.dim(), (512, 512));
    // The mask is the logits upsampled: the model-frame foreground covers the same
    // fraction of the (square) slice as the mask, within the upsampling's rounding.
    let frame_fraction = first.logits.iter().filter(|&&v| v > 0.0).count() as f64 / 65536.0;
    let mask_fraction = first.mask.area() as f64 / (512.0 * 512.0);
    assert!(
        (frame_fraction - mask_fraction).abs() < 0.005,
        "{frame_fraction} vs {mask_fraction}"
    );

    // A negative click inside the box, with and without the previous logits.
    let mut click = liver_box();
    click.points.push(Point {
        x: 150.0,
        y: 300.0,
        label: PointLabel::Negative,
    });
    let refined = seg
        .predict(&slice, &click, Some(first.logits.view()))
        .unwrap();
    let without = seg.predict(&slice, &click, None).unwrap();
    // The library passes the logits to the decoder as its mask prompt, unchanged.
    let direct = seg
        .model()
        .decoder
        .predict(
            slice.embedding().unwrap(),
            &click.to_model(slice.transform()),
            Some(first.logits.view()),
        )
        .unwrap();
    assert_eq!(refined.logits, direct.logits);
    let changed = refined
        .logits
        .iter()
        .zip(&without.logits)
        .filter(|(a, b)| (*a - *b).abs() > 1e-3)
        .count();
    println!(
        "refine: {} px before, {} px after the click ({} px without the mask prompt); {changed} logits depend on the mask prompt",
        first.mask.area(),
        refined.mask.area(),
        without.mask.area()
    );
    assert!(
        changed > 1000,
        "the mask prompt changed only {changed} logits"
    );
    assert!(refined.mask.area() > 1000);
}

#[test]
fn a_mask_prompt_of_the_wrong_shape_or_with_nan_is_a_prompt_error() {
    let seg = segmenter();
    let slice = embedded(seg);
    let small = Array2::<f32>::zeros((64, 64));
    let err = seg
        .predict(&slice, &liver_box(), Some(small.view()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Prompt(_)) && err.to_string().contains("64x64"),
        "{err}"
    );
    let mut nan = Array2::<f32>::zeros((256, 256));
    nan[[3, 4]] = f32::NAN;
    let err = seg
        .predict(&slice, &liver_box(), Some(nan.view()))
        .unwrap_err();
    assert!(err.to_string().contains("not finite"), "{err}");
}

#[test]
fn embedding_bytes_round_trip_to_identical_predictions() {
    let seg = segmenter();
    let slice = embedded(seg);
    let bytes = slice.to_bytes();
    assert_eq!(bytes.len(), 93 + 4 * 256 * 64 * 64);
    let back = EmbeddedSlice::from_bytes(&bytes).unwrap();
    assert_eq!(back.transform(), slice.transform());
    assert_eq!(back.encoder_sha256(), seg.encoder_sha256());
    assert_eq!(
        back.embedding().unwrap().tensor(),
        slice.embedding().unwrap().tensor()
    );
    let a = seg.predict(&slice, &liver_box(), None).unwrap();
    let b = seg.predict(&back, &liver_box(), None).unwrap();
    assert_eq!(a.logits, b.logits);
    assert_eq!(a.mask, b.mask);

    let reason = |bytes: &[u8]| match EmbeddedSlice::from_bytes(bytes) {
        Err(e @ ModelError::EmbeddingBytes { .. }) => e.to_string(),
        other => panic!("expected EmbeddingBytes, got {other:?}"),
    };
    assert!(reason(&bytes[..10]).contains("shorter"));
    assert!(reason(&bytes[..bytes.len() - 1]).contains("bytes of embedding"));
    let mut wrong = bytes.clone();
    wrong[0] = b'X';
    assert!(reason(&wrong).contains("signature"));
    let mut wrong = bytes.clone();
    wrong[8] = 9;
    assert!(reason(&wrong).contains("version 9"));
    let mut wrong = bytes.clone();
    wrong[76..84].copy_from_slice(&0u64.to_le_bytes());
    assert!(reason(&wrong).contains("rows 0"));
}

#[test]
fn an_embedding_of_another_encoder_is_refused() {
    let int8 = int8_segmenter();
    let bytes = embedded(int8).to_bytes();
    let slice = EmbeddedSlice::from_bytes(&bytes).unwrap();
    let err = segmenter().predict(&slice, &liver_box(), None).unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::EncoderMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("embed the slice again"), "{err}");
}

#[test]
fn pixels_in_memory_embed_like_the_file() {
    let seg = segmenter();
    let volume = ct_slice();
    let pixels = volume
        .voxels()
        .index_axis(ndarray::Axis(0), 0)
        .index_axis(ndarray::Axis(2), 0)
        .to_owned();
    assert_eq!(cosam::Modality::guess(pixels.view()), cosam::Modality::Ct);
    let from_pixels = seg
        .embed_pixels(pixels.view(), None, volume.window(), None)
        .unwrap();
    let from_file = embedded(seg);
    let a = seg.predict(&from_pixels, &liver_box(), None).unwrap();
    let b = seg.predict(&from_file, &liver_box(), None).unwrap();
    assert_eq!(a.mask, b.mask);
    let mut bad = pixels.clone();
    bad[[0, 0]] = f32::INFINITY;
    let err = seg.embed_pixels(bad.view(), None, None, None).unwrap_err();
    assert!(err.to_string().contains("not all finite"), "{err}");
}

#[test]
fn the_decoder_runs_while_another_thread_embeds() {
    let seg = segmenter();
    let volume = ct_slice();
    let cached = embedded(seg);
    let embedding_done = AtomicBool::new(false);
    let predicted_meanwhile = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..3 {
                seg.embed_slice(&volume, 0).unwrap();
            }
            embedding_done.store(true, Ordering::SeqCst);
        });
        while !embedding_done.load(Ordering::SeqCst) {
            seg.predict(&cached, &liver_box(), None).unwrap();
            if !embedding_done.load(Ordering::SeqCst) {
                predicted_meanwhile.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let n = predicted_meanwhile.load(Ordering::SeqCst);
    println!("{n} predictions finished while three embeds ran");
    assert!(n >= 3, "only {n} predictions ran during the embeds");
}

/// On the CPU provider, which checks the token between nodes: OpenVINO runs the encoder
/// as one node, so there a cancelled embed returns Cancelled only when it completes
/// (`a_cancelled_openvino_embed_returns_cancelled`).
#[test]
fn a_cancelled_embed_stops_with_cancelled() {
    let seg = segmenter_on(Provider::Cpu);
    let volume = ct_slice();
    let map = seg.intensity_map(&volume).unwrap();
    let token = CancelToken::new().unwrap();
    token.cancel();
    let err = seg
        .embed_slice_cancellable(&volume, 0, &map, &token)
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::Cancelled { .. })),
        "{err}"
    );
    assert!(!err.is_setup());

    // Cancelled while it runs: it returns long before an embed's time.
    let started = std::time::Instant::now();
    let full = {
        seg.embed_slice_with(&volume, 0, &map).unwrap();
        started.elapsed()
    };
    let token = CancelToken::new().unwrap();
    let started = std::time::Instant::now();
    let result = std::thread::scope(|scope| {
        let run = scope.spawn(|| seg.embed_slice_cancellable(&volume, 0, &map, &token));
        std::thread::sleep(full / 10);
        token.cancel();
        run.join().unwrap()
    });
    let took = started.elapsed();
    println!(
        "embed {full:?}; cancelled after {:?}, returned after {took:?}",
        full / 10
    );
    assert!(
        matches!(result, Err(Error::Model(ModelError::Cancelled { .. }))),
        "{result:?}"
    );
    assert!(
        took < full.mul_f64(0.7),
        "cancel took {took:?} of an embed's {full:?}"
    );
    // A fresh token embeds normally.
    let token = CancelToken::new().unwrap();
    assert!(seg
        .embed_slice_cancellable(&volume, 0, &map, &token)
        .is_ok());
}

#[test]
fn prompt_free_on_one_slice_matches_the_volume_loop() {
    let seg = segmenter();
    let heads = abdomen_heads(seg);
    let err = heads.structure_named("heart").unwrap_err();
    assert!(err.to_string().contains("liver"), "{err}");
    let liver = heads.structure_named("liver").unwrap();
    let volume = ct_slice();
    let one = seg
        .predict_prompt_free(&embedded(seg), &heads, liver, None)
        .unwrap();
    let options =
        cosam::correct::CorrectOptions::default().with_error_threshold(heads.info.error_threshold);
    let whole = seg
        .segment_volume_prompt_free(&volume, &heads, liver, &options, None, |_| {})
        .unwrap();
    assert_eq!(
        one.prediction.mask.0,
        whole.segmentation.mask.index_axis(ndarray::Axis(0), 0)
    );
    assert_eq!(one.quality, whole.quality);
    println!(
        "prompt-free liver: {} px, quality {:.3}, {} rounds",
        one.prediction.mask.area(),
        one.quality.score,
        one.trace.len()
    );
    assert!(one.prediction.mask.area() > 1000);
}

#[test]
fn every_structure_in_one_walk_matches_each_structure_alone() {
    let seg = segmenter();
    let heads = abdomen_heads(seg);
    let volume = cosam::io::read(&demo("ct_abdomen.nii.gz")).unwrap();
    let options =
        cosam::correct::CorrectOptions::default().with_error_threshold(heads.info.error_threshold);
    let all: Vec<usize> = (0..heads.info.structures.len()).collect();
    assert!(
        all.len() >= 2,
        "the abdomen heads segment several structures"
    );
    // three slices through the liver, kidneys and spleen of the 30-slice demo CT
    let slices = 20..=22;
    let mut visited = Vec::new();
    let together = seg
        .segment_volume_structures(&volume, &heads, &all, &options, Some(slices.clone()), |z| {
            visited.push(z)
        })
        .unwrap();
    // the progress callback sees each slice once, not once per structure
    assert_eq!(visited, slices.clone().collect::<Vec<_>>());
    assert_eq!(together.len(), all.len());
    let mut foreground = 0;
    for (&k, joint) in all.iter().zip(&together) {
        let alone = seg
            .segment_volume_prompt_free(&volume, &heads, k, &options, Some(slices.clone()), |_| {})
            .unwrap();
        assert_eq!(
            joint.segmentation.mask, alone.segmentation.mask,
            "structure {k}"
        );
        assert_eq!(joint.quality, alone.quality, "structure {k}");
        assert_eq!(joint.traces.len(), alone.traces.len(), "structure {k}");
        foreground += joint.segmentation.voxel_count();
    }
    assert!(
        foreground > 1000,
        "the demo CT shows organs: {foreground} voxels"
    );
}

/// The shipped abdomen heads.
fn abdomen_heads(seg: &Segmenter) -> cosam::model::TaskHeads {
    seg.load_heads(&cosam::model::HeadsSource::Task("abdomen".into()))
        .unwrap_or_else(|e| panic!("shipped abdomen heads: {e}"))
}

#[test]
fn a_cancelled_openvino_embed_returns_cancelled() {
    if !openvino_required_or_present("a_cancelled_openvino_embed_returns_cancelled") {
        return;
    }
    let seg = segmenter_on(Provider::OpenVino);
    let volume = ct_slice();
    let map = seg.intensity_map(&volume).unwrap();
    let token = CancelToken::new().unwrap();
    let result = std::thread::scope(|scope| {
        let run = scope.spawn(|| seg.embed_slice_cancellable(&volume, 0, &map, &token));
        std::thread::sleep(std::time::Duration::from_millis(50));
        token.cancel();
        run.join().unwrap()
    });
    assert!(
        matches!(result, Err(Error::Model(ModelError::Cancelled { .. }))),
        "{result:?}"
    );
}
