//! A plain TCP connection as Pingora's stream traits see it: the accepted client's, and
//! a plain backend's on Weir's own HTTP/1 path.
//!
//! Pingora's own listeners give every stream a write buffer, so that a response header and
//! a small body leave in one `send`; the public conversion from a `TcpStream` gives none,
//! and the setter is private to Pingora. This type implements Pingora's stream traits over
//! a buffered `TcpStream`, which keeps Weir's accept path as cheap as Pingora's own. For
//! backends it also skips what Pingora's `l4::Stream` does on every read and write (two
//! clock reads for its timing digest, and two more layers of wrappers): a fifth of the
//! backend side's I/O instructions.

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;

/// Bytes buffered before a write reaches the socket; Pingora flushes at the end of each
/// header and body chunk it sends, so this only ever merges what belongs together.
const WRITE_BUFFER: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct TcpConn {
    io: BufWriter<TcpStream>,
    /// Bytes a peek consumed, served again before anything new is read.
    rewind: Vec<u8>,
    rewind_pos: usize,
    fd: RawFd,
    digest: Arc<SocketDigest>,
    established: SystemTime,
}

impl TcpConn {
    /// Puts bytes already read back in front of what comes next (the h2c preface, read by
    /// the head gate, for the HTTP/2 handshake).
    pub(crate) fn unread(&mut self, bytes: &[u8]) {
        let mut rest = self.rewind.split_off(self.rewind_pos);
        self.rewind = bytes.to_vec();
        self.rewind.append(&mut rest);
        self.rewind_pos = 0;
    }

    pub(crate) fn new(tcp: TcpStream) -> Self {
        let fd = tcp.as_raw_fd();
        Self {
            io: BufWriter::with_capacity(WRITE_BUFFER, tcp),
            rewind: Vec::new(),
            rewind_pos: 0,
            fd,
            digest: Arc::new(SocketDigest::from_raw_fd(fd)),
            established: SystemTime::now(),
        }
    }
}

impl AsyncRead for TcpConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rewind_pos < self.rewind.len() {
            let n = (self.rewind.len() - self.rewind_pos).min(buf.remaining());
            let start = self.rewind_pos;
            buf.put_slice(&self.rewind[start..start + n]);
            self.rewind_pos += n;
            if self.rewind_pos == self.rewind.len() {
                self.rewind = Vec::new();
                self.rewind_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TcpConn {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.io).await;
    }
}

impl UniqueID for TcpConn {
    fn id(&self) -> UniqueIDType {
        self.fd
    }
}

impl Ssl for TcpConn {}

impl GetTimingDigest for TcpConn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            establishment_duration: None,
            offload_wait_duration: None,
        })]
    }
}

impl GetProxyDigest for TcpConn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for TcpConn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }
}

/// No peeking: the h2c preface is read by the head gate and given back with
/// [`TcpConn::unread`], so Pingora never waits for 24 bytes a short request never sends.
impl Peek for TcpConn {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn unread_bytes_are_read_again_and_writes_wait_for_flush() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut conn = TcpConn::new(server);

        client
            .write_all(b"PRI * HTTP/2.0 and then more")
            .await
            .unwrap();
        let mut peek = [0u8; 6];
        conn.read_exact(&mut peek).await.unwrap();
        assert_eq!(&peek, b"PRI * ");
        conn.unread(&peek);
        let mut all = vec![0u8; 28];
        conn.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"PRI * HTTP/2.0 and then more");

        conn.write_all(b"header ").await.unwrap();
        conn.write_all(b"body").await.unwrap();
        conn.flush().await.unwrap();
        let mut got = vec![0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"header body");
        assert_eq!(
            conn.get_socket_digest()
                .unwrap()
                .local_addr()
                .unwrap()
                .as_inet(),
            Some(&addr)
        );
    }
}
