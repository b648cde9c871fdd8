//! Memory snapshots (issue 24, slice 3; `docs/hibernation.md`): a service
//! with no state of its own to save hibernates as the pages of its linear
//! memory that differ from its module's initial image, with the values of
//! its core modules' mutable globals, and wakes by writing them into a new
//! instance.
//!
//! ```text
//!  load:  component ── eligible? (one memory, mutable globals of number
//!         types, no code that writes a table, data at constant places)
//!         ──> each core module with a mutable global it does not export
//!         exports it (`globals.rs`); add a small core module that imports
//!         the memory and every instance's mutable globals, and export seven
//!         functions lifted from it (`access.rs`): `skyhost-memory-*` (size,
//!         read, seek, write, grow-to) and `skyhost-globals-{out,in}`; the
//!         initial image (active data segments) kept as pages
//!  sleep: size, read [0, 8) and [8, end) (two calls), keep the 4 KiB pages
//!         unlike the initial image; then globals-out (it writes the values
//!         over the start of the memory, already read: the instance is
//!         dropped after) ──> lz4 ──> image bytes (`image.rs`)
//!  wake:  new instance (its memory is the initial image), grow-to, seek +
//!         write per run of kept pages, globals-in (15 values a call)
//! ```
//!
//! wasmtime 48 gives no host access to a component's core memory or
//! globals, so the component gives it: `read` returns the range as a
//! `list<u8>` (its pointer/length pair written to 8 bytes outside the
//! range, put back by its post-return), and `write` takes a `list<u8>`
//! whose `realloc` answers the address `seek` set, so the host's lowering
//! copies the bytes in place. Everything here is pure (bytes in, bytes out).

mod access;
mod globals;
mod image;

use wasmparser::types::Types;
use wasmparser::{
    CanonicalFunction, CanonicalOption as ParsedOption, DataKind, ExternalKind, FuncValidator,
    FuncValidatorAllocations, FunctionBody, Instance, Operator, Parser, Payload, TypeRef, ValType,
    ValidPayload, Validator, ValidatorResources, WasmFeatures,
};

pub(crate) use image::{Image, ImageWriter, InitialImage};

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
pub(crate) const GLOBALS_OUT: &str = "skyhost-globals-out";
pub(crate) const GLOBALS_IN: &str = "skyhost-globals-in";

/// How many globals one `globals-in` call sets: with the call's first
/// index, the most flat parameters a lifted function takes (16).
pub(crate) const GLOBALS_PER_CALL: usize = 15;

/// A component made able to hand out its memory, and its initial image.
pub(crate) struct Instrumented {
    /// The component with the `skyhost-*` exports added.
    pub bytes: Vec<u8>,
    /// Its memory as a new instance has it.
    pub initial: InitialImage,
    /// How many mutable globals an image carries.
    pub globals: u32,
}

