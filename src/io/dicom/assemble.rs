//! Grouping a folder's files into series and assembling each series' slices (or an
//! enhanced object's frames) into one [`Volume`] with its affine.

use super::*;

pub(super) enum GroupKey {
    Group(String),
    Failed(usize),
}

pub(super) fn error_path(e: &ReadError) -> Option<PathBuf> {
    match e {
        ReadError::NotFound { path }
        | ReadError::Io { path, .. }
        | ReadError::Corrupt { path, .. }
        | ReadError::Unsupported { path, .. }
        | ReadError::EmptyFolder { path }
        | ReadError::TooLarge { path, .. } => Some(path.clone()),
    }
}

/// One slice of the volume being assembled: which file and frame, where.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) file: usize,
    pub(super) frame: u32,
    pub(super) geometry: Option<Geometry>,
}

pub(super) fn read_group(
    folder: &Path,
    probes: Vec<DicomProbe>,
    limits: &Limits,
) -> Result<Volume, ReadError> {
    if probes.len() == 1 && probes[0].frames > 1 {
        let p = probes[0].path.clone();
        let slots = (0..probes[0].frames)
            .map(|f| Slot {
                file: 0,
                frame: f,
                geometry: probes[0].geometry.get(f as usize).copied().flatten(),
            })
            .collect();
        return assemble(&p, probes, slots, limits, ImageFormat::Dicom);
    }
    let slots = probes
        .iter()
        .enumerate()
        .map(|(i, p)| Slot {
            file: i,
            frame: 0,
            geometry: p.geometry.first().copied().flatten(),
        })
        .collect();
    assemble(folder, probes, slots, limits, ImageFormat::DicomSeries)
}

