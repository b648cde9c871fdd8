//! Host bindings generated from `wit/`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "service",
    path: "../wit",
    exports: { default: async },
    // A malformed batch buffer is a bug in the guest's SDK: it traps.
    imports: {
        "skyhost:service/runtime.send-batch": trappable,
        "skyhost:service/cluster.send-batch": trappable,
        "skyhost:service/runtime.call-now": async,
    },
});
