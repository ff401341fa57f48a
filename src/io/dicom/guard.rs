//! A structural pre-check of DICOM files before `dicom-object` parses them.
//!
//! `dicom-object` allocates an element's declared length before reading it, so a 10 kB
//! file whose header claims a 4 GB element makes it allocate (and zero) 4 GB: found by
//! the fuzzer (fuzz/README.md). This walk checks, without allocating, that every defined
//! length fits inside its enclosing sequence item or the file, for the file meta group
//! and a data set in implicit VR little endian, explicit VR little endian or explicit VR
//! big endian. Deflated data sets are inflated with a size cap first.
//!
//! It also refuses a binary value whose length is not a whole number of values (an AT
//! or FL of 6 bytes, a US of 3): the parser reads `len / size` values and then reads the
//! next header from inside the leftover bytes, so a 6 kB file could make it allocate
//! ~800 MB for a "length" taken from text (found by libFuzzer, fuzz/README.md).
//!
//! Where this walk and the parser could read the file differently, it refuses the file:
//! a file meta group whose length disagrees with its elements, or whose elements repeat
//! or do not ascend, since the parser and this walk would pick a different transfer
//! syntax or start the data set elsewhere.

use std::io::Read;

use dicom_encoding::{Codec, Endianness, TransferSyntaxIndex};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Nesting depth of sequences followed.
const MAX_DEPTH: usize = 64;

const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const UNDEFINED: u32 = 0xFFFF_FFFF;

#[derive(Clone, Copy, PartialEq)]
enum Syntax {
    ImplicitLe,
    ExplicitLe,
    ExplicitBe,
}

/// Tag (group, element), VR when explicit, and value length.
type Header = ((u16, u16), Option<[u8; 2]>, u32);

/// Bytes per value of the binary VRs that `dicom-parser` reads as `len / size` numbers
/// (AT as tags), `None` for the others.
fn value_size(vr: &[u8; 2]) -> Option<u32> {
    match vr {
        b"SS" | b"US" | b"OW" => Some(2),
        b"AT" | b"FL" | b"SL" | b"UL" | b"OF" | b"OL" => Some(4),
        b"FD" | b"OD" | b"SV" | b"UV" | b"OV" => Some(8),
        _ => None,
    }
}

/// The VR the parser reads an element's value as: the explicit one, or in implicit VR the
/// standard dictionary's (as `dicom-encoding`'s implicit decoder resolves it: OW for pixel
/// and overlay data, US for US-or-SS, OW for OB-or-OW, UN for unknown tags).
///
/// An element the dictionary gives as US-or-SS is 16-bit values whatever VR the file
/// writes: once dicom-parser has read a PixelRepresentation of 1, it reads such elements
/// as SS. An odd-length "OB" there left it a byte behind, and it took a 2 GB length from
/// the next header (2.4 GB peak RSS from 207 bytes; found reading the parser).
fn parser_vr(tag: (u16, u16), explicit: Option<[u8; 2]>) -> Option<[u8; 2]> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    if tag.0 == 0xFFFE {
        return explicit;
    }
    let entry = dicom_dictionary_std::StandardDataDictionary.by_tag(dicom_core::Tag(tag.0, tag.1));
    if entry.is_some_and(|e| e.vr() == VirtualVr::Xs) {
        return Some(*b"SS");
    }
    if explicit.is_some() {
        return explicit;
    }
    if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
        return Some(*b"OW");
    }
    entry.map(|entry| entry.vr().relaxed().to_bytes())
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    syntax: Syntax,
}