/// Orders the slots, checks sizes, decodes the pixels and builds the volume.
pub(super) fn assemble(
    path: &Path,
    probes: Vec<DicomProbe>,
    mut slots: Vec<Slot>,
    limits: &Limits,
    format: ImageFormat,
) -> Result<Volume, ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let Some(first) = probes.first() else {
        return Err(ReadError::EmptyFolder {
            path: path.to_path_buf(),
        });
    };
    let (rows, cols, samples) = (first.rows, first.columns, first.samples);
    if let Some(bad) = probes
        .iter()
        .find(|p| (p.rows, p.columns, p.samples) != (rows, cols, samples))
    {
        return Err(corrupt(format!(
            "slices of mixed sizes: {} is {}x{}x{}, {} is {rows}x{cols}x{samples}",
            bad.path.display(),
            bad.rows,
            bad.columns,
            bad.samples,
            first.path.display()
        )));
    }
    if let Some(p) = probes.iter().find(|p| !p.has_pixel_data) {
        return Err(ReadError::Corrupt {
            path: p.path.clone(),
            reason: "not an image (no Rows, Columns or PixelData)".into(),
        });
    }
    let n = slots.len();
    limits.check_frames(path, n as u64)?;
    limits.check(
        path,
        &[
            n as u64,
            u64::from(rows),
            u64::from(cols),
            u64::from(samples),
        ],
    )?;
    let mut warnings: Vec<String> = Vec::new();
    for p in &probes {
        for w in &p.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
    }
    let label = |s: &Slot, probes: &[DicomProbe]| -> String {
        let p = probes
            .get(s.file)
            .map_or_else(String::new, |p| p.path.display().to_string());
        if n > 1 && probes.len() == 1 {
            format!("{p} frame {}", s.frame + 1)
        } else {
            p
        }
    };
    let differs = |a: f64, b: f64| (a - b).abs() > UNEVEN_SPACING_TOLERANCE * a.abs().max(b.abs());
    if let Some(other) = probes.iter().find(|p| {
        differs(p.pixel_spacing[0], first.pixel_spacing[0])
            || differs(p.pixel_spacing[1], first.pixel_spacing[1])
    }) {
        warnings.push(format!(
            "pixel spacing differs between files ({:?} mm in {}, {:?} mm in {}); the volume \
             uses the first, so mm and mm^3 figures are approximate",
            first.pixel_spacing,
            first.path.display(),
            other.pixel_spacing,
            other.path.display()
        ));
    }
    // Order by position along the normal when every slice has a position.
    let mut step: Option<[f64; 3]> = None;
    let geometries: Option<Vec<Geometry>> = slots.iter().map(|s| s.geometry).collect();
    match geometries {
        Some(g) if !g.is_empty() => {
            let normal = g[0].normal();
            if g.iter()
                .any(|x| dot(x.normal(), normal) < (TILT_TOLERANCE_DEG.to_radians()).cos())
            {
                warnings.push(
                    "slices have different orientations; geometry follows the first slice"
                        .to_string(),
                );
            }
            let depth = |s: &Slot| s.geometry.map_or(0.0, |g| dot(g.position, normal));
            slots.sort_by(|a, b| depth(a).total_cmp(&depth(b)));
            for pair in slots.windows(2) {
                if (depth(&pair[1]) - depth(&pair[0])).abs() < SAME_POSITION_MM {
                    return Err(corrupt(format!(
                        "{} and {} share one slice position ({:.3} mm along the normal); \
                         several acquisitions (echoes, phases, duplicates) in one series \
                         are not supported",
                        label(&pair[0], &probes),
                        label(&pair[1], &probes),
                        depth(&pair[0])
                    )));
                }
            }
            if n > 1 {
                let pos = |s: &Slot| s.geometry.map_or([0.0; 3], |g| g.position);
                let total = sub(pos(&slots[n - 1]), pos(&slots[0]));
                let mean = scale(total, 1.0 / (n - 1) as f64);
                let gaps: Vec<f64> = slots
                    .windows(2)
                    .map(|w| depth(&w[1]) - depth(&w[0]))
                    .collect();
                let min = gaps.iter().copied().fold(f64::INFINITY, f64::min);
                let max = gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max - min > UNEVEN_SPACING_TOLERANCE * max.abs().max(1e-9) {
                    warnings.push(format!(
                        "uneven slice spacing: gaps from {min:.3} to {max:.3} mm; the volume \
                         uses their mean {:.3} mm, so positions between slices are \
                         approximate",
                        dot(mean, normal)
                    ));
                }
                let len = dot(mean, mean).sqrt();
                if len > 0.0 {
                    let cos = (dot(mean, normal) / len).clamp(-1.0, 1.0);
                    let angle = cos.acos().to_degrees();
                    if angle > TILT_TOLERANCE_DEG {
                        warnings.push(format!(
                            "gantry tilt or sheared stack: slices advance {angle:.2} degrees \
                             off their normal; the affine keeps the shear"
                        ));
                    }
                }
                // every slice on the line from the first along the mean step (uneven gaps
                // along it are reported above); a slice beside it is drawn at the wrong
                // place by the affine, silently until this warning
                let step_mm = dot(mean, mean).sqrt();
                let along = scale(mean, 1.0 / step_mm.max(1e-9));
                let worst = slots
                    .iter()
                    .map(|s| {
                        let d = sub(pos(s), pos(&slots[0]));
                        let beside = sub(d, scale(along, dot(d, along)));
                        dot(beside, beside).sqrt()
                    })
                    .fold(0.0f64, f64::max);
                if worst > OFF_LINE_TOLERANCE * step_mm && worst > SAME_POSITION_MM {
                    warnings.push(format!(
                        "slice positions stray up to {worst:.3} mm from the straight line the \
                         volume's affine draws through them; positions are approximate"
                    ));
                }
                step = Some(mean);
            }
            let turned = g
                .iter()
                .any(|x| dot(x.row_dir, g[0].row_dir) < TILT_TOLERANCE_DEG.to_radians().cos());
            if turned {
                warnings.push(
                    "slices are turned in their plane against each other; geometry and \
                     pixels follow the first slice"
                        .to_string(),
                );
            }
        }
        _ => {
            if n > 1 {
                warnings.push(
                    "no ImagePositionPatient/ImageOrientationPatient: slices kept in file \
                     order with no world position"
                        .to_string(),
                );
            }
        }
    }
    // Decode pixels straight into the volume, one file at a time.
    let mut voxels = Array4::<f32>::zeros((n, rows as usize, cols as usize, samples as usize));
    let mut by_file: BTreeMap<usize, Vec<(usize, u32)>> = BTreeMap::new();
    for (z, s) in slots.iter().enumerate() {
        by_file.entry(s.file).or_default().push((z, s.frame));
    }
    /// (slice index, frame) pairs wanted from one file, and that file's decoded frames.
    type Decoded = (Vec<(usize, u32)>, Result<Array4<f32>, ReadError>);
    let decoded: Vec<Decoded> = by_file
        .into_par_iter()
        .map(|(file, wanted)| {
            let result = match probes.get(file) {
                Some(p) => decode(p),
                None => Err(corrupt("internal: slice refers to no file".into())),
            };
            (wanted, result)
        })
        .collect();
    for (wanted, result) in decoded {
        let pixels = result?;
        for (z, frame) in wanted {
            let frame = frame as usize;
            if frame >= pixels.dim().0
                || (pixels.dim().1, pixels.dim().2) != (rows as usize, cols as usize)
            {
                return Err(corrupt(format!(
                    "decoded pixel data is {:?}, header says {} frames of {rows}x{cols}",
                    pixels.dim(),
                    frame + 1
                )));
            }
            if pixels.dim().3 != samples as usize {
                return Err(corrupt(format!(
                    "decoded pixel data has {} samples per pixel, header says {samples}",
                    pixels.dim().3
                )));
            }
            voxels
                .slice_mut(s![z, .., .., ..])
                .assign(&pixels.slice(s![frame, .., .., ..]));
        }
    }
    let geometry0 = slots.first().and_then(|s| s.geometry);
    let slice_mm = step
        .map(|s| dot(s, s).sqrt())
        .or(first.slice_thickness)
        .unwrap_or(1.0);
    let step = step.or_else(|| geometry0.map(|g| scale(g.normal(), slice_mm)));
    let affine = affine_of(geometry0, first.pixel_spacing, step, slice_mm);
    let spacing = Spacing {
        column_mm: first.pixel_spacing[1],
        row_mm: first.pixel_spacing[0],
        slice_mm,
    };
    let source = SourceSeries {
        series_uid: first.series_uid.clone(),
        study_uid: first.study_uid.clone(),
        frame_of_reference_uid: first.frame_of_reference_uid.clone(),
        copied: first.copied.clone(),
        slices: slots
            .iter()
            .map(|s| {
                let p = probes.get(s.file);
                SourceImage {
                    sop_class_uid: p.map(|p| p.sop_class_uid.clone()).unwrap_or_default(),
                    sop_instance_uid: p.map(|p| p.sop_instance_uid.clone()).unwrap_or_default(),
                    frame: p.filter(|p| p.frames > 1).map(|_| s.frame + 1),
                    position: s.geometry.map(|g| g.position),
                }
            })
            .collect(),
    };
    let mut volume = Volume::new(voxels, spacing, affine, first.modality, path.to_path_buf())?
        .with_format(format)
        .with_window(first.window);
    volume.warnings = warnings;
    volume.series_description = first.series_description.clone();
    volume.dicom = Some(Arc::new(source));
    Ok(volume)
}

