//! [`EmbeddedSlice`]: a slice after the encoder, and its byte form for a viewer's cache.

use crate::model::{ImageEmbedding, ModelError, EMBEDDING_SHAPE};
use crate::preprocess::Transform;
use crate::Result;

/// A slice after the encoder: what every later decoder call on it needs. A viewer can keep
/// it in a cache as bytes ([`EmbeddedSlice::to_bytes`], about 4 MiB).
#[derive(Debug, Clone)]
pub struct EmbeddedSlice {
    /// `None` when the slice is constant after intensity mapping: its masks are empty.
    pub(super) embedding: Option<ImageEmbedding>,
    pub(super) transform: Transform,
    /// sha256 (hex) of the encoder that made the embedding.
    pub(super) encoder_sha256: String,
}

/// First bytes of [`EmbeddedSlice::to_bytes`].
const EMBEDDING_MAGIC: &[u8; 8] = b"COSAMEMB";
/// Version of the byte layout of [`EmbeddedSlice::to_bytes`].
const EMBEDDING_VERSION: u32 = 1;
/// Bytes of the header of [`EmbeddedSlice::to_bytes`]: magic, version, encoder sha256 (64
/// hex digits), rows and columns (u64), and a flag for a constant slice.
const EMBEDDING_HEADER: usize = 8 + 4 + 64 + 8 + 8 + 1;
/// Largest side accepted from bytes: the readers' limits are far below it.
const MAX_SIDE_FROM_BYTES: u64 = 1 << 20;

impl EmbeddedSlice {
    /// Where the slice sits in the model frame.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The embedding, unless the slice is constant.
    pub fn embedding(&self) -> Option<&ImageEmbedding> {
        self.embedding.as_ref()
    }

    /// sha256 (hex) of the image encoder that made the embedding.
    pub fn encoder_sha256(&self) -> &str {
        &self.encoder_sha256
    }

    /// The slice as bytes: a header (`COSAMEMB`, layout version, the encoder's sha256, the
    /// source rows and columns, a constant-slice flag) and the `[1, 256, 64, 64]` embedding
    /// as little-endian f32. [`EmbeddedSlice::from_bytes`] reads it back exactly.
    pub fn to_bytes(&self) -> Vec<u8> {
        let values = self.embedding.as_ref().map_or(0, |e| e.0.len());
        let mut out = Vec::with_capacity(EMBEDDING_HEADER + 4 * values);
        out.extend_from_slice(EMBEDDING_MAGIC);
        out.extend_from_slice(&EMBEDDING_VERSION.to_le_bytes());
        let mut sha = [b'0'; 64];
        for (d, s) in sha.iter_mut().zip(self.encoder_sha256.bytes()) {
            *d = s;
        }
        out.extend_from_slice(&sha);
        out.extend_from_slice(&(self.transform.source_rows as u64).to_le_bytes());
        out.extend_from_slice(&(self.transform.source_cols as u64).to_le_bytes());
        out.push(u8::from(self.embedding.is_some()));
        if let Some(e) = &self.embedding {
            for v in e.0.iter() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Reads bytes written by [`EmbeddedSlice::to_bytes`]. The embedding keeps its
    /// encoder's sha256, and [`Segmenter::predict`](super::Segmenter::predict) refuses it under another encoder.
    ///
    /// # Errors
    /// [`ModelError::EmbeddingBytes`] for a wrong magic, version, size or header field.
    pub fn from_bytes(bytes: &[u8]) -> Result<EmbeddedSlice, ModelError> {
        let bad = |reason: String| ModelError::EmbeddingBytes { reason };
        let header = bytes.get(..EMBEDDING_HEADER).ok_or_else(|| {
            bad(format!(
                "{} bytes, shorter than the {EMBEDDING_HEADER}-byte header",
                bytes.len()
            ))
        })?;
        let (magic, rest) = header.split_at(8);
        if magic != EMBEDDING_MAGIC {
            return Err(bad("missing the COSAMEMB signature".into()));
        }
        let (version, rest) = rest.split_at(4);
        let version = u32::from_le_bytes(version.try_into().map_err(|_| bad("header".into()))?);
        if version != EMBEDDING_VERSION {
            return Err(bad(format!(
                "layout version {version}, this cosam reads {EMBEDDING_VERSION}"
            )));
        }
        let (sha, rest) = rest.split_at(64);
        if !sha.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad("encoder sha256 is not hexadecimal".into()));
        }
        let encoder_sha256 = String::from_utf8_lossy(sha).into_owned();
        let (rows, rest) = rest.split_at(8);
        let (cols, flag) = rest.split_at(8);
        let side = |b: &[u8], what: &str| -> Result<usize, ModelError> {
            let v = u64::from_le_bytes(b.try_into().map_err(|_| bad("header".into()))?);
            if v == 0 || v > MAX_SIDE_FROM_BYTES {
                return Err(bad(format!(
                    "{what} {v} is not in 1..={MAX_SIDE_FROM_BYTES}"
                )));
            }
            usize::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit this machine")))
        };
        let (rows, cols) = (side(rows, "rows")?, side(cols, "columns")?);
        let values: usize = EMBEDDING_SHAPE.iter().product();
        let body = &bytes[EMBEDDING_HEADER..];
        let embedding = match flag {
            [0] if body.is_empty() => None,
            [1] if body.len() == 4 * values => {
                let data: Vec<f32> = body
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                let [c, h, w] = EMBEDDING_SHAPE;
                let tensor = ndarray::Array4::from_shape_vec((1, c, h, w), data)
                    .map_err(|e| bad(e.to_string()))?;
                Some(ImageEmbedding::from_tensor(tensor)?)
            }
            [f] if *f > 1 => return Err(bad(format!("constant-slice flag is {f}"))),
            _ => {
                return Err(bad(format!(
                    "{} bytes of embedding, expected {}",
                    body.len(),
                    if flag == [0] { 0 } else { 4 * values }
                )))
            }
        };
        Ok(EmbeddedSlice {
            embedding,
            transform: Transform::new(rows, cols),
            encoder_sha256,
        })
    }
}