impl Cursor<'_> {
    fn u16(&mut self, big: bool) -> Result<u16, String> {
        let b = self
            .data
            .get(self.pos..self.pos + 2)
            .ok_or("truncated element header")?;
        self.pos += 2;
        Ok(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    }

    fn u32(&mut self, big: bool) -> Result<u32, String> {
        let b = self
            .data
            .get(self.pos..self.pos + 4)
            .ok_or("truncated element header")?;
        self.pos += 4;
        Ok(if big {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }

    /// Reads one element header: tag, VR (explicit only) and length.
    fn header(&mut self) -> Result<Header, String> {
        let big = self.syntax == Syntax::ExplicitBe;
        let group = self.u16(big)?;
        let element = self.u16(big)?;
        let tag = (group, element);
        // items and delimiters have no VR in any syntax (always little endian in LE)
        if group == 0xFFFE {
            let at = self.pos - 4;
            let len = self.u32(big)?;
            // PS3.5 7.5: delimiters have length 0. dicom-parser takes a delimiter's
            // length at face value where it does not expect one and allocates it.
            if (tag == ITEM_END || tag == SEQUENCE_END) && len != 0 {
                return Err(format!(
                    "delimiter (FFFE,{element:04X}) at byte {at} has length {len}, not 0"
                ));
            }
            return Ok((tag, None, len));
        }
        if self.syntax == Syntax::ImplicitLe {
            return Ok((tag, None, self.u32(false)?));
        }
        let vr = self
            .data
            .get(self.pos..self.pos + 2)
            .ok_or("truncated element header")?;
        let vr = [vr[0], vr[1]];
        self.pos += 2;
        let long = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"SV"
                | b"UV"
        );
        let short = matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        );
        if !long && !short {
            return Err(format!(
                "unknown value representation {:?} at byte {}",
                String::from_utf8_lossy(&vr),
                self.pos - 2
            ));
        }
        let len = if long {
            self.pos += 2;
            self.u32(big)?
        } else {
            u32::from(self.u16(big)?)
        };
        Ok((tag, Some(vr), len))
    }
}

/// Walks elements until `end` (or a delimiter when `end` is `None`).
fn walk(
    c: &mut Cursor<'_>,
    end: Option<usize>,
    depth: usize,
    stop_at_pixel_data: bool,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("sequences nested too deeply".into());
    }
    let limit = end.unwrap_or(c.data.len());
    let mut after_pixel_data = false;
    while c.pos < limit {
        let at = c.pos;
        let (tag, vr, len) = c.header()?;
        if tag == ITEM {
            return Err(format!("sequence item at byte {at} outside a sequence"));
        }
        // The probe reads up to the pixel data, the decoder the whole file, where a later
        // element replaces an earlier one of the same tag: Rows and Columns after the pixel
        // data made a JPEG decoder size its output at 4096 x 4096 x 200 from a 2 kB file
        // that the probe had checked as 1 x 1 (found reading the decoder).
        if after_pixel_data && tag <= PIXEL_DATA {
            return Err(format!(
                "element ({:04X},{:04X}) at byte {at} follows the pixel data out of order",
                tag.0, tag.1
            ));
        }
        after_pixel_data |= depth == 0 && tag == PIXEL_DATA;
        if tag == ITEM_END || tag == SEQUENCE_END {
            if end.is_none() {
                return Ok(());
            }
            continue;
        }
        if depth == 0 && stop_at_pixel_data && tag == PIXEL_DATA {
            return Ok(());
        }
        let sequence_like = vr.as_ref().is_some_and(|v| v == b"SQ")
            || (vr.is_none() && len == UNDEFINED)
            || (vr.as_ref().is_some_and(|v| v == b"UN") && len == UNDEFINED);
        // dicom-parser reads any undefined-length element but pixel data as a sequence in
        // the file's own syntax (an undefined-length UN too, whatever PS3.5 6.2.2 says of
        // its encoding), so this walk follows them the same way. It used to stop at such
        // a UN, and a 2 GB length after it reached the parser.
        if len == UNDEFINED {
            if !sequence_like
                && tag != PIXEL_DATA
                && vr.as_ref().is_none_or(|v| v != b"OB" && v != b"OW")
            {
                return Err(format!(
                    "undefined length on a non-sequence element at byte {at}"
                ));
            }
            // encapsulated pixel data holds raw fragments, not data sets
            walk_items(c, None, depth + 1, tag == PIXEL_DATA)?;
            continue;
        }
        let value_end = c
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= limit)
            .ok_or_else(|| {
                format!(
                    "element ({:04X},{:04X}) at byte {at} claims {len} bytes, only {} remain",
                    tag.0,
                    tag.1,
                    limit.saturating_sub(c.pos)
                )
            })?;
        // Pixel data that ends the data set is exempt: the decoder checks its size
        // against Rows x Columns. Anywhere else an odd-length OW leaves a byte over, and
        // the parser reads the next header from there (a libFuzzer find: 4.2 GB).
        let ends_the_data = depth == 0 && value_end == c.data.len();
        if tag != PIXEL_DATA || !ends_the_data {
            if let Some(vr) = parser_vr(tag, vr) {
                if let Some(size) = value_size(&vr).filter(|size| len % size != 0) {
                    return Err(format!(
                        "element ({:04X},{:04X}) at byte {at} has VR {} and {len} bytes, \
                         not a multiple of {size}",
                        tag.0,
                        tag.1,
                        String::from_utf8_lossy(&vr)
                    ));
                }
            }
        }
        // A defined-length sequence (or, in implicit VR, a value that starts with an
        // item tag) holds items whose lengths must fit inside it.
        let starts_with_item = c
            .data
            .get(c.pos..c.pos + 4)
            .is_some_and(|b| b == [0xFE, 0xFF, 0x00, 0xE0]);
        if vr.as_ref().is_some_and(|v| v == b"SQ")
            || (vr.is_none() && tag.0 != 0xFFFE && starts_with_item)
        {
            walk_items(c, Some(value_end), depth + 1, false)?;
        }
        c.pos = value_end;
    }
    if end.is_none() && c.pos > c.data.len() {
        return Err("truncated".into());
    }
    Ok(())
}

