//! Pixel data decoding: the transfer syntax check, the decoder run behind a panic
//! guard, and salvage of files with trailing data.

use std::io::Read;

use super::*;

/// Refuses transfer syntaxes whose pixel data this build cannot decode, naming them.
pub(super) fn check_transfer_syntax(path: &Path, uid: &str) -> Result<(), ReadError> {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) if ts.can_decode_all() && !ts.is_unsupported_pixel_encapsulation() => Ok(()),
        Some(ts) => Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "unsupported transfer syntax {uid} ({}) in {}{}",
                ts.name(),
                path.display(),
                if uid.starts_with("1.2.840.10008.1.2.4.8") {
                    "; JPEG-LS needs cosam built with --features jpeg-ls"
                } else {
                    ""
                }
            ),
        }),
        None => Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "unsupported transfer syntax {uid} (unknown) in {}",
                path.display()
            ),
        }),
    }
}

/// Decodes all frames of a file: `[frame, row, column, sample]`, modality LUT applied,
/// MONOCHROME1 inverted.
pub(super) fn decode(p: &DicomProbe) -> Result<Array4<f32>, ReadError> {
    let path = p.path.as_path();
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let obj: DefaultDicomObject = match super::guard::check_lengths(&bytes, false, p.max_inflated) {
        Ok(()) => match guard(path, || dicom_object::open_file(path))? {
            Ok(obj) => obj,
            Err(e) => salvage_before_trailing_data(&bytes, path, p)
                .ok_or_else(|| corrupt(format!("not a readable DICOM file: {e}")))?,
        },
        // The header up to the pixel data passed the probe: whatever is broken lies
        // after it, and elements after the pixel data are of no use to cosam.
        Err(e) => salvage_before_trailing_data(&bytes, path, p)
            .ok_or_else(|| corrupt(format!("malformed DICOM: {e}")))?,
    };
    drop(bytes);
    let Some(pixel_data) = obj.get(tags::PIXEL_DATA) else {
        return Err(corrupt("no PixelData (not an image)".into()));
    };
    check_fragment_headers(pixel_data, p).map_err(corrupt)?;
    if p.transfer_syntax == DEFLATED_IMAGE_FRAME {
        let bits = uint(&obj, tags::BITS_ALLOCATED).unwrap_or(64);
        deflated_frames_fit(pixel_data, p, bits).map_err(corrupt)?;
    }
    let foreign = guard(path, || {
        let decoded = obj
            .decode_pixel_data()
            .map_err(|e| ReadError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "cannot decode pixel data in transfer syntax {} ({}): {e}",
                    p.transfer_syntax,
                    TransferSyntaxRegistry
                        .get(&p.transfer_syntax)
                        .map_or("unknown", |t| t.name())
                ),
            })?;
        decoded
            .to_ndarray::<f32>()
            .map_err(|e| corrupt(format!("cannot convert pixel data: {e}")))
    })??;
    // dicom-pixeldata builds on another ndarray major version: move the data across.
    let shape = foreign.dim();
    let data = if foreign.is_standard_layout() {
        match foreign.into_raw_vec_and_offset() {
            (data, None | Some(0)) => data,
            (data, Some(offset)) => data.get(offset..).map(<[f32]>::to_vec).unwrap_or_default(),
        }
    } else {
        foreign.iter().copied().collect()
    };
    let mut pixels = Array4::from_shape_vec(shape, data)
        .map_err(|e| corrupt(format!("pixel data shape: {e}")))?;
    if let Some(sum) = p.invert_sum {
        pixels.mapv_inplace(|v| sum - v);
    }
    if p.ybr_full && pixels.dim().3 == 3 {
        for mut px in pixels.lanes_mut(ndarray::Axis(3)) {
            let (y, cb, cr) = (px[0], px[1] - 128.0, px[2] - 128.0);
            // ITU-R BT.601 full range (PS3.3 C.7.6.3.1.2)
            px[0] = (y + 1.402 * cr).clamp(0.0, 255.0);
            px[1] = (y - 0.344_136 * cb - 0.714_136 * cr).clamp(0.0, 255.0);
            px[2] = (y + 1.772 * cb).clamp(0.0, 255.0);
        }
    }
    Ok(pixels)
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// Deflated Image Frame Compression: each fragment a deflated frame.
const DEFLATED_IMAGE_FRAME: &str = "1.2.840.10008.1.2.8.1";

