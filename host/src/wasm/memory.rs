//! A service's linear memory kept while it hibernates and written back when
//! it wakes, through the exports `snapshot::instrument` added to its module
//! (see `snapshot/mod.rs` for the flow, `snapshot/image.rs` for the layout).

use std::sync::Arc;

use wasmtime::component::{Component, ComponentExportIndex, WasmList};

use super::Instance;
use super::snapshot::{self, GLOBALS_PER_CALL, Image, ImageWriter, InitialImage};
use crate::runtime::{Afterwards, Snapshot};

/// What a module's instances need to keep and restore their memory.
pub(crate) struct MemoryAccess {
    /// The memory as a new instance has it.
    initial: InitialImage,
    /// How many mutable globals an image carries.
    globals: u32,
    size: ComponentExportIndex,
    read: ComponentExportIndex,
    seek: ComponentExportIndex,
    write: ComponentExportIndex,
    grow_to: ComponentExportIndex,
    globals_out: ComponentExportIndex,
    globals_in: ComponentExportIndex,
}

/// The values one `globals-in` call takes: the chunk's index, then its
/// values (zero past the last global).
type GlobalsIn = (
    u32,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
    u64,
);

impl MemoryAccess {
    /// The access `component` gives, if it was instrumented.
    pub fn of(
        component: &Component,
        initial: InitialImage,
        globals: u32,
    ) -> Option<Arc<MemoryAccess>> {
        let index = |name| component.get_export_index(None, name);
        Some(Arc::new(MemoryAccess {
            initial,
            globals,
            size: index(snapshot::SIZE)?,
            read: index(snapshot::READ)?,
            seek: index(snapshot::SEEK)?,
            write: index(snapshot::WRITE)?,
            grow_to: index(snapshot::GROW_TO)?,
            globals_out: index(snapshot::GLOBALS_OUT)?,
            globals_in: index(snapshot::GLOBALS_IN)?,
        }))
    }
}

impl Instance {
    /// Its memory and globals as an image, if its module can hand them out
    /// and it holds nothing outside them (a WASI resource: a stream, a
    /// pollable). `globals-out` writes over the start of the memory: an
    /// instance that serves `afterwards` has those bytes written back.
    pub(super) async fn call_snapshot(
        &mut self,
        afterwards: Afterwards,
    ) -> wasmtime::Result<Snapshot> {
        let Some(memory) = self.memory.clone() else {
            return Ok(Snapshot::Never);
        };
        if self.store.data().holds_resources() {
            return Ok(Snapshot::NotNow);
        }
        self.store.data_mut().start_work(1);
        self.store.set_epoch_deadline(1);
        let image = self.read_memory(&memory, afterwards).await;
        self.store.data_mut().end_work();
        Ok(image?.map_or(Snapshot::Never, Snapshot::Image))
    }

