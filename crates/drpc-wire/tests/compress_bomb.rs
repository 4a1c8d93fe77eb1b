//! A decompression bomb allocates nothing: the declared length is checked
//! against the limit before any buffer is made for it. Measured with an
//! allocator that records the largest allocation made on this thread while
//! armed (the only test of this binary, so nothing else allocates then).

// A global allocator cannot be written without `unsafe`: it forwards every
// call to the system allocator unchanged and only records sizes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use drpc_wire::{Compression, CompressionError};

struct Recording;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the thread-locals may be gone while a thread exits.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments,
// so `System`'s guarantees are this allocator's.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// The largest allocation `f` makes on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, LARGEST.with(Cell::get))
}

#[test]
fn a_bomb_allocates_nothing_for_its_declared_length() {
    const LIMIT: usize = 4 << 20;
    // 4 GiB − 1 declared in five bytes, then a copy that would repeat.
    let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0xfe, 0x01, 0x00];
    let (result, largest) = largest_allocation(|| {
        Compression::Snappy
            .decompress(&bomb, LIMIT)
            .map(|v| v.len())
    });
    assert_eq!(
        result,
        Err(CompressionError::TooLarge {
            len: u64::from(u32::MAX),
            limit: LIMIT
        })
    );
    assert!(largest < 1024, "allocated {largest} bytes");

    // Declaring just over the limit: refused the same way.
    let mut over = Vec::new();
    Compression::Snappy
        .compress(&vec![0; LIMIT + 1], &mut over)
        .expect("compresses");
    let (result, largest) = largest_allocation(|| {
        Compression::Snappy
            .decompress(&over, LIMIT)
            .map(|v| v.len())
    });
    assert!(matches!(result, Err(CompressionError::TooLarge { .. })));
    assert!(largest < 1024, "allocated {largest} bytes");

    // Within the limit, the one buffer of the declared size.
    let (result, largest) = largest_allocation(|| {
        Compression::Snappy
            .decompress(&over, LIMIT + 1)
            .map(|v| v.len())
    });
    assert_eq!(result, Ok(LIMIT + 1));
    assert_eq!(largest, LIMIT + 1);
}
