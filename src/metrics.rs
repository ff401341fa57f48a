//! Overlap metrics between binary masks. Depends on nothing above it.
//!
//! Conventions: masks are non-zero = foreground; Dice and IoU of two empty masks are
//! undefined and returned as `None` (never silently 0 or 1).

use ndarray::{ArrayBase, Data, Dimension, Zip};

/// Foreground counts of a pair of masks.
fn counts<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> (usize, usize, usize)
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let (mut both, mut only_a, mut only_b) = (0, 0, 0);
    Zip::from(a)
        .and(b)
        .for_each(|&x, &y| match (x != 0, y != 0) {
            (true, true) => both += 1,
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            _ => {}
        });
    (both, only_a, only_b)
}

/// Dice similarity coefficient, `2|A∩B| / (|A| + |B|)`; `None` when both are empty.
///
/// # Panics
/// When the shapes differ.
pub fn dice<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> Option<f64>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let (both, only_a, only_b) = counts(a, b);
    let denom = 2 * both + only_a + only_b;
    (denom > 0).then(|| 2.0 * both as f64 / denom as f64)
}

/// Intersection over union, `|A∩B| / |A∪B|`; `None` when both are empty.
///
/// # Panics
/// When the shapes differ.
pub fn iou<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> Option<f64>
where
    S1: Data<Elem = u8>,
    S2: Data<Elem = u8>,
    D: Dimension,
{
    let (both, only_a, only_b) = counts(a, b);
    let union = both + only_a + only_b;
    (union > 0).then(|| both as f64 / union as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr2;

    #[test]
    fn dice_of_identical_masks_is_one() {
        let a = arr2(&[[0u8, 1], [1, 1]]);
        assert_eq!(dice(&a, &a), Some(1.0));
    }

    #[test]
    fn dice_and_iou_by_hand() {
        // |A| = 3, |B| = 2, |A∩B| = 1: Dice 2/5, IoU 1/4
        let a = arr2(&[[1u8, 1], [1, 0]]);
        let b = arr2(&[[1u8, 0], [0, 1]]);
        assert_eq!(dice(&a, &b), Some(0.4));
        assert_eq!(iou(&a, &b), Some(0.25));
    }

    #[test]
    fn two_empty_masks_have_no_dice() {
        let a = arr2(&[[0u8, 0]]);
        assert_eq!(dice(&a, &a), None);
        assert_eq!(iou(&a, &a), None);
    }
}
