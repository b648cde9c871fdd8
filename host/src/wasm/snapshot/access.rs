//! What `instrument` adds to a component: a core module that imports its
//! memory and every top-level instance's mutable globals, and the seven
//! functions lifted from it (see the parent module's doc).

use wasm_encoder::{
    Alias, CanonicalFunctionSection, CanonicalOption, CodeSection, ComponentExportKind,
    ComponentExportSection, ComponentTypeSection, ComponentValType, ExportKind, ExportSection,
    Function, FunctionSection, GlobalSection, GlobalType, ImportSection, InstanceSection, MemArg,
    MemoryType, Module, ModuleArg, ModuleSection, PrimitiveValType, TypeSection, ValType,
};

use super::globals::SavedGlobal;
use super::{
    GLOBALS_IN, GLOBALS_OUT, GLOBALS_PER_CALL, GROW_TO, READ, SEEK, SIZE, WASM_PAGE, WRITE,
};

/// The sizes of the component's index spaces before the added sections.
pub(super) struct Counts {
    pub modules: u32,
    pub core_instances: u32,
    pub core_funcs: u32,
    pub core_globals: u32,
    pub types: u32,
    pub funcs: u32,
}

/// The added core module's exports, in the order they are aliased.
const CORE_EXPORTS: [&str; 9] = [
    "size",
    "read",
    "read-post",
    "seek",
    "realloc",
    "write",
    "grow-to",
    "globals-out",
    "globals-in",
];

/// The sections appended to the component (see the module doc): the
/// added module, fed the memory and the `saved` globals.
pub(super) fn added_sections(memory: u32, n: &Counts, saved: &[SavedGlobal]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |id: u8, section: &dyn wasm_encoder::Encode| {
        out.push(id);
        section.encode(&mut out);
    };
    let types: Vec<ValType> = saved.iter().map(|g| number_type(g.ty)).collect();
    push(
        wasm_encoder::ComponentSectionId::CoreModule as u8,
        &ModuleSection(&memory_module(&types)),
    );
    if !saved.is_empty() {
        let mut aliases = wasm_encoder::ComponentAliasSection::new();
        for global in saved {
            aliases.alias(Alias::CoreInstanceExport {
                instance: global.instance,
                kind: ExportKind::Global,
                name: &global.name,
            });
        }
        push(wasm_encoder::ComponentSectionId::Alias as u8, &aliases);
    }
    let names: Vec<String> = (0..saved.len()).map(|k| format!("g{k}")).collect();
    let mut items = vec![("memory", ExportKind::Memory, memory)];
    for (k, name) in names.iter().enumerate() {
        items.push((name, ExportKind::Global, n.core_globals + k as u32));
    }
    let mut instances = InstanceSection::new();
    instances.export_items(items);
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
    types
        .function()
        .params([] as [(&str, ComponentValType); 0])
        .result(Some(bytes_ty)); // globals-out
    let u64_ty = ComponentValType::Primitive(PrimitiveValType::U64);
    let value_names: Vec<String> = (0..GLOBALS_PER_CALL).map(|i| format!("v{i}")).collect();
    let mut params = vec![("chunk", u32_ty)];
    params.extend(value_names.iter().map(|name| (name.as_str(), u64_ty)));
    types.function().params(params).result(None); // globals-in
    push(wasm_encoder::ComponentSectionId::Type as u8, &types);
    let (size_ty, read_ty, u32_in_ty, write_ty, out_ty, in_ty) = (
        n.types + 1,
        n.types + 2,
        n.types + 3,
        n.types + 4,
        n.types + 5,
        n.types + 6,
    );

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
    canon.lift(
        core("globals-out"),
        out_ty,
        [CanonicalOption::Memory(memory)],
    );
    canon.lift(core("globals-in"), in_ty, []);
    push(
        wasm_encoder::ComponentSectionId::CanonicalFunction as u8,
        &canon,
    );

    let mut exports = ComponentExportSection::new();
    let names = [SIZE, READ, SEEK, WRITE, GROW_TO, GLOBALS_OUT, GLOBALS_IN];
    for (i, name) in names.into_iter().enumerate() {
        exports.export(name, ComponentExportKind::Func, n.funcs + i as u32, None);
    }
    push(wasm_encoder::ComponentSectionId::Export as u8, &exports);
    out
}

/// A number type as the encoder names it.
fn number_type(ty: wasmparser::ValType) -> ValType {
    match ty {
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        // The survey lets only number types through.
        _ => ValType::I32,
    }
}

