//! The byte grammar every parser and checker of the crate shares: token characters, control
//! bytes, optional whitespace, decimal numbers.
//!
//! One home for the byte classes, as httparse keeps its own in one place, so that the header
//! parser, the start-line parser, the chunk-extension parser and the builders agree on what
//! a token or a control byte is, and so that no parser has to reach into another for them.

/// `tchar` of RFC 7230: the bytes allowed in a header name, a method and a chunk-extension
/// name.
pub(crate) static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = matches!(b,
            b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z'
            | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
            | b'^' | b'_' | b'`' | b'|' | b'~');
        i += 1;
    }
    t
};

/// A non-empty run of token bytes.
#[inline]
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| TOKEN[b as usize])
}

/// True when `v` holds a control byte other than HTAB: what a header value may not hold, as
/// CR, LF or NUL would let it end its line early and smuggle a header. Written as a fold
/// without early exit so the compiler vectorises it: values are the bulk of a head.
#[inline]
pub(crate) fn has_ctl_but_htab(v: &[u8]) -> bool {
    v.iter().fold(false, |bad, &b| {
        bad | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
    })
}

/// True when `s` holds a control byte, HTAB included: what a start line's target, URI,
/// version or reason may not hold. A fold without early exit, so that it vectorises: targets
/// and URIs are the long part of a start line.
#[inline]
pub(crate) fn has_ctl(s: &[u8]) -> bool {
    s.iter()
        .fold(false, |bad, &b| bad | (b < 0x20) | (b == 0x7f))
}

/// Sixteen bytes at a time, as bit masks (bit `k` for byte `k`), on x86-64: SSE2 compares
/// and `pmovmskb` through `safe_arch`'s safe wrappers, so the crate keeps
/// `forbid(unsafe_code)`. Elsewhere the scanners use eight-byte `u64` steps (SWAR) instead.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) mod simd {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, m128i, min_u8_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i, sub_i8_m128i,
    };

    /// Bytes of `v` at most `n` (unsigned), as all-ones lanes.
    #[inline(always)]
    fn at_most(v: m128i, n: u8) -> m128i {
        cmp_eq_mask_i8_m128i(min_u8_m128i(v, set_splat_i8_m128i(n as i8)), v)
    }

    /// Bytes of `v` in `lo..=hi`.
    #[inline(always)]
    fn between(v: m128i, lo: u8, hi: u8) -> m128i {
        at_most(sub_i8_m128i(v, set_splat_i8_m128i(lo as i8)), hi - lo)
    }

    /// Control bytes (below 0x20, HTAB included) and DEL: where a field value stops.
    #[inline(always)]
    pub(crate) fn ctl_mask(block: &[u8; 16]) -> u32 {
        let v = m128i::from(*block);
        let ctl = at_most(v, 0x1f);
        let del = cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(0x7f));
        move_mask_i8_m128i(bitor_m128i(ctl, del)) as u32
    }

    /// Bytes other than `A-Z a-z 0-9 -`, which nearly every header name is made of (all
    /// `tchar`s): the first such byte is usually the colon.
    #[inline(always)]
    pub(crate) fn not_name_fast_mask(block: &[u8; 16]) -> u32 {
        let v = m128i::from(*block);
        // Bit 5 set maps A-Z onto a-z and no byte outside A-Z into a-z.
        let alpha = between(bitor_m128i(v, set_splat_i8_m128i(0x20)), b'a', b'z');
        let digit = between(v, b'0', b'9');
        let dash = cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'-' as i8));
        let fast = bitor_m128i(bitor_m128i(alpha, digit), dash);
        !(move_mask_i8_m128i(fast) as u32) & 0xffff
    }
}

/// Optional whitespace (SP and HTAB) trimmed from both ends, with the count trimmed from the
/// front (a header value's offset in its line).
#[inline]
pub(crate) fn trim_ows(mut v: &[u8]) -> (usize, &[u8]) {
    let mut lead = 0;
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
        lead += 1;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    (lead, v)
}

/// Optional whitespace trimmed from both ends.
#[inline]
pub(crate) fn trim(s: &[u8]) -> &[u8] {
    trim_ows(s).1
}

/// A non-empty run of ASCII digits that fits a `u64`: no sign, no spaces, no overflow. The
/// crate's one parser of decimal numbers (Preview, Encapsulated offsets, use-original-body,
/// OPTIONS numbers, Content-Length); status codes are their own 3-digit grammar.
#[inline]
pub(crate) fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_is_digits_that_fit_a_u64() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"00108"), Some(108));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1a",
            b"0x10",
        ] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn control_bytes_differ_by_htab_only() {
        assert!(!has_ctl(b"GET /a HTTP/1.1") && !has_ctl_but_htab(b"a\tb"));
        assert!(has_ctl(b"a\tb"));
        for bad in [&b"a\rb"[..], b"a\nb", b"a\0b", b"a\x7fb", b"\x1f"] {
            assert!(has_ctl(bad) && has_ctl_but_htab(bad), "{bad:?}");
        }
    }

    #[test]
    fn tokens_and_trims() {
        assert!(is_token(b"X-Infection-Found") && is_token(b"ieof"));
        assert!(!is_token(b"") && !is_token(b"a b") && !is_token(b"a:b"));
        assert_eq!(trim_ows(b" \t v a \t"), (3, &b"v a"[..]));
        assert_eq!(trim(b"\t\t"), b"");
    }
}