/// Why a component's memory cannot be kept as a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Ineligible {
    /// Its core modules define no memory, or more than one.
    #[error("its core modules define {0} memories (one is needed)")]
    Memories(usize),
    /// A mutable global the added module could not carry.
    #[error("a mutable global {0}")]
    Global(&'static str),
    /// Code that changes a table: what it wrote would be lost.
    #[error("its code writes a table (`{0}`)")]
    TableWrite(&'static str),
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

impl From<wasmparser::BinaryReaderError> for Ineligible {
    fn from(e: wasmparser::BinaryReaderError) -> Self {
        Ineligible::Invalid(e.to_string())
    }
}

/// Makes `component` able to hand out its memory and globals (see the
/// module doc), if what it keeps between calls is all in them. The result
/// is not validated again (that would cost as much as the survey): the
/// loader compiles the component as it was if it does not compile.
pub(crate) fn instrument(component: &[u8]) -> Result<Instrumented, Ineligible> {
    let (survey, types) = survey(component)?;
    let types = types.as_ref();
    if types.module_count() != survey.modules.len() as u32 {
        // A module aliased in from elsewhere: the indices below would be off.
        return Err(Ineligible::Global("in a module the component aliases"));
    }
    let counts = access::Counts {
        modules: types.module_count(),
        core_instances: types.core_instance_count(),
        core_funcs: types.function_count(),
        core_globals: types.global_count(),
        types: types.component_type_count(),
        funcs: types.component_function_count(),
    };
    let saved = globals::saved(&survey);
    let mut bytes = globals::export_all(component, &survey.modules)?;
    bytes.extend_from_slice(&access::added_sections(survey.memory, &counts, &saved));
    Ok(Instrumented {
        bytes,
        initial: survey.initial,
        globals: saved.len() as u32,
    })
}

/// What one pass over a component finds.
struct Survey {
    /// Its memory as a new instance has it.
    initial: InitialImage,
    /// The core memory its top-level lifts use.
    memory: u32,
    /// Its top-level core modules, by index.
    modules: Vec<globals::ModuleGlobals>,
    /// Its top-level core instances made by instantiating a module: the
    /// instance's index and the module's.
    instantiations: Vec<(u32, u32)>,
}

/// One pass over the component: validates it, checks its core modules (one
/// memory, mutable globals of number types in top-level modules, no table
/// writes, data at constant places), collects its initial image, its
/// modules' mutable globals and where they are instantiated, and finds the
/// core memory its top-level lifts use.
fn survey(component: &[u8]) -> Result<(Survey, Types), Ineligible> {
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut allocations = FuncValidatorAllocations::default();
    let mut types = None;
    let mut memories = 0;
    let mut initial = InitialImage::default();
    let mut lift_memory = None;
    let mut modules: Vec<globals::ModuleGlobals> = Vec::new();
    let mut instantiations = Vec::new();
    let mut core_instances = 0u32;
    // What encloses the payload: `true` for a core module, `false` for a
    // component.
    let mut within: Vec<bool> = Vec::new();
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload?;
        match validator.payload(&payload)? {
            ValidPayload::Func(func, body) => {
                let mut func = func.into_validator(std::mem::take(&mut allocations));
                check_body(&mut func, &body)?;
                allocations = func.into_allocations();
            }
            // The last is the component's own.
            ValidPayload::End(end) => types = Some(end),
            ValidPayload::Ok | ValidPayload::Parser(_) => {}
        }
        let depth = within.len();
        // Only a top-level module's globals can be reached.
        let in_top_module = within == [true];
        match payload {
            Payload::ModuleSection { .. } => {
                if depth == 0 {
                    modules.push(globals::ModuleGlobals::default());
                }
                within.push(true);
            }
            Payload::ComponentSection { .. } => within.push(false),
            Payload::End(_) => {
                within.pop();
            }
            Payload::InstanceSection(reader) if depth == 0 => {
                for instance in reader {
                    if let Instance::Instantiate { module_index, .. } = instance? {
                        instantiations.push((core_instances, module_index));
                    }
                    core_instances += 1;
                }
            }
            Payload::ImportSection(reader) if in_top_module => {
                for import in reader.into_imports() {
                    if let (TypeRef::Global(_), Some(module)) = (import?.ty, modules.last_mut()) {
                        module.import();
                    }
                }
            }
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
                    let ty = global?.ty;
                    let Some(module) = modules.last_mut().filter(|_| in_top_module) else {
                        if ty.mutable {
                            return Err(Ineligible::Global("in a nested component"));
                        }
                        continue;
                    };
                    if ty.mutable
                        && !matches!(
                            ty.content_type,
                            ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64
                        )
                    {
                        return Err(Ineligible::Global("of a vector or reference type"));
                    }
                    module.define(ty.mutable.then_some(ty.content_type));
                }
            }
            Payload::ExportSection(reader) if in_top_module => {
                for export in reader {
                    let export = export?;
                    if let (ExternalKind::Global, Some(module)) = (export.kind, modules.last_mut())
                    {
                        module.exported(export.index, export.name);
                    }
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
    let survey = Survey {
        initial,
        memory: lift_memory.ok_or(Ineligible::LiftMemory)?,
        modules,
        instantiations,
    };
    let types = types.ok_or_else(|| Ineligible::Invalid("it ends early".into()))?;
    Ok((survey, types))
}

/// Validates a function body, and checks it writes no table (one pass).
fn check_body(
    func: &mut FuncValidator<ValidatorResources>,
    body: &FunctionBody<'_>,
) -> Result<(), Ineligible> {
    let mut locals = body.get_binary_reader();
    func.read_locals(&mut locals)?;
    let mut operators = body.get_operators_reader()?;
    while !operators.eof() {
        let (op, offset) = operators.read_with_offset()?;
        if let Some(write) = table_write(&op) {
            return Err(Ineligible::TableWrite(write));
        }
        func.op(offset, &op)?;
    }
    operators.finish()?;
    Ok(())
}

/// The name of `op` if it changes a table.
fn table_write(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        _ => return None,
    })
}
