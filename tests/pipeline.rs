//! The model path end to end: parity with PyTorch and Dice on the demo cases.

use cosam::model::{EncoderPrecision, ModelPrompts, Provider};
use cosam::{BoxXyxy, Prompts, Segmenter};
use ndarray::{s, Array2, ArrayD, Axis};
use serde_json::Value;

use crate::util::{
    demo, fixture, int8_segmenter, openvino_required_or_present, read_mask_png, read_npy_f32,
    segmenter, segmenter_on,
};

/// The export's parity fixture: ONNX Runtime from Rust must reproduce PyTorch's logits
/// (the encoder on the default provider: OpenVINO where fetched).
#[test]
fn decoder_logits_match_pytorch_within_1e3_and_flip_no_pixel() {
    parity(segmenter());
}

/// The same with the encoder on ONNX Runtime's CPU provider.
#[test]
fn decoder_logits_match_pytorch_on_the_cpu_provider() {
    parity(segmenter_on(Provider::Cpu));
}

/// The same with the encoder on OpenVINO (skipped where it is not fetched, unless
/// `COSAM_TEST_OPENVINO=1`).
#[test]
fn decoder_logits_match_pytorch_through_openvino() {
    if openvino_required_or_present("decoder_logits_match_pytorch_through_openvino") {
        let seg = segmenter_on(Provider::OpenVino);
        assert_eq!(seg.model().provider(), Provider::OpenVino);
        parity(seg);
    }
}

fn parity(seg: &Segmenter) {
    let dir = fixture("parity");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().unwrap();
    assert!(cases.len() >= 4, "parity fixture has {} cases", cases.len());
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let volume = cosam::io::read(&dir.join(case["image"].as_str().unwrap())).unwrap();
        let slice = seg.embed_slice(&volume, 0).unwrap();
        let embedding = slice.embedding().expect("parity image is not constant");
        let prompts = ModelPrompts {
            coords: case["point_coords"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32])
                .collect(),
            labels: case["point_labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_f64().unwrap() as f32)
                .collect(),
        };
        let mask_input: Option<Array2<f32>> = case["mask_input"]
            .as_str()
            .map(|m| read_mask_png(&dir.join(m)).mapv(f32::from));
        let out = seg
            .model()
            .decoder
            .predict(embedding, &prompts, mask_input.as_ref().map(|m| m.view()))
            .unwrap();
        let (shape, expected) = read_npy_f32(&dir.join(case["logits"].as_str().unwrap()));
        assert_eq!(shape, vec![256, 256]);
        let mut worst = 0.0f32;
        let mut flipped = 0;
        for (a, b) in out.logits.iter().zip(&expected) {
            worst = worst.max((a - b).abs());
            flipped += usize::from((*a > 0.0) != (*b > 0.0));
        }
        let iou_diff = (out.iou - case["iou"].as_f64().unwrap() as f32).abs();
        println!("parity {id} ({}): max |logit diff| {worst:.2e}, flipped {flipped}, |iou diff| {iou_diff:.1e}", seg.model().provider());
        assert!(worst <= 1e-3, "{id}: max |logit diff| {worst}");
        assert_eq!(flipped, 0, "{id}: {flipped} mask pixels flipped");
        assert!(iou_diff <= 1e-3, "{id}: iou differs by {iou_diff}");
    }
}

/// One demo case's box-prompted mask beside its reference (the case's slices only).
struct DemoMask {
    id: String,
    predicted: ArrayD<u8>,
    reference: ArrayD<u8>,
    min_dice: f64,
}

