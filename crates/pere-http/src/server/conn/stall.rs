//! The send timeout: a connection whose client accepts no byte for
//! `--send-timeout` while the server has bytes for it is closed, as nginx's
//! `send_timeout` does.
//!
//! Without it a client that stops reading (a frozen device, a hostile one)
//! keeps its connection, its descriptor and the kernel's socket buffers
//! forever: once its socket is full the server never writes again, so no
//! write fails, and the hub dropping the device's queue ends the stream's
//! body but not the connection, which still waits to write the rest.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Times writes that make no progress; cheap while they do (no timer is
/// armed until a write finds the socket full).
pub(crate) struct Stall {
    timeout: Duration,
    /// Named in the log line when the timeout ends the connection.
    peer: SocketAddr,
    /// Armed by the first write that found the socket full, dropped by the
    /// next write that made progress.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// A stall of `timeout` ends the connection.
    pub(crate) fn new(timeout: Duration, peer: SocketAddr) -> Self {
        Self {
            timeout,
            peer,
            timer: None,
        }
    }

    /// Passes on the result of a write, turning a write that has been
    /// pending for the whole timeout into an error (`TimedOut`). A pending
    /// write also waits on the timer, so the connection's task wakes when
    /// it falls due even if the socket never becomes writable.
    pub(crate) fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !written.is_pending() {
            self.timer = None;
            return written;
        }
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.timer = None;
                tracing::info!(peer = %self.peer, ?timeout, "the client accepted no data: connection closed (send timeout)");
                Poll::Ready(Err(stalled(timeout)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A socket whose writes are timed by a [`Stall`]: what TLS writes into,
/// so that the timeout sees the bytes the client does not take (TLS
/// buffers the response before them, and its flushes write too).
pub(crate) struct Stalled<T> {
    io: T,
    stall: Stall,
}

impl<T> Stalled<T> {
    /// `io`, its writes timed by `stall`.
    pub(crate) fn new(io: T, stall: Stall) -> Self {
        Self { io, stall }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalled<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalled<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.stall.check(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.stall.check(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The error a stalled write ends with.
fn stalled(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the client accepted no data for {} ms (send timeout)",
            timeout.as_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_pending_for_the_whole_timeout_fails_and_progress_resets_it() {
        let mut stall = Stall::new(Duration::from_secs(10), peer());
        let mut cx = Context::from_waker(Waker::noop());
        let pending = || Poll::<io::Result<usize>>::Pending;
        assert!(stall.check(&mut cx, pending()).is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(stall.check(&mut cx, pending()).is_pending());
        // Progress: the clock starts again at the next stall.
        assert!(matches!(
            stall.check(&mut cx, Poll::Ready(Ok(5))),
            Poll::Ready(Ok(5))
        ));
        assert!(stall.check(&mut cx, pending()).is_pending());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(stall.check(&mut cx, pending()).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        match stall.check(&mut cx, pending()) {
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                assert!(e.to_string().contains("10000 ms"), "{e}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_wakes_the_task_when_it_falls_due() {
        let mut stall = Stall::new(Duration::from_millis(50), peer());
        let ended = std::future::poll_fn(|cx| stall.check(cx, Poll::<io::Result<()>>::Pending));
        // With the clock paused, the runtime jumps to the timer: the future
        // ends only because the timer woke it.
        let e = tokio::time::timeout(Duration::from_secs(1), ended)
            .await
            .expect("woken by the timer, not left pending")
            .expect_err("a stalled write fails");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
