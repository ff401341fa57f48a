//! A known-answer check run once when the GPU context opens: every kernel family on a
//! small fixed input, compared with the CPU path. Drivers can compile correct WGSL into
//! wrong code (Mesa's llvmpipe over GL turns whole columns of the distance transform into
//! "no feature", where the same shaders on lavapipe over Vulkan are exact), and a wrong
//! mask is worse than a slow one, so an adapter that fails is not used.

use ndarray::Array3;

use super::super::cpu::CpuMaskOps;
use super::super::{floats_agree, Border, Connectivity, MaskOps, Peak, PostError};
use crate::io::Spacing;
use crate::preprocess::{Transform, MODEL_SIZE};

/// One operation's result on the probe input.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    Mask(Array3<u8>),
    Labels(Array3<u32>),
    Values(Array3<f32>),
    Peaks(Vec<Peak>),
}

/// Deterministic pseudo-random numbers in [0, 1) (xorshift64*), so the probe needs no
/// dependency and is the same on every run.
fn unit_noise(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Every probed operation's answer from `ops`, named. The mask has isolated pixels,
/// components of several sizes, holes and foreground on the slice edges; the spacing is
/// anisotropic so the distance pass's float arithmetic is exercised too.
pub(super) fn answers(ops: &dyn MaskOps) -> Result<Vec<(&'static str, Answer)>, PostError> {
    let mut noise = unit_noise(0x9E37_79B9_7F4A_7C15);
    let mask = Array3::from_shape_fn((2, 23, 29), |_| u8::from(noise() < 0.45));
    let field = Array3::from_shape_fn((2, 23, 29), |_| noise());
    let logits = Array3::from_shape_fn((1, MODEL_SIZE, MODEL_SIZE), |_| noise() * 8.0 - 4.0);
    let transform = Transform::new(23, 29);
    let spacing = Spacing {
        column_mm: 0.75,
        row_mm: 1.5,
        slice_mm: 5.0,
    };
    let m = mask.view();
    Ok(vec![
        (
            "upsampling",
            Answer::Values(ops.upsample(logits.view(), &transform)?),
        ),
        (
            "thresholding",
            Answer::Mask(ops.upsample_threshold(logits.view(), &transform, 0.0)?),
        ),
        (
            "distance transform",
            Answer::Values(ops.distance(m, spacing, Border::Background)?),
        ),
        (
            "distance transform without a border",
            Answer::Values(ops.distance(m, spacing, Border::Ignore)?),
        ),
        ("opening", Answer::Mask(ops.open(m, 1)?)),
        ("closing", Answer::Mask(ops.close(m, 2)?)),
        ("hole filling", Answer::Mask(ops.fill_holes(m)?)),
        (
            "labelling",
            Answer::Labels(ops.label(m, Connectivity::Volumetric)?),
        ),
        (
            "largest component",
            Answer::Mask(ops.keep_largest(m, Connectivity::Planar)?),
        ),
        (
            "small-component removal",
            Answer::Mask(ops.remove_small(m, Connectivity::Planar, 4)?),
        ),
        ("top-k", Answer::Peaks(ops.top_k(field.view(), 7)?)),
    ])
}

/// The first operation whose answers differ: masks, labels and peak positions exactly,
/// values by [`floats_agree`], as the agreement tests demand.
pub(super) fn first_difference(
    found: &[(&'static str, Answer)],
    expected: &[(&'static str, Answer)],
) -> Option<&'static str> {
    found
        .iter()
        .zip(expected)
        .find(|((_, a), (_, b))| match (a, b) {
            (Answer::Values(a), Answer::Values(b)) => {
                a.dim() != b.dim() || a.iter().zip(b).any(|(&x, &y)| !floats_agree(y, x))
            }
            (Answer::Peaks(a), Answer::Peaks(b)) => {
                a.len() != b.len()
                    || a.iter().zip(b).any(|(x, y)| {
                        (x.slice, x.row, x.column) != (y.slice, y.row, y.column)
                            || !floats_agree(y.value, x.value)
                    })
            }
            (a, b) => a != b,
        })
        .map(|((name, _), _)| *name)
}

/// `None` when `gpu` gives the CPU path's answers, else the first operation that differs.
pub(super) fn check(gpu: &dyn MaskOps) -> Result<Option<&'static str>, PostError> {
    let expected = answers(&CpuMaskOps::new())?;
    Ok(first_difference(&answers(gpu)?, &expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::FLOAT_TOLERANCE;

    #[test]
    fn a_changed_answer_is_named() {
        let cpu = CpuMaskOps::new();
        let expected = answers(&cpu).unwrap();
        assert_eq!(first_difference(&answers(&cpu).unwrap(), &expected), None);
        // the probe input must exercise what it checks: a distance field with values, a
        // mask with both states, peaks
        for (name, answer) in &expected {
            match answer {
                Answer::Mask(m) => assert!(
                    m.iter().any(|&v| v == 0) && m.iter().any(|&v| v == 1),
                    "{name}"
                ),
                Answer::Values(v) => assert!(v.iter().any(|&x| x > 1.0), "{name}"),
                Answer::Labels(l) => assert!(l.iter().filter(|&&x| x > 0).count() > 10, "{name}"),
                Answer::Peaks(p) => assert_eq!(p.len(), 7, "{name}"),
            }
        }
        for (i, name) in [(2, "distance transform"), (4, "opening"), (10, "top-k")] {
            let mut found = expected.clone();
            match &mut found[i].1 {
                Answer::Values(v) => v[[1, 5, 7]] += 0.5,
                Answer::Mask(m) => m[[0, 0, 5]] ^= 1,
                Answer::Peaks(p) => p[3].row += 1,
                Answer::Labels(l) => l[[0, 0, 0]] += 1,
            }
            assert_eq!(first_difference(&found, &expected), Some(name));
        }
        // a value within the float tolerance is the same answer
        let mut found = expected.clone();
        if let Answer::Values(v) = &mut found[2].1 {
            v.mapv_inplace(|x| x * (1.0 + FLOAT_TOLERANCE / 4.0));
        }
        assert_eq!(first_difference(&found, &expected), None);
    }
}
