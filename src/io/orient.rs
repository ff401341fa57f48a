//! The model frame: how every slice of a volume is laid out before it reaches the model,
//! whatever the file's storage order on disk.
//!
//! Only exact voxel operations are used (axis permutation and reversal, no resampling),
//! so a mask predicted in the model frame maps back to storage order losslessly
//! ([`Reorientation::mask_to_storage`]); the writers always take storage-order masks and
//! the volume as read.
//!
//! The convention ([`FRAME_VERSION`] 1), for all 48 signed axis orders a file can have:
//! - the slice axis is the storage axis closest to the requested anatomical axis, with
//!   the slices in their stored order (so `--slices` indices are the file's own when the
//!   file is stored along that axis);
//! - the in-plane axes follow the radiological display convention: axial rows run
//!   anterior to posterior and columns from the patient's right to left; coronal rows
//!   superior to inferior, columns right to left; sagittal rows superior to inferior,
//!   columns anterior to posterior. A RAS-stored NIfTI is therefore turned by 180 degrees,
//!   an LPS-stored one or a DICOM axial series is already in the frame;
//! - 2D images (PNG, JPEG, TIFF) have no geometry and keep their pixel order.
//!
//! Heads trained in another frame see other images, so `heads.json` records the frame
//! version they were trained in and cosam refuses heads of another version.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use ndarray::{Array3, Array4, Axis};

use super::{Affine, ReadError, Spacing, Volume};

/// The version of the model-frame convention described in the module doc. Version 0 was
/// the storage order of each file (before the frame existed).
pub const FRAME_VERSION: u32 = 1;

/// An anatomical slicing direction. World axes are RAS+ (see [`crate::io`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnatomicalAxis {
    /// Slices perpendicular to the inferior-superior (z) axis.
    #[default]
    Axial,
    /// Slices perpendicular to the posterior-anterior (y) axis.
    Coronal,
    /// Slices perpendicular to the left-right (x) axis.
    Sagittal,
}

impl AnatomicalAxis {
    /// The RAS world axis (0 = x, 1 = y, 2 = z) the slices are perpendicular to.
    pub fn world_axis(self) -> usize {
        match self {
            AnatomicalAxis::Sagittal => 0,
            AnatomicalAxis::Coronal => 1,
            AnatomicalAxis::Axial => 2,
        }
    }

    /// The axis the stored slices of a volume with `affine` are cut along (the nearest
    /// anatomical direction of its slice index axis); `None` for a degenerate affine.
    /// One image can be segmented only in this plane.
    pub fn of_stored_slices(affine: &Affine) -> Option<AnatomicalAxis> {
        let (_, world_of) = world_axes(affine)?;
        Some(match world_of[2] {
            0 => AnatomicalAxis::Sagittal,
            1 => AnatomicalAxis::Coronal,
            _ => AnatomicalAxis::Axial,
        })
    }

    /// World axes of the rows and columns in the display convention.
    fn in_plane(self) -> (usize, usize) {
        match self {
            AnatomicalAxis::Axial => (1, 0),
            AnatomicalAxis::Coronal => (2, 0),
            AnatomicalAxis::Sagittal => (2, 1),
        }
    }
}

impl FromStr for AnatomicalAxis {
    type Err = String;

    /// `axial`, `coronal` or `sagittal`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "axial" | "transverse" => Ok(AnatomicalAxis::Axial),
            "coronal" => Ok(AnatomicalAxis::Coronal),
            "sagittal" => Ok(AnatomicalAxis::Sagittal),
            other => Err(format!(
                "unknown axis '{other}': use axial, coronal or sagittal"
            )),
        }
    }
}

impl fmt::Display for AnatomicalAxis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnatomicalAxis::Axial => "axial",
            AnatomicalAxis::Coronal => "coronal",
            AnatomicalAxis::Sagittal => "sagittal",
        })
    }
}

/// How a reoriented volume's `[slice, row, column]` axes relate to storage order.
///
/// Axis `t` of the reoriented array is storage array axis `perm[t]`, reversed when
/// `flip[t]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorientation {
    perm: [usize; 3],
    flip: [bool; 3],
}

