//! The mutable globals an image carries beside the memory: each top-level
//! core module exports those it does not already (its export section
//! rewritten, nothing else touched), so the added module can import them
//! from every instance of it.

use std::collections::HashMap;

use wasm_encoder::Encode;
use wasmparser::{BinaryReader, ValType};

use super::{Ineligible, Survey};

/// A component's and a module's section ids used here.
const COMPONENT_CORE_MODULE: u8 = 1;
const MODULE_EXPORT: u8 = 7;
/// The external kind byte of a global in an export.
const GLOBAL_KIND: u8 = 3;

/// What a top-level core module has of globals.
#[derive(Debug, Default)]
pub(super) struct ModuleGlobals {
    /// How many globals it imports (its own globals' indices follow).
    imported: u32,
    /// Its own globals: a mutable one's type, `None` for an immutable one.
    defined: Vec<Option<ValType>>,
    /// The first name each exported global is exported under.
    exports: HashMap<u32, String>,
}

impl ModuleGlobals {
    /// It imports one more global.
    pub(super) fn import(&mut self) {
        self.imported += 1;
    }

    /// It defines one more global, of type `mutable` if it is mutable.
    pub(super) fn define(&mut self, mutable: Option<ValType>) {
        self.defined.push(mutable);
    }

    /// It exports global `index` as `name`.
    pub(super) fn exported(&mut self, index: u32, name: &str) {
        self.exports
            .entry(index)
            .or_insert_with(|| name.to_string());
    }

    /// Its mutable globals: each one's index and type.
    fn mutable(&self) -> impl Iterator<Item = (u32, ValType)> + '_ {
        let first = self.imported;
        self.defined
            .iter()
            .enumerate()
            .filter_map(move |(k, ty)| ty.map(|ty| (first + k as u32, ty)))
    }

    /// Its mutable globals it does not export.
    fn unexported(&self) -> Vec<u32> {
        self.mutable()
            .map(|(index, _)| index)
            .filter(|index| !self.exports.contains_key(index))
            .collect()
    }

    /// The name global `index` is exported under, once [`export_all`] ran.
    fn name_of(&self, index: u32) -> String {
        self.exports
            .get(&index)
            .cloned()
            .unwrap_or_else(|| added_name(index))
    }
}

/// The name an added export gives global `index`.
fn added_name(index: u32) -> String {
    format!("skyhost-global-{index}")
}

/// A global an image carries.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SavedGlobal {
    /// The core instance it is in.
    pub instance: u32,
    /// The name that instance exports it under.
    pub name: String,
    /// Its type (a number type).
    pub ty: ValType,
}

/// Every mutable global of every top-level core instance, in the order an
/// image keeps them.
pub(super) fn saved(survey: &Survey) -> Vec<SavedGlobal> {
    let mut saved = Vec::new();
    for (instance, module) in &survey.instantiations {
        let Some(module) = survey.modules.get(*module as usize) else {
            continue;
        };
        for (index, ty) in module.mutable() {
            saved.push(SavedGlobal {
                instance: *instance,
                name: module.name_of(index),
                ty,
            });
        }
    }
    saved
}

/// `component` with each top-level core module exporting the mutable
/// globals it did not (as [`added_name`]).
pub(super) fn export_all(
    component: &[u8],
    modules: &[ModuleGlobals],
) -> Result<Vec<u8>, Ineligible> {
    if modules.iter().all(|m| m.unexported().is_empty()) {
        return Ok(component.to_vec());
    }
    let mut index = 0;
    rewrite_sections(component, |id, body, out| {
        if id != COMPONENT_CORE_MODULE {
            return Ok(false);
        }
        let added = modules.get(index).map(ModuleGlobals::unexported);
        index += 1;
        match added {
            Some(added) if !added.is_empty() => {
                push_section(out, id, &with_exports(body, &added)?);
                Ok(true)
            }
            _ => Ok(false),
        }
    })
}

/// `module` with exports of `globals` added to its export section (one is
/// made where it had none).
fn with_exports(module: &[u8], globals: &[u32]) -> Result<Vec<u8>, Ineligible> {
    let mut done = false;
    let mut out = rewrite_sections(module, |id, body, out| {
        if done {
            return Ok(false);
        }
        if id == MODULE_EXPORT {
            let mut reader = BinaryReader::new(body, 0);
            let count = reader.read_var_u32()?;
            let entries = &body[reader.current_position()..];
            push_section(out, id, &export_section(count, entries, globals));
            done = true;
            return Ok(true);
        }
        // The sections that come after exports: start, element, code,
        // data, data count.
        if matches!(id, 8..=12) {
            push_section(out, MODULE_EXPORT, &export_section(0, &[], globals));
            done = true;
        }
        Ok(false)
    })?;
    if !done {
        push_section(&mut out, MODULE_EXPORT, &export_section(0, &[], globals));
    }
    Ok(out)
}

