//! Surface elements on the dual grid and their sizes, derived from marching squares (2-D)
//! and a marching-cubes-style polygonisation (3-D).
//!
//! A dual-grid cell spans the 2x2 (2-D) or 2x2x2 (3-D) voxel centres around it; its
//! *neighbourhood code* has bit `2*o0 + o1` (2-D) or `4*o0 + 2*o1 + o2` (3-D) set when the
//! voxel at offset `o` is foreground. The boundary inside a cell is the isocontour through
//! the midpoints of the cell edges whose two corners differ:
//!
//! * 2-D (marching squares): two crossings give one segment; four crossings (a saddle,
//!   diagonal corners equal) give two segments, each cutting off one corner. Both saddle
//!   resolutions have the same length, so the table is unambiguous.
//! * 3-D: every cube face is polygonised with the same marching-squares rule, which joins
//!   the crossing points of the 12 cube edges into closed loops (each crossing lies on two
//!   faces and gets one segment from each). On a saddle face the phase that is the minority
//!   of the cube is cut off (foreground corners when at most 4 of the 8 are foreground,
//!   background corners otherwise), as the classic marching-cubes base cases do, so a code
//!   and its complement have the same area. Each loop is a triangle or is triangulated as a
//!   fan around its vertex centroid; the code's area is the sum of the triangle areas,
//!   computed after scaling vertices by the voxel spacing.
//!
//! For planar loops (one corner, one edge, one face of the cube cut off, and every 2-D
//! code) the area does not depend on the triangulation. For non-planar loops (for example
//! three corners of one face set, a pentagon) other triangulations, such as a fixed
//! marching-cubes table's, give slightly different areas.

/// A cube edge, as its two corners (low, high).
type Edge = (usize, usize);

/// Corners of a square in cyclic order, as (row, column) offsets.
const SQUARE_CYCLE: [[usize; 2]; 4] = [[0, 0], [0, 1], [1, 1], [1, 0]];

/// Segments of the marching-squares contour of one square, as pairs of edge indices;
/// edge `e` joins cyclic corners `e` and `e + 1`. On a saddle the corners equal to
/// `cut_phase` are cut off.
fn square_segments(inside: [bool; 4], cut_phase: bool) -> Vec<(usize, usize)> {
    let crossings: Vec<usize> = (0..4)
        .filter(|&e| inside[e] != inside[(e + 1) % 4])
        .collect();
    match *crossings.as_slice() {
        [a, b] => vec![(a, b)],
        [_, _, _, _] => (0..4)
            .filter(|&c| inside[c] == cut_phase)
            .map(|c| ((c + 3) % 4, c))
            .collect(),
        _ => Vec::new(),
    }
}