impl Reorientation {
    /// No change.
    pub const IDENTITY: Reorientation = Reorientation {
        perm: [0, 1, 2],
        flip: [false; 3],
    };

    /// True when the reoriented volume is the volume as stored.
    pub fn is_identity(&self) -> bool {
        *self == Reorientation::IDENTITY
    }

    /// The storage array axis (0 slice, 1 row, 2 column) behind each reoriented axis.
    pub fn storage_axes(&self) -> [usize; 3] {
        self.perm
    }

    /// Which reoriented axes run backwards relative to storage.
    pub fn flipped(&self) -> [bool; 3] {
        self.flip
    }

    /// Maps a `[slice, row, column]` array in reoriented order to storage order.
    pub fn mask_to_storage<T: Clone>(&self, mask: &Array3<T>) -> Array3<T> {
        let mut view = mask.view();
        for (t, &f) in self.flip.iter().enumerate() {
            if f {
                view.invert_axis(Axis(t));
            }
        }
        let mut inverse = [0usize; 3];
        for (t, &a) in self.perm.iter().enumerate() {
            inverse[a] = t;
        }
        view.permuted_axes(inverse)
            .as_standard_layout()
            .into_owned()
    }

    /// Maps a `[slice, row, column]` array in storage order to reoriented order.
    pub fn storage_to_reoriented<T: Clone>(&self, mask: &Array3<T>) -> Array3<T> {
        let mut view = mask.view().permuted_axes(self.perm);
        for (t, &f) in self.flip.iter().enumerate() {
            if f {
                view.invert_axis(Axis(t));
            }
        }
        view.as_standard_layout().into_owned()
    }
}

/// A volume in the model frame, with the map back to storage order.
#[derive(Debug, Clone)]
pub struct Reoriented<'a> {
    /// The volume to segment: borrowed when no change was needed.
    pub volume: Cow<'a, Volume>,
    /// How to map its masks back for the writers.
    pub map: Reorientation,
}

impl Reoriented<'_> {
    /// The map from pixel coordinates of a stored slice to the model frame's slice, when
    /// the slices are the file's own (the slice axis was not changed); `None` when the
    /// volume was resliced along another axis, where a stored slice's pixel has no
    /// counterpart in one model-frame slice.
    pub fn pixel_map(&self) -> Option<PixelMap> {
        if self.map.perm[0] != 0 {
            return None;
        }
        let (_, rows, cols, _) = self.volume.voxels().dim();
        // storage axis perm[t] has the size of frame axis t
        let mut storage = [0usize; 3];
        storage[self.map.perm[1]] = rows;
        storage[self.map.perm[2]] = cols;
        Some(PixelMap {
            storage_rows: storage[1],
            storage_cols: storage[2],
            transpose: self.map.perm[1] == 2,
            flip_rows: self.map.flip[1],
            flip_cols: self.map.flip[2],
        })
    }
}

/// Maps pixel coordinates `(x, y)` of a stored slice (`x` the column, the first storage
/// index of a NIfTI slice or the DICOM column; `y` the row) to the same pixel in the model
/// frame's slice, and back. Coordinates are pixel indices, so a reversed axis maps `p` to
/// `n - 1 - p`; the far edge `n`, which prompt checks accept, maps to pixel 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelMap {
    storage_rows: usize,
    storage_cols: usize,
    /// Frame rows come from storage columns.
    transpose: bool,
    flip_rows: bool,
    flip_cols: bool,
}

fn mirror(p: f64, n: usize) -> f64 {
    ((n as f64 - 1.0) - p).max(0.0)
}

impl PixelMap {
    /// Rows and columns of a stored slice: the bounds of the coordinates this map takes.
    pub fn storage_size(&self) -> (usize, usize) {
        (self.storage_rows, self.storage_cols)
    }

