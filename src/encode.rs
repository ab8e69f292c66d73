//! The serializer: heads and chunk framing as a queue of `Bytes` for vectored writes.
//!
//! [`Encoder`] collects what goes on the wire for one direction: a head written once into its
//! own buffer, then body pieces framed as chunks. Body `Bytes` are queued as they are, between
//! a small size line and a CRLF, so the body is never copied; the queue implements
//! [`bytes::Buf`] with `chunks_vectored`, which is what `write_vectored` and tokio's
//! `write_all_buf` want. Lower-case hex, and no chunk extension but `ieof` (and
//! `use-original-body` in a 206).

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::chunked::{last_chunk, use_original_body_chunk, write_chunk_size};
use crate::message::{Request, Response};

static CRLF: &[u8] = b"\r\n";

/// A queue of wire bytes: heads, chunk framing and body pieces. Drain it with [`Buf`].
#[derive(Debug, Default)]
pub struct Encoder {
    parts: VecDeque<Bytes>,
    remaining: usize,
    /// Where heads and size lines are written; split off as frozen `Bytes`, so one allocation
    /// serves many small pieces.
    scratch: BytesMut,
}

impl Encoder {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.remaining += b.len();
            self.parts.push_back(b);
        }
    }

    /// Queues the head of `req` (ICAP head and encapsulated HTTP heads).
    pub fn request_head(&mut self, req: &Request) {
        req.write_to(&mut self.scratch);
        let b = self.scratch.split().freeze();
        self.push(b);
    }

    /// Queues the head of `res`.
    pub fn response_head(&mut self, res: &Response) {
        res.write_to(&mut self.scratch);
        let b = self.scratch.split().freeze();
        self.push(b);
    }

    /// Queues `data` as one chunk: size line, the bytes themselves (not copied), CRLF. An empty
    /// `data` queues nothing, since a zero-size chunk would end the body.
    pub fn data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        write_chunk_size(data.len(), &mut self.scratch);
        let line = self.scratch.split().freeze();
        self.push(line);
        self.push(data);
        self.push(Bytes::from_static(CRLF));
    }

    /// Queues the end of a body: `0; ieof` when `ieof` (the body ended inside a preview),
    /// else `0`.
    pub fn end(&mut self, ieof: bool) {
        self.push(last_chunk(ieof));
    }

    /// Queues the end of a 206 body: `0; use-original-body=N`.
    pub fn end_use_original_body(&mut self, offset: u64) {
        self.push(use_original_body_chunk(offset));
    }

    /// Queues raw bytes as they are (for instance `ICAP/1.0 100 Continue\r\n\r\n`).
    pub fn raw(&mut self, bytes: Bytes) {
        self.push(bytes);
    }

    /// Takes the next queued buffer whole, without copying it: for writers that hand
    /// `Bytes` on (to a socket half, a channel) instead of draining through [`Buf`].
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let b = self.parts.pop_front()?;
        self.remaining -= b.len();
        Some(b)
    }

    /// Number of queued buffers.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    /// The queued buffers in order (for inspection; draining is through [`Buf`]).
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.parts.iter()
    }

    /// Copies everything queued into one buffer and empties the queue (tests, logging).
    pub fn to_bytes(&mut self) -> Bytes {
        let n = self.remaining;
        self.copy_to_bytes(n)
    }
}

impl Buf for Encoder {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| &b[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the queue");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.parts.front_mut().expect("remaining counts the parts");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(self.parts.iter()) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_without_copying_the_body() {
        let body = Bytes::from(vec![b'x'; 300]);
        let ptr = body.as_ptr();
        let mut e = Encoder::new();
        e.data(body);
        e.data(Bytes::new());
        e.end(true);
        assert_eq!(e.parts(), 4);
        let parts: Vec<_> = e.iter().cloned().collect();
        assert_eq!(&parts[0][..], b"12c\r\n");
        assert_eq!(parts[1].as_ptr(), ptr);
        assert_eq!(&parts[2][..], b"\r\n");
        assert_eq!(&parts[3][..], b"0; ieof\r\n\r\n");
        let mut slices = [IoSlice::new(&[]); 8];
        assert_eq!(e.chunks_vectored(&mut slices), 4);
        e.advance(7);
        assert_eq!(e.remaining(), 298 + 2 + 11);
        let all = e.to_bytes();
        assert!(all.ends_with(b"xx\r\n0; ieof\r\n\r\n"));
    }
}
