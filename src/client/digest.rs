//! The digest the client keeps of the bodies it sends and gets back (`BodyHash`): the
//! `body_digest` and `sent_digest` of an [`Exchange`](super::Exchange), which tell an
//! unchanged body from a replaced one without keeping either.

/// A running 64-bit FNV-1a hash: enough to tell whether a returned body equals the one sent
/// (the server is trusted; this detects change, not forgery).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyHash {
    len: u64,
    h: u64,
}

impl Default for BodyHash {
    fn default() -> Self {
        BodyHash {
            len: 0,
            h: 0xcbf29ce484222325,
        }
    }
}

impl BodyHash {
    /// Adds bytes.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        for &b in data {
            self.h ^= b as u64;
            self.h = self.h.wrapping_mul(0x100000001b3);
        }
    }

    /// `(length, hash)`.
    pub(crate) fn finish(&self) -> (u64, u64) {
        (self.len, self.h)
    }
}

#[cfg(test)]
mod tests {
    use super::BodyHash;

    #[test]
    fn body_hash_tells_equal_from_changed() {
        let mut a = BodyHash::default();
        a.update(b"hello ");
        a.update(b"world");
        let mut b = BodyHash::default();
        b.update(b"hello world");
        assert_eq!(a.finish(), b.finish());
        let mut c = BodyHash::default();
        c.update(b"hello worle");
        assert_ne!(a.finish(), c.finish());
    }
}
