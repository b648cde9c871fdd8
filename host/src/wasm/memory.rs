//! A service's linear memory kept while it hibernates and written back when
//! it wakes, through the exports `snapshot::instrument` added to its module
//! (see `snapshot.rs` for the flow and the image's layout).

use std::sync::Arc;

use wasmtime::component::{Component, ComponentExportIndex, WasmList};

use super::Instance;
use super::snapshot::{self, Image, ImageWriter, InitialImage};
use crate::runtime::Snapshot;

/// What a module's instances need to keep and restore their memory.
pub(crate) struct MemoryAccess {
    /// The memory as a new instance has it.
    initial: InitialImage,
    size: ComponentExportIndex,
    read: ComponentExportIndex,
    seek: ComponentExportIndex,
    write: ComponentExportIndex,
    grow_to: ComponentExportIndex,
}

impl MemoryAccess {
    /// The access `component` gives, if it was instrumented.
    pub fn of(component: &Component, initial: InitialImage) -> Option<Arc<MemoryAccess>> {
        let index = |name| component.get_export_index(None, name);
        Some(Arc::new(MemoryAccess {
            initial,
            size: index(snapshot::SIZE)?,
            read: index(snapshot::READ)?,
            seek: index(snapshot::SEEK)?,
            write: index(snapshot::WRITE)?,
            grow_to: index(snapshot::GROW_TO)?,
        }))
    }
}

impl Instance {
    /// Its memory as an image, if its module can hand it out and it holds
    /// nothing outside it (a WASI resource: a stream, a pollable).
    pub(super) async fn call_snapshot(&mut self) -> wasmtime::Result<Snapshot> {
        let Some(memory) = self.memory.clone() else {
            return Ok(Snapshot::Never);
        };
        if self.store.data().holds_resources() {
            return Ok(Snapshot::NotNow);
        }
        self.store.data_mut().start_work(1);
        self.store.set_epoch_deadline(1);
        let image = self.read_memory(&memory).await;
        self.store.data_mut().end_work();
        Ok(Snapshot::Image(image?))
    }

    async fn read_memory(&mut self, memory: &MemoryAccess) -> wasmtime::Result<Vec<u8>> {
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
        image.take(&memory.initial, &head, rest.as_le_slice(&self.store));
        Ok(image.finish())
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
        let seek = self
            .instance
            .get_typed_func::<(u32,), ()>(&mut *store, &memory.seek)?;
        let write = self
            .instance
            .get_typed_func::<(&[u8],), ()>(&mut *store, &memory.write)?;
        grow_to.call_async(&mut *store, (image.pages,)).await?;
        for (address, bytes) in &image.runs {
            seek.call_async(&mut *store, (*address,)).await?;
            write.call_async(&mut *store, (bytes.as_slice(),)).await?;
        }
        Ok(())
    }
}