/// Walks sequence items (or encapsulated fragments) until `end` or a sequence delimiter.
fn walk_items(
    c: &mut Cursor<'_>,
    end: Option<usize>,
    depth: usize,
    fragments: bool,
) -> Result<(), String> {
    let limit = end.unwrap_or(c.data.len());
    while c.pos < limit {
        let at = c.pos;
        let (tag, _, len) = c.header()?;
        if tag == SEQUENCE_END {
            return Ok(());
        }
        if tag != ITEM {
            return Err(format!("expected a sequence item at byte {at}"));
        }
        if len == UNDEFINED {
            if fragments {
                return Err(format!("pixel data fragment at byte {at} has no length"));
            }
            walk(c, None, depth, false)?;
            continue;
        }
        let item_end = c
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= limit)
            .ok_or_else(|| {
                format!(
                    "item at byte {at} claims {len} bytes, only {} remain",
                    limit.saturating_sub(c.pos)
                )
            })?;
        // item content: a nested data set, or (encapsulated pixel data) raw bytes; check
        // it as a data set only when it parses as one
        if !fragments {
            let mut inner = Cursor {
                data: c.data,
                pos: c.pos,
                syntax: c.syntax,
            };
            walk(&mut inner, Some(item_end), depth, false)?;
        }
        c.pos = item_end;
    }
    if end.is_none() {
        return Err("sequence without its delimiter (truncated)".into());
    }
    Ok(())
}

/// Why [`check_lengths`] refused a file.
pub(crate) enum Refusal {
    /// A sentence saying what is broken and where.
    Malformed(String),
    /// The deflated data set inflates past this many bytes, the caller's cap.
    InflatesPast(u64),
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Refusal::Malformed(reason)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(reason) => f.write_str(reason),
            Refusal::InflatesPast(cap) => {
                write!(f, "the deflated data set inflates past {cap} bytes")
            }
        }
    }
}

