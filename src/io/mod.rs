//! Reading images into [`Volume`]s and writing masks.
//!
//! Owns every file format: PNG/JPEG/TIFF ([`raster`]), NIfTI ([`nifti`]) and DICOM
//! ([`dicom`]). It must not import `model`, `pipeline` or `post`.
//!
//! Conventions used everywhere in cosam:
//! - voxels are stored `[slice, row, column, channel]`; a 2D image is a volume with one slice;
//! - as read, the slice axis is the third storage axis of the file (NIfTI `k`, DICOM slice
//!   order by position along the normal), which is axial for axially acquired scans;
//!   [`reorient`] slices a volume along an anatomical axis ([`AnatomicalAxis`]) whatever
//!   the storage order, and maps masks back to storage order for the writers;
//! - world coordinates are **RAS+** millimetres everywhere (x to the patient's Right, y
//!   Anterior, z Superior; the NIfTI convention). DICOM's LPS patient coordinates are
//!   converted on read (negate x and y) and back on write (DICOM SEG);
//! - [`Affine`] maps a voxel index `(column, row, slice)` to RAS+ millimetres; its first
//!   three columns are the direction of each index axis scaled by its spacing, its fourth
//!   the origin (the centre of voxel `(0, 0, 0)`).
//!
//! Readers: [`raster`] (PNG/JPEG/TIFF), [`nifti`] (NIfTI-1 `.nii`/`.nii.gz`; NIfTI-2 is
//! refused with a clear message) and [`dicom`] (files, multi-frame objects and series
//! folders). Writers: PNG masks, NIfTI label maps with the input's exact geometry
//! ([`write_mask_nifti`]) and DICOM SEG ([`write_dicom_seg`]).

pub mod dicom;
pub mod nifti;
mod orient;
pub mod raster;
mod seg;
mod window;
mod write;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array4, ArrayView2, Axis};

pub use orient::{reorient, AnatomicalAxis, PixelMap, Reorientation, Reoriented, FRAME_VERSION};
pub use seg::{write_dicom_seg, Code, SegInfo};
pub use window::{WindowError, WindowLevel};
pub use write::{
    remove_stale_partials, write_atomic, write_bytes, write_mask_nifti, write_mask_png,
    write_overlay_png, WriteError,
};

/// Failure to read an input. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The path does not exist.
    #[error("{path}: no such file or folder")]
    NotFound {
        /// The missing path.
        path: PathBuf,
    },
    /// The operating system refused to read the file.
    #[error("{path}: cannot read")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is of a known format but its content is broken (truncated, bad header).
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is not an image cosam can read, or uses a feature not supported yet.
    #[error("{path}: unsupported input: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        reason: String,
    },
    /// A folder holds no readable DICOM file.
    #[error("{path}: folder holds no DICOM files")]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
    /// The image, or what its header claims, is larger than [`Limits`] allow.
    #[error("{path}: {reason}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which limit was hit, and the flag that raises it.
        reason: String,
    },
}