    /// Stored-slice `(x, y)` to model-frame `(x, y)`.
    pub fn to_frame(&self, x: f64, y: f64) -> (f64, f64) {
        let (frame_row, row_len, frame_col, col_len) = if self.transpose {
            (x, self.storage_cols, y, self.storage_rows)
        } else {
            (y, self.storage_rows, x, self.storage_cols)
        };
        let row = if self.flip_rows {
            mirror(frame_row, row_len)
        } else {
            frame_row
        };
        let col = if self.flip_cols {
            mirror(frame_col, col_len)
        } else {
            frame_col
        };
        (col, row)
    }

    /// Model-frame `(x, y)` to stored-slice `(x, y)`.
    pub fn to_storage(&self, x: f64, y: f64) -> (f64, f64) {
        let (row_len, col_len) = if self.transpose {
            (self.storage_cols, self.storage_rows)
        } else {
            (self.storage_rows, self.storage_cols)
        };
        let row = if self.flip_rows {
            mirror(y, row_len)
        } else {
            y
        };
        let col = if self.flip_cols {
            mirror(x, col_len)
        } else {
            x
        };
        if self.transpose {
            (row, col)
        } else {
            (col, row)
        }
    }
}

/// Puts `volume` in the model frame for slices along `axis` (see the module doc for the
/// convention). A 2-D image (one slice, no geometry) is returned unchanged for any axis,
/// and so is a volume already in the frame (borrowed, no copy).
///
/// # Errors
/// [`ReadError::Corrupt`] when the volume's affine is degenerate (an index axis with no
/// direction), so no anatomical axis can be found.
///
/// # Example
/// An axial volume (4 slices of 5x6, RAS axes) cut into coronal slices and a mask mapped
/// back to storage order for the writers:
/// ```
/// use cosam::io::{reorient, Affine, AnatomicalAxis, Modality, Spacing, Volume};
/// use ndarray::{Array3, Array4};
///
/// # fn main() -> Result<(), cosam::io::ReadError> {
/// let spacing = Spacing { column_mm: 1.0, row_mm: 1.0, slice_mm: 3.0 };
/// let mut volume = Volume::new(
///     Array4::zeros((4, 5, 6, 1)),
///     spacing,
///     Affine::from_spacing(spacing),
///     Modality::Ct,
///     "synthetic".into(),
/// )?;
/// # let _ = &mut volume;
/// let coronal = reorient(&volume, AnatomicalAxis::Coronal)?;
/// // 5 coronal slices of 4 rows (superior first) by 6 columns
/// assert_eq!(coronal.volume.voxels().dim(), (5, 4, 6, 1));
/// let mask = Array3::<u8>::ones((5, 4, 6));
/// assert_eq!(coronal.map.mask_to_storage(&mask).dim(), (4, 5, 6));
/// # Ok(())
/// # }
/// ```
pub fn reorient(volume: &Volume, axis: AnatomicalAxis) -> Result<Reoriented<'_>, ReadError> {
    if volume.is_2d() {
        return Ok(Reoriented {
            volume: Cow::Borrowed(volume),
            map: Reorientation::IDENTITY,
        });
    }
    let map = plan(volume.affine(), axis).ok_or_else(|| ReadError::Corrupt {
        path: volume.source().to_path_buf(),
        reason: "the affine has a zero or non-finite axis; cannot find anatomical directions"
            .into(),
    })?;
    if map.is_identity() {
        return Ok(Reoriented {
            volume: Cow::Borrowed(volume),
            map,
        });
    }
    let voxels = {
        let mut view =
            volume
                .voxels()
                .view()
                .permuted_axes([map.perm[0], map.perm[1], map.perm[2], 3]);
        for (t, &f) in map.flip.iter().enumerate() {
            if f {
                view.invert_axis(Axis(t));
            }
        }
        let owned: Array4<f32> = view.as_standard_layout().into_owned();
        owned
    };
    let dims = volume.voxels().dim();
    let storage_dims = [dims.0, dims.1, dims.2];
    let affine = reoriented_affine(volume.affine(), &map, storage_dims);
    let s = volume.spacing();
    // spacing by storage array axis: slice, row, column
    let by_axis = [s.slice_mm, s.row_mm, s.column_mm];
    let spacing = Spacing {
        slice_mm: by_axis[map.perm[0]],
        row_mm: by_axis[map.perm[1]],
        column_mm: by_axis[map.perm[2]],
    };
    let mut out = Volume::new(
        voxels,
        spacing,
        affine,
        volume.modality(),
        volume.source().to_path_buf(),
    )?
    .with_format(volume.format())
    .with_window(volume.window());
    out.warnings = volume.warnings.clone();
    out.series_description = volume.series_description.clone();
    // Headers and source references describe storage order: the writers take the
    // volume as read, never this one.
    Ok(Reoriented {
        volume: Cow::Owned(out),
        map,
    })
}