/// JPEG 2000 (lossless, lossy) and High-Throughput JPEG 2000 transfer syntaxes.
const JPEG_2000: [&str; 5] = [
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
];

/// JPEG baseline, extended and lossless, and JPEG-LS transfer syntaxes.
const JPEG: [&str; 6] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
];

/// Columns, rows and components a compressed fragment declares; `None` for a fragment
/// that continues the frame before it.
type DeclaredSize = Result<Option<[u32; 3]>, String>;

/// Checks each compressed fragment's header before a decoder sees it. The decoders
/// allocate what a header declares before reading a byte of data, and libFuzzer found
/// files of a few kB that made them ask for gigabytes: aborts past the panic guard
/// wherever memory is capped.
/// - RLE: at most 15 segments (PS3.5 G.5); dicom-transfer-syntax-registry 0.10
///   allocates one offset per declared segment (942,551,554 asked for 3.8 GB). One
///   fragment per frame (PS3.5 A.4.2): the decoder sizes its output by the fragments
///   (2,500 fragments of 4 bytes asked for 2.6 GB).
/// - JPEG 2000, JPEG and JPEG-LS: the frame must declare the columns, rows and
///   components of the DICOM header (PS3.5 A.4); openjp2 asked for 17 GB for a SIZ of
///   64 x 67,108,928 pixels, jpeg-decoder for 2.5 GB for a frame header. The JPEG
///   decoder also starts a frame at any SOI after the last one, fragment start or not:
///   no image there may declare more pixels than the header (a second image in one
///   fragment asked for 8 GB). JPEG 2000 tiles are capped, as openjp2 keeps state per
///   tile (65,535 tiles of 1 pixel took 0.9 GB).
fn check_fragment_headers(pixel_data: &InMemElement, p: &DicomProbe) -> Result<(), String> {
    let ts = p.transfer_syntax.as_str();
    let fragments = pixel_data.value().fragments().unwrap_or_default();
    let check: fn(&[u8], &DicomProbe) -> Result<(), String> = if ts == RLE_LOSSLESS {
        if fragments.len() != p.frames as usize {
            return Err(format!(
                "{} RLE fragments for {} frame(s); RLE holds one fragment per frame",
                fragments.len(),
                p.frames
            ));
        }
        rle_segments_fit
    } else if JPEG_2000.contains(&ts) {
        |f, p| declared_size_matches(j2k_declared_size(f), p).and_then(|()| j2k_tiles_fit(f))
    } else if JPEG.contains(&ts) {
        no_larger_image_inside(fragments, p)?;
        |f, p| declared_size_matches(jpeg_declared_size(f), p)
    } else {
        return Ok(());
    };
    for (i, fragment) in fragments.iter().enumerate() {
        check(fragment, p).map_err(|e| format!("compressed fragment {i}: {e}"))?;
    }
    Ok(())
}

/// Every SOI in the fragments, taken together as the JPEG decoder takes them, that starts
/// a frame header must declare no more pixels than the DICOM header.
fn no_larger_image_inside(fragments: &[Vec<u8>], p: &DicomProbe) -> Result<(), String> {
    let stream = fragments.concat();
    let allowed = u64::from(p.columns) * u64::from(p.rows) * u64::from(p.samples);
    for (at, _) in stream
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == &[0xFF, 0xD8])
    {
        if let Ok(Some([width, height, components])) = jpeg_declared_size(&stream[at..]) {
            if u64::from(width) * u64::from(height) * u64::from(components) > allowed {
                return Err(format!(
                    "a JPEG image at byte {at} of the pixel data declares {width}x{height} \
                     pixels with {components} component(s); the header says {}x{} with {}",
                    p.columns, p.rows, p.samples
                ));
            }
        }
    }
    Ok(())
}

