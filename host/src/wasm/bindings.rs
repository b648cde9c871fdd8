//! Host bindings generated from `wit/`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "service",
    path: "../wit",
    exports: { default: async },
});
