//! Memory snapshots (issue 24, slice 3; `docs/hibernation.md`): a service
//! with no state of its own to save hibernates as the pages of its linear
//! memory that differ from its module's initial image, and wakes by writing
//! them into a new instance.
//!
//! ```text
//!  load:  component ── eligible? (one memory, at most one mutable global:
//!         the stack pointer, back at its base between calls) ──> add a small
//!         core module that imports that memory, and export five functions
//!         lifted from it (`skyhost-memory-*`: size, read, seek, write,
//!         grow-to); the initial image (active data segments) kept as pages
//!  sleep: size, read [0, 8) and [8, end) (two calls), keep the 4 KiB pages
//!         unlike the initial image, lz4 ──> image bytes
//!  wake:  new instance (its memory is the initial image), grow-to, then
//!         seek + write per run of kept pages
//! ```
//!
//! wasmtime 48 gives no host access to a component's core memory, so the
//! component gives it: `read` returns the range as a `list<u8>` (its
//! pointer/length pair written to 8 bytes outside the range, put back by
//! its post-return), and `write` takes a `list<u8>` whose `realloc` answers
//! the address `seek` set, so the host's lowering copies the bytes in
//! place. Everything here is pure (bytes in, bytes out).

use std::collections::HashMap;

use wasm_encoder::{
    Alias, CanonicalFunctionSection, CanonicalOption, CodeSection, ComponentExportKind,
    ComponentExportSection, ComponentTypeSection, ComponentValType, ExportKind, ExportSection,
    Function, FunctionSection, GlobalSection, GlobalType, ImportSection, InstanceSection, MemArg,
    MemoryType, Module, ModuleArg, ModuleSection, PrimitiveValType, TypeSection, ValType,
};
use wasmparser::{
    CanonicalFunction, CanonicalOption as ParsedOption, DataKind, Operator, Parser, Payload,
    Validator, WasmFeatures,
};

/// A wasm page.
const WASM_PAGE: u32 = 65_536;
/// The unit a snapshot keeps or leaves out.
pub(crate) const PAGE: usize = 4_096;

/// The names of the added exports.
pub(crate) const SIZE: &str = "skyhost-memory-size";
pub(crate) const READ: &str = "skyhost-memory-read";
pub(crate) const SEEK: &str = "skyhost-memory-seek";
pub(crate) const WRITE: &str = "skyhost-memory-write";
pub(crate) const GROW_TO: &str = "skyhost-memory-grow-to";

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

/// A component made able to hand out its memory, and its initial image.
pub(crate) struct Instrumented {
    /// The component with the `skyhost-memory-*` exports added.
    pub bytes: Vec<u8>,
    /// Its memory as a new instance has it.
    pub initial: InitialImage,
}

/// Why a component's memory cannot be kept as a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Ineligible {
    /// Its core modules define no memory, or more than one.
    #[error("its core modules define {0} memories (one is needed)")]
    Memories(usize),
    /// Some state lives in globals a snapshot of the memory would lose.
    #[error("its core modules define {0} mutable globals (at most the stack pointer is allowed)")]
    Globals(usize),
    /// A data segment's place is not a constant.
    #[error("a data segment is placed by an expression, not a constant")]
    DataOffset,
    /// A 64-bit or shared memory.
    #[error("its memory is 64-bit or shared")]
    MemoryKind,
    /// The lifted functions use several memories, or none.
    #[error("its exported functions do not share one memory")]
    LiftMemory,
    /// The component (or the result of adding to it) does not validate.
    #[error("it does not validate: {0}")]
    Invalid(String),
}

/// Makes `component` able to hand out its memory (see the module doc), if
/// what it keeps between calls is all in that memory.
pub(crate) fn instrument(component: &[u8]) -> Result<Instrumented, Ineligible> {
    let (initial, memory) = survey(component)?;
    let types = Validator::new_with_features(WasmFeatures::all()).validate_all(component)?;
    let types = types.as_ref();
    let counts = Counts {
        modules: types.module_count(),
        core_instances: types.core_instance_count(),
        core_funcs: types.function_count(),
        types: types.component_type_count(),
        funcs: types.component_function_count(),
    };
    let mut bytes = component.to_vec();
    bytes.extend_from_slice(&added_sections(memory, &counts));
    // A mistake here would otherwise fail the module's compile, not just
    // its snapshots.
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&bytes)
        .map_err(|e| Ineligible::Invalid(format!("after adding memory access: {e}")))?;
    Ok(Instrumented { bytes, initial })
}