/// Affine column (index order column, row, slice) of a storage array axis.
fn affine_column(array_axis: usize) -> usize {
    2 - array_axis
}

fn reoriented_affine(a: &Affine, map: &Reorientation, storage_dims: [usize; 3]) -> Affine {
    let m = &a.0;
    let mut out = [[0.0; 4]; 4];
    for r in 0..3 {
        out[r][3] = m[r][3];
    }
    out[3][3] = 1.0;
    for t in 0..3 {
        let src = affine_column(map.perm[t]);
        let dst = affine_column(t);
        let sign = if map.flip[t] { -1.0 } else { 1.0 };
        for r in 0..3 {
            out[r][dst] = sign * m[r][src];
            if map.flip[t] {
                out[r][3] += m[r][src] * (storage_dims[map.perm[t]].saturating_sub(1)) as f64;
            }
        }
    }
    Affine(out)
}

/// The six orders of three axes.
const PERMS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

/// The unit direction of each affine column (column, row, slice index axes) and the world
/// axis each stands for: the assignment maximizing total alignment. `None` for a
/// degenerate affine.
fn world_axes(a: &Affine) -> Option<([[f64; 3]; 3], [usize; 3])> {
    let m = &a.0;
    let mut dir = [[0.0f64; 3]; 3];
    for (c, d) in dir.iter_mut().enumerate() {
        let v = [m[0][c], m[1][c], m[2][c]];
        let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if !(len.is_finite() && len > 0.0) {
            return None;
        }
        *d = v.map(|x| x / len);
    }
    let world_of = PERMS.iter().copied().max_by(|p, q| {
        let score = |w: &[usize; 3]| (0..3).map(|c| dir[c][w[c]].abs()).sum::<f64>();
        score(p).total_cmp(&score(q))
    })?;
    Some((dir, world_of))
}

