//! Mask post-processing: from 256x256 logits in the model frame to a binary mask on the
//! source grid. Must not import `pipeline` or the CLI.
//!
//! Steps, as in upstream LiteMedSAM: crop the padded logits to the resized slice, resize
//! bilinearly (half-pixel centres, no antialiasing) to the source size, threshold.

use ndarray::{s, Array2, ArrayView2};

use crate::io::Mask;
use crate::preprocess::{resize, Kernel, Transform, MODEL_SIZE};

/// Logit above which a pixel is foreground (probability 0.5).
pub const THRESHOLD_LOGIT: f32 = 0.0;

/// Crops `logits` (256x256, model frame) to the slice, resizes them to the source grid
/// and thresholds at `threshold_logit`.
///
/// # Panics
/// When `logits` is not 256x256 (the decoder checks its output shape).
pub fn logits_to_mask(
    logits: ArrayView2<f32>,
    transform: &Transform,
    threshold_logit: f32,
) -> Mask {
    let source = logits_to_source(logits, transform);
    Mask(source.mapv(|v| u8::from(v > threshold_logit)))
}

/// Crops and resizes logits onto the source grid, without thresholding.
pub fn logits_to_source(logits: ArrayView2<f32>, transform: &Transform) -> Array2<f32> {
    assert_eq!(
        logits.dim(),
        (MODEL_SIZE, MODEL_SIZE),
        "decoder logits are 256x256"
    );
    let cropped = logits.slice(s![..transform.scaled_rows, ..transform.scaled_cols]);
    resize(
        cropped,
        transform.source_rows,
        transform.source_cols,
        Kernel::Bilinear,
        Kernel::Bilinear,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_cropped_before_resizing() {
        // a 512x256 slice fills the left half of the model frame; logits positive there
        // and strongly negative in the padding must give an all-foreground mask
        let t = Transform::new(512, 256);
        let logits = Array2::from_shape_fn((256, 256), |(_, c)| if c < 128 { 5.0 } else { -50.0 });
        let mask = logits_to_mask(logits.view(), &t, THRESHOLD_LOGIT);
        assert_eq!(mask.dim(), (512, 256));
        assert_eq!(mask.area(), 512 * 256);
    }

    #[test]
    fn square_box_of_logits_maps_to_the_same_region_of_the_source() {
        let t = Transform::new(512, 512);
        let logits = Array2::from_shape_fn((256, 256), |(r, c)| {
            if (64..128).contains(&r) && (32..96).contains(&c) {
                10.0
            } else {
                -10.0
            }
        });
        let mask = logits_to_mask(logits.view(), &t, THRESHOLD_LOGIT);
        assert_eq!(mask.area(), 128 * 128);
        assert_eq!(mask.0[[128, 64]], 1);
        assert_eq!(mask.0[[127, 64]], 0);
    }
}
