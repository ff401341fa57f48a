//! Point, box and mask prompts. Public prompts are in source pixels of the slice given to
//! the segmenter (`x` = column, `y` = row, as shown by a viewer); [`ModelPrompts`] are in
//! the 256x256 model input.
//!
//! Coordinates are pixel indices. `cosam segment` takes them in the file's own pixels of a
//! stored slice (`x` the first storage index of a NIfTI slice or the DICOM column, `y` the
//! second index or the DICOM row) and maps them into the model frame
//! ([`crate::io::reorient`]) with [`crate::io::PixelMap`] and [`Prompts::mapped`].

use crate::preprocess::Transform;

/// A prompt that does not fit the image or the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// x1 < x0 or y1 < y0, or a coordinate is not finite.
    #[error("box {x0},{y0},{x1},{y1} is inverted or not finite (need x0 <= x1 and y0 <= y1)")]
    InvalidBox {
        /// Left.
        x0: f64,
        /// Top.
        y0: f64,
        /// Right.
        x1: f64,
        /// Bottom.
        y1: f64,
    },
    /// A point label other than 0 (negative) or 1 (positive).
    #[error("point label {0} is not 0 (background) or 1 (foreground)")]
    InvalidLabel(i64),
    /// A box or point lies outside the image.
    #[error("{what} lies outside the {cols}x{rows} image (x in 0..={cols}, y in 0..={rows})")]
    OutsideImage {
        /// The prompt, as given.
        what: String,
        /// Image columns.
        cols: usize,
        /// Image rows.
        rows: usize,
    },
    /// A mask prompt that is not 256x256 finite model-frame logits.
    #[error("mask prompt {reason}; pass the 256x256 logits of an earlier prediction")]
    InvalidMaskInput {
        /// What is wrong with it.
        reason: String,
    },
    /// Neither a point nor a box was given.
    #[error("no prompt given: pass a box (--box) or points (--point)")]
    NoPrompt,
    /// A slice index past the end of the volume.
    #[error("slice {slice} is out of range (the volume has {slices} slices)")]
    SliceOutOfRange {
        /// The requested slice.
        slice: usize,
        /// Slices in the volume.
        slices: usize,
    },
}

/// Whether a point marks the structure or the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PointLabel {
    /// Background (label 0).
    Negative,
    /// Foreground (label 1).
    Positive,
}

impl TryFrom<i64> for PointLabel {
    type Error = PromptError;

    fn try_from(v: i64) -> Result<Self, PromptError> {
        match v {
            0 => Ok(PointLabel::Negative),
            1 => Ok(PointLabel::Positive),
            other => Err(PromptError::InvalidLabel(other)),
        }
    }
}

/// A click in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Point {
    /// Column, pixels.
    pub x: f64,
    /// Row, pixels.
    pub y: f64,
    /// Foreground or background.
    pub label: PointLabel,
}

/// A box `[x0, y0, x1, y1]` in source pixels, corners included.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BoxXyxy {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl BoxXyxy {
    /// A box from its top-left and bottom-right corners.
    ///
    /// # Errors
    /// [`PromptError::InvalidBox`] when inverted or not finite.
    pub fn new(x0: f64, y0: f64, x1: f64, y1: f64) -> Result<BoxXyxy, PromptError> {
        let finite = [x0, y0, x1, y1].iter().all(|v| v.is_finite());
        if finite && x0 <= x1 && y0 <= y1 {
            Ok(BoxXyxy { x0, y0, x1, y1 })
        } else {
            Err(PromptError::InvalidBox { x0, y0, x1, y1 })
        }
    }

    /// `[x0, y0, x1, y1]`.
    pub fn corners(&self) -> [f64; 4] {
        [self.x0, self.y0, self.x1, self.y1]
    }
}

/// Prompts for one slice, in source pixels.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Prompts {
    /// Clicks.
    pub points: Vec<Point>,
    /// At most one box.
    #[serde(rename = "box")]
    pub bbox: Option<BoxXyxy>,
}

impl Prompts {
    /// Prompts holding only a box.
    pub fn from_box(bbox: BoxXyxy) -> Prompts {
        Prompts {
            points: Vec::new(),
            bbox: Some(bbox),
        }
    }

    /// The same prompts with every coordinate passed through `f` (`(x, y)` to `(x, y)`),
    /// such as a map from a file's stored slice into the model frame. A box stays the box
    /// of its mapped corners, so flips and transposes keep it a valid box.
    pub fn mapped(&self, f: impl Fn(f64, f64) -> (f64, f64)) -> Prompts {
        let points = self
            .points
            .iter()
            .map(|p| {
                let (x, y) = f(p.x, p.y);
                Point { x, y, ..*p }
            })
            .collect();
        let bbox = self.bbox.map(|b| {
            let (ax, ay) = f(b.x0, b.y0);
            let (bx, by) = f(b.x1, b.y1);
            BoxXyxy {
                x0: ax.min(bx),
                y0: ay.min(by),
                x1: ax.max(bx),
                y1: ay.max(by),
            }
        });
        Prompts { points, bbox }
    }

