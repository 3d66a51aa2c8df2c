//! W7: what one task leaves in its memory is not there for the next. `dirty` grows memory by
//! 16 pages and fills them, and fills a heap buffer; `check` grows the same pages (it starts
//! exactly as `dirty` does) and allocates the same buffer, and counts the bytes of each
//! that are not zero.
fn main() {
    const PAGES: usize = 16;
    const PAGE: usize = 64 * 1024;
    let mode = std::env::args().nth(1).unwrap_or_default();
    // Not initialized: it holds whatever the memory under it held, read below through a raw
    // pointer before anything is written.
    let layout = std::alloc::Layout::from_size_align(512 * 1024, 16).unwrap_or_else(|_| std::process::exit(3));
    // SAFETY: a non-zero size; the pointer is checked for null.
    let heap = unsafe { std::alloc::alloc(layout) };
    if heap.is_null() {
        std::process::exit(3);
    }
    let before = core::arch::wasm32::memory_grow(0, PAGES);
    if before == usize::MAX {
        std::process::exit(3);
    }
    // SAFETY: both regions belong to this program: the allocation above, and the pages just
    // grown (from `before` pages on).
    let (grown, heap) = unsafe {
        (
            std::slice::from_raw_parts_mut((before * PAGE) as *mut u8, PAGES * PAGE),
            std::slice::from_raw_parts_mut(heap, layout.size()),
        )
    };
    match mode.as_str() {
        "dirty" => {
            grown.fill(0xa5);
            heap.fill(0x5a);
            println!("dirtied");
        }
        "check" => {
            // Volatile reads: the compiler may not assume what fresh memory holds.
            let dirty = |s: &[u8]| s.iter().filter(|b| unsafe { std::ptr::read_volatile(*b) } != 0).count();
            println!("grown {} heap {}", dirty(grown), dirty(heap));
        }
        _ => std::process::exit(2),
    }
}
