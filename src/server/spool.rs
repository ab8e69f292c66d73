//! The echo spool: a copy of a request body kept for a 200 echo when the client does not
//! allow 204, in memory up to [`ServerConfig::spool_memory`](super::ServerConfig) and then in
//! an anonymous temporary file.

use std::io;
use std::path::PathBuf;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

/// Keeps a copy of a request body for an echo: in memory up to a limit, then in a temporary
/// file, so that memory stays bounded whatever the body size.
///
/// The file is anonymous (`O_TMPFILE` on Linux; elsewhere created under a random name with mode
/// 0600 and unlinked at once): no name to guess or to pre-create, no other reader, and nothing
/// left behind when the handle goes, however the process ends. A spool that cannot keep the
/// body (the directory is unusable, the disk is full) lets the body be read on and drops its
/// copy; only an echo needs it, and that echo becomes a 500 with the error logged.
pub(crate) struct Spool {
    mem: Vec<Bytes>,
    mem_len: usize,
    limit: usize,
    dir: PathBuf,
    file: Option<tokio::fs::File>,
    failed: Option<io::Error>,
}

impl Spool {
    pub(crate) fn new(limit: usize, dir: PathBuf) -> Self {
        Spool {
            mem: Vec::new(),
            mem_len: 0,
            limit,
            dir,
            file: None,
            failed: None,
        }
    }

    /// Keeps `b`; never fails (see [`Spool`]): a failure is kept for [`Spool::into_reader`].
    pub(crate) async fn push(&mut self, b: Bytes) -> io::Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        if let Err(e) = self.keep(b).await {
            self.failed = Some(io::Error::new(
                e.kind(),
                format!(
                    "spooling the body for an echo in {}: {e}",
                    self.dir.display()
                ),
            ));
            self.mem.clear();
            self.file = None;
        }
        Ok(())
    }

    async fn keep(&mut self, b: Bytes) -> io::Result<()> {
        if self.file.is_none() && self.mem_len + b.len() <= self.limit {
            self.mem_len += b.len();
            // A copy, not the piece: a piece is a view into the connection's read buffer,
            // and keeping it would keep that whole buffer (several times the piece when the
            // client sends in small writes) for as long as the echo waits.
            self.mem.push(Bytes::copy_from_slice(&b));
            return Ok(());
        }
        if self.file.is_none() {
            let dir = self.dir.clone();
            let f = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                .await
                .map_err(io::Error::other)??;
            let mut f = tokio::fs::File::from_std(f);
            for m in self.mem.drain(..) {
                f.write_all(&m).await?;
            }
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("created above");
        f.write_all(&b).await
    }

    /// The body kept, as one piece, when it is all in memory and at most `max` bytes;
    /// otherwise `None`, and [`Spool::into_reader`] reads it.
    pub(crate) fn take_small(&mut self, max: usize) -> Option<Bytes> {
        if self.failed.is_some() || self.file.is_some() || self.mem_len > max {
            return None;
        }
        self.mem_len = 0;
        Some(match std::mem::take(&mut self.mem).as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        })
    }

    pub(crate) async fn into_reader(mut self) -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.file.take() {
            None => Ok(Box::new(MemReader(self.mem.into()))),
            Some(mut f) => {
                use tokio::io::AsyncSeekExt;
                f.flush().await?;
                f.seek(io::SeekFrom::Start(0)).await?;
                Ok(Box::new(f))
            }
        }
    }
}

/// Reads the pieces kept in memory, in order, without joining them first.
struct MemReader(VecDeque<Bytes>);

impl AsyncRead for MemReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while buf.remaining() > 0 {
            let Some(front) = self.0.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front.split_to(n));
            if front.is_empty() {
                self.0.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn an_unusable_directory_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("icap-no-such-dir-{}", std::process::id()));
        let mut spool = Spool::new(4, dir.clone());
        spool.push(Bytes::from_static(b"abc")).await.unwrap();
        // Past the memory part: the file cannot be made, and the body goes on unkept.
        spool.push(Bytes::from_static(b"defg")).await.unwrap();
        spool.push(Bytes::from_static(b"hij")).await.unwrap();
        assert!(spool.mem.is_empty());
        let Err(e) = spool.into_reader().await else {
            panic!("a reader without the body");
        };
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let msg = e.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
    }

    #[tokio::test]
    async fn bodies_kept_in_memory_read_back_whole_in_small_reads() {
        let mut spool = Spool::new(100, std::env::temp_dir());
        for piece in [&b"abc"[..], b"", b"defg", b"hij"] {
            spool.push(Bytes::from_static(piece)).await.unwrap();
        }
        assert!(spool.file.is_none());
        let mut r = spool.into_reader().await.unwrap();
        let mut back = Vec::new();
        let mut two = [0u8; 2];
        loop {
            let n = r.read(&mut two).await.unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&two[..n]);
        }
        assert_eq!(back, b"abcdefghij");
    }

    #[tokio::test]
    async fn spilled_bodies_read_back_whole() {
        let mut spool = Spool::new(4, std::env::temp_dir());
        for piece in [&b"abc"[..], b"defg", b"hij"] {
            spool.push(Bytes::from_static(piece)).await.unwrap();
        }
        assert!(spool.file.is_some());
        let mut back = Vec::new();
        spool
            .into_reader()
            .await
            .unwrap()
            .read_to_end(&mut back)
            .await
            .unwrap();
        assert_eq!(back, b"abcdefghij");
    }
}
