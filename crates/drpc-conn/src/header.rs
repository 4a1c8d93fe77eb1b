//! The migration header a client of a port shared with other protocols
//! sends first (the reference implementation's `drpcmigrate`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use drpc_wire::MIGRATION_HEADER;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A transport that writes [`MIGRATION_HEADER`] (`DRPC!!!1`) before
/// anything else, as the Go clients of a `drpcmigrate` listener do: for
/// servers that share their port with gRPC or HTTP and route by it. A
/// server of this implementation accepts connections with and without it.
///
/// ```
/// use drpc_conn::{Conn, ConnOptions, with_migration_header};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?;
/// let socket = tokio::net::TcpStream::connect(addr).await?;
/// let conn = Conn::new(with_migration_header(socket), ConnOptions::default());
/// # drop(conn);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct WithMigrationHeader<T> {
    inner: T,
    /// How much of the header is written.
    written: usize,
}

/// Wraps `transport` so that its first bytes are the migration header.
pub fn with_migration_header<T>(transport: T) -> WithMigrationHeader<T> {
    WithMigrationHeader {
        inner: transport,
        written: 0,
    }
}

impl<T> WithMigrationHeader<T> {
    /// The transport underneath.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncWrite + Unpin> WithMigrationHeader<T> {
    /// Writes what is left of the header; ready once all of it is.
    fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < MIGRATION_HEADER.len() {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &MIGRATION_HEADER[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WithMigrationHeader<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WithMigrationHeader<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_header(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_header(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_header(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_header_goes_first_once() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = with_migration_header(a);
        a.write_all(b"frames").await.expect("write");
        a.write_all(b"more").await.expect("write");
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"DRPC!!!1framesmore");
    }

    #[tokio::test]
    async fn a_header_written_in_pieces_is_finished_before_the_data() {
        // A pipe of 3 bytes takes the header in pieces.
        let (a, mut b) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            let mut a = with_migration_header(a);
            a.write_all(b"xy").await.expect("write");
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        writer.await.expect("writer");
        assert_eq!(got, b"DRPC!!!1xy");
    }
}