/// The fragments of Deflated Image Frame Compression must inflate to no more than the
/// frames the header declares. dicom-transfer-syntax-registry's adapter inflates each one
/// into memory with no bound: 1 MB of deflated zeros in a 1x1 image became 1 GB, and the
/// size grows with the file (found reading the adapter). The fragments are inflated here
/// first into a counter, which allocates nothing.
fn deflated_frames_fit(
    pixel_data: &InMemElement,
    p: &DicomProbe,
    bits_allocated: u64,
) -> Result<(), String> {
    let sample_bytes = bits_allocated.div_ceil(8).clamp(1, 8);
    let declared = [p.frames, p.rows, p.columns, p.samples]
        .iter()
        .fold(sample_bytes, |n, &v| n.saturating_mul(u64::from(v)));
    let mut inflated = 0u64;
    let mut buffer = vec![0u8; 64 << 10];
    for fragment in pixel_data.value().fragments().unwrap_or_default() {
        let mut inflate = flate2::read::DeflateDecoder::new(fragment.as_slice());
        // a fragment that stops inflating is the decoder's to report, as it stops there too
        while let Ok(n @ 1..) = inflate.read(&mut buffer) {
            inflated += n as u64;
            if inflated > declared {
                return Err(format!(
                    "the deflated frames inflate past the {declared} bytes that {} frame(s) \
                     of {}x{} pixels, {} sample(s) of {bits_allocated} bits, hold",
                    p.frames, p.columns, p.rows, p.samples
                ));
            }
        }
    }
    Ok(())
}

fn rle_segments_fit(fragment: &[u8], _: &DicomProbe) -> Result<(), String> {
    match fragment.get(..4) {
        Some(b) => match u32::from_le_bytes([b[0], b[1], b[2], b[3]]) {
            n if n <= 15 => Ok(()),
            n => Err(format!("RLE header declares {n} segments (at most 15)")),
        },
        None => Err("shorter than its RLE header".into()),
    }
}

fn declared_size_matches(size: DeclaredSize, p: &DicomProbe) -> Result<(), String> {
    match size? {
        Some([width, height, components])
            if [width, height, components] != [p.columns, p.rows, p.samples] =>
        {
            Err(format!(
                "declares {width}x{height} pixels with {components} component(s); the \
                 header says {}x{} with {}",
                p.columns, p.rows, p.samples
            ))
        }
        _ => Ok(()),
    }
}

/// Most JPEG 2000 tiles in one frame.
const MAX_J2K_TILES: u64 = 4096;

