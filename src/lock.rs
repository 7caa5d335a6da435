//! One way to take a `std::sync::Mutex` everywhere: a poisoned lock still holds consistent data
//! here, because every critical section of ours is a single map or counter update, so a panic
//! elsewhere never makes the operator's caches unusable.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