impl ReadError {
    /// An I/O failure on `path`: [`ReadError::NotFound`] for a missing file, else
    /// [`ReadError::Io`].
    pub(crate) fn from_io(path: &Path, source: std::io::Error) -> ReadError {
        if source.kind() == std::io::ErrorKind::NotFound {
            ReadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ReadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Bytes one voxel costs on its way through cosam: the `f32` volume, a reoriented `f32`
/// copy (slicing along another axis than the storage one), and three `u8` masks (the
/// mask, its storage-order copy, the combined label map).
pub const PIPELINE_BYTES_PER_VOXEL: u64 = 4 + 4 + 3;

/// The memory budget every reader checks a file's claims against before it allocates:
/// the header's dimensions, frame and extension counts, the decompressed size, and the
/// voxel count times every copy the pipeline makes ([`PIPELINE_BYTES_PER_VOXEL`]).
/// Going over it is a [`ReadError::TooLarge`] for that input, never an abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest number of voxels (all channels counted) a volume may hold.
    pub max_voxels: u64,
    /// Largest number of bytes reading one input may hold at once: the file or its
    /// decompressed stream as buffered, plus the voxels times
    /// [`PIPELINE_BYTES_PER_VOXEL`].
    pub max_memory_bytes: u64,
    /// Most frames (DICOM NumberOfFrames) or slices one input may have.
    pub max_frames: u64,
    /// Most header extensions (NIfTI) one file may carry.
    pub max_extensions: u64,
}

impl Default for Limits {
    /// 2^30 voxels, 4 GiB of memory per input, 65,536 frames, 1,024 extensions.
    fn default() -> Self {
        Limits {
            max_voxels: 1 << 30,
            max_memory_bytes: 4 << 30,
            max_frames: 1 << 16,
            max_extensions: 1 << 10,
        }
    }
}

impl Limits {
    /// Limits with a different voxel cap.
    pub fn with_max_voxels(mut self, max_voxels: u64) -> Self {
        self.max_voxels = max_voxels;
        self
    }

    /// Limits with a different memory budget, bytes.
    pub fn with_max_memory_bytes(mut self, max_memory_bytes: u64) -> Self {
        self.max_memory_bytes = max_memory_bytes;
        self
    }

    /// Checks a volume of `dims` (their product is the voxel count, channels included)
    /// against the voxel cap and the memory budget.
    pub(crate) fn check(&self, path: &Path, dims: &[u64]) -> Result<(), ReadError> {
        self.check_with_buffer(path, dims, 0)
    }

    /// As [`Limits::check`], counting `buffered_bytes` the reader holds at the same time
    /// (a decompressed stream, a raw voxel buffer).
    pub(crate) fn check_with_buffer(
        &self,
        path: &Path,
        dims: &[u64],
        buffered_bytes: u64,
    ) -> Result<(), ReadError> {
        let total = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        if total > self.max_voxels {
            return Err(ReadError::TooLarge {
                path: path.to_path_buf(),
                reason: format!(
                    "{total} voxels ({dims:?}) exceed the limit of {} (raise it with \
                     --max-voxels)",
                    self.max_voxels
                ),
            });
        }
        let bytes = total
            .checked_mul(PIPELINE_BYTES_PER_VOXEL)
            .and_then(|b| b.checked_add(buffered_bytes))
            .unwrap_or(u64::MAX);
        self.check_memory(path, &format!("{total} voxels ({dims:?})"), bytes)
    }

    /// Checks that holding `bytes` for `what` fits the memory budget.
    pub(crate) fn check_memory(
        &self,
        path: &Path,
        what: &str,
        bytes: u64,
    ) -> Result<(), ReadError> {
        if bytes > self.max_memory_bytes {
            return Err(ReadError::TooLarge {
                path: path.to_path_buf(),
                reason: format!(
                    "{what} would need {} MiB, over the memory budget of {} MiB (raise it \
                     with --max-memory-mb)",
                    bytes.div_ceil(1 << 20),
                    self.max_memory_bytes >> 20
                ),
            });
        }
        Ok(())
    }

    /// Checks a frame or slice count.
    pub(crate) fn check_frames(&self, path: &Path, frames: u64) -> Result<(), ReadError> {
        if frames > self.max_frames {
            return Err(ReadError::TooLarge {
                path: path.to_path_buf(),
                reason: format!("{frames} frames exceed the limit of {}", self.max_frames),
            });
        }
        Ok(())
    }

    /// Checks a header extension count.
    pub(crate) fn check_extensions(&self, path: &Path, count: u64) -> Result<(), ReadError> {
        if count > self.max_extensions {
            return Err(ReadError::TooLarge {
                path: path.to_path_buf(),
                reason: format!("more than {} header extensions", self.max_extensions),
            });
        }
        Ok(())
    }
}

/// Input formats cosam reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageFormat {
    /// A 2D PNG, JPEG or TIFF image.
    Raster,
    /// A NIfTI-1 volume, `.nii` or `.nii.gz`.
    Nifti,
    /// One DICOM file (a slice or a multi-frame image).
    Dicom,
    /// A folder holding one DICOM series.
    DicomSeries,
}

/// Acquisition modality; decides the default intensity mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Modality {
    /// Computed tomography, voxels in Hounsfield units.
    Ct,
    /// Magnetic resonance, arbitrary units.
    Mr,
    /// A display image (photograph, screenshot, exported PNG) already in 0..255.
    Display,
    /// Any other modality (CR, US, XA, ...): intensities mapped like MR.
    Other,
}