/// Checks the lengths of a DICOM file (`bytes` is the whole file, preamble included).
/// Files without the `DICM` preamble are left to the parser. A deflated data set is
/// inflated for the check, to at most `max_inflated` bytes.
///
/// # Errors
/// [`Refusal::Malformed`] with a sentence saying which element claims more bytes than
/// remain (or what else is broken), [`Refusal::InflatesPast`] past `max_inflated`.
pub(crate) fn check_lengths(
    bytes: &[u8],
    stop_at_pixel_data: bool,
    max_inflated: u64,
) -> Result<(), Refusal> {
    if bytes.get(128..132) != Some(b"DICM".as_slice()) {
        return Ok(());
    }
    // file meta group: explicit VR little endian, group 0002
    let mut meta = Cursor {
        data: bytes,
        pos: 132,
        syntax: Syntax::ExplicitLe,
    };
    let mut ts = String::new();
    // where (0002,0000) says the group ends: dicom-object reads meta elements up to there
    let mut meta_end = None;
    let mut previous = None;
    loop {
        let at = meta.pos;
        let Some(group) = bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
        else {
            return Err(Refusal::Malformed(
                "file ends inside the file meta group".into(),
            ));
        };
        if group != 0x0002 {
            meta.pos = at;
            break;
        }
        if meta_end.is_some_and(|end| at >= end) {
            break;
        }
        let (tag, _, len) = meta.header()?;
        // PS3.5 7.1: tags ascend. dicom-object keeps the first group length and the
        // first transfer syntax it meets, this walk the last: a second meta group inside
        // the first made them disagree on where the data set starts and in which byte
        // order, and the parser took text for a 2.65 GB length (a libFuzzer find).
        if previous.is_some_and(|p| tag <= p) {
            return Err(format!(
                "file meta element ({:04X},{:04X}) at byte {at} repeats or is out of order",
                tag.0, tag.1
            )
            .into());
        }
        previous = Some(tag);
        let value_end = meta
            .pos
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len() && len != UNDEFINED)
            .ok_or_else(|| format!("file meta element at byte {at} claims {len} bytes"))?;
        if tag == (0x0002, 0x0000) && len == 4 {
            // the group length says how many meta bytes follow; parsers trust it
            let v = &bytes[meta.pos..value_end];
            let group_len = u64::from(u32::from_le_bytes([v[0], v[1], v[2], v[3]]));
            if group_len > (bytes.len() - value_end) as u64 {
                return Err(format!(
                    "file meta group length {group_len} exceeds the file ({} bytes remain)",
                    bytes.len() - value_end
                )
                .into());
            }
            meta_end = Some(value_end + group_len as usize);
        }
        if tag == (0x0002, 0x0010) {
            // trimmed as dicom-object trims it (`FileMetaTable::transfer_syntax`): a
            // trailing tab or newline left here made this walk read explicit VR where
            // the parser read implicit VR
            ts = String::from_utf8_lossy(&bytes[meta.pos..value_end])
                .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string();
        }
        meta.pos = value_end;
    }
    // A group length that disagrees with the elements (an element of another group
    // inside it, or group 0002 going on past it) would make the parser start the data
    // set elsewhere than this walk: found by libFuzzer in a deflated file.
    if let Some(end) = meta_end.filter(|&end| end != meta.pos) {
        return Err(format!(
            "file meta group length says the group ends at byte {end}, its elements end \
             at byte {}",
            meta.pos
        )
        .into());
    }
    // Byte offsets in messages count from the file's start, or in a deflated file from
    // the start of the inflated data set. The byte order, VR encoding and deflation come
    // from the registry dicom-object reads with: deciding deflation by one UID let the
    // JPIP Referenced Deflate syntaxes, which the parser inflates too, be walked as raw
    // deflate bytes (a 2 GB length reached the parser from a 45 kB file).
    let Some(entry) = TransferSyntaxRegistry.get(&ts) else {
        // dicom-object refuses a syntax it does not know before reading the data set
        return Ok(());
    };
    // Implicit VR little endian is the registry's one syntax without explicit VRs (which
    // it does not expose as a property).
    let syntax = match (entry.uid(), entry.endianness()) {
        ("1.2.840.10008.1.2", _) => Syntax::ImplicitLe,
        (_, Endianness::Big) => Syntax::ExplicitBe,
        (_, Endianness::Little) => Syntax::ExplicitLe,
    };
    if matches!(entry.codec(), Codec::Dataset(Some(_))) {
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&bytes[meta.pos..])
            .take(max_inflated.saturating_add(1))
            .read_to_end(&mut inflated)
            .map_err(|e| format!("deflated data set does not inflate: {e}"))?;
        if inflated.len() as u64 > max_inflated {
            return Err(Refusal::InflatesPast(max_inflated));
        }
        let mut c = Cursor {
            data: &inflated,
            pos: 0,
            syntax,
        };
        return walk(&mut c, Some(inflated.len()), 0, stop_at_pixel_data)
            .map_err(|e| format!("{e} of the inflated data set").into());
    }
    let mut c = Cursor {
        data: bytes,
        pos: meta.pos,
        syntax,
    };
    Ok(walk(&mut c, Some(bytes.len()), 0, stop_at_pixel_data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8], stop_at_pixel_data: bool) -> Result<(), String> {
        check_lengths(bytes, stop_at_pixel_data, u64::MAX).map_err(|e| e.to_string())
    }

    /// Preamble, "DICM", (0002,0010) UI `ts` (NUL-padded to even length), then `body`.
    fn file_in(ts: &[u8], body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        f.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        f.extend_from_slice(ts);
        f.extend_from_slice(body);
        f
    }

    /// [`file_in`] explicit VR little endian.
    fn file(body: &[u8]) -> Vec<u8> {
        file_in(b"1.2.840.10008.1.2.1\0", body)
    }

    #[test]
    fn well_formed_elements_pass() {
        // (0010,0010) PN "DOE^J " ; (7FE0,0010) OW 4 bytes
        let mut body = vec![0x10, 0x00, 0x10, 0x00, b'P', b'N', 6, 0];
        body.extend_from_slice(b"DOE^J ");
        body.extend_from_slice(&[
            0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4,
        ]);
        assert!(check(&file(&body), false).is_ok());
    }

    #[test]
    fn a_length_past_the_end_is_refused_before_allocation() {
        let body = [
            0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2,
        ];
        let err = check(&file(&body), false).unwrap_err();
        assert!(err.contains("claims 4294967280 bytes"), "{err}");
    }

    #[test]
    fn a_binary_value_must_hold_whole_values() {
        // (0018,0050) AT of 6 bytes then (0018,0080) DS: dicom-parser reads one tag and
        // takes the header of the next element from "00\x18\x00\x80\x00DS..."
        let mut body = vec![0x18, 0x00, 0x50, 0x00, b'A', b'T', 6, 0];
        body.extend_from_slice(b"0.8000");
        body.extend_from_slice(&[0x18, 0x00, 0x80, 0x00, b'D', b'S', 10, 0]);
        body.extend_from_slice(b"4000.0000 ");
        let err = check(&file(&body), false).unwrap_err();
        assert!(
            err.contains("(0018,0050)") && err.contains("not a multiple of 4"),
            "{err}"
        );
        // the same with a whole tag is fine
        body[6] = 4;
        body.drain(12..14);
        assert!(check(&file(&body), false).is_ok());
    }

    #[test]
    fn implicit_vr_values_are_checked_against_the_dictionary() {
        // implicit VR little endian; (0028,0010) Rows, US in the dictionary, with 3 bytes
        let mut f = file_in(
            b"1.2.840.10008.1.2\0",
            &[0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0, 64, 0, 0],
        );
        let err = check(&f, false).unwrap_err();
        assert!(
            err.contains("(0028,0010)") && err.contains("VR US"),
            "{err}"
        );
        // 2 bytes, and a private tag (not in the dictionary) of 3 bytes, are fine
        let n = f.len();
        f[n - 7] = 2;
        f.pop();
        f.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, 3, 0, 0, 0, 1, 2, 3]);
        assert!(check(&f, false).is_ok());
    }

    #[test]
    fn the_meta_group_ends_where_its_group_length_says() {
        // (0002,0000) UL covering (0002,0010) and a (0003,0013) SH after it
        let ts = b"1.2.840.10008.1.2.1\0";
        let mut group = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
        group.extend_from_slice(&(ts.len() as u16).to_le_bytes());
        group.extend_from_slice(ts);
        let stray = [0x03, 0x00, 0x13, 0x00, b'S', b'H', 2, 0, b'A', b' '];
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        f.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        f.extend_from_slice(&((group.len() + stray.len()) as u32).to_le_bytes());
        f.extend_from_slice(&group);
        f.extend_from_slice(&stray);
        f.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' ']);
        let err = check(&f, false).unwrap_err();
        assert!(err.contains("group length says"), "{err}");
        // without the stray element, and with a matching group length, it passes
        let mut g = vec![0u8; 128];
        g.extend_from_slice(b"DICM");
        g.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        g.extend_from_slice(&(group.len() as u32).to_le_bytes());
        g.extend_from_slice(&group);
        g.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' ']);
        assert!(check(&g, false).is_ok());
    }

    #[test]
    fn meta_elements_ascend_so_the_parser_reads_the_same_group() {
        // two meta groups back to back, the first announcing big endian, its length
        // running 12 bytes on over the second's group length, and the second announcing
        // JPEG baseline: the parser kept the first, this walk used to keep the second
        let group = |ts: &[u8], overrun: u32| {
            let mut g = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
            g.extend_from_slice(&(ts.len() as u16).to_le_bytes());
            g.extend_from_slice(ts);
            let mut f = vec![0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0];
            f.extend_from_slice(&(g.len() as u32 + overrun).to_le_bytes());
            f.extend_from_slice(&g);
            f
        };
        let preamble = [&[0u8; 128][..], b"DICM"].concat();
        let element = [0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' '];
        let jpeg = group(b"1.2.840.10008.1.2.4.50", 0);
        let f = [
            &preamble,
            &group(b"1.2.840.10008.1.2.2\0", 12),
            &jpeg,
            &element[..],
        ]
        .concat();
        let err = check(&f, false).unwrap_err();
        assert!(
            err.contains("(0002,0000) at byte 172 repeats or is out of order"),
            "{err}"
        );
        // one group alone passes
        assert!(check(&[&preamble, &jpeg, &element[..]].concat(), false).is_ok());
    }

    #[test]
    fn the_transfer_syntax_is_trimmed_as_the_parser_trims_it() {
        // implicit VR little endian followed by a tab: the parser reads implicit VR, so
        // "OB" and the two bytes after it are the length, 0x7FFF424F (2 GB); read as
        // explicit VR this element has length 0 and the file passed
        let element = [0x11, 0x00, 0x10, 0x10, b'O', b'B', 0xFF, 0x7F, 0, 0, 0, 0];
        let err = check(&file_in(b"1.2.840.10008.1.2\t", &element), false).unwrap_err();
        assert!(err.contains("claims 2147435087 bytes"), "{err}");
    }

    #[test]
    fn what_follows_an_undefined_length_un_is_checked() {
        // (0011,0010) UN of undefined length holding one empty item, its delimiter, then
        // (0011,1010) OB claiming 0x7FFF0000 bytes
        let mut body = vec![
            0x11, 0x00, 0x10, 0x00, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let huge = [0x11, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0, 0, 0xFF, 0x7F];
        let err = check(&file(&[&body[..], &huge].concat()), false).unwrap_err();
        assert!(
            err.contains("(0011,1010)") && err.contains("claims 2147418112 bytes"),
            "{err}"
        );
        // with an element that fits after it, the file passes
        let fits = [0x10, 0x00, 0x10, 0x00, b'P', b'N', 2, 0, b'A', b' '];
        assert!(check(&file(&[&body[..], &fits].concat()), false).is_ok());
    }

    #[test]
    fn odd_length_pixel_data_is_refused_unless_it_ends_the_file() {
        // (7FE0,0010) OW of 3 bytes, then a sequence delimiter and (FFFC,FFFC) OB: the
        // parser reads one 16-bit value and takes the next header from the byte left over
        let pixels = [
            0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 3, 0, 0, 0, 1, 2, 3,
        ];
        let after = [
            0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0, 0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 0, 0, 0,
            0,
        ];
        let err = check(&file(&[&pixels[..], &after].concat()), false).unwrap_err();
        assert!(
            err.contains("(7FE0,0010)") && err.contains("not a multiple of 2"),
            "{err}"
        );
        assert!(check(&file(&pixels), false).is_ok());
    }

    #[test]
    fn us_or_ss_elements_are_whole_16_bit_values_whatever_vr_is_written() {
        // PixelRepresentation 1, then (0028,0106) SmallestImagePixelValue written as OB
        // of 1 byte: dicom-parser reads it as SS, consumes no byte, and reads the next
        // header one byte early
        let signed = [0x28, 0x00, 0x03, 0x01, b'U', b'S', 2, 0, 1, 0];
        let odd = [0x28, 0x00, 0x06, 0x01, b'O', b'B', 0, 0, 1, 0, 0, 0, 0x09];
        let err = check(&file(&[&signed[..], &odd].concat()), false).unwrap_err();
        assert!(
            err.contains("(0028,0106)") && err.contains("VR SS and 1 bytes"),
            "{err}"
        );
        let even = [
            0x28, 0x00, 0x06, 0x01, b'O', b'B', 0, 0, 2, 0, 0, 0, 0x09, 0,
        ];
        assert!(check(&file(&[&signed[..], &even].concat()), false).is_ok());
    }

    #[test]
    fn every_deflated_syntax_is_inflated_for_the_walk() {
        // JPIP Referenced Deflate: dicom-object inflates its data set like Deflated
        // Explicit VR Little Endian; an element in it claims 2 GB
        let set = [0x11, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0, 0, 0, 0x7F];
        let mut deflate =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut deflate, &set).unwrap();
        let bytes = file_in(b"1.2.840.10008.1.2.4.95", &deflate.finish().unwrap());
        let err = check(&bytes, false).unwrap_err();
        assert!(
            err.contains("(0011,1010) at byte 0 claims 2130706432 bytes")
                && err.ends_with("of the inflated data set"),
            "{err}"
        );
    }

    #[test]
    fn items_belong_in_sequences_and_delimiters_have_no_length() {
        // empty pixel data, then an item and a sequence delimiter claiming 0x88000000
        // bytes at the top level (a libFuzzer find: dicom-parser allocated 2.28 GB)
        let pixel_data = [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 0, 0, 0, 0];
        let item = [0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0];
        let delimiter = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0x88];
        let err = check(&file(&[&pixel_data[..], &item].concat()), false).unwrap_err();
        assert!(err.contains("outside a sequence"), "{err}");
        let err = check(&file(&[&pixel_data[..], &delimiter].concat()), false).unwrap_err();
        assert!(
            err.contains("delimiter (FFFE,E0DD)") && err.contains("length 2281701376"),
            "{err}"
        );
        // a stray delimiter of length 0 stays tolerated
        let mut zero = delimiter;
        zero[7] = 0;
        assert!(check(&file(&[&pixel_data[..], &zero].concat()), false).is_ok());
    }

    #[test]
    fn items_must_fit_their_sequence() {
        // (0008,1115) SQ, length 16, holding an item that claims 1000 bytes
        let mut body = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 16, 0, 0, 0];
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xE8, 0x03, 0, 0]);
        body.extend_from_slice(&[0; 8]);
        assert!(check(&file(&body), false).is_err());
    }
}
