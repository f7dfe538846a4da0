//! Baseline memory per entity, measured with a counting allocator: the bytes the
//! baseline holds after it has taken in 1,000,000 entities with 36-character UUID ids,
//! divided by the number of entities. Target: ≤ 96 bytes per entity, key included.
//!
//! Run: `cargo bench -p synchronizer --bench baseline_memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use synchronizer::baseline::{Baseline, Observation};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    for n in [100_000usize, 1_000_000, 1_500_000] {
        let ids: Vec<String> = (0..n)
            .map(|i| {
                let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    x >> 32,
                    (x >> 16) & 0xffff,
                    x & 0xfff,
                    (x >> 7) & 0xfff,
                    x >> 16
                )
            })
            .collect();
        let before = LIVE.load(Ordering::SeqCst);
        let mut baseline = Baseline::new(Duration::from_secs(60));
        let g = baseline.begin_snapshot(0);
        for (i, id) in ids.iter().enumerate() {
            let obs = Observation {
                id,
                key_hash: synchronizer_plugin_api::entity::key_hash("nova.instance", id),
                content_hash: i as u64,
                updated_us: 0,
            };
            baseline.observe("nova.instance", obs, 0, g, 0);
        }
        let after = LIVE.load(Ordering::SeqCst);
        let per = (after - before) as f64 / n as f64;
        println!(
            "baseline memory: {n} entities with UUID keys: {} bytes held, {per:.1} bytes/entity (target <= 96)",
            after - before
        );
        assert_eq!(baseline.len("nova.instance"), n);
        drop(baseline);
    }
}