    /// The image; `None` when an instance that serves on could not be left
    /// as it was (a memory smaller than its globals' values).
    async fn read_memory(
        &mut self,
        memory: &MemoryAccess,
        afterwards: Afterwards,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        let size = self
            .instance
            .get_typed_func::<(), (u32,)>(&mut self.store, &memory.size)?;
        let read = self
            .instance
            .get_typed_func::<(u32, u32), (WasmList<u8>,)>(&mut self.store, &memory.read)?;
        let (pages,) = size.call_async(&mut self.store, ()).await?;
        let bytes = pages
            .checked_mul(65_536)
            .ok_or_else(|| wasmtime::format_err!("a memory of {pages} pages"))?;
        let (head,) = read.call_async(&mut self.store, (0, 8)).await?;
        let head: [u8; 8] = head
            .as_le_slice(&self.store)
            .try_into()
            .map_err(|_| wasmtime::format_err!("`read` answered other than 8 bytes"))?;
        let (rest,) = read
            .call_async(&mut self.store, (8, bytes.saturating_sub(8)))
            .await?;
        let mut image = ImageWriter::new(pages);
        let rest = rest.as_le_slice(&self.store);
        image.take(&memory.initial, &head, rest);
        // What `globals-out` will write over, for an instance that serves on.
        let overwritten = 8 + 8 * memory.globals as usize;
        let mut start = Vec::new();
        if memory.globals > 0 && afterwards == Afterwards::Serves {
            start.extend_from_slice(&head);
            start.extend_from_slice(&rest[..rest.len().min(overwritten - 8)]);
            if start.len() < overwritten {
                // `globals-out` would grow the memory: not left as it was.
                return Ok(None);
            }
        }
        if memory.globals > 0 {
            let out = self
                .instance
                .get_typed_func::<(), (WasmList<u8>,)>(&mut self.store, &memory.globals_out)?;
            let (values,) = out.call_async(&mut self.store, ()).await?;
            let values = values.as_le_slice(&self.store);
            if values.len() != 8 * memory.globals as usize {
                wasmtime::bail!("`globals-out` answered {} bytes", values.len());
            }
            image.take_globals(values);
            if afterwards == Afterwards::Serves {
                self.write_at(memory, 0, &start[..overwritten]).await?;
            }
        }
        Ok(Some(image.finish()))
    }

    /// Writes a kept image into this new instance's memory.
    pub(super) async fn call_restore(
        &mut self,
        image: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        let Some(memory) = self.memory.clone() else {
            return Ok(Err("its module cannot take a memory image".into()));
        };
        let image = match Image::read(image) {
            Ok(image) => image,
            Err(damaged) => return Ok(Err(damaged.to_string())),
        };
        self.store.data_mut().start_work(1);
        self.store.set_epoch_deadline(1);
        let result = self.write_memory(&memory, &image).await;
        self.store.data_mut().end_work();
        result.map(Ok)
    }

    async fn write_memory(&mut self, memory: &MemoryAccess, image: &Image) -> wasmtime::Result<()> {
        let store = &mut self.store;
        let grow_to = self
            .instance
            .get_typed_func::<(u32,), ()>(&mut *store, &memory.grow_to)?;
        grow_to.call_async(&mut *store, (image.pages,)).await?;
        for (address, bytes) in &image.runs {
            self.write_at(memory, *address, bytes).await?;
        }
        let store = &mut self.store;
        if image.globals.len() != memory.globals as usize {
            wasmtime::bail!(
                "an image of {} globals for a module of {}",
                image.globals.len(),
                memory.globals
            );
        }
        if image.globals.is_empty() {
            return Ok(());
        }
        let globals_in = self
            .instance
            .get_typed_func::<GlobalsIn, ()>(&mut *store, &memory.globals_in)?;
        for (chunk, values) in image.globals.chunks(GLOBALS_PER_CALL).enumerate() {
            let mut v = [0u64; GLOBALS_PER_CALL];
            v[..values.len()].copy_from_slice(values);
            let args = (
                chunk as u32,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5],
                v[6],
                v[7],
                v[8],
                v[9],
                v[10],
                v[11],
                v[12],
                v[13],
                v[14],
            );
            globals_in.call_async(&mut *store, args).await?;
        }
        Ok(())
    }

    /// Writes `bytes` into the memory at `address` (`seek`, then `write`,
    /// whose lowering copies them in place).
    async fn write_at(
        &mut self,
        memory: &MemoryAccess,
        address: u32,
        bytes: &[u8],
    ) -> wasmtime::Result<()> {
        let store = &mut self.store;
        let seek = self
            .instance
            .get_typed_func::<(u32,), ()>(&mut *store, &memory.seek)?;
        let write = self
            .instance
            .get_typed_func::<(&[u8],), ()>(&mut *store, &memory.write)?;
        seek.call_async(&mut *store, (address,)).await?;
        write.call_async(&mut *store, (bytes,)).await?;
        Ok(())
    }
}