fn distance(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn triangle_area(a: &[f64; 3], b: &[f64; 3], c: &[f64; 3]) -> f64 {
    let u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    let n = [
        u[1] * v[2] - u[2] * v[1],
        u[2] * v[0] - u[0] * v[2],
        u[0] * v[1] - u[1] * v[0],
    ];
    0.5 * (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
}

/// Contour length in mm of each of the 16 neighbourhood codes of a 2-D dual cell.
pub(crate) fn contour_length_table(spacing_mm: [f64; 2]) -> [f64; 16] {
    let mut table = [0.0; 16];
    for (code, length) in table.iter_mut().enumerate() {
        let inside = SQUARE_CYCLE.map(|[o0, o1]| code >> (2 * o0 + o1) & 1 == 1);
        let midpoint = |e: usize| {
            let (a, b) = (SQUARE_CYCLE[e], SQUARE_CYCLE[(e + 1) % 4]);
            [
                0.5 * (a[0] + b[0]) as f64 * spacing_mm[0],
                0.5 * (a[1] + b[1]) as f64 * spacing_mm[1],
                0.0,
            ]
        };
        *length = square_segments(inside, true)
            .into_iter()
            .map(|(a, b)| distance(&midpoint(a), &midpoint(b)))
            .sum();
    }
    table
}

/// Position of cube corner `c` (bits `4*o0 + 2*o1 + o2`).
fn cube_corner(c: usize) -> [usize; 3] {
    [c >> 2 & 1, c >> 1 & 1, c & 1]
}

/// The closed loops of the isosurface of one cube, each a list of cube edges given by
/// their two corners; `None` if the face segments do not close into loops (never happens
/// for a valid code; checked by the tests).
fn cube_loops(code: usize) -> Option<Vec<Vec<Edge>>> {
    let inside = |c: usize| code >> c & 1 == 1;
    let cut_phase = code.count_ones() <= 4;
    // Edge key: the corner pair (low, high); neighbours along the loop per edge.
    let mut links: Vec<(Edge, Vec<Edge>)> = Vec::new();
    let mut link = |a: Edge, b: Edge| {
        for (from, to) in [(a, b), (b, a)] {
            match links.iter_mut().find(|(k, _)| *k == from) {
                Some((_, ends)) => ends.push(to),
                None => links.push((from, vec![to])),
            }
        }
    };
    for axis in 0..3 {
        let (u, v) = match axis {
            0 => (1, 2),
            1 => (0, 2),
            _ => (0, 1),
        };
        for side in 0..2 {
            let corners =
                SQUARE_CYCLE.map(|[a, b]| (side << (2 - axis)) | (a << (2 - u)) | (b << (2 - v)));
            let face_inside = corners.map(inside);
            let edge = |e: usize| {
                let (a, b) = (corners[e], corners[(e + 1) % 4]);
                (a.min(b), a.max(b))
            };
            for (a, b) in square_segments(face_inside, cut_phase) {
                link(edge(a), edge(b));
            }
        }
    }
    if links.iter().any(|(_, ends)| ends.len() != 2) {
        return None;
    }
    let mut visited = vec![false; links.len()];
    let mut loops = Vec::new();
    for start in 0..links.len() {
        if visited[start] {
            continue;
        }
        let mut polygon = Vec::new();
        let (mut prev, mut cur) = (usize::MAX, start);
        loop {
            visited[cur] = true;
            polygon.push(links[cur].0);
            let ends = &links[cur].1;
            let next_edge = if ends.len() == 2 && prev != usize::MAX && links[prev].0 == ends[0] {
                ends[1]
            } else {
                ends[0]
            };
            let next = links.iter().position(|(k, _)| *k == next_edge)?;
            if next == start {
                break;
            }
            if visited[next] || polygon.len() > links.len() {
                return None;
            }
            prev = cur;
            cur = next;
        }
        loops.push(polygon);
    }
    Some(loops)
}

/// Surface area in mm² of each of the 256 neighbourhood codes of a 3-D dual cell.
pub(crate) fn surface_area_table(spacing_mm: [f64; 3]) -> [f64; 256] {
    let mut table = [0.0; 256];
    for (code, area) in table.iter_mut().enumerate() {
        let Some(loops) = cube_loops(code) else {
            continue;
        };
        for polygon in loops {
            let points: Vec<[f64; 3]> = polygon
                .iter()
                .map(|&(a, b)| {
                    let (pa, pb) = (cube_corner(a), cube_corner(b));
                    [0, 1, 2].map(|k| 0.5 * (pa[k] + pb[k]) as f64 * spacing_mm[k])
                })
                .collect();
            *area += match points.as_slice() {
                [a, b, c] => triangle_area(a, b, c),
                _ => {
                    let n = points.len() as f64;
                    let centroid = [0, 1, 2].map(|k| points.iter().map(|p| p[k]).sum::<f64>() / n);
                    (0..points.len())
                        .map(|i| {
                            triangle_area(&centroid, &points[i], &points[(i + 1) % points.len()])
                        })
                        .sum()
                }
            };
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    #[test]
    fn contour_lengths_follow_marching_squares() {
        let (s0, s1) = (0.5, 2.0);
        let t = contour_length_table([s0, s1]);
        let diagonal = 0.5 * (s0 * s0 + s1 * s1).sqrt();
        assert_eq!(t[0], 0.0);
        assert_eq!(t[15], 0.0);
        for corner in [1, 2, 4, 8] {
            assert!((t[corner] - diagonal).abs() < EPS);
            assert!((t[15 - corner] - diagonal).abs() < EPS);
        }
        // Row o0 = 0 set: the contour runs along axis 1 and is one column spacing long.
        assert!((t[0b0011] - s1).abs() < EPS);
        assert!((t[0b1100] - s1).abs() < EPS);
        // Column o1 = 0 set: the contour runs along axis 0.
        assert!((t[0b0101] - s0).abs() < EPS);
        assert!((t[0b1010] - s0).abs() < EPS);
        // Saddles: two corner cuts.
        assert!((t[0b1001] - 2.0 * diagonal).abs() < EPS);
        assert!((t[0b0110] - 2.0 * diagonal).abs() < EPS);
    }

    #[test]
    fn every_cube_code_closes_into_loops() {
        for code in 0..256 {
            let loops = cube_loops(code);
            assert!(loops.is_some(), "code {code}");
            let empty = code == 0 || code == 255;
            assert_eq!(loops.is_some_and(|l| l.is_empty()), empty, "code {code}");
        }
    }

    #[test]
    fn cube_areas_of_planar_cases() {
        let t = surface_area_table([1.0, 1.0, 1.0]);
        // One corner: triangle with sides sqrt(2)/2.
        assert!((t[1] - 3f64.sqrt() / 8.0).abs() < EPS);
        // One cube edge (two corners): rectangle 1 x sqrt(2)/2.
        assert!((t[0b11] - 2f64.sqrt() / 2.0).abs() < EPS);
        // One face (four corners): unit square.
        assert!((t[0b1111] - 1.0).abs() < EPS);
        let (s0, s1, s2) = (2.5, 0.7, 1.3);
        let t = surface_area_table([s0, s1, s2]);
        // Face o0 = 0 set: a plane normal to axis 0.
        assert!((t[0b0000_1111] - s1 * s2).abs() < EPS);
        assert!((t[0b0011_0011] - s0 * s2).abs() < EPS);
        assert!((t[0b0101_0101] - s0 * s1).abs() < EPS);
        // Corner triangle: half the norm of the cross product of (s0,-s1,0)/2, (s0,0,-s2)/2.
        let expected = 0.125 * ((s1 * s2).powi(2) + (s0 * s2).powi(2) + (s0 * s1).powi(2)).sqrt();
        assert!((t[1] - expected).abs() < EPS);
    }

    #[test]
    fn a_cube_code_and_its_complement_have_the_same_area() {
        let t = surface_area_table([0.9, 1.7, 2.3]);
        for code in 0..256 {
            assert!((t[code] - t[255 - code]).abs() < EPS, "code {code}");
            if code != 0 && code != 255 {
                assert!(t[code] > 0.0, "code {code}");
            }
        }
    }
}
