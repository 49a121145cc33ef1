//! Request ids: the subject of a call's host-attested records and the
//! `x-request-id` of its response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Unique ids for requests: a random per-process prefix and a counter.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// A fresh id, 20 hex digits: the prefix, then the low 48 bits of a
    /// counter (written by hand: `format!` showed in profiles).
    pub fn next(&self) -> Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff_ffff;
        let id = (u128::from(self.prefix) << 48) | u128::from(n);
        let mut out = [0u8; 20];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((id >> (4 * (19 - i))) & 0xf) as usize];
        }
        std::str::from_utf8(&out).expect("hex digits").into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_and_fixed_width() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        // The same digits `format!` would write.
        assert_eq!(&*b, format!("{:08x}{:012x}", ids.prefix, 2));
    }
}
