//! The guest's allocator: small blocks kept by size class in front of talc.
//!
//! Every message takes and frees a few small blocks (its payload, the
//! typed value decoded from it, the answer encoded, its task). A freed block
//! of up to [`LARGEST`] bytes goes on the free list of its class (a
//! multiple of 16 bytes) and the next allocation of that class takes it
//! back: a pop and a push instead of talc's search, split and merge. Each
//! class keeps at most [`KEPT`] blocks; past that, and for larger or more
//! aligned blocks, talc does the work. talc takes its memory from dlmalloc
//! in 16 KiB blocks, so a new service uses the heap its module starts with
//! instead of growing its memory (one `memory.grow` per 64 KiB page would
//! cost every spawn an `mprotect`).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// The largest block kept on a free list, in bytes.
const LARGEST: usize = 256;
/// The size step between classes, and the alignment every class gives.
const STEP: usize = 16;
const CLASSES: usize = LARGEST / STEP;
/// The most blocks one class keeps.
const KEPT: u16 = 32;

type Talc = talc::cell::TalcSyncCell<
    talc::source::GlobalAllocSource<std::alloc::System>,
    talc::wasm::WasmBinning,
>;

/// One class's free blocks: a list threaded through the blocks themselves.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
    len: u16,
}

/// talc, with a free list per size class in front of it.
pub(crate) struct ClassCache {
    talc: Talc,
    lists: UnsafeCell<[FreeList; CLASSES]>,
}

// SAFETY: built only for wasm without the `atomics` feature (see the
// `#[cfg]` where it is the global allocator): one thread, so the lists are
// never touched from two at once.
unsafe impl Sync for ClassCache {}

impl ClassCache {
    /// An allocator with empty lists.
    pub(crate) const fn new() -> Self {
        ClassCache {
            talc: talc::cell::TalcSyncCell::new_wasm(
                talc::source::GlobalAllocSource::with_block_size(std::alloc::System, 16 * 1024),
            ),
            lists: UnsafeCell::new(
                [FreeList {
                    head: ptr::null_mut(),
                    len: 0,
                }; CLASSES],
            ),
        }
    }

    /// The class of `layout`, if its blocks are kept on a list.
    fn class(layout: Layout) -> Option<usize> {
        let size = layout.size();
        (size <= LARGEST && layout.align() <= STEP).then(|| size.saturating_sub(1) / STEP)
    }

    /// The layout talc gives and takes for every block of `class`.
    fn class_layout(class: usize) -> Layout {
        // SAFETY: the size is a non-zero multiple of 16 and at most 256; 16
        // is a power of two.
        unsafe { Layout::from_size_align_unchecked((class + 1) * STEP, STEP) }
    }

    /// The free list of `class`.
    ///
    /// # Safety
    /// No other reference to the lists may be alive (one thread, and no
    /// call in between that allocates).
    #[allow(clippy::mut_from_ref)]
    unsafe fn list(&self, class: usize) -> &mut FreeList {
        // SAFETY: the caller keeps this the only reference; `class` is below
        // CLASSES (from `class`).
        unsafe { &mut (*self.lists.get())[class] }
    }
}

// SAFETY: every block handed out is either a talc block of the class's
// layout (size and alignment at least the request's) or a talc block of the
// request's own layout; each goes back to talc with the layout it was taken
// with, and a block on a free list is owned by the list alone.
unsafe impl GlobalAlloc for ClassCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Self::class(layout) else {
            // SAFETY: forwarded as the caller gave it.
            return unsafe { self.talc.alloc(layout) };
        };
        // SAFETY: the only reference to the lists while it lives.
        let list = unsafe { self.list(class) };
        if list.head.is_null() {
            // SAFETY: a valid non-zero layout.
            return unsafe { self.talc.alloc(Self::class_layout(class)) };
        }
        let block = list.head;
        // SAFETY: a block on the list holds the next block's address in its
        // first bytes, written by `dealloc` (blocks are 16-aligned).
        list.head = unsafe { block.cast::<*mut u8>().read() };
        list.len -= 1;
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = Self::class(layout) else {
            // SAFETY: taken from talc with this layout.
            return unsafe { self.talc.dealloc(block, layout) };
        };
        // SAFETY: the only reference to the lists while it lives.
        let list = unsafe { self.list(class) };
        if list.len >= KEPT {
            // SAFETY: taken from talc (or a list) with the class's layout.
            return unsafe { self.talc.dealloc(block, Self::class_layout(class)) };
        }
        // SAFETY: the block is at least 16 bytes, 16-aligned and ours now.
        unsafe { block.cast::<*mut u8>().write(list.head) };
        list.head = block;
        list.len += 1;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller promises `new_size`, rounded up to the
        // alignment, does not overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (Self::class(layout), Self::class(new_layout)) {
            // SAFETY: taken from talc with `layout`; the caller's promises.
            (None, None) => unsafe { self.talc.realloc(block, layout, new_size) },
            (Some(old), Some(new)) if old == new => block,
            _ => {
                // SAFETY: a valid non-zero layout.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and
                    // are distinct; `block` was taken with `layout`.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}