/// The added core module: it imports the component's memory as `m.memory`
/// and the saved globals, of types `saved`, as `m.g0`, `m.g1`, …
fn memory_module(saved: &[ValType]) -> Module {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // 0: size
    types
        .ty()
        .function([ValType::I32, ValType::I32], [ValType::I32]); // 1: read
    types.ty().function([ValType::I32], []); // 2: read-post, seek, grow-to
    types.ty().function([ValType::I32; 4], [ValType::I32]); // 3: realloc
    types.ty().function([ValType::I32, ValType::I32], []); // 4: write
    let mut globals_in = vec![ValType::I32];
    globals_in.extend([ValType::I64; GLOBALS_PER_CALL]);
    types.ty().function(globals_in, []); // 5: globals-in
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
    let mutable = |val_type| GlobalType {
        val_type,
        mutable: true,
        shared: false,
    };
    for (k, ty) in saved.iter().enumerate() {
        imports.import("m", &format!("g{k}"), mutable(*ty));
    }
    let mut functions = FunctionSection::new();
    for ty in [0, 1, 2, 2, 3, 4, 2, 0, 5] {
        functions.function(ty);
    }
    let mut globals = GlobalSection::new();
    // Its own globals follow the imported ones: `own`: the address `seek`
    // set; `own + 1`: the 8 bytes `read` borrowed; `own + 2`: where.
    let own = saved.len() as u32;
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
        .global_set(own + 1)
        .local_get(2)
        .global_set(own + 2)
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
        .global_get(own + 2)
        .global_get(own + 1)
        .i64_store(pair)
        .end();
    code.function(&f);
    // seek(address)
    let mut f = Function::new([]);
    f.instructions().local_get(0).global_set(own).end();
    code.function(&f);
    // realloc(_, _, _, length) -> the address `seek` set, the memory grown
    // to hold the bytes there.
    let mut f = Function::new([(1, ValType::I32)]);
    f.instructions()
        .global_get(own)
        .local_get(3)
        .i32_add()
        .i32_const((WASM_PAGE - 1) as i32)
        .i32_add()
        .i32_const(16)
        .i32_shr_u()
        .local_set(4);
    grow_to(&mut f, 4);
    f.instructions().global_get(own).end();
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

    // globals-out() -> address of (8, 8 × count): each saved global as 8
    // bytes from address 8 on, over memory already read (the instance is
    // dropped after).
    let mut f = Function::new([(1, ValType::I32)]);
    let needed = 8 + 8 * saved.len() as u32;
    f.instructions()
        .i32_const(needed.div_ceil(WASM_PAGE) as i32)
        .local_set(0);
    grow_to(&mut f, 0);
    for (k, ty) in saved.iter().enumerate() {
        let mut i = f.instructions();
        i.i32_const(8 + 8 * k as i32).global_get(k as u32);
        match ty {
            ValType::I64 => &mut i,
            ValType::F32 => i.i32_reinterpret_f32().i64_extend_i32_u(),
            ValType::F64 => i.i64_reinterpret_f64(),
            _ => i.i64_extend_i32_u(),
        }
        .i64_store(pair);
    }
    f.instructions()
        .i32_const(0)
        .i32_const(8)
        .i32_store(word)
        .i32_const(0)
        .i32_const(8 * saved.len() as i32)
        .i32_store(MemArg { offset: 4, ..word })
        .i32_const(0)
        .end();
    code.function(&f);
    // globals-in(chunk, v0 … v14): globals 15 × chunk on from the values
    // (a br_table over the chunks).
    let mut f = Function::new([]);
    let chunks: Vec<&[ValType]> = saved.chunks(GLOBALS_PER_CALL).collect();
    if !chunks.is_empty() {
        let last = chunks.len() as u32;
        let mut i = f.instructions();
        i.block(wasm_encoder::BlockType::Empty);
        for _ in &chunks {
            i.block(wasm_encoder::BlockType::Empty);
        }
        let targets: Vec<u32> = (0..last).collect();
        i.local_get(0).br_table(targets, last);
        for (c, chunk) in chunks.iter().enumerate() {
            i.end();
            for (v, ty) in chunk.iter().enumerate() {
                i.local_get(1 + v as u32);
                match ty {
                    ValType::I64 => &mut i,
                    ValType::F32 => i.i32_wrap_i64().f32_reinterpret_i32(),
                    ValType::F64 => i.f64_reinterpret_i64(),
                    _ => i.i32_wrap_i64(),
                }
                .global_set((c * GLOBALS_PER_CALL + v) as u32);
            }
            if (c as u32) + 1 < last {
                i.br(last - 1 - c as u32);
            }
        }
        i.end();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_added_module_validates() {
        for saved in [
            vec![],
            vec![ValType::I32],
            vec![ValType::I64, ValType::F32, ValType::F64],
            vec![ValType::I32; 2 * GLOBALS_PER_CALL + 1],
        ] {
            let module = memory_module(&saved).finish();
            wasmparser::Validator::new()
                .validate_all(&module)
                .unwrap_or_else(|e| panic!("{} globals: {e}", saved.len()));
        }
    }
}
