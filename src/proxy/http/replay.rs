//! Request bodies that can be sent again: the first try streams the app's body upstream as it
//! comes while keeping a copy (up to [`REPLAY_LIMIT`]), so a retry sends the same bytes and
//! trailers without the first try having waited for the whole body. A body larger than the
//! limit, or not yet read to its end when a retry is wanted, is not retried (Envoy's rule:
//! retries need the request buffered).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::Either;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::HeaderMap;

use super::server::Counted;

/// The most request body bytes kept for a retry (Envoy's default per-request buffer limit is
/// 1 MiB; a retried request is rarely an upload, so less memory per request in flight).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// The body every outbound try sends: the app's (recorded as it streams) or a replay.
pub type TryBody = Either<Recording, Replayed>;

/// What was kept of a body so far.
#[derive(Debug, Default)]
struct Kept {
    data: Vec<Bytes>,
    size: usize,
    trailers: Option<HeaderMap>,
    complete: bool,
    overflowed: bool,
}

/// The app's body, copied aside as it is read.
pub struct Recording {
    inner: Counted<Incoming>,
    kept: Arc<Mutex<Kept>>,
}

/// A handle on what a [`Recording`] kept, to replay it.
#[derive(Clone)]
pub struct Recorder {
    kept: Arc<Mutex<Kept>>,
}

impl Recording {
    pub fn new(inner: Counted<Incoming>) -> (Recording, Recorder) {
        let kept = Arc::new(Mutex::new(Kept {
            // An empty body (a GET) is complete before anyone reads it.
            complete: inner.is_end_stream(),
            ..Kept::default()
        }));
        let recorder = Recorder { kept: kept.clone() };
        (Recording { inner, kept }, recorder)
    }
}

impl Recorder {
    /// Whether [`Recorder::replay`] would give the body (without copying it).
    pub fn can_replay(&self) -> bool {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.complete && !kept.overflowed
    }

    /// The same body again, if it was read to its end within the limit.
    pub fn replay(&self) -> Option<Replayed> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        (kept.complete && !kept.overflowed).then(|| Replayed {
            data: kept.data.iter().cloned().collect(),
            trailers: kept.trailers.clone(),
        })
    }
}

impl Body for Recording {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(ready) = &polled {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            match ready {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if !kept.overflowed && kept.size + data.len() <= REPLAY_LIMIT {
                            kept.size += data.len();
                            kept.data.push(data.clone());
                        } else {
                            kept.overflowed = true;
                            kept.data = Vec::new();
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        kept.trailers = Some(t.clone());
                    }
                    if self.inner.is_end_stream() {
                        kept.complete = true;
                    }
                }
                None => kept.complete = true,
                // A body the client broke off is never replayed.
                Some(Err(_)) => kept.overflowed = true,
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A kept body, sent again.
pub struct Replayed {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(d) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.iter().map(|d| d.len() as u64).sum())
    }
}
