//! include/cosam.h must be what cbindgen makes from src/lib.rs today
//! (`COSAM_BLESS=1` rewrites it).

use std::path::Path;

#[test]
fn header_is_generated_from_the_current_source() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = crate_dir.join("../../include/cosam.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/lib.rs");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    for name in [
        "cosam_segmenter_new",
        "cosam_embed",
        "cosam_predict",
        "cosam_last_error",
        "cosam_embedding_free",
        "cosam_segmenter_free",
        "typedef struct CosamSegmenter CosamSegmenter",
        "#define COSAM_OK 0",
    ] {
        assert!(generated.contains(name), "generated header lacks {name}");
    }
    if std::env::var_os("COSAM_BLESS").is_some() {
        std::fs::write(&header, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&header).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/cosam.h is stale: regenerate it with \
         COSAM_BLESS=1 cargo test --release -p cosam-c --test header"
    );
}