impl Modality {
    /// The modality of pixels without a file to say it (see [`Volume::from_pixels`]).
    pub fn guess(pixels: ndarray::ArrayView2<f32>) -> Modality {
        const CT_BELOW_HU: f32 = -500.0;
        if pixels.iter().any(|&v| v < CT_BELOW_HU) {
            Modality::Ct
        } else if pixels
            .iter()
            .all(|&v| (0.0..=255.0).contains(&v) && v.fract() == 0.0)
        {
            Modality::Display
        } else {
            Modality::Mr
        }
    }
}

/// Voxel spacing in millimetres along the storage axes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spacing {
    /// Distance between neighbouring columns, mm.
    pub column_mm: f64,
    /// Distance between neighbouring rows, mm.
    pub row_mm: f64,
    /// Distance between neighbouring slices, mm.
    pub slice_mm: f64,
}

impl Spacing {
    /// Area of one pixel in a slice, mm^2.
    pub fn pixel_area_mm2(&self) -> f64 {
        self.column_mm * self.row_mm
    }

    /// Volume of one voxel, mm^3.
    pub fn voxel_volume_mm3(&self) -> f64 {
        self.column_mm * self.row_mm * self.slice_mm
    }
}

/// A 4x4 matrix mapping a voxel index `(column, row, slice, 1)` to RAS+ millimetres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine(pub [[f64; 4]; 4]);

impl Affine {
    /// Determinant of the 3x3 linear part: the signed volume of one voxel, mm^3.
    pub fn determinant(&self) -> f64 {
        let m = &self.0;
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    }

