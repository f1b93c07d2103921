//! The thread pool for batch work. rayon's global pool does not survive `fork()` (its worker
//! threads are not copied into the child, which then waits for them forever), so the pool is
//! owned here and recreated whenever the process id changes.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

static POOL: Mutex<Option<(u32, Arc<rayon::ThreadPool>)>> = Mutex::new(None);

fn pool() -> Arc<rayon::ThreadPool> {
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_ref() {
        Some((owner, pool)) if *owner == pid => pool.clone(),
        _ => {
            // A pool inherited through fork has no threads behind it: leak it rather than
            // dropping it, since its destructor would try to talk to threads that do not exist.
            if let Some((_, stale)) = slot.take() {
                std::mem::forget(stale);
            }
            let threads = std::env::var("CODELLAMA_FAST_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let built = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("codellama-fast-{i}"))
                .build()
                .expect("building a rayon thread pool");
            let built = Arc::new(built);
            *slot = Some((pid, built.clone()));
            built
        }
    }
}

/// Worker threads of the pool.
pub fn threads() -> usize {
    pool().current_num_threads()
}

/// `f` over every item, in parallel when there is more than one item; results keep input order.
pub fn map_ordered<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync + Send) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    pool().install(|| items.par_iter().map(f).collect())
}