    /// True when there is neither a point nor a box.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.bbox.is_none()
    }

    /// Checks that every prompt lies on a `rows x cols` image (coordinates up to and
    /// including the far edge are accepted).
    ///
    /// # Errors
    /// [`PromptError::OutsideImage`] naming the first prompt that does not.
    pub fn check_inside(&self, rows: usize, cols: usize) -> Result<(), PromptError> {
        let inside =
            |x: f64, y: f64| (0.0..=cols as f64).contains(&x) && (0.0..=rows as f64).contains(&y);
        if let Some(b) = &self.bbox {
            if !inside(b.x0, b.y0) || !inside(b.x1, b.y1) {
                return Err(PromptError::OutsideImage {
                    what: format!("box {},{},{},{}", b.x0, b.y0, b.x1, b.y1),
                    cols,
                    rows,
                });
            }
        }
        for p in &self.points {
            if !inside(p.x, p.y) {
                return Err(PromptError::OutsideImage {
                    what: format!("point {},{}", p.x, p.y),
                    cols,
                    rows,
                });
            }
        }
        Ok(())
    }

    /// The decoder's point list in the model frame: points, then SAM's padding point when
    /// there is no box, then the box corners (labels 2 and 3).
    pub fn to_model(&self, transform: &Transform) -> ModelPrompts {
        let mut coords = Vec::with_capacity(self.points.len() + 2);
        let mut labels = Vec::with_capacity(self.points.len() + 2);
        for p in &self.points {
            let (x, y) = transform.to_model(p.x, p.y);
            coords.push([x as f32, y as f32]);
            labels.push(match p.label {
                PointLabel::Negative => 0.0,
                PointLabel::Positive => 1.0,
            });
        }
        match &self.bbox {
            Some(b) => {
                let (x0, y0) = transform.to_model(b.x0, b.y0);
                let (x1, y1) = transform.to_model(b.x1, b.y1);
                coords.extend([[x0 as f32, y0 as f32], [x1 as f32, y1 as f32]]);
                labels.extend([2.0, 3.0]);
            }
            None if !self.points.is_empty() => {
                coords.push([0.0, 0.0]);
                labels.push(-1.0);
            }
            None => {}
        }
        ModelPrompts { coords, labels }
    }
}

/// Decoder inputs `point_coords [1, N, 2]` and `point_labels [1, N]`, model frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPrompts {
    /// `(x, y)` in model pixels.
    pub coords: Vec<[f32; 2]>,
    /// 1 positive, 0 negative, 2/3 box corners, -1 padding.
    pub labels: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverted_box_is_refused() {
        assert!(BoxXyxy::new(10.0, 0.0, 5.0, 5.0).is_err());
        assert!(BoxXyxy::new(0.0, 0.0, f64::NAN, 5.0).is_err());
        assert!(BoxXyxy::new(0.0, 0.0, 0.0, 0.0).is_ok());
    }

    #[test]
    fn labels_other_than_0_and_1_are_refused() {
        assert_eq!(PointLabel::try_from(1).unwrap(), PointLabel::Positive);
        assert_eq!(PointLabel::try_from(2), Err(PromptError::InvalidLabel(2)));
    }

    #[test]
    fn box_scales_into_model_frame_without_padding_point() {
        let t = Transform::new(512, 512);
        let p = Prompts::from_box(BoxXyxy::new(10.0, 20.0, 100.0, 200.0).unwrap());
        let m = p.to_model(&t);
        assert_eq!(m.coords, vec![[5.0, 10.0], [50.0, 100.0]]);
        assert_eq!(m.labels, vec![2.0, 3.0]);
    }

    #[test]
    fn points_alone_get_a_padding_point() {
        let t = Transform::new(256, 256);
        let p = Prompts {
            points: vec![Point {
                x: 3.0,
                y: 4.0,
                label: PointLabel::Negative,
            }],
            bbox: None,
        };
        let m = p.to_model(&t);
        assert_eq!(m.labels, vec![0.0, -1.0]);
        assert_eq!(m.coords[0], [3.0, 4.0]);
    }

    #[test]
    fn mapped_boxes_stay_boxes() {
        let p = Prompts {
            points: vec![Point {
                x: 1.0,
                y: 2.0,
                label: PointLabel::Positive,
            }],
            bbox: Some(BoxXyxy::new(10.0, 20.0, 30.0, 50.0).unwrap()),
        };
        // a 180 degree turn of a 100x100 slice
        let m = p.mapped(|x, y| (99.0 - x, 99.0 - y));
        assert_eq!(m.bbox.unwrap().corners(), [69.0, 49.0, 89.0, 79.0]);
        assert_eq!((m.points[0].x, m.points[0].y), (98.0, 97.0));
        assert_eq!(m.points[0].label, PointLabel::Positive);
    }

    #[test]
    fn prompts_outside_the_image_are_named() {
        let p = Prompts::from_box(BoxXyxy::new(0.0, 0.0, 600.0, 10.0).unwrap());
        let e = p.check_inside(512, 512).unwrap_err();
        assert!(e.to_string().contains("box 0,0,600,10"), "{e}");
        assert!(p.check_inside(512, 600).is_ok());
    }
}
