//! Server-sent events: every streaming route's response goes through [`sse_response`].
//!
//! The producer runs as a task writing events into a bounded channel that the response body reads. When the client
//! goes away, hyper drops the body and with it the channel's receiver; the task is then dropped at once, even while
//! it waits for a first token behind a long prefill, and with it the engine streams it holds, which cancels their
//! requests (queued, prefilling or decoding) at the scheduler's next step.

use std::convert::Infallible;

use futures_util::stream::{self, Stream};
use runtime::{Event, RequestStream};
use serde::Serialize;
use warp::reply::Response;
use warp::Reply;

/// Where a streaming route writes its events.
pub(crate) struct Sse(tokio::sync::mpsc::Sender<Result<warp::sse::Event, Infallible>>);

impl Sse {
    /// Sends one `data:` event; false once the client is gone.
    pub async fn send<T: Serialize>(&self, v: &T) -> bool {
        let data = serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        self.0.send(Ok(warp::sse::Event::default().data(data))).await.is_ok()
    }

    /// The closing `data: [DONE]`.
    pub async fn done(&self) {
        let _ = self.0.send(Ok(warp::sse::Event::default().data("[DONE]"))).await;
    }
}

/// An SSE response fed by `produce`, which is dropped as soon as the client is gone (see the module docs).
pub(crate) fn sse_response<F, Fut>(produce: F) -> Response
where
    F: FnOnce(Sse) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let watch = tx.clone();
    let task = produce(Sse(tx));
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            () = watch.closed() => {}
        }
    });
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    warp::sse::reply(body).into_response()
}

/// Several requests' event streams merged into one, each event tagged with its stream's index.
pub(crate) fn merged(streams: Vec<RequestStream>) -> impl Stream<Item = (usize, Event)> {
    stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| Box::pin(stream::unfold(s, move |mut s| async move { s.recv().await.map(|e| ((i, e), s)) }))),
    )
}