/// The SIZ marker segment of a JPEG 2000 codestream (SOC, then SIZ: marker, Lsiz, Rsiz,
/// Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz); `None` for a fragment
/// that continues the frame before it.
fn j2k_siz(fragment: &[u8]) -> Result<Option<&[u8]>, String> {
    // A codestream starts with SOC (FF4F), possibly inside a JP2 file's `jp2c` box.
    let start = if fragment.starts_with(&[0xFF, 0x4F]) {
        0
    } else if fragment.get(4..8) == Some(b"jP  ".as_slice()) {
        jp2_codestream(fragment)?
    } else {
        return Ok(None);
    };
    fragment
        .get(start..start + 42)
        .filter(|b| b[2..4] == [0xFF, 0x51])
        .map(Some)
        .ok_or_else(|| "JPEG 2000 codestream without a SIZ marker after SOC".into())
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Columns, rows and components from a JPEG 2000 codestream's SIZ marker; `None` for a
/// fragment that continues the frame before it.
fn j2k_declared_size(fragment: &[u8]) -> DeclaredSize {
    Ok(j2k_siz(fragment)?.map(|siz| {
        [
            be_u32(siz, 8).saturating_sub(be_u32(siz, 16)),
            be_u32(siz, 12).saturating_sub(be_u32(siz, 20)),
            u32::from(u16::from_be_bytes([siz[40], siz[41]])),
        ]
    }))
}

/// At most [`MAX_J2K_TILES`] tiles in a codestream.
fn j2k_tiles_fit(fragment: &[u8]) -> Result<(), String> {
    let Some(siz) = j2k_siz(fragment)? else {
        return Ok(());
    };
    let tiles = |size: u32, tile: u32, tile_origin: u32| {
        u64::from(size.saturating_sub(tile_origin)).div_ceil(u64::from(tile.max(1)))
    };
    let count = tiles(be_u32(siz, 8), be_u32(siz, 24), be_u32(siz, 32))
        * tiles(be_u32(siz, 12), be_u32(siz, 28), be_u32(siz, 36));
    if count > MAX_J2K_TILES {
        return Err(format!(
            "JPEG 2000 codestream of {count} tiles (at most {MAX_J2K_TILES})"
        ));
    }
    Ok(())
}

/// Where the codestream of a JP2 file starts: the content of its `jp2c` box, found by
/// walking the boxes as openjp2 does (the first "jp2c" bytes anywhere could sit inside
/// another box, over a fake SIZ).
fn jp2_codestream(file: &[u8]) -> Result<usize, String> {
    let mut at = 0usize;
    while let Some(header) = file.get(at..at + 8) {
        let length = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let (content, end) = match length {
            // to the end of the file
            0 => (at + 8, file.len() as u64),
            // a 64-bit length follows the type
            1 => {
                let long = file
                    .get(at + 8..at + 16)
                    .ok_or("JP2 box header cut short")?;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(long);
                (
                    at + 16,
                    (at as u64).saturating_add(u64::from_be_bytes(bytes)),
                )
            }
            n => (at + 8, at as u64 + n),
        };
        if &header[4..8] == b"jp2c" {
            return Ok(content);
        }
        if end <= content as u64 || end > file.len() as u64 {
            break;
        }
        at = end as usize;
    }
    Err("JP2 file without a codestream box".into())
}

/// Columns, rows and components from a JPEG (or JPEG-LS) frame header, the first SOF
/// segment after SOI; `None` for a fragment that continues the frame before it.
fn jpeg_declared_size(fragment: &[u8]) -> DeclaredSize {
    if !fragment.starts_with(&[0xFF, 0xD8]) {
        return Ok(None);
    }
    let mut at = 2;
    loop {
        // a marker: fill bytes 0xFF, then its code
        while fragment.get(at) == Some(&0xFF) && fragment.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(0xFF), Some(&code)) = (fragment.get(at), fragment.get(at + 1)) else {
            return Err(format!("JPEG data without a frame header (byte {at})"));
        };
        let len = fragment
            .get(at + 2..at + 4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or("JPEG data without a frame header")?;
        // SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC); SOF55 (F7) for JPEG-LS
        if matches!(code, 0xC0..=0xCF if !matches!(code, 0xC4 | 0xC8 | 0xCC)) || code == 0xF7 {
            let sof = fragment
                .get(at + 4..at + 10)
                .ok_or("JPEG frame header cut short")?;
            return Ok(Some([
                u32::from(u16::from_be_bytes([sof[3], sof[4]])),
                u32::from(u16::from_be_bytes([sof[1], sof[2]])),
                u32::from(sof[5]),
            ]));
        }
        if matches!(code, 0xDA | 0xD9) || len < 2 {
            return Err(format!("JPEG data without a frame header (byte {at})"));
        }
        at += 2 + len;
    }
}

/// Re-reads a native little-endian file cut right after its PixelData element.
pub(super) fn salvage_before_trailing_data(
    bytes: &[u8],
    path: &Path,
    p: &DicomProbe,
) -> Option<DefaultDicomObject> {
    let explicit = match p.transfer_syntax.as_str() {
        "1.2.840.10008.1.2.1" => true,
        "1.2.840.10008.1.2" => false,
        _ => return None,
    };
    let min_len =
        u64::from(p.rows) * u64::from(p.columns) * u64::from(p.samples) * u64::from(p.frames) / 8;
    let tag = [0xE0u8, 0x7F, 0x10, 0x00];
    let mut from = 132;
    while let Some(at) = bytes
        .get(from..)?
        .windows(4)
        .position(|w| w == tag)
        .map(|i| i + from)
    {
        from = at + 4;
        let field = |o: usize| -> Option<u64> {
            let b = bytes.get(at + o..at + o + 4)?;
            Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        };
        let (len, header) = if explicit {
            match bytes.get(at + 4..at + 6) {
                Some(b"OW") | Some(b"OB") => (field(8)?, 12),
                _ => continue,
            }
        } else {
            (field(4)?, 8)
        };
        let end = usize::try_from(len).ok()?.checked_add(at + header)?;
        if len >= min_len && end <= bytes.len() {
            let cut = bytes.get(128..end)?;
            super::guard::check_lengths(bytes.get(..end)?, false, p.max_inflated).ok()?;
            return guard(path, || dicom_object::from_reader(cut)).ok()?.ok();
        }
    }
    None
}

/// Runs a third-party decoder, turning a panic inside it into an error naming the file.
pub(super) fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, ReadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason: "the DICOM decoder failed on malformed data".into(),
    })
}