/// An export section's body: `count` entries already encoded in
/// `entries`, then one per global in `globals`.
fn export_section(count: u32, entries: &[u8], globals: &[u32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + entries.len() + 24 * globals.len());
    (count as usize + globals.len()).encode(&mut body);
    body.extend_from_slice(entries);
    for index in globals {
        added_name(*index).as_str().encode(&mut body);
        body.push(GLOBAL_KIND);
        index.encode(&mut body);
    }
    body
}

/// Copies a module or component (`bytes`: its 8-byte preamble, then its
/// sections), giving each section to `rewrite` first: `true` if it wrote
/// the section (or what replaces it) itself, `false` to have it copied.
fn rewrite_sections(
    bytes: &[u8],
    mut rewrite: impl FnMut(u8, &[u8], &mut Vec<u8>) -> Result<bool, Ineligible>,
) -> Result<Vec<u8>, Ineligible> {
    let preamble = bytes
        .get(..8)
        .ok_or_else(|| Ineligible::Invalid("shorter than its preamble".into()))?;
    let mut out = Vec::with_capacity(bytes.len() + 1024);
    out.extend_from_slice(preamble);
    let mut reader = BinaryReader::new(&bytes[8..], 8);
    while !reader.eof() {
        let id = reader.read_u8()?;
        let size = reader.read_var_u32()?;
        let body = reader.read_bytes(size as usize)?;
        if !rewrite(id, body, &mut out)? {
            push_section(&mut out, id, body);
        }
    }
    Ok(out)
}

/// Appends a section: its id, its size, its body.
fn push_section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    body.len().encode(out);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        ConstExpr, ExportKind, ExportSection, GlobalSection, GlobalType, Module,
        ValType as EncodedType,
    };
    use wasmparser::{Parser, Payload, Validator};

    fn globals_exported(module: &[u8]) -> Vec<(String, u32)> {
        let mut names = Vec::new();
        for payload in Parser::new(0).parse_all(module) {
            if let Ok(Payload::ExportSection(reader)) = payload {
                for export in reader.into_iter().flatten() {
                    if export.kind == wasmparser::ExternalKind::Global {
                        names.push((export.name.to_string(), export.index));
                    }
                }
            }
        }
        names
    }

    fn module(export: bool) -> Vec<u8> {
        let mut globals = GlobalSection::new();
        for mutable in [true, false, true] {
            globals.global(
                GlobalType {
                    val_type: EncodedType::I32,
                    mutable,
                    shared: false,
                },
                &ConstExpr::i32_const(7),
            );
        }
        let mut module = Module::new();
        module.section(&globals);
        if export {
            let mut exports = ExportSection::new();
            exports.export("sp", ExportKind::Global, 0);
            module.section(&exports);
        }
        module.finish()
    }

    #[test]
    fn the_unexported_mutable_globals_are_exported_and_the_rest_kept() {
        let mut globals = ModuleGlobals::default();
        for ty in [Some(ValType::I32), None, Some(ValType::I32)] {
            globals.define(ty);
        }
        globals.exported(0, "sp");
        assert_eq!(globals.unexported(), vec![2]);
        let rewritten = with_exports(&module(true), &globals.unexported()).expect("rewrites");
        Validator::new()
            .validate_all(&rewritten)
            .expect("validates");
        assert_eq!(
            globals_exported(&rewritten),
            vec![("sp".into(), 0), ("skyhost-global-2".into(), 2)]
        );
        assert_eq!(globals.name_of(0), "sp");
        assert_eq!(globals.name_of(2), "skyhost-global-2");
    }

    #[test]
    fn a_module_without_exports_gets_an_export_section() {
        let rewritten = with_exports(&module(false), &[0, 2]).expect("rewrites");
        Validator::new()
            .validate_all(&rewritten)
            .expect("validates");
        assert_eq!(
            globals_exported(&rewritten),
            vec![
                ("skyhost-global-0".into(), 0),
                ("skyhost-global-2".into(), 2)
            ]
        );
    }
}