    /// The affine of an image without geometry: unit spacing, origin at zero. The
    /// column axis runs to the left and rows downwards, as a display image is seen.
    pub fn from_spacing(spacing: Spacing) -> Affine {
        Affine([
            [spacing.column_mm, 0.0, 0.0, 0.0],
            [0.0, spacing.row_mm, 0.0, 0.0],
            [0.0, 0.0, spacing.slice_mm, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    /// World position (RAS+ mm) of a voxel index.
    pub fn apply(&self, index: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = m[r][0] * index[0] + m[r][1] * index[1] + m[r][2] * index[2] + m[r][3];
        }
        out
    }
}

/// An image or volume with its geometry, as read from disk.
#[derive(Debug, Clone)]
pub struct Volume {
    voxels: Array4<f32>,
    spacing: Spacing,
    affine: Affine,
    modality: Modality,
    window: Option<WindowLevel>,
    format: ImageFormat,
    source: PathBuf,
    pub(crate) warnings: Vec<String>,
    pub(crate) series_description: Option<String>,
    pub(crate) nifti_header: Option<Box<::nifti::NiftiHeader>>,
    pub(crate) dicom: Option<std::sync::Arc<dicom::SourceSeries>>,
}

impl Volume {
    /// A volume from voxels `[slice, row, column, channel]` (1 or 3 channels).
    ///
    /// # Errors
    /// [`ReadError::Unsupported`] for a channel count other than 1 or 3 or an empty array.
    pub fn new(
        voxels: Array4<f32>,
        spacing: Spacing,
        affine: Affine,
        modality: Modality,
        source: PathBuf,
    ) -> Result<Volume, ReadError> {
        let (slices, rows, cols, channels) = voxels.dim();
        if slices == 0 || rows == 0 || cols == 0 {
            return Err(ReadError::Corrupt {
                path: source,
                reason: format!("image has no pixels ({slices}x{rows}x{cols})"),
            });
        }
        if channels != 1 && channels != 3 {
            return Err(ReadError::Unsupported {
                path: source,
                reason: format!("{channels} channels per pixel (1 or 3 are supported)"),
            });
        }
        if !affine.0.iter().flatten().all(|v| v.is_finite()) {
            return Err(ReadError::Corrupt {
                path: source,
                reason: "the affine (voxel-to-world matrix) has NaN or infinite entries".into(),
            });
        }
        if ![spacing.column_mm, spacing.row_mm, spacing.slice_mm]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(ReadError::Corrupt {
                path: source,
                reason: format!("voxel spacing is NaN or infinite ({spacing:?})"),
            });
        }
        Ok(Volume {
            voxels,
            spacing,
            affine,
            modality,
            window: None,
            format: ImageFormat::Raster,
            source,
            warnings: Vec::new(),
            series_description: None,
            nifti_header: None,
            dicom: None,
        })
    }

    /// One slice held in memory (a viewer's pixels) as a one-slice volume with unit
    /// spacing, in the units of its source (HU for CT). `modality` decides the intensity
    /// mapping as a file's would; `None` guesses it: CT when a value lies below -500 (the
    /// NIfTI reader's rule), a display image when every value is an integer in 0..=255
    /// (any 8-bit image), MR otherwise. `window` sets the CT window, as a DICOM file's
    /// window does (and implies CT when `modality` is `None`).
    ///
    /// # Errors
    /// [`ReadError::Corrupt`] for an empty slice or a value that is not finite,
    /// [`ReadError::TooLarge`] past the default [`Limits`].
    pub fn from_pixels(
        pixels: ndarray::ArrayView2<f32>,
        modality: Option<Modality>,
        window: Option<WindowLevel>,
    ) -> Result<Volume, ReadError> {
        let source = PathBuf::from("<pixels>");
        let (rows, cols) = pixels.dim();
        Limits::default().check(&source, &[rows as u64, cols as u64])?;
        if !pixels.iter().all(|v| v.is_finite()) {
            return Err(ReadError::Corrupt {
                path: source,
                reason: "pixel values are not all finite (NaN or infinity)".into(),
            });
        }
        let modality = modality.unwrap_or_else(|| match window {
            Some(_) => Modality::Ct,
            None => Modality::guess(pixels),
        });
        let spacing = Spacing {
            column_mm: 1.0,
            row_mm: 1.0,
            slice_mm: 1.0,
        };
        let voxels = pixels
            .to_owned()
            .insert_axis(ndarray::Axis(0))
            .insert_axis(ndarray::Axis(3));
        Ok(Volume::new(
            voxels,
            spacing,
            Affine::from_spacing(spacing),
            modality,
            source,
        )?
        .with_window(window))
    }

    pub(crate) fn with_format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }

    pub(crate) fn with_window(mut self, window: Option<WindowLevel>) -> Self {
        self.window = window;
        self
    }

    /// Voxels `[slice, row, column, channel]`, in the file's physical units (HU for CT).
    pub fn voxels(&self) -> &Array4<f32> {
        &self.voxels
    }

    /// Number of slices (1 for a 2D image).
    pub fn slices(&self) -> usize {
        self.voxels.dim().0
    }

    /// Rows and columns of each slice.
    pub fn slice_size(&self) -> (usize, usize) {
        let (_, rows, cols, _) = self.voxels.dim();
        (rows, cols)
    }

    /// Channels per pixel: 1 (grey) or 3 (RGB).
    pub fn channels(&self) -> usize {
        self.voxels.dim().3
    }

    /// Voxel spacing, mm.
    pub fn spacing(&self) -> Spacing {
        self.spacing
    }

    /// Voxel index to RAS+ world millimetres.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// The acquisition modality, as read or guessed.
    pub fn modality(&self) -> Modality {
        self.modality
    }

    /// Adds a warning about how the volume is read or used; it travels with the volume
    /// into reports.
    pub fn add_warning(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Replaces the modality (for example when the user states it).
    pub fn set_modality(&mut self, modality: Modality) {
        self.modality = modality;
    }

    /// The display window stored in the file (DICOM WindowCenter/Width), if any.
    pub fn window(&self) -> Option<WindowLevel> {
        self.window
    }

    /// The format the volume was read from.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The file or folder the volume was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Things the reader noticed and worked around (uneven slice spacing, gantry tilt),
    /// one sentence each; show them to the user.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// SeriesInstanceUID of a DICOM input.
    pub fn series_uid(&self) -> Option<&str> {
        self.dicom.as_deref().map(|d| d.series_uid.as_str())
    }

    /// SeriesDescription of a DICOM input, if the file has one.
    pub fn series_description(&self) -> Option<&str> {
        self.series_description.as_deref()
    }

    /// World position (RAS+ mm) of the centre of voxel `(0, 0, 0)`.
    pub fn origin_mm(&self) -> [f64; 3] {
        let m = &self.affine.0;
        [m[0][3], m[1][3], m[2][3]]
    }

    /// Unit direction (RAS+) of the column, row and slice index axes: `direction()[0]` is
    /// where increasing the column index moves in the world.
    pub fn direction(&self) -> [[f64; 3]; 3] {
        let m = &self.affine.0;
        let mut out = [[0.0; 3]; 3];
        for (c, d) in out.iter_mut().enumerate() {
            let v = [m[0][c], m[1][c], m[2][c]];
            let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            *d = if len > 0.0 { v.map(|x| x / len) } else { v };
        }
        out
    }

    /// Volume of one voxel, mm^3: the affine's determinant, which a sheared grid (gantry
    /// tilt) makes smaller than the product of the spacings (by 13% at 30 degrees); the
    /// spacings' product where the affine is degenerate.
    pub fn voxel_volume_mm3(&self) -> f64 {
        let det = self.affine.determinant();
        if det.is_finite() && det != 0.0 {
            det.abs()
        } else {
            self.spacing.voxel_volume_mm3()
        }
    }

    /// True when the volume is 2D (one slice), as PNG/JPEG/TIFF images are.
    pub fn is_2d(&self) -> bool {
        self.slices() == 1 && self.format == ImageFormat::Raster
    }

    /// One channel of one slice, `[row, column]`.
    ///
    /// # Panics
    /// When `slice` or `channel` is out of range (a caller's bug, not user input).
    pub fn slice_channel(&self, slice: usize, channel: usize) -> ArrayView2<'_, f32> {
        self.voxels
            .index_axis(Axis(0), slice)
            .index_axis_move(Axis(2), channel)
    }
}

/// A binary mask over one slice, `[row, column]`, values 0 or 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask(pub Array2<u8>);

impl Mask {
    /// Number of foreground pixels.
    pub fn area(&self) -> usize {
        self.0.iter().filter(|&&v| v != 0).count()
    }

