//! A memory image: the pages of a linear memory unlike its module's
//! initial image, and the mutable globals beside it, lz4-compressed.

use std::collections::HashMap;

use super::{PAGE, WASM_PAGE};

/// A module's linear memory as a new instance has it: its active data
/// segments, by 4 KiB page (every other page is zero). A start function
/// could write more; an image keeps every page unlike this one, so the
/// only page it could miss is one a start function wrote and the service
/// later put back to its data segment's bytes.
#[derive(Debug, Default)]
pub(crate) struct InitialImage {
    pages: HashMap<u32, Box<[u8]>>,
}

impl InitialImage {
    /// Page `index` as a new instance has it; `None`: all zero.
    fn page(&self, index: u32) -> Option<&[u8]> {
        self.pages.get(&index).map(|p| &p[..])
    }
}

impl InitialImage {
    /// Lays `data` at `offset`.
    pub(super) fn put(&mut self, offset: u32, mut data: &[u8]) {
        let mut at = offset as usize;
        while !data.is_empty() {
            let within = at % PAGE;
            let n = data.len().min(PAGE - within);
            let page = self
                .pages
                .entry((at / PAGE) as u32)
                .or_insert_with(|| vec![0; PAGE].into_boxed_slice());
            page[within..within + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            at += n;
        }
    }
}

/// A memory kept as the pages unlike the initial image, with the mutable
/// globals' values, lz4-compressed: `[wasm pages u32][kept u32][globals
/// u32][page index u32 …][global u64 …][page bytes …]`.
#[derive(Debug, Default)]
pub(crate) struct ImageWriter {
    pages: u32,
    kept: Vec<u32>,
    globals: Vec<u64>,
    bytes: Vec<u8>,
}

impl ImageWriter {
    /// An image of a memory of `pages` wasm pages.
    pub fn new(pages: u32) -> Self {
        ImageWriter {
            pages,
            ..Default::default()
        }
    }

    /// Takes a memory's bytes, `head` its first 8 and `rest` the others
    /// (as `read` hands them out), keeping the pages unlike `initial`.
    pub fn take(&mut self, initial: &InitialImage, head: &[u8; 8], rest: &[u8]) {
        let first = rest.len().min(PAGE - 8);
        let mut page0 = Vec::with_capacity(PAGE);
        page0.extend_from_slice(head);
        page0.extend_from_slice(&rest[..first]);
        self.take_page(initial, 0, &page0);
        for (i, page) in rest[first..].chunks(PAGE).enumerate() {
            self.take_page(initial, i as u32 + 1, page);
        }
    }

    /// Keeps page `index` if it is unlike `initial`'s.
    fn take_page(&mut self, initial: &InitialImage, index: u32, page: &[u8]) {
        let same = match initial.page(index) {
            Some(first) => first.get(..page.len()) == Some(page),
            None => page.iter().all(|b| *b == 0),
        };
        if !same {
            self.kept.push(index);
            self.bytes.extend_from_slice(page);
            // A memory is whole wasm pages, so only a test's is shorter.
            self.bytes.resize(self.bytes.len() + PAGE - page.len(), 0);
        }
    }

    /// Takes the mutable globals' values (as `globals-out` hands them out:
    /// 8 little-endian bytes each).
    pub fn take_globals(&mut self, values: &[u8]) {
        self.globals = values
            .chunks_exact(8)
            .map(|v| u64::from_le_bytes(v.try_into().unwrap_or_default()))
            .collect();
    }

    /// The image, compressed.
    pub fn finish(self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(
            12 + 4 * self.kept.len() + 8 * self.globals.len() + self.bytes.len(),
        );
        raw.extend_from_slice(&self.pages.to_le_bytes());
        raw.extend_from_slice(&(self.kept.len() as u32).to_le_bytes());
        raw.extend_from_slice(&(self.globals.len() as u32).to_le_bytes());
        for index in &self.kept {
            raw.extend_from_slice(&index.to_le_bytes());
        }
        for value in &self.globals {
            raw.extend_from_slice(&value.to_le_bytes());
        }
        raw.extend_from_slice(&self.bytes);
        lz4_flex::compress_prepend_size(&raw)
    }
}

/// A kept memory, read back: its size, its runs of kept pages and the
/// mutable globals' values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Image {
    /// Its size in wasm pages.
    pub pages: u32,
    /// Runs of kept pages: where each starts (a byte address) and its bytes.
    pub runs: Vec<(u32, Vec<u8>)>,
    /// The globals' values, in the order the added module imports them.
    pub globals: Vec<u64>,
}

/// Why a kept image could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a kept memory image is damaged: {0}")]
pub(crate) struct DamagedImage(String);

