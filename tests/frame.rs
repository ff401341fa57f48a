//! One model frame for every file: the same scan stored in different axis orders (and as
//! DICOM and NIfTI) gives the same masks in world space, prompt-free and with a box given
//! in each file's own pixels.
// 4x4 affine algebra reads best with row and column indices
#![allow(clippy::needless_range_loop)]

use std::path::{Path, PathBuf};

use ndarray::{s, Array3, Axis};

use crate::util::{cosam, demo, text};

/// A signed axis order: axis `t` of the new `[slice, row, column]` array is axis `perm[t]`
/// of the original, reversed when `flip[t]`.
#[derive(Debug, Clone, Copy)]
struct Order {
    name: &'static str,
    perm: [usize; 3],
    flip: [bool; 3],
}

/// Seven storage orders of an axial scan: the axial axis stored as NIfTI `k` (in-plane
/// flips and a transpose, and reversed slices), as `i` and as `j`.
const ORDERS: [Order; 7] = [
    Order {
        name: "as_shipped",
        perm: [0, 1, 2],
        flip: [false, false, false],
    },
    Order {
        name: "inplane_flipped",
        perm: [0, 1, 2],
        flip: [false, true, true],
    },
    Order {
        name: "inplane_transposed",
        perm: [0, 2, 1],
        flip: [false, false, true],
    },
    Order {
        name: "slices_reversed",
        perm: [0, 1, 2],
        flip: [true, false, true],
    },
    Order {
        name: "axial_as_i",
        perm: [1, 2, 0],
        flip: [true, false, false],
    },
    Order {
        name: "axial_as_i_flipped",
        perm: [2, 1, 0],
        flip: [false, true, true],
    },
    Order {
        name: "axial_as_j",
        perm: [2, 0, 1],
        flip: [true, true, false],
    },
];

/// A scan as `[slice, row, column]` voxels and the 4x4 affine from `(column, row, slice)`
/// indices to RAS+ mm.
struct Scan {
    voxels: Array3<f32>,
    affine: [[f64; 4]; 4],
}

impl Scan {
    fn read(path: &Path) -> Scan {
        let v = cosam::io::read(path).unwrap();
        Scan {
            voxels: v.voxels().index_axis(Axis(3), 0).to_owned(),
            affine: v.affine().0,
        }
    }

    fn slices(&self, range: std::ops::Range<usize>) -> Scan {
        let mut affine = self.affine;
        for r in 0..3 {
            affine[r][3] += affine[r][2] * range.start as f64;
        }
        Scan {
            voxels: self.voxels.slice(s![range, .., ..]).to_owned(),
            affine,
        }
    }

    /// The same voxels and world geometry stored in `order`.
    fn stored(&self, order: Order) -> Scan {
        let mut view = self.voxels.view().permuted_axes(order.perm);
        for (t, &f) in order.flip.iter().enumerate() {
            if f {
                view.invert_axis(Axis(t));
            }
        }
        let dims = self.voxels.dim();
        let dims = [dims.0, dims.1, dims.2];
        // affine column of array axis a is 2 - a
        let mut affine = [[0.0; 4]; 4];
        affine[3][3] = 1.0;
        for r in 0..3 {
            affine[r][3] = self.affine[r][3];
        }
        for t in 0..3 {
            let from = 2 - order.perm[t];
            let sign = if order.flip[t] { -1.0 } else { 1.0 };
            for r in 0..3 {
                affine[r][2 - t] = sign * self.affine[r][from];
                if order.flip[t] {
                    affine[r][3] += self.affine[r][from] * (dims[order.perm[t]] - 1) as f64;
                }
            }
        }
        Scan {
            voxels: view.as_standard_layout().into_owned(),
            affine,
        }
    }