    /// Rows and columns.
    pub fn dim(&self) -> (usize, usize) {
        self.0.dim()
    }
}

/// Works out the format of `path` from its kind, name and first bytes.
///
/// # Errors
/// [`ReadError::NotFound`] when the path does not exist, [`ReadError::Unsupported`] when
/// the file is none of the formats cosam reads.
pub fn detect_format(path: &Path) -> Result<ImageFormat, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::from_io(path, e))?;
    if meta.is_dir() {
        return Ok(ImageFormat::DicomSeries);
    }
    if !meta.is_file() {
        // a FIFO or device would block or never end
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: "not a regular file (a FIFO, socket or device)".into(),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Ok(ImageFormat::Nifti);
    }
    // a .dcm name is DICOM whatever its bytes (a missing preamble is reported by the
    // reader), so its first bytes are not read here: the reader reads the header once
    if dicom::named_dcm(path) {
        return Ok(ImageFormat::Dicom);
    }
    let head = read_head(path, 132)?;
    if dicom::is_candidate(path, &head) {
        return Ok(ImageFormat::Dicom);
    }
    if raster::sniff(&head) {
        return Ok(ImageFormat::Raster);
    }
    Err(ReadError::Unsupported {
        path: path.to_path_buf(),
        reason: "not a PNG, JPEG, TIFF, NIfTI (.nii, .nii.gz) or DICOM file".into(),
    })
}