impl From<wasmparser::BinaryReaderError> for Ineligible {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        Ineligible::Invalid(e.to_string())
    }
}

/// One pass over the component: checks its core modules (one memory, at
/// most one mutable global, data at constant places), collects its initial
/// image, and finds the core memory its top-level lifts use.
fn survey(component: &[u8]) -> Result<(InitialImage, u32), Ineligible> {
    let mut memories = 0;
    let mut mutable_globals = 0;
    let mut initial = InitialImage::default();
    let mut lift_memory = None;
    let mut depth = 0u32;
    for payload in Parser::new(0).parse_all(component) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory?;
                    if memory.memory64 || memory.shared {
                        return Err(Ineligible::MemoryKind);
                    }
                    memories += 1;
                }
            }
            Payload::GlobalSection(reader) => {
                for global in reader {
                    mutable_globals += usize::from(global?.ty.mutable);
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data?;
                    if let DataKind::Active {
                        offset_expr,
                        memory_index: 0,
                    } = data.kind
                    {
                        let Ok(Operator::I32Const { value }) =
                            offset_expr.get_operators_reader().read()
                        else {
                            return Err(Ineligible::DataOffset);
                        };
                        initial.put(value as u32, data.data);
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) if depth == 0 => {
                for canon in reader {
                    let CanonicalFunction::Lift { options, .. } = canon? else {
                        continue;
                    };
                    for option in options.iter() {
                        if let ParsedOption::Memory(m) = option {
                            match lift_memory {
                                Some(seen) if seen != *m => return Err(Ineligible::LiftMemory),
                                _ => lift_memory = Some(*m),
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if memories != 1 {
        return Err(Ineligible::Memories(memories));
    }
    if mutable_globals > 1 {
        return Err(Ineligible::Globals(mutable_globals));
    }
    Ok((initial, lift_memory.ok_or(Ineligible::LiftMemory)?))
}

impl InitialImage {
    /// Lays `data` at `offset`.
    fn put(&mut self, offset: u32, mut data: &[u8]) {
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

/// The sizes of the component's index spaces before the added sections.
struct Counts {
    modules: u32,
    core_instances: u32,
    core_funcs: u32,
    types: u32,
    funcs: u32,
}

/// The added core module's exports, in the order they are aliased.
const CORE_EXPORTS: [&str; 7] = [
    "size",
    "read",
    "read-post",
    "seek",
    "realloc",
    "write",
    "grow-to",
];

/// The sections appended to the component (see the module doc).
fn added_sections(memory: u32, n: &Counts) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |id: u8, section: &dyn wasm_encoder::Encode| {
        out.push(id);
        section.encode(&mut out);
    };
    push(
        wasm_encoder::ComponentSectionId::CoreModule as u8,
        &ModuleSection(&memory_module()),
    );
    let mut instances = InstanceSection::new();
    instances.export_items([("memory", ExportKind::Memory, memory)]);
    instances.instantiate(n.modules, [("m", ModuleArg::Instance(n.core_instances))]);
    push(
        wasm_encoder::ComponentSectionId::CoreInstance as u8,
        &instances,
    );
    let mut aliases = wasm_encoder::ComponentAliasSection::new();
    for name in CORE_EXPORTS {
        aliases.alias(Alias::CoreInstanceExport {
            instance: n.core_instances + 1,
            kind: ExportKind::Func,
            name,
        });
    }
    push(wasm_encoder::ComponentSectionId::Alias as u8, &aliases);
    let core = |name: &str| {
        n.core_funcs + CORE_EXPORTS.iter().position(|e| *e == name).unwrap_or(0) as u32
    };

    let u32_ty = ComponentValType::Primitive(PrimitiveValType::U32);
    let bytes_ty = ComponentValType::Type(n.types);
    let mut types = ComponentTypeSection::new();
    types
        .defined_type()
        .list(ComponentValType::Primitive(PrimitiveValType::U8));
    types
        .function()
        .params([] as [(&str, ComponentValType); 0])
        .result(Some(u32_ty)); // size
    types
        .function()
        .params([("offset", u32_ty), ("length", u32_ty)])
        .result(Some(bytes_ty)); // read
    types.function().params([("value", u32_ty)]).result(None); // seek, grow-to
    types.function().params([("data", bytes_ty)]).result(None); // write
    push(wasm_encoder::ComponentSectionId::Type as u8, &types);
    let (size_ty, read_ty, u32_in_ty, write_ty) =
        (n.types + 1, n.types + 2, n.types + 3, n.types + 4);

    let mut canon = CanonicalFunctionSection::new();
    canon.lift(core("size"), size_ty, []);
    canon.lift(
        core("read"),
        read_ty,
        [
            CanonicalOption::Memory(memory),
            CanonicalOption::PostReturn(core("read-post")),
        ],
    );
    canon.lift(core("seek"), u32_in_ty, []);
    canon.lift(
        core("write"),
        write_ty,
        [
            CanonicalOption::Memory(memory),
            CanonicalOption::Realloc(core("realloc")),
        ],
    );
    canon.lift(core("grow-to"), u32_in_ty, []);
    push(
        wasm_encoder::ComponentSectionId::CanonicalFunction as u8,
        &canon,
    );

    let mut exports = ComponentExportSection::new();
    for (i, name) in [SIZE, READ, SEEK, WRITE, GROW_TO].into_iter().enumerate() {
        exports.export(name, ComponentExportKind::Func, n.funcs + i as u32, None);
    }
    push(wasm_encoder::ComponentSectionId::Export as u8, &exports);
    out
}

/// The added core module: it imports the component's memory as `m.memory`.
fn memory_module() -> Module {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: size
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32]); // 1: read
    types.ty().function([ValType::I32], []); // 2: read-post, seek, grow-to
    types.ty().function([ValType::I32; 4], [ValType::I32]); // 3: realloc
    types.ty().function([ValType::I32, ValType::I32], []); // 4: write
    let mut imports = ImportSection::new();
    imports.import(
        "m",
        "memory",
        MemoryType {
            minimum: 0,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        },
    );
    let mut functions = FunctionSection::new();
    for ty in [0, 1, 2, 2, 3, 4, 2] {
        functions.function(ty);
    }
    let mut globals = GlobalSection::new();
    let mutable = |val_type| GlobalType {
        val_type,
        mutable: true,
        shared: false,
    };
    // 0: the address `seek` set; 1: the 8 bytes `read` borrowed; 2: where.
    globals.global(
        mutable(ValType::I32),
        &wasm_encoder::ConstExpr::i32_const(0),
    );
    globals.global(
        mutable(ValType::I64),
        &wasm_encoder::ConstExpr::i64_const(0),
    );
    globals.global(
        mutable(ValType::I32),
        &wasm_encoder::ConstExpr::i32_const(0),
    );
    let word = MemArg {
        offset: 0,
        align: 2,
        memory_index: 0,
    };
    let pair = MemArg {
        offset: 0,
        align: 3,
        memory_index: 0,
    };
    // Grows the memory to the page count on the stack; traps if it cannot.
    let grow_to = |f: &mut Function, pages_local: u32| {
        f.instructions()
            .local_get(pages_local)
            .memory_size(0)
            .i32_gt_u()
            .if_(wasm_encoder::BlockType::Empty)
            .local_get(pages_local)
            .memory_size(0)
            .i32_sub()
            .memory_grow(0)
            .i32_const(-1)
            .i32_eq()
            .if_(wasm_encoder::BlockType::Empty)
            .unreachable()
            .end()
            .end();
    };
    let mut code = CodeSection::new();
    // size() -> pages
    let mut f = Function::new([]);
    f.instructions().memory_size(0).end();
    code.function(&f);
    // read(offset, length) -> address of (offset, length), placed outside
    // the range: at 0 unless the range starts there, else right after it.
    let mut f = Function::new([(1, ValType::I32)]);
    f.instructions()
        .local_get(0)
        .i32_const(8)
        .i32_ge_u()
        .if_(wasm_encoder::BlockType::Result(ValType::I32))
        .i32_const(0)
        .else_()
        .local_get(0)
        .local_get(1)
        .i32_add()
        .end()
        .local_set(2)
        .local_get(2)
        .i64_load(pair)
        .global_set(1)
        .local_get(2)
        .global_set(2)
        .local_get(2)
        .local_get(0)
        .i32_store(word)
        .local_get(2)
        .local_get(1)
        .i32_store(MemArg { offset: 4, ..word })
        .local_get(2)
        .end();
    code.function(&f);
    // read-post(address): the borrowed bytes back.
    let mut f = Function::new([]);
    f.instructions()
        .global_get(2)
        .global_get(1)
        .i64_store(pair)
        .end();
    code.function(&f);
    // seek(address)
    let mut f = Function::new([]);
    f.instructions().local_get(0).global_set(0).end();
    code.function(&f);
    // realloc(_, _, _, length) -> the address `seek` set, the memory grown
    // to hold the bytes there.
    let mut f = Function::new([(1, ValType::I32)]);
    f.instructions()
        .global_get(0)
        .local_get(3)
        .i32_add()
        .i32_const((WASM_PAGE - 1) as i32)
        .i32_add()
        .i32_const(16)
        .i32_shr_u()
        .local_set(4);
    grow_to(&mut f, 4);
    f.instructions().global_get(0).end();
    code.function(&f);
    // write(address, length): the lowering already put the bytes there.
    let mut f = Function::new([]);
    f.instructions().end();
    code.function(&f);
    // grow-to(pages)
    let mut f = Function::new([]);
    grow_to(&mut f, 0);
    f.instructions().end();
    code.function(&f);

    let mut exports = ExportSection::new();
    for (i, name) in CORE_EXPORTS.iter().enumerate() {
        exports.export(name, ExportKind::Func, i as u32);
    }
    let mut module = Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&globals)
        .section(&exports)
        .section(&code);
    module
}

/// A memory kept as the pages unlike the initial image, lz4-compressed:
/// `[wasm pages u32][kept u32][page index u32 …][page bytes …]`.
#[derive(Debug, Default)]
pub(crate) struct ImageWriter {
    pages: u32,
    kept: Vec<u32>,
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

    /// The image, compressed.
    pub fn finish(self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(8 + 4 * self.kept.len() + self.bytes.len());
        raw.extend_from_slice(&self.pages.to_le_bytes());
        raw.extend_from_slice(&(self.kept.len() as u32).to_le_bytes());
        for index in &self.kept {
            raw.extend_from_slice(&index.to_le_bytes());
        }
        raw.extend_from_slice(&self.bytes);
        lz4_flex::compress_prepend_size(&raw)
    }
}

/// A kept memory, read back: its size and its runs of kept pages.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Image {
    /// Its size in wasm pages.
    pub pages: u32,
    /// Runs of kept pages: where each starts (a byte address) and its bytes.
    pub runs: Vec<(u32, Vec<u8>)>,
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
        let data_at = 8 + 4 * kept;
        if raw.len() != data_at + kept * PAGE {
            return Err(DamagedImage(format!(
                "{} bytes for {kept} pages",
                raw.len()
            )));
        }
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        for i in 0..kept {
            let index = word(8 + 4 * i)?;
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
        Ok(Image { pages, runs })
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
        raw.extend_from_slice(&16u32.to_le_bytes());
        raw.extend_from_slice(&[0u8; PAGE]);
        assert!(Image::read(&lz4_flex::compress_prepend_size(&raw)).is_err());
    }

    #[test]
    fn the_added_module_validates() {
        let module = memory_module().finish();
        Validator::new()
            .validate_all(&module)
            .expect("the memory module validates");
    }
}
