//! What a module exports, found and type-checked once, when it is loaded.
//!
//! A service is a component of one of two worlds of `wit/service.wit`:
//! `service`, whose `dispatch` takes a `list<message>` (every module built
//! against `skyhost:service@0.1.0` is one), or `batch-service` (0.1.1),
//! whose `dispatch-batch` takes the whole batch as one buffer (see
//! [`super::batch`]). Both import the same interfaces, so one linker serves
//! both; the export tells them apart, and the service loop does not know
//! which one it drives.

use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::{Component, ComponentExportIndex};

/// How a module takes its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abi {
    /// `dispatch: func(messages: list<message>)`: one record and one
    /// payload list per message.
    Messages,
    /// `dispatch-batch: func(batch: list<u8>)`: one buffer per batch.
    Batch,
}

/// The exports the host calls, by index (no name lookup per instance).
#[derive(Clone, Copy)]
pub(crate) struct Exports {
    /// `init: func(args: list<u8>) -> result<_, string>`.
    pub init: ComponentExportIndex,
    /// `dispatch` or `dispatch-batch`.
    pub dispatch: ComponentExportIndex,
    /// Which of the two `dispatch` is.
    pub abi: Abi,
    /// The `state` interface's functions, when the module has them.
    pub state: Option<StateExports>,
}

/// Where a module's `save-state` and `load-state` are; their types are
/// checked when an upgrade uses them.
#[derive(Clone, Copy)]
pub(crate) struct StateExports {
    /// `save-state: func() -> list<u8>`.
    pub save: ComponentExportIndex,
    /// `load-state: func(state: list<u8>) -> result<_, string>`.
    pub load: ComponentExportIndex,
}

/// The export of the WIT `state` interface. A module built against 0.1.0
/// exports it as `@0.1.0` (0.1.1 as `@0.1.1`): wasmtime finds semver-compatible
/// names either way.
const STATE_INTERFACE: &str = "skyhost:service/state@0.1.4";

impl Exports {
    /// Finds the exports in `component` and checks their types, or says
    /// what is missing or wrong.
    pub fn of(component: &Component) -> Result<Exports, String> {
        let init = function(component, "init")?.ok_or("the component exports no `init`")?;
        if !takes_bytes(&init.0) || !returns_result_of_string(&init.0) {
            return Err(
                "its `init` is not `func(args: list<u8>) -> result<_, string>`".to_string(),
            );
        }
        let (dispatch, abi) = match (
            function(component, "dispatch")?,
            function(component, "dispatch-batch")?,
        ) {
            (Some(_), Some(_)) => {
                return Err("the component exports both `dispatch` and `dispatch-batch`".into());
            }
            (None, Some((func, index))) => {
                if !takes_bytes(&func) || func.results().len() != 0 {
                    return Err("its `dispatch-batch` is not `func(batch: list<u8>)`".into());
                }
                (index, Abi::Batch)
            }
            (Some((func, index)), None) => {
                // The record's shape is checked at instantiation, against
                // the type the host lowers.
                if func.params().len() != 1 || func.results().len() != 0 {
                    return Err("its `dispatch` is not `func(messages: list<message>)`".into());
                }
                (index, Abi::Messages)
            }
            (None, None) => {
                return Err(
                    "the component exports neither `dispatch` (world `service`) nor \
                     `dispatch-batch` (world `batch-service`)"
                        .into(),
                );
            }
        };
        Ok(Exports {
            init: init.1,
            dispatch,
            abi,
            state: StateExports::of(component),
        })
    }
}

impl StateExports {
    fn of(component: &Component) -> Option<Self> {
        let interface = component.get_export_index(None, STATE_INTERFACE)?;
        Some(StateExports {
            save: component.get_export_index(Some(&interface), "save-state")?,
            load: component.get_export_index(Some(&interface), "load-state")?,
        })
    }
}

/// The top-level function export `name`, if there is one.
fn function(
    component: &Component,
    name: &str,
) -> Result<Option<(ComponentFunc, ComponentExportIndex)>, String> {
    match component.get_export(None, name) {
        None => Ok(None),
        Some((ComponentItem::ComponentFunc(func), index)) => Ok(Some((func, index))),
        Some(_) => Err(format!("its export `{name}` is not a function")),
    }
}

/// Whether `func` takes one `list<u8>`.
fn takes_bytes(func: &ComponentFunc) -> bool {
    let mut params = func.params();
    params.len() == 1
        && params
            .next()
            .is_some_and(|(_, ty)| matches!(ty, Type::List(list) if list.ty() == Type::U8))
}

/// Whether `func` returns `result<_, string>`.
fn returns_result_of_string(func: &ComponentFunc) -> bool {
    let mut results = func.results();
    results.len() == 1
        && results.next().is_some_and(
            |ty| matches!(ty, Type::Result(r) if r.ok().is_none() && r.err() == Some(Type::String)),
        )
}
