//! The decoder core (`raw`) must run where there is no heap (an initramfs helper, a tiny
//! agent): decoding, CRC checking, copy selection, iteration and lookup allocate nothing.
//! Counted with a global allocator, on this thread only.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use u_boot_env::{select_current, CopyId, Endianness, Env, Header, Layout, RawCopy, RawEnv};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local,
// which needs no allocation or destructor registration.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn decoding_allocates_nothing() {
    let mut env = Env::new();
    env.set("BOOT_ORDER", "A B").unwrap();
    env.set("BOOT_A_LEFT", "3").unwrap();
    env.set("bootcmd", "run abup").unwrap();
    let single = env
        .encode(Header::Single, 0x1000, 0, Endianness::Little)
        .unwrap();
    let first = env
        .encode(
            Header::Redundant { flags: 7 },
            0x1000,
            0,
            Endianness::Little,
        )
        .unwrap();
    let second = env
        .encode(
            Header::Redundant { flags: 8 },
            0x1000,
            0xff,
            Endianness::Little,
        )
        .unwrap();

    let n = allocations_during(|| {
        let copy = RawCopy::parse(&single, Layout::Single, Endianness::Little).unwrap();
        assert!(copy.is_valid());
        assert_eq!(copy.get(b"BOOT_ORDER"), Some(&b"A B"[..]));
        assert_eq!(copy.entries().count(), 3);
        let pair = RawEnv::redundant(&first, &second, Endianness::Little).unwrap();
        assert_eq!(pair.current(), Some(CopyId::Second));
        let copy = pair.current_copy().unwrap();
        assert_eq!(copy.flags(), Some(8));
        assert_eq!(copy.get(b"bootcmd"), Some(&b"run abup"[..]));
        // 255 then 0 is a wrap-around: the copy with 0 is newer.
        assert_eq!(select_current(Some(255), Some(0)), Some(CopyId::Second));
    });
    assert_eq!(n, 0, "the decoder core allocated {n} times");
    // The counter works: the owned layer does allocate.
    assert!(
        allocations_during(|| drop(Env::decode(&single, Layout::Single, Endianness::Little))) > 0
    );
}
