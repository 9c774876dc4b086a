//! The example servers' allocator gives its thread caches back (one test: the figures are the
//! whole process's, so nothing else may run beside it).

use std::time::{Duration, Instant};

use tikv_jemalloc_ctl::{Access, AsName, epoch};
use wsguard_examples::allocator::{
    caches_returned, on_thread_park, request_cache_return, return_thread_cache,
};

/// Bytes in every thread's cache (jemalloc's `stats.arenas.<all>.tcache_bytes`).
fn cached() -> usize {
    epoch::advance().unwrap();
    b"stats.arenas.4096.tcache_bytes\0".name().read().unwrap()
}

#[test]
fn thread_caches_are_returned_by_the_thread_and_by_parked_workers() {
    // A thread fills its cache with freed 320 B blocks and returns it: the cached bytes fall by
    // at least what it held.
    std::thread::spawn(|| {
        let blocks: Vec<Box<[u8; 320]>> = (0..50).map(|_| Box::new([1; 320])).collect();
        drop(blocks);
        let before = cached();
        let returned = caches_returned();
        assert!(return_thread_cache());
        let after = cached();
        assert!(
            after + 50 * 320 <= before,
            "tcache bytes {before} -> {after}"
        );
        assert_eq!(caches_returned(), returned + 1);
    })
    .join()
    .unwrap();

    // Workers that park after a request return theirs, each once, woken by the request.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_park(on_thread_park)
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = caches_returned();
        request_cache_return(2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while caches_returned() < before + 2 {
            assert!(
                Instant::now() < deadline,
                "{} of 2 workers returned their cache",
                caches_returned() - before
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Once each: parking again without a new request returns nothing.
        for _ in 0..10 {
            tokio::spawn(async {}).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(caches_returned(), before + 2);
    });
}
