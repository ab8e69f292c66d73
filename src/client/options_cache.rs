//! Each server's OPTIONS, cached for its `Options-TTL` and dropped when an answer shows
//! another ISTag. A leaf: the endpoint holds the cache, and the OPTIONS transactions that
//! fill it (`options.rs`) sit above both.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::options::ServiceOptions;
use crate::proto::message::Response;

/// A server's options and when they were fetched.
pub(crate) struct CachedOptions {
    pub(crate) options: ServiceOptions,
    pub(crate) fetched: Instant,
}

/// The cached options while their `Options-TTL` runs (for ever without one).
pub(crate) fn fresh(cache: &Mutex<Option<CachedOptions>>) -> Option<ServiceOptions> {
    let cached = cache.lock().expect("not poisoned");
    let c = cached.as_ref()?;
    let fresh = c
        .options
        .options_ttl
        .is_none_or(|ttl| c.fetched.elapsed() < Duration::from_secs(ttl));
    fresh.then(|| c.options.clone())
}

/// Caches options just fetched.
pub(crate) fn store(cache: &Mutex<Option<CachedOptions>>, options: &ServiceOptions) {
    *cache.lock().expect("not poisoned") = Some(CachedOptions {
        options: options.clone(),
        fetched: Instant::now(),
    });
}

/// A changed ISTag means the service changed: its cached options are stale.
pub(crate) fn saw_istag(cache: &Mutex<Option<CachedOptions>>, res: &Response) {
    if let Some(tag) = res.headers.get_str("ISTag") {
        let mut cached = cache.lock().expect("not poisoned");
        if cached.as_ref().is_some_and(|c| c.options.istag != tag) {
            *cached = None;
        }
    }
}