/// Segments every demo case with its box.
fn demo_masks(seg: &Segmenter) -> Vec<DemoMask> {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(demo("cases.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let volume = cosam::io::read(&demo(case["input"].as_str().unwrap())).unwrap();
        let b: Vec<f64> = case["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let prompts = Prompts::from_box(BoxXyxy::new(b[0], b[1], b[2], b[3]).unwrap());
        let range = case["slices"]
            .as_array()
            .map(|r| r[0].as_u64().unwrap() as usize..=r[1].as_u64().unwrap() as usize);
        let result = seg
            .segment_volume(&volume, &prompts, range.clone(), |_| {})
            .unwrap();
        let reference_path = demo(case["reference"].as_str().unwrap());
        let (predicted, reference) = if reference_path.to_string_lossy().ends_with(".nii.gz") {
            let r = range.clone().unwrap();
            let reference = cosam::io::read(&reference_path).unwrap();
            let reference = reference
                .voxels()
                .index_axis(Axis(3), 0)
                .mapv(|v| u8::from(v > 0.0));
            (
                result
                    .mask
                    .slice(s![*r.start()..=*r.end(), .., ..])
                    .to_owned()
                    .into_dyn(),
                reference
                    .slice(s![*r.start()..=*r.end(), .., ..])
                    .to_owned()
                    .into_dyn(),
            )
        } else {
            (
                result.mask.index_axis(Axis(0), 0).to_owned().into_dyn(),
                read_mask_png(&reference_path).into_dyn(),
            )
        };
        println!("{id}: predicted IoU {:.3}", result.mean_iou().unwrap());
        out.push(DemoMask {
            id: id.to_string(),
            predicted,
            reference,
            min_dice: case["min_dice"].as_f64().unwrap(),
        });
    }
    out
}

/// Each case's Dice against its reference must reach the case's floor.
fn assert_dice_floors(masks: &[DemoMask], encoder: &str) {
    let organs = masks.iter().filter(|m| m.min_dice >= 0.80).count();
    assert!(
        organs >= 4,
        "at least four demo cases must be held to Dice 0.80"
    );
    let mut low = Vec::new();
    for m in masks {
        let dice = cosam::metrics::dice(&m.predicted, &m.reference).unwrap();
        println!("dice {} ({encoder} encoder): {dice:.3}", m.id);
        if dice < m.min_dice {
            low.push((m.id.clone(), dice, m.min_dice));
        }
    }
    assert!(low.is_empty(), "Dice below the case's floor: {low:?}");
}

/// Box-prompted segmentation of every demo case against its reference mask.
#[test]
fn demo_cases_reach_their_dice_floor_with_a_box() {
    assert_dice_floors(&demo_masks(segmenter()), "fp32");
}

/// The opt-in int8 encoder: the same floors, and masks close to the fp32 encoder's.
#[test]
fn int8_encoder_reaches_the_floors_and_agrees_with_fp32() {
    let int8 = int8_segmenter();
    assert_eq!(int8.model().encoder_precision(), EncoderPrecision::Int8);
    let masks = demo_masks(int8);
    assert_dice_floors(&masks, "int8");
    for (q, f) in masks.iter().zip(demo_masks(segmenter())) {
        let agreement = cosam::metrics::dice(&q.predicted, &f.predicted).unwrap();
        println!("dice {} int8 vs fp32 mask: {agreement:.3}", q.id);
        assert!(agreement >= 0.95, "{}: int8 vs fp32 Dice {agreement}", q.id);
    }
}

/// A gamma curve after the intensity mapping (`export-training --gamma`, test-time
/// augmentation studies) reaches the encoder: the embedding changes, the intensity map is
/// the plain one bent, and a box still finds the same liver.
#[test]
fn gamma_changes_what_the_encoder_sees_and_not_the_anatomy() {
    use cosam::{ModelConfig, PreprocessOptions, SegmenterOptions};
    let bent = Segmenter::new(
        SegmenterOptions::default()
            .with_model(ModelConfig::lite_medsam().with_encoder(EncoderPrecision::Fp32))
            .with_preprocess(PreprocessOptions::default().with_gamma(1.5)),
    )
    .unwrap();
    let volume = cosam::io::read(&demo("mr_abdomen.png")).unwrap();
    assert_eq!(
        bent.intensity_map(&volume).unwrap(),
        segmenter().intensity_map(&volume).unwrap().with_gamma(1.5)
    );
    let (plain_slice, bent_slice) = (
        segmenter().embed_slice(&volume, 0).unwrap(),
        bent.embed_slice(&volume, 0).unwrap(),
    );
    let (a, b) = (
        plain_slice.embedding().unwrap().tensor(),
        bent_slice.embedding().unwrap().tensor(),
    );
    let change = (a - b).mapv(f32::abs).mean().unwrap() / a.mapv(f32::abs).mean().unwrap();
    assert!(change > 0.01, "relative embedding change {change}");
    let prompts = Prompts::from_box(BoxXyxy::new(10.0, 15.0, 62.0, 74.0).unwrap());
    let plain_mask = segmenter()
        .predict(&plain_slice, &prompts, None)
        .unwrap()
        .mask;
    let bent_mask = bent.predict(&bent_slice, &prompts, None).unwrap().mask;
    let dice = cosam::metrics::dice(&plain_mask.0, &bent_mask.0).unwrap();
    assert!(dice > 0.8, "box-prompted Dice between contrasts {dice}");
}

/// `--cleanup` in the library: the segmenter's masks are its plain masks cleaned up in
/// the documented order (largest component, then hole filling), and a volumetric step is
/// refused at setup, since masks are post-processed in chunks of slices.
#[test]
fn cleanup_applies_to_every_mask_the_segmenter_returns() {
    use cosam::post::{Cleanup, Connectivity, CpuMaskOps, MaskOps};
    use cosam::{ModelConfig, SegmenterOptions};
    let cleanup: Cleanup = "holes,largest".parse().unwrap();
    let model = ModelConfig::lite_medsam().with_encoder(EncoderPrecision::Fp32);
    let cleaned = Segmenter::new(
        SegmenterOptions::default()
            .with_model(model.clone())
            .with_cleanup(cleanup),
    )
    .unwrap();
    let volume = cosam::io::read(&demo("mr_abdomen.png")).unwrap();
    let prompts = Prompts::from_box(BoxXyxy::new(10.0, 15.0, 62.0, 74.0).unwrap());
    let plain = segmenter()
        .predict(
            &segmenter().embed_slice(&volume, 0).unwrap(),
            &prompts,
            None,
        )
        .unwrap();
    let got = cleaned
        .predict(&cleaned.embed_slice(&volume, 0).unwrap(), &prompts, None)
        .unwrap();
    let ops = CpuMaskOps::new();
    let largest = ops
        .keep_largest(
            plain.mask.0.view().insert_axis(Axis(0)),
            Connectivity::Planar,
        )
        .unwrap();
    let expected = ops.fill_holes(largest.view()).unwrap();
    assert!(got.mask.area() > 1000);
    assert_eq!(got.mask.0, expected.index_axis(Axis(0), 0));
    let volumetric = Cleanup::default().with_keep_largest(Connectivity::Volumetric);
    let err = Segmenter::new(
        SegmenterOptions::default()
            .with_model(model)
            .with_cleanup(volumetric),
    )
    .unwrap_err();
    assert!(err.to_string().contains("volumetric"), "{err}");
}