impl Image {
    /// Reads an image [`ImageWriter::finish`] made.
    pub fn read(compressed: &[u8]) -> Result<Image, DamagedImage> {
        let raw = lz4_flex::decompress_size_prepended(compressed)
            .map_err(|e| DamagedImage(e.to_string()))?;
        let word = |at: usize| -> Result<u32, DamagedImage> {
            raw.get(at..at + 4)
                .and_then(|w| w.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| DamagedImage("it ends early".into()))
        };
        let pages = word(0)?;
        let kept = word(4)? as usize;
        let globals = word(8)? as usize;
        let globals_at = 12 + 4 * kept;
        let data_at = globals_at + 8 * globals;
        if raw.len() != data_at + kept * PAGE {
            return Err(DamagedImage(format!(
                "{} bytes for {kept} pages",
                raw.len()
            )));
        }
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        for i in 0..kept {
            let index = word(12 + 4 * i)?;
            let address = index
                .checked_mul(PAGE as u32)
                .filter(|a| u64::from(*a) + PAGE as u64 <= u64::from(pages) * u64::from(WASM_PAGE))
                .ok_or_else(|| DamagedImage(format!("page {index} is past its memory")))?;
            let page = &raw[data_at + i * PAGE..data_at + (i + 1) * PAGE];
            match runs.last_mut() {
                Some((start, bytes)) if *start as usize + bytes.len() == address as usize => {
                    bytes.extend_from_slice(page);
                }
                _ => runs.push((address, page.to_vec())),
            }
        }
        let globals = raw[globals_at..data_at]
            .chunks_exact(8)
            .map(|v| u64::from_le_bytes(v.try_into().unwrap_or_default()))
            .collect();
        Ok(Image {
            pages,
            runs,
            globals,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(memory: &[u8]) -> [u8; 8] {
        memory[..8].try_into().expect("8 bytes")
    }

    #[test]
    fn an_image_keeps_only_the_pages_unlike_the_initial_one() {
        let mut initial = InitialImage::default();
        initial.put(PAGE as u32 + 10, b"data");
        let mut memory = vec![0u8; 4 * PAGE];
        memory[PAGE + 10..PAGE + 14].copy_from_slice(b"data"); // as it was
        memory[2 * PAGE + 1] = 7; // changed
        memory[3 * PAGE] = 9; // changed, next to the last
        let mut writer = ImageWriter::new(1);
        writer.take(&initial, &head(&memory), &memory[8..]);
        let image = Image::read(&writer.finish()).expect("reads back");
        assert_eq!(image.pages, 1);
        assert_eq!(image.runs.len(), 1, "pages 2 and 3 make one run");
        assert_eq!(image.runs[0].0, 2 * PAGE as u32);
        assert_eq!(image.runs[0].1, memory[2 * PAGE..].to_vec());
    }

    #[test]
    fn a_changed_data_page_is_kept_and_an_unchanged_one_is_not() {
        let mut initial = InitialImage::default();
        initial.put(0, b"hello");
        let mut memory = vec![0u8; 2 * PAGE];
        memory[..5].copy_from_slice(b"jello");
        let mut writer = ImageWriter::new(1);
        writer.take(&initial, &head(&memory), &memory[8..]);
        let image = Image::read(&writer.finish()).expect("reads back");
        assert_eq!(image.runs, vec![(0, memory[..PAGE].to_vec())]);
    }

    #[test]
    fn data_across_a_page_boundary_lands_on_both_pages() {
        let mut initial = InitialImage::default();
        initial.put(PAGE as u32 - 2, b"abcd");
        assert_eq!(&initial.page(0).expect("page 0")[PAGE - 2..], b"ab");
        assert_eq!(&initial.page(1).expect("page 1")[..2], b"cd");
        assert!(initial.page(2).is_none());
    }

    #[test]
    fn the_globals_come_back_in_their_order() {
        let mut writer = ImageWriter::new(1);
        writer.take(&InitialImage::default(), &[0u8; 8], &[0u8; PAGE - 8]);
        let values = [7u64, u64::MAX, 1 << 40];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        writer.take_globals(&bytes);
        let image = Image::read(&writer.finish()).expect("reads back");
        assert_eq!(image.globals, values);
        assert!(image.runs.is_empty());
    }

    #[test]
    fn a_damaged_image_is_an_error() {
        let mut writer = ImageWriter::new(1);
        writer.take(&InitialImage::default(), &[1u8; 8], &[1u8; PAGE - 8]);
        let good = writer.finish();
        assert!(Image::read(&good[..good.len() - 3]).is_err());
        assert!(Image::read(b"nonsense").is_err());
        // A page past the memory's size.
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&0u32.to_le_bytes());
        raw.extend_from_slice(&16u32.to_le_bytes());
        raw.extend_from_slice(&[0u8; PAGE]);
        assert!(Image::read(&lz4_flex::compress_prepend_size(&raw)).is_err());
    }
}
