//! Response bodies cut into small HTTP/2 DATA frames, so that replies of a few kilobytes to
//! many concurrent calls share one socket write instead of taking one each.
//!
//! h2 (0.4) copies a DATA frame smaller than 256 bytes into its 16 KB write buffer, next to
//! the other streams' frames, but keeps a larger one aside and writes it out (with
//! `writev`) before it will accept the next frame of any stream
//! (`h2/src/codec/framed_write.rs`, `CHAIN_THRESHOLD`; 1024 bytes without vectored I/O). A
//! unary reply is one body chunk, so every reply over 255 bytes, such as a cached token of
//! ~1.5 KB, cost a system call and a TCP segment of its own, while small replies to 16 callers
//! on one connection went out in one. Cutting such a chunk into pieces below the threshold
//! (`Bytes::split_to`, no copy) lets h2 pack them; each piece costs a 9-byte frame header.
//! gRPC's message framing does not depend on DATA frame boundaries (gRPC over HTTP/2,
//! "Length-Prefixed-Message" may span frames), so callers see the same messages.
//!
//! Chunks from 16 KB up are passed on whole: h2 writes those without a copy, and a large
//! reply fills a socket write by itself anyway.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Pieces are at most this long: below h2's threshold for writing a frame on its own, on a
/// connection that does not offer vectored writes ([`Unvectored`]).
pub const PIECE: usize = 1023;

/// Chunks at least this long are passed on whole.
pub const WHOLE: usize = 16 * 1024;

/// A tower layer giving every response a [`SmallFrames`] body.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmallFramesLayer;

impl<S> tower::Layer<S> for SmallFramesLayer {
    type Service = SmallFramesService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SmallFramesService { inner }
    }
}

/// A service whose response bodies are [`SmallFrames`].
#[derive(Debug, Clone)]
pub struct SmallFramesService<S> {
    inner: S,
}

impl<S, Request, ResBody> tower::Service<Request> for SmallFramesService<S>
where
    S: tower::Service<Request, Response = http::Response<ResBody>>,
{
    type Response = http::Response<SmallFrames<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`SmallFramesService`] call.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, ResBody, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<SmallFrames<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|result| result.map(|response| response.map(SmallFrames::new)))
    }
}

pin_project_lite::pin_project! {
    /// A body whose data chunks between [`PIECE`] and [`WHOLE`] bytes come out in pieces of
    /// at most [`PIECE`] bytes; everything else (small or large chunks, trailers) is passed
    /// on as it is.
    #[derive(Debug)]
    pub struct SmallFrames<B> {
        #[pin]
        inner: B,
        rest: Bytes,
    }
}

impl<B> SmallFrames<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        SmallFrames {
            inner,
            rest: Bytes::new(),
        }
    }
}

/// The next piece of `rest`.
fn piece(rest: &mut Bytes) -> Frame<Bytes> {
    let len = rest.len().min(PIECE);
    Frame::data(rest.split_to(len))
}

impl<B> Body for SmallFrames<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(piece(this.rest))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.len() > PIECE && data.len() < WHOLE => {
                    *this.rest = data;
                    Poll::Ready(Some(Ok(piece(this.rest))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// A connection that tells h2 it has no vectored writes, which raises h2's threshold for
/// writing a DATA frame on its own from 256 to 1024 bytes: a reply of a few kilobytes then
/// needs a few [`PIECE`]s instead of many. h2 then sends everything it buffered in one plain
/// write, and a frame it keeps aside (16 KB and more) in a second.
#[derive(Debug)]
pub struct Unvectored<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Unvectored<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::{BodyExt as _, Full, StreamBody};

    use super::*;

    type Chunks = Vec<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// The frames `chunks` come out as: data lengths, and whether trailers came last.
    async fn frames_of(chunks: Chunks) -> (Vec<usize>, Bytes, bool) {
        let mut body = std::pin::pin!(SmallFrames::new(StreamBody::new(tokio_stream::iter(
            chunks
        ))));
        let mut lengths = Vec::new();
        let mut all = Vec::new();
        let mut trailers = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(!trailers, "nothing comes after the trailers");
            match frame.into_data() {
                Ok(data) => {
                    lengths.push(data.len());
                    all.extend_from_slice(&data);
                }
                Err(frame) => trailers = frame.is_trailers(),
            }
        }
        (lengths, Bytes::from(all), trailers)
    }

    fn bytes(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[tokio::test]
    async fn mid_sized_chunks_come_out_in_pieces_below_the_threshold() {
        let data = bytes(1_500);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let (lengths, all, had_trailers) = frames_of(vec![
            Ok(Frame::data(data.clone())),
            Ok(Frame::trailers(trailers)),
        ])
        .await;
        assert_eq!(lengths, vec![PIECE, 477]);
        assert_eq!(all, data);
        assert!(had_trailers);
    }

    #[tokio::test]
    async fn small_and_large_chunks_pass_whole() {
        let small = bytes(PIECE);
        let large = bytes(WHOLE);
        let (lengths, all, had_trailers) = frames_of(vec![
            Ok(Frame::data(small.clone())),
            Ok(Frame::data(large.clone())),
            Ok(Frame::data(Bytes::new())),
        ])
        .await;
        assert_eq!(lengths, vec![PIECE, WHOLE, 0]);
        assert_eq!(all, [small, large].concat());
        assert!(!had_trailers);
    }

    #[tokio::test]
    async fn chunks_just_over_the_threshold_are_cut_and_kept_in_order() {
        let first = bytes(PIECE + 1);
        let second = bytes(WHOLE - 1);
        let (lengths, all, _) = frames_of(vec![
            Ok(Frame::data(first.clone())),
            Ok(Frame::data(second.clone())),
        ])
        .await;
        assert_eq!(lengths[..2], [PIECE, 1]);
        assert!(lengths[2..].iter().all(|&len| len <= PIECE));
        assert_eq!(lengths.iter().sum::<usize>(), first.len() + second.len());
        assert_eq!(all, [first, second].concat());
    }

    #[tokio::test]
    async fn the_body_ends_only_after_its_last_piece() {
        let mut body = std::pin::pin!(SmallFrames::new(Full::new(bytes(PIECE + 10))));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(PIECE as u64 + 10));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), PIECE);
        // The inner body is spent, but ten bytes are still to come.
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(10));
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second.len(), 10);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
