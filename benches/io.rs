//! io benchmark: time and peak memory to load a 512x512x300 CT series and to write its
//! mask as NIfTI and DICOM SEG.
//!
//! No real series that large ships in a registry package, so one is synthesized from the
//! real slice data/demo/ct_abdomen_slice.dcm (TotalSegmentator example CT, JPEG 2000):
//! decoded once, written 300 times uncompressed (explicit VR little endian) at 1 mm steps
//! with fresh UIDs, into a temporary folder. A plain harness (not criterion): each step
//! runs once after a warm-up read, since one load of 300 files is already a long sample,
//! and peak resident memory (VmHWM, reset through /proc/self/clear_refs) is only
//! meaningful per step.
//!
//! Run: `cargo bench --bench io` (release). `COSAM_BENCH_SLICES` changes the slice count.

use std::path::Path;
use std::time::Instant;

use cosam::io::{self, Limits, SegInfo};
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::FileMetaTableBuilder;
use ndarray::Array3;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn reset_peak_rss() {
    // "5" resets the peak resident set size (Linux >= 4.0)
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn synthesize(dir: &Path, slices: usize) -> anyhow::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo/ct_abdomen_slice.dcm");
    let volume = io::read(&src)?;
    let hu: Vec<i16> = volume
        .voxels()
        .iter()
        .map(|&v| v.round().clamp(-32768.0, 32767.0) as i16)
        .collect();
    let bytes: Vec<u8> = hu.iter().flat_map(|v| v.to_le_bytes()).collect();
    let base = dicom_object::open_file(&src)?.into_inner();
    let series_uid = "2.25.1000000000000000000000000000000001";
    for k in 0..slices {
        let mut obj = base.clone();
        let sop = format!("2.25.{}", 2_000_000_000_000_000_000u128 + k as u128);
        let put = |o: &mut dicom_object::InMemDicomObject, tag, vr, v: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        };
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop);
        put(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
        put(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            &(k + 1).to_string(),
        );
        obj.put(DataElement::new(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(
                ["-200", "-200", &format!("{}", -(k as f64))]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        ));
        put(&mut obj, tags::RESCALE_SLOPE, VR::DS, "1");
        put(&mut obj, tags::RESCALE_INTERCEPT, VR::DS, "0");
        obj.put(DataElement::new(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(1u16),
        ));
        obj.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(16u16),
        ));
        obj.put(DataElement::new(
            tags::HIGH_BIT,
            VR::US,
            PrimitiveValue::from(15u16),
        ));
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U8(bytes.clone().into()),
        ));
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax("1.2.840.10008.1.2.1")
            .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.2")
            .media_storage_sop_instance_uid(sop.as_str())
            .build()?;
        obj.with_exact_meta(meta)
            .write_to_file(dir.join(format!("IM{k:04}")))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let slices: usize = std::env::var("COSAM_BENCH_SLICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir()?;
    let series = dir.path().join("series");
    std::fs::create_dir(&series)?;
    let t = Instant::now();
    synthesize(&series, slices)?;
    println!(
        "io bench: synthesized {slices} slices of 512x512 in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        series.display()
    );
    // warm the page cache once so the timing measures decoding, not the disk
    let _ = io::read_inputs(&series, &Limits::default());

    reset_peak_rss();
    let base = peak_rss_mib().unwrap_or(0.0);
    let t = Instant::now();
    let mut inputs = io::read_inputs(&series, &Limits::default());
    let load_s = t.elapsed().as_secs_f64();
    let load_peak = peak_rss_mib().unwrap_or(0.0);
    let volume = inputs.pop().ok_or_else(|| anyhow::anyhow!("no volume"))??;
    let (n, r, c, _) = volume.voxels().dim();
    println!(
        "load   {n}x{r}x{c} series: {load_s:.2} s, peak RSS {load_peak:.0} MiB (before {base:.0} MiB; voxels {:.0} MiB as f32)",
        (n * r * c * 4) as f64 / 1048576.0
    );
    let mask = Array3::from_shape_fn((n, r, c), |(k, j, i)| {
        u8::from(volume.voxels()[[k, j, i, 0]] > 300.0)
    });

    reset_peak_rss();
    let t = Instant::now();
    let nii = dir.path().join("mask.nii.gz");
    io::write_mask_nifti(&nii, &mask, &volume)?;
    println!(
        "write  NIfTI (.nii.gz):     {:.2} s, peak RSS {:.0} MiB, {:.1} MiB on disk",
        t.elapsed().as_secs_f64(),
        peak_rss_mib().unwrap_or(0.0),
        std::fs::metadata(&nii)?.len() as f64 / 1048576.0
    );
    reset_peak_rss();
    let t = Instant::now();
    let seg = dir.path().join("mask.seg.dcm");
    io::write_dicom_seg(&seg, &mask, &volume, &SegInfo::default().with_label("bone"))?;
    println!(
        "write  DICOM SEG:           {:.2} s, peak RSS {:.0} MiB, {:.1} MiB on disk",
        t.elapsed().as_secs_f64(),
        peak_rss_mib().unwrap_or(0.0),
        std::fs::metadata(&seg)?.len() as f64 / 1048576.0
    );
    Ok(())
}
