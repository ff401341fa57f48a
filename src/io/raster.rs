//! PNG, JPEG and TIFF images (2D, grey or colour) through the `image` crate.

use std::io::{BufRead, Seek};
use std::path::Path;

use image::{DynamicImage, ImageReader};
use ndarray::Array4;

use super::{Affine, ImageFormat, Limits, Modality, ReadError, Spacing, Volume};

/// True when `head` starts like a PNG, JPEG or TIFF file.
pub fn sniff(head: &[u8]) -> bool {
    head.starts_with(b"\x89PNG\r\n\x1a\n")
        || head.starts_with(&[0xFF, 0xD8, 0xFF])
        || head.starts_with(b"II*\0")
        || head.starts_with(b"MM\0*")
}

/// Reads a 2D image file into a one-slice [`Volume`] with 1 mm spacing.
///
/// # Errors
/// [`ReadError::Corrupt`] for undecodable data, [`ReadError::TooLarge`] past `limits`.
pub fn read(path: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_from(std::io::BufReader::new(file), path, limits)
}

/// Reads a 2D image from any reader; `path` names the source in errors.
///
/// # Errors
/// As [`read`].
pub fn read_from<R: BufRead + Seek>(
    reader: R,
    path: &Path,
    limits: &Limits,
) -> Result<Volume, ReadError> {
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => ReadError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "decoding needs more than the memory budget of {} MiB (raise it with \
                 --max-memory-mb): {e}",
                limits.max_memory_bytes >> 20
            ),
        },
        e => ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    };
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // The decoder's own allocations stay within the memory budget (a PNG bomb fails
    // before its pixels are inflated).
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_memory_bytes);
    reader.limits(decoder_limits);
    let image = reader.decode().map_err(corrupt)?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    limits.check(path, &[h as u64, w as u64, 3])?;
    let voxels = to_voxels(&image);
    let spacing = Spacing {
        column_mm: 1.0,
        row_mm: 1.0,
        slice_mm: 1.0,
    };
    Ok(Volume::new(
        voxels,
        spacing,
        Affine::from_spacing(spacing),
        Modality::Display,
        path.to_path_buf(),
    )?
    .with_format(ImageFormat::Raster))
}

/// Pixels as `[1, row, column, channel]` in the file's integer units (0..255 or
/// 0..65535); grey when the colour channels agree everywhere, so a grey image saved as
/// RGB costs no more than a grey one.
fn to_voxels(image: &DynamicImage) -> Array4<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let colour = image.color();
    let wide = colour.bytes_per_pixel() > colour.channel_count();
    let rgb: Vec<[f32; 3]> = match (colour.has_color(), wide) {
        (true, true) => image
            .to_rgb16()
            .pixels()
            .map(|p| p.0.map(f32::from))
            .collect(),
        (true, false) => image
            .to_rgb8()
            .pixels()
            .map(|p| p.0.map(f32::from))
            .collect(),
        (false, true) => image
            .to_luma16()
            .pixels()
            .map(|p| [f32::from(p.0[0]); 3])
            .collect(),
        (false, false) => image
            .to_luma8()
            .pixels()
            .map(|p| [f32::from(p.0[0]); 3])
            .collect(),
    };
    let grey = rgb.iter().all(|p| p[0] == p[1] && p[1] == p[2]);
    let channels = if grey { 1 } else { 3 };
    Array4::from_shape_fn((1, h, w, channels), |(_, r, c, ch)| rgb[r * w + c][ch])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_knows_magic_numbers() {
        assert!(sniff(b"\x89PNG\r\n\x1a\nrest"));
        assert!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(sniff(b"II*\0"));
        assert!(!sniff(b"hello"));
    }

    #[test]
    fn grey_png_round_trips_values() {
        let img = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 10 + y) as u8]));
        let mut bytes = Vec::new();
        DynamicImage::ImageLuma8(img)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        let v = read_from(
            std::io::Cursor::new(bytes),
            Path::new("mem.png"),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(v.voxels().dim(), (1, 3, 5, 1));
        assert_eq!(v.voxels()[[0, 2, 4, 0]], 42.0);
    }
}