fn read_head(path: &Path, n: usize) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut head = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut head)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(head)
}

/// Reads any supported input with default [`Limits`].
///
/// # Errors
/// Any [`ReadError`]; the error names `path`.
pub fn read(path: &Path) -> Result<Volume, ReadError> {
    read_with_limits(path, &Limits::default())
}

/// Reads any supported input, refusing volumes larger than `limits`.
///
/// # Errors
/// Any [`ReadError`]; the error names `path`.
pub fn read_with_limits(path: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    match detect_format(path)? {
        ImageFormat::Raster => raster::read(path, limits),
        ImageFormat::Nifti => nifti::read(path, limits),
        ImageFormat::Dicom => dicom::read_file(path, limits),
        ImageFormat::DicomSeries => dicom::read_series(path, limits),
    }
}

/// Reads every input that `path` holds: one volume for a file, one per series for a
/// folder of DICOM files (scanned recursively, grouped by SeriesInstanceUID). Each entry
/// is read independently, so one broken series does not hide the others.
///
/// # Errors
/// Each entry is its own `Result`; a path that cannot be read at all gives one `Err`.
///
/// # Example
/// ```
/// use cosam::io::{read_inputs, Limits};
///
/// let inputs = read_inputs(std::path::Path::new("no/such/folder"), &Limits::default());
/// assert_eq!(inputs.len(), 1);
/// assert!(inputs[0].as_ref().unwrap_err().to_string().contains("no such file"));
/// ```
pub fn read_inputs(path: &Path, limits: &Limits) -> Vec<Result<Volume, ReadError>> {
    match detect_format(path) {
        Ok(ImageFormat::DicomSeries) => match dicom::read_folder(path, limits) {
            Ok(all) => all,
            Err(e) => vec![Err(e)],
        },
        Ok(_) => vec![read_with_limits(path, limits)],
        Err(e) => vec![Err(e)],
    }
}

/// Output formats for masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum OutputFormat {
    /// NIfTI-1 label map with the input's geometry ([`write_mask_nifti`]).
    Nifti,
    /// DICOM Segmentation object referencing the source series ([`write_dicom_seg`]).
    DicomSeg,
    /// PNG per slice ([`write_mask_png`]).
    Png,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    /// `nifti`, `dicom-seg` or `png`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nifti" | "nii" | "nii.gz" => Ok(OutputFormat::Nifti),
            "dicom-seg" | "dicom_seg" | "seg" => Ok(OutputFormat::DicomSeg),
            "png" => Ok(OutputFormat::Png),
            other => Err(format!(
                "unknown output format '{other}': use nifti, dicom-seg or png"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_formats_parse() {
        assert_eq!("dicom-seg".parse(), Ok(OutputFormat::DicomSeg));
        assert_eq!("NIfTI".parse(), Ok(OutputFormat::Nifti));
        assert!("rtstruct".parse::<OutputFormat>().is_err());
    }

    #[test]
    fn affine_from_spacing_scales_indices() {
        let a = Affine::from_spacing(Spacing {
            column_mm: 0.5,
            row_mm: 2.0,
            slice_mm: 3.0,
        });
        assert_eq!(a.apply([2.0, 1.0, 1.0]), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn limits_refuse_oversized_volume() {
        let l = Limits::default().with_max_voxels(100);
        assert!(l.check(Path::new("x"), &[10, 10]).is_ok());
        assert!(matches!(
            l.check(Path::new("x"), &[10, 11]),
            Err(ReadError::TooLarge { .. })
        ));
        // overflow counts as too large, never wraps
        assert!(l.check(Path::new("x"), &[u64::MAX, 3]).is_err());
    }
}
