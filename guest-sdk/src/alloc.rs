//! The guest's allocator: small blocks kept by size class in front of talc
//! (any [`GlobalAlloc`] behind it: the host's tests put `System` there).
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

/// One class's free blocks: a list threaded through the blocks themselves.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
    len: u16,
}

/// `A` (talc in a guest), with a free list per size class in front of it.
pub(crate) struct ClassCache<A> {
    inner: A,
    lists: UnsafeCell<[FreeList; CLASSES]>,
}

// SAFETY: only where it is the global allocator, wasm without the `atomics`
// feature (see the `#[cfg]`): one thread, so the lists are never touched
// from two at once.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for ClassCache<A> {}

impl<A> ClassCache<A> {
    /// `inner` with empty lists in front.
    pub(crate) const fn new(inner: A) -> Self {
        ClassCache {
            inner,
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

    /// The layout `A` gives and takes for every block of `class`.
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

// SAFETY: every block handed out is either an `A` block of the class's
// layout (size and alignment at least the request's) or an `A` block of the
// request's own layout; each goes back to `A` with the layout it was taken
// with, and a block on a free list is owned by the list alone.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ClassCache<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = Self::class(layout) else {
            // SAFETY: forwarded as the caller gave it.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: the only reference to the lists while it lives.
        let list = unsafe { self.list(class) };
        if list.head.is_null() {
            // SAFETY: a valid non-zero layout.
            return unsafe { self.inner.alloc(Self::class_layout(class)) };
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
            // SAFETY: taken from `A` with this layout.
            return unsafe { self.inner.dealloc(block, layout) };
        };
        // SAFETY: the only reference to the lists while it lives.
        let list = unsafe { self.list(class) };
        if list.len >= KEPT {
            // SAFETY: taken from `A` (or a list) with the class's layout.
            return unsafe { self.inner.dealloc(block, Self::class_layout(class)) };
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
            // SAFETY: taken from `A` with `layout`; the caller's promises.
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
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

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::{ClassCache, KEPT};

    /// `System`, counting the blocks taken from it.
    #[derive(Default)]
    struct Counting {
        taken: Cell<usize>,
    }

    // SAFETY: every call goes to `System` as it came.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.taken.set(self.taken.get() + 1);
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            // SAFETY: forwarded.
            unsafe { System.dealloc(block, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("a valid layout")
    }

    #[test]
    fn a_freed_small_block_serves_the_next_of_its_class_only() {
        let cache = ClassCache::new(Counting::default());
        // SAFETY: each block is freed once, with the layout it was taken with.
        unsafe {
            let a = cache.alloc(layout(24, 8));
            cache.dealloc(a, layout(24, 8));
            // 17..=32 bytes are one class; 33 is the next.
            let b = cache.alloc(layout(33, 8));
            assert_ne!(a, b);
            let c = cache.alloc(layout(32, 16));
            assert_eq!(a, c, "the freed block of the class");
            assert_eq!(cache.inner.taken.get(), 2);
            // Larger or more aligned than the classes: always the inner allocator.
            for l in [layout(300, 8), layout(16, 32)] {
                let big = cache.alloc(l);
                cache.dealloc(big, l);
            }
            assert_eq!(cache.inner.taken.get(), 4);
            cache.dealloc(b, layout(33, 8));
            cache.dealloc(c, layout(32, 16));
        }
    }

    #[test]
    fn a_class_keeps_at_most_kept_blocks() {
        let cache = ClassCache::new(Counting::default());
        let l = layout(64, 8);
        let n = usize::from(KEPT) + 8;
        // SAFETY: each block is freed once, with the layout it was taken with.
        unsafe {
            let blocks: Vec<*mut u8> = (0..n).map(|_| cache.alloc(l)).collect();
            for &b in &blocks {
                cache.dealloc(b, l);
            }
            let again: Vec<*mut u8> = (0..n).map(|_| cache.alloc(l)).collect();
            // KEPT came back from the list, the rest from the inner allocator.
            assert_eq!(cache.inner.taken.get(), 2 * n - usize::from(KEPT));
            for b in again {
                cache.dealloc(b, l);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_in_place_within_one() {
        let cache = ClassCache::new(Counting::default());
        let bytes: Vec<u8> = (0..=255).collect();
        // SAFETY: each block is used within its size and freed once with its layout.
        unsafe {
            let a = cache.alloc(layout(20, 1));
            a.copy_from_nonoverlapping(bytes.as_ptr(), 20);
            assert_eq!(cache.realloc(a, layout(20, 1), 30), a, "same class");
            let grown = cache.realloc(a, layout(30, 1), 1_000);
            grown.add(30).copy_from_nonoverlapping(bytes.as_ptr(), 200);
            let shrunk = cache.realloc(grown, layout(1_000, 1), 100);
            assert_eq!(std::slice::from_raw_parts(shrunk, 20), &bytes[..20]);
            assert_eq!(std::slice::from_raw_parts(shrunk.add(30), 70), &bytes[..70]);
            cache.dealloc(shrunk, layout(100, 1));
        }
    }
}