/// Affine in RAS from the first slice's geometry and the step between slices (LPS).
pub(super) fn affine_of(
    geometry: Option<Geometry>,
    pixel_spacing: [f64; 2],
    step: Option<[f64; 3]>,
    slice_mm: f64,
) -> Affine {
    // Without a position and orientation, DICOM's own default axes (rows along the
    // patient's left, columns toward posterior), so the image keeps its stored pixel order
    // in the model frame, as viewers show it: a RAS grid turned a CR or secondary capture
    // image, its PNG mask and overlay by 180 degrees (found reading the writers).
    let g = geometry.unwrap_or(Geometry {
        position: [0.0; 3],
        row_dir: [1.0, 0.0, 0.0],
        col_dir: [0.0, 1.0, 0.0],
    });
    let along_column_index = scale(g.row_dir, pixel_spacing[1]);
    let along_row_index = scale(g.col_dir, pixel_spacing[0]);
    let step = step.unwrap_or_else(|| scale(g.normal(), slice_mm));
    let lps_to_ras = [-1.0, -1.0, 1.0];
    let mut m = [[0.0; 4]; 4];
    for r in 0..3 {
        m[r][0] = lps_to_ras[r] * along_column_index[r];
        m[r][1] = lps_to_ras[r] * along_row_index[r];
        m[r][2] = lps_to_ras[r] * step[r];
        m[r][3] = lps_to_ras[r] * g.position[r];
    }
    m[3][3] = 1.0;
    Affine(m)
}