    /// An uncompressed NIfTI-1 file, float32, sform only.
    fn write_nifti(&self, path: &Path) {
        let (n, rows, cols) = self.voxels.dim();
        let mut h = vec![0u8; 352];
        h[0..4].copy_from_slice(&348i32.to_le_bytes());
        let dims: [i16; 8] = [3, cols as i16, rows as i16, n as i16, 1, 1, 1, 1];
        for (i, d) in dims.iter().enumerate() {
            h[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
        }
        h[70..72].copy_from_slice(&16i16.to_le_bytes());
        h[72..74].copy_from_slice(&32i16.to_le_bytes());
        let mut pixdim = [1.0f32; 8];
        for c in 0..3 {
            let a = &self.affine;
            pixdim[c + 1] = (a[0][c].powi(2) + a[1][c].powi(2) + a[2][c].powi(2)).sqrt() as f32;
        }
        for (i, p) in pixdim.iter().enumerate() {
            h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
        }
        h[108..112].copy_from_slice(&352f32.to_le_bytes());
        h[112..116].copy_from_slice(&1f32.to_le_bytes());
        h[123] = 2; // mm
        h[254..256].copy_from_slice(&1i16.to_le_bytes()); // sform_code
        for r in 0..3 {
            for c in 0..4 {
                let at = 280 + 16 * r + 4 * c;
                h[at..at + 4].copy_from_slice(&(self.affine[r][c] as f32).to_le_bytes());
            }
        }
        h[344..348].copy_from_slice(b"n+1\0");
        for v in self.voxels.iter() {
            h.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(path, h).unwrap();
    }

    /// The voxel index `(slice, row, column)` at a world point, when it lands on one.
    fn index_at(&self, world: [f64; 3]) -> Option<(usize, usize, usize)> {
        let a = &self.affine;
        let m = [
            [a[0][0], a[0][1], a[0][2]],
            [a[1][0], a[1][1], a[1][2]],
            [a[2][0], a[2][1], a[2][2]],
        ];
        let d = [world[0] - a[0][3], world[1] - a[1][3], world[2] - a[2][3]];
        let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
        // Cramer's rule for the (column, row, slice) index
        let solve = |c: usize| {
            let mut mc = m;
            for r in 0..3 {
                mc[r][c] = d[r];
            }
            (mc[0][0] * (mc[1][1] * mc[2][2] - mc[1][2] * mc[2][1])
                - mc[0][1] * (mc[1][0] * mc[2][2] - mc[1][2] * mc[2][0])
                + mc[0][2] * (mc[1][0] * mc[2][1] - mc[1][1] * mc[2][0]))
                / det
        };
        let (n, rows, cols) = self.voxels.dim();
        let index = [solve(0), solve(1), solve(2)];
        if index.iter().any(|v| (v - v.round()).abs() > 1e-3) {
            return None;
        }
        let [c, r, k] = index.map(|v| v.round());
        let inside = |v: f64, len: usize| v >= 0.0 && v < len as f64;
        (inside(c, cols) && inside(r, rows) && inside(k, n))
            .then_some((k as usize, r as usize, c as usize))
    }

    fn world(&self, (k, r, c): (usize, usize, usize)) -> [f64; 3] {
        let a = &self.affine;
        let i = [c as f64, r as f64, k as f64];
        std::array::from_fn(|row| {
            a[row][0] * i[0] + a[row][1] * i[1] + a[row][2] * i[2] + a[row][3]
        })
    }
}

/// Runs cosam and requires success.
fn cosam_ok(args: &[String]) {
    let o = cosam(args);
    assert!(
        o.status.success(),
        "cosam {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Voxels where two label maps of the same world grid disagree, and the voxels each labels
/// non-zero; panics when a voxel of `a` has no counterpart in `b`.
fn world_disagreement(a: &Scan, b: &Scan) -> (usize, usize) {
    let mut differ = 0;
    let mut labelled = 0;
    for ((k, r, c), &va) in a.voxels.indexed_iter() {
        let at = b
            .index_at(a.world((k, r, c)))
            .unwrap_or_else(|| panic!("voxel {k},{r},{c} has no counterpart"));
        let vb = b.voxels[at];
        differ += usize::from(va != vb);
        labelled += usize::from(va != 0.0);
    }
    (differ, labelled)
}

/// Writes `scan` in every order under `dir`, segments them all prompt-free in one run and
/// returns each order's label map as written.
fn prompt_free_label_maps(scan: &Scan, dir: &Path, extra: &[&str]) -> Vec<(Order, Scan)> {
    let mut args: Vec<String> = ["segment", "--task", "abdomen", "--device", "cpu"]
        .iter()
        .chain(["--encoder", "fp32", "--threads", "2"].iter())
        .chain(extra.iter())
        .map(|s| s.to_string())
        .collect();
    args.push("-i".into());
    for order in ORDERS {
        let path = dir.join(format!("{}.nii", order.name));
        scan.stored(order).write_nifti(&path);
        args.push(text(&path));
    }
    let out = dir.join("out");
    args.extend(["-o".to_string(), text(&out)]);
    cosam_ok(&args);
    ORDERS
        .iter()
        .map(|&order| {
            let labels = out.join(format!("{}_labels.nii.gz", order.name));
            (order, Scan::read(&labels))
        })
        .collect()
}

fn assert_same_in_world(maps: &[(Order, Scan)], what: &str) {
    let (first, reference) = &maps[0];
    for (order, map) in &maps[1..] {
        let (differ, labelled) = world_disagreement(reference, map);
        println!(
            "{what}: {} vs {}: {differ} voxels differ, {labelled} labelled",
            first.name, order.name
        );
        assert!(labelled > 0, "{what}: nothing was segmented");
        assert_eq!(
            differ, 0,
            "{what}: {} and {} disagree",
            first.name, order.name
        );
    }
}

/// The demo CT (stored RAS) and MR (stored LPS), three slices each, in seven storage orders:
/// the prompt-free label maps are identical voxel for voxel in world space.
#[test]
fn prompt_free_masks_do_not_depend_on_storage_order() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = Scan::read(&demo("ct_abdomen.nii.gz")).slices(23..26);
    let ct_dir = tmp.path().join("ct");
    std::fs::create_dir_all(&ct_dir).unwrap();
    let maps = prompt_free_label_maps(&ct, &ct_dir, &["--modality", "ct"]);
    assert_same_in_world(&maps, "ct");
    let mr = Scan::read(&demo("mr_abdomen.nii.gz"));
    let mr_dir = tmp.path().join("mr");
    std::fs::create_dir_all(&mr_dir).unwrap();
    let maps = prompt_free_label_maps(&mr, &mr_dir, &["--modality", "mr"]);
    assert_same_in_world(&maps, "mr");
}

/// A liver box given in each file's own pixel coordinates (x the column, y the row of a
/// stored slice) gives the same world-space mask for every order that stores axial slices.
#[test]
fn box_in_each_files_own_pixels_gives_the_same_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let ct = Scan::read(&demo("ct_abdomen.nii.gz")).slices(24..25);
    // cases.json's box for the shipped storage order, corners as pixel indices
    let shipped_box = [42usize, 24, 106, 83];
    let mut maps = Vec::new();
    for order in ORDERS.iter().filter(|o| o.perm[0] == 0) {
        let stored = ct.stored(*order);
        let path = tmp.path().join(format!("{}.nii", order.name));
        stored.write_nifti(&path);
        // the same two corner voxels, as indices of this file
        let corner = |x: usize, y: usize| {
            let at = stored.index_at(ct.world((0, y, x))).unwrap();
            (at.2, at.1)
        };
        let (ax, ay) = corner(shipped_box[0], shipped_box[1]);
        let (bx, by) = corner(shipped_box[2], shipped_box[3]);
        let bbox = format!(
            "{},{},{},{}",
            ax.min(bx),
            ay.min(by),
            ax.max(bx),
            ay.max(by)
        );
        let out = tmp.path().join(format!("out_{}", order.name));
        let args: Vec<String> = ["segment", "--device", "cpu", "--encoder", "fp32"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--box".to_string(), bbox, "-i".into(), text(&path)])
            .chain(["-o".to_string(), text(&out)])
            .collect();
        cosam_ok(&args);
        let mask = Scan::read(&out.join(format!("{}_mask.nii.gz", order.name)));
        maps.push((*order, mask));
    }
    assert_eq!(maps.len(), 4);
    assert_same_in_world(&maps, "box");
}

/// The demo DICOM slice and the same slice written as a NIfTI stored RAS (the DICOM is in
/// display order) give the same prompt-free masks in world space.
#[test]
fn dicom_and_nifti_of_one_scan_give_the_same_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let dicom = demo("ct_abdomen_slice.dcm");
    let scan = Scan::read(&dicom);
    let nifti = tmp.path().join("ct_abdomen_slice_ras.nii");
    scan.stored(ORDERS[1]).write_nifti(&nifti);
    let out = tmp.path().join("out");
    let args: Vec<String> = [
        "segment",
        "--task",
        "abdomen",
        "--device",
        "cpu",
        "--encoder",
        "fp32",
        "--modality",
        "ct",
        "--window",
        "40,400",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([text(&dicom), text(&nifti), "-o".into(), text(&out)])
    .collect();
    cosam_ok(&args);
    let read = |name: &str| -> PathBuf { out.join(name) };
    let maps = vec![
        (
            ORDERS[0],
            Scan::read(&read("ct_abdomen_slice_labels.nii.gz")),
        ),
        (
            ORDERS[1],
            Scan::read(&read("ct_abdomen_slice_ras_labels.nii.gz")),
        ),
    ];
    assert_same_in_world(&maps, "dicom vs nifti");
}