/// Chooses the permutation and flips for `axis`; `None` for a degenerate affine.
fn plan(a: &Affine, axis: AnatomicalAxis) -> Option<Reorientation> {
    let (dir, world_of) = world_axes(a)?;
    let column_for_world = |w: usize| (0..3).find(|&c| world_of[c] == w);
    let slice_col = column_for_world(axis.world_axis())?;
    let (row_world, col_world) = axis.in_plane();
    let row_col = column_for_world(row_world)?;
    let col_col = column_for_world(col_world)?;
    // affine column -> storage array axis is the same map (2 - x)
    let perm = [
        affine_column(slice_col),
        affine_column(row_col),
        affine_column(col_col),
    ];
    // display convention: rows and columns run towards decreasing world coordinates
    let flip = [
        false,
        dir[row_col][row_world] > 0.0,
        dir[col_col][col_world] > 0.0,
    ];
    Some(Reorientation { perm, flip })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Modality;
    use std::path::PathBuf;

    /// An axial RAS volume: column -> +x, row -> +y, slice -> +z, spacing 1, 2, 3 mm.
    fn ras_volume() -> Volume {
        let voxels =
            Array4::from_shape_fn((4, 5, 6, 1), |(k, j, i, _)| (k * 100 + j * 10 + i) as f32);
        let spacing = Spacing {
            column_mm: 1.0,
            row_mm: 2.0,
            slice_mm: 3.0,
        };
        let affine = Affine([
            [1.0, 0.0, 0.0, -10.0],
            [0.0, 2.0, 0.0, 20.0],
            [0.0, 0.0, 3.0, 5.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let mut v =
            Volume::new(voxels, spacing, affine, Modality::Ct, PathBuf::from("mem")).unwrap();
        v = v.with_format(crate::io::ImageFormat::Nifti);
        v
    }

    #[test]
    fn lps_axial_storage_is_already_the_frame() {
        let mut v = ras_volume();
        // the same grid stored LPS (columns to the left, rows to posterior)
        v.affine.0[0][0] = -1.0;
        v.affine.0[1][1] = -2.0;
        let r = reorient(&v, AnatomicalAxis::Axial).unwrap();
        assert!(r.map.is_identity());
        assert!(matches!(r.volume, Cow::Borrowed(_)));
    }

    #[test]
    fn ras_axial_storage_is_turned_by_180_degrees() {
        let v = ras_volume();
        let r = reorient(&v, AnatomicalAxis::Axial).unwrap();
        assert_eq!(r.map.storage_axes(), [0, 1, 2]);
        assert_eq!(r.map.flipped(), [false, true, true]);
        let (_, rows, cols, _) = v.voxels().dim();
        assert_eq!(
            r.volume.voxels()[[1, 0, 0, 0]],
            v.voxels()[[1, rows - 1, cols - 1, 0]]
        );
    }

    /// Every signed axis order (48) of one grid reaches the same frame: rows run anterior
    /// to posterior, columns right to left, slices in stored order, and each voxel keeps
    /// its value and world position.
    #[test]
    fn every_storage_order_reaches_the_axial_frame() {
        let frame = ras_volume();
        let frame = reorient(&frame, AnatomicalAxis::Axial)
            .unwrap()
            .volume
            .into_owned();
        let mut seen = 0;
        for perm in PERMS {
            for signs in 0..8u8 {
                let flip = [signs & 1 != 0, signs & 2 != 0, signs & 4 != 0];
                // storage axis t is frame axis perm[t], reversed when flip[t]
                let map = Reorientation { perm, flip };
                let stored_voxels = {
                    let mut view = frame
                        .voxels()
                        .view()
                        .permuted_axes([perm[0], perm[1], perm[2], 3]);
                    for (t, &f) in flip.iter().enumerate() {
                        if f {
                            view.invert_axis(Axis(t));
                        }
                    }
                    view.as_standard_layout().into_owned()
                };
                let d = stored_voxels.dim();
                let affine = reoriented_affine(frame.affine(), &map, {
                    let fd = frame.voxels().dim();
                    [fd.0, fd.1, fd.2]
                });
                let spacing = Spacing {
                    column_mm: 1.0,
                    row_mm: 1.0,
                    slice_mm: 1.0,
                };
                let stored = Volume::new(
                    stored_voxels.clone(),
                    spacing,
                    affine,
                    Modality::Ct,
                    PathBuf::from("mem"),
                )
                .unwrap()
                .with_format(crate::io::ImageFormat::Nifti);
                let r = reorient(&stored, AnatomicalAxis::Axial).unwrap();
                let dir = r.volume.direction();
                assert_eq!(
                    dir[0],
                    [-1.0, 0.0, 0.0],
                    "columns run right to left, {perm:?} {flip:?}"
                );
                assert_eq!(dir[1], [0.0, -1.0, 0.0], "rows run anterior to posterior");
                assert_eq!(dir[2][2].abs(), 1.0, "slices are axial");
                let same_slice_order = dir[2][2] > 0.0;
                let fv = frame.voxels();
                let (n, rows, cols, _) = fv.dim();
                for z in 0..n {
                    let fz = if same_slice_order { z } else { n - 1 - z };
                    for row in 0..rows {
                        for col in 0..cols {
                            assert_eq!(
                                r.volume.voxels()[[z, row, col, 0]],
                                fv[[fz, row, col, 0]],
                                "{perm:?} {flip:?}"
                            );
                        }
                    }
                }
                // masks go back to the stored order exactly
                let there =
                    Array3::from_shape_fn((n, rows, cols), |(a, b, c)| (a * 7 + b * 3 + c) as u8);
                let back = r.map.mask_to_storage(&there);
                assert_eq!(back.dim(), (d.0, d.1, d.2));
                assert_eq!(r.map.storage_to_reoriented(&back), there);
                seen += 1;
            }
        }
        assert_eq!(seen, 48);
    }

    #[test]
    fn pixel_maps_find_the_same_voxel_and_round_trip() {
        let v = ras_volume();
        let mut transposed = ras_volume();
        // rows to +x, columns to +y: the in-plane axes stored swapped
        transposed.affine.0[0][0] = 0.0;
        transposed.affine.0[1][0] = 1.0;
        transposed.affine.0[1][1] = 0.0;
        transposed.affine.0[0][1] = 2.0;
        for volume in [&v, &transposed] {
            let r = reorient(volume, AnatomicalAxis::Axial).unwrap();
            let pixels = r.pixel_map().expect("slice axis unchanged");
            let (rows, cols) = pixels.storage_size();
            assert_eq!((rows, cols), (5, 6));
            for y in 0..rows {
                for x in 0..cols {
                    let (fx, fy) = pixels.to_frame(x as f64, y as f64);
                    assert_eq!(
                        r.volume.voxels()[[2, fy as usize, fx as usize, 0]],
                        volume.voxels()[[2, y, x, 0]]
                    );
                    assert_eq!(pixels.to_storage(fx, fy), (x as f64, y as f64));
                }
            }
        }
        let coronal = reorient(&v, AnatomicalAxis::Coronal).unwrap();
        assert!(coronal.pixel_map().is_none());
    }

    #[test]
    fn reoriented_voxels_keep_their_world_position() {
        let v = ras_volume();
        for axis in [
            AnatomicalAxis::Axial,
            AnatomicalAxis::Coronal,
            AnatomicalAxis::Sagittal,
        ] {
            let r = reorient(&v, axis).unwrap();
            let rv = &r.volume;
            let (n0, n1, n2, _) = rv.voxels().dim();
            for s in 0..n0 {
                for row in 0..n1 {
                    for col in 0..n2 {
                        let value = rv.voxels()[[s, row, col, 0]];
                        let world = rv.affine().apply([col as f64, row as f64, s as f64]);
                        // invert the storage affine (diagonal here)
                        let i = (world[0] + 10.0) / 1.0;
                        let j = (world[1] - 20.0) / 2.0;
                        let k = (world[2] - 5.0) / 3.0;
                        let stored = v.voxels()[[k as usize, j as usize, i as usize, 0]];
                        assert_eq!(value, stored, "{axis} at {s},{row},{col}");
                    }
                }
            }
        }
    }

    #[test]
    fn coronal_slices_follow_the_display_convention() {
        let v = ras_volume();
        let r = reorient(&v, AnatomicalAxis::Coronal).unwrap();
        let d = r.volume.direction();
        // slices advance along y, rows go down (superior to inferior), columns go to the
        // patient's left (decreasing x)
        assert_eq!(d[2], [0.0, 1.0, 0.0]);
        assert_eq!(d[1], [0.0, 0.0, -1.0]);
        assert_eq!(d[0], [-1.0, 0.0, 0.0]);
        assert_eq!(r.volume.spacing().slice_mm, 2.0);
    }

    #[test]
    fn masks_round_trip_through_every_axis() {
        let v = ras_volume();
        let storage = Array3::from_shape_fn((4, 5, 6), |(k, j, i)| (k * 31 + j * 7 + i) as u8);
        for axis in [
            AnatomicalAxis::Axial,
            AnatomicalAxis::Coronal,
            AnatomicalAxis::Sagittal,
        ] {
            let r = reorient(&v, axis).unwrap();
            let there = r.map.storage_to_reoriented(&storage);
            let (a, b, c, _) = r.volume.voxels().dim();
            assert_eq!(there.dim(), (a, b, c));
            assert_eq!(r.map.mask_to_storage(&there), storage, "{axis}");
        }
    }

    #[test]
    fn axis_names_parse() {
        assert_eq!("Sagittal".parse(), Ok(AnatomicalAxis::Sagittal));
        assert!("oblique".parse::<AnatomicalAxis>().is_err());
    }
}
