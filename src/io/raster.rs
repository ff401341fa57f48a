//! PNG, JPEG and TIFF images (2D, grey or colour) through the `image` crate.

use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::Path;

use image::{ColorType, DynamicImage, ImageDecoder, ImageReader};
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

/// What a decoder may allocate beyond the pixels: headers, ICC profiles, text chunks.
const HEADER_ALLOC_BYTES: u64 = 64 << 20;

fn decoder_limits(max_alloc: u64) -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_alloc);
    limits
}

/// Reads a 2D image from any reader; `path` names the source in errors.
///
/// # Errors
/// As [`read`].
pub fn read_from<R: BufRead + Seek>(
    mut reader: R,
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
    // the image crate reads a TIFF's first page only
    let more_pages = more_tiff_pages(&mut reader).unwrap_or(false);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    // Headers and what comes with them (a PNG's ICC profile and text chunks, which the
    // png crate inflates up to the limit: a 2 MB file inflated 2 GB there) get a small
    // allowance; the pixels get what the header's checked size needs. The size is checked
    // before decoding: a 204-byte JPEG claiming 65535 x 65535 pixels aborted the batch
    // in a 4 GB allocation (found reading the reader).
    reader.limits(decoder_limits(HEADER_ALLOC_BYTES));
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    limits.check(path, &[u64::from(h), u64::from(w), 3])?;
    decoder
        .set_limits(decoder_limits(
            decoder.total_bytes().saturating_add(HEADER_ALLOC_BYTES),
        ))
        .map_err(corrupt)?;
    let image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let voxels = to_voxels(&image);
    let spacing = Spacing {
        column_mm: 1.0,
        row_mm: 1.0,
        slice_mm: 1.0,
    };
    let mut volume = Volume::new(
        voxels,
        spacing,
        Affine::from_spacing(spacing),
        Modality::Display,
        path.to_path_buf(),
    )?
    .with_format(ImageFormat::Raster);
    if more_pages {
        volume.add_warning("the TIFF has more than one page; only the first is read");
    }
    Ok(volume)
}

/// Whether a TIFF's first image directory links to another (a multi-page file); false
/// for other formats. Reads a few bytes; the caller rewinds.
fn more_tiff_pages<R: Read + Seek>(r: &mut R) -> std::io::Result<bool> {
    let mut head = [0u8; 8];
    r.seek(SeekFrom::Start(0))?;
    r.read_exact(&mut head)?;
    let big = match &head[..4] {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return Ok(false),
    };
    let read_u32 = |r: &mut dyn Read| -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let first = u64::from(read_u32(&mut &head[4..])?);
    r.seek(SeekFrom::Start(first))?;
    let mut count = [0u8; 2];
    r.read_exact(&mut count)?;
    let entries = if big {
        u16::from_be_bytes(count)
    } else {
        u16::from_le_bytes(count)
    };
    r.seek(SeekFrom::Start(first + 2 + 12 * u64::from(entries)))?;
    Ok(read_u32(r)? != 0)
}

/// Pixels as `[1, row, column, channel]` in the file's units (0..255 or 0..65535 for
/// integers, as stored for floats); grey when the colour channels agree everywhere, so a grey image saved as
/// RGB costs no more than a grey one.
fn to_voxels(image: &DynamicImage) -> Array4<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let colour = image.color();
    let wide = colour.bytes_per_pixel() > colour.channel_count();
    let float = matches!(colour, ColorType::Rgb32F | ColorType::Rgba32F);
    let rgb: Vec<[f32; 3]> = match (colour.has_color(), wide) {
        // float samples as they are: the 16-bit conversion clamps them to 0..1
        _ if float => image.to_rgb32f().pixels().map(|p| p.0).collect(),
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

    /// `image` encoded in `format`, in memory.
    fn encoded(image: DynamicImage, format: image::ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap();
        bytes
    }

    /// The reader on `bytes`, named `name` in errors and for format detection.
    fn read_bytes(bytes: Vec<u8>, name: &str) -> Volume {
        read_from(
            std::io::Cursor::new(bytes),
            Path::new(name),
            &Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn grey_png_round_trips_values() {
        let img = image::GrayImage::from_fn(5, 3, |x, y| image::Luma([(x * 10 + y) as u8]));
        let v = read_bytes(
            encoded(DynamicImage::ImageLuma8(img), image::ImageFormat::Png),
            "mem.png",
        );
        assert_eq!(v.voxels().dim(), (1, 3, 5, 1));
        assert_eq!(v.voxels()[[0, 2, 4, 0]], 42.0);
    }

    /// A little-endian TIFF of `pages` uncompressed 2 x 2 grey 8-bit pages, pixel values
    /// `10 * page + 1..`.
    fn tiff(pages: u8) -> Vec<u8> {
        let mut f = b"II*\0".to_vec();
        f.extend_from_slice(&8u32.to_le_bytes());
        for page in 0..pages {
            let ifd = f.len() as u32;
            let pixels = ifd + 2 + 8 * 12 + 4;
            let entry = |tag: u16, kind: u16, value: u32| {
                [
                    &tag.to_le_bytes()[..],
                    &kind.to_le_bytes(),
                    &1u32.to_le_bytes(),
                    &value.to_le_bytes(),
                ]
                .concat()
            };
            f.extend_from_slice(&8u16.to_le_bytes());
            for (tag, value) in [
                (256, 2),
                (257, 2),
                (258, 8),
                (259, 1),
                (262, 1),
                (273, pixels),
                (278, 2),
                (279, 4),
            ] {
                f.extend(entry(tag, if tag == 273 { 4 } else { 3 }, value));
            }
            let next = if page + 1 < pages { pixels + 4 } else { 0 };
            f.extend_from_slice(&next.to_le_bytes());
            f.extend((1..=4).map(|v| 10 * page + v));
        }
        f
    }

    #[test]
    fn a_multi_page_tiff_is_read_with_a_warning() {
        let one = read_bytes(tiff(1), "mem.tif");
        assert!(one.warnings().is_empty(), "{:?}", one.warnings());
        let two = read_bytes(tiff(2), "mem.tif");
        assert_eq!(
            two.voxels().iter().copied().collect::<Vec<f32>>(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert!(
            two.warnings()
                .iter()
                .any(|w| w.contains("more than one page")),
            "{:?}",
            two.warnings()
        );
    }

    #[test]
    fn float_colour_keeps_its_values() {
        let img =
            image::Rgb32FImage::from_fn(2, 1, |x, _| image::Rgb([2.0 + x as f32, 500.0, 1000.0]));
        let v = read_bytes(
            encoded(DynamicImage::ImageRgb32F(img), image::ImageFormat::Tiff),
            "mem.tif",
        );
        assert_eq!(v.voxels().dim(), (1, 1, 2, 3));
        assert_eq!(v.voxels()[[0, 0, 1, 0]], 3.0);
        assert_eq!(v.voxels()[[0, 0, 1, 2]], 1000.0);
    }
}
