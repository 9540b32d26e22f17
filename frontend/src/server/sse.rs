//! Server-sent events: every streaming route's response goes through [`sse_response`].
//!
//! The producer runs as a task writing events into a bounded channel that the response body reads. When the client
//! goes away, hyper drops the body and with it the channel's receiver; the task is then dropped at once, even while
//! it waits for a first token behind a long prefill, and with it the engine streams it holds, which cancels their
//! requests (queued, prefilling or decoding) at the scheduler's next step.

use std::convert::Infallible;

use futures_util::stream::{self, Stream, StreamExt};
use runtime::{Event, RequestStream};
use serde::Serialize;
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;

/// Where a streaming route writes its events.
pub(crate) struct Sse(tokio::sync::mpsc::Sender<Result<warp::sse::Event, Infallible>>);

impl Sse {
    /// Sends one event with an `event:` name; false once the client is gone.
    pub async fn send_named<T: Serialize>(&self, name: Option<&str>, v: &T) -> bool {
        let data = serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        let mut ev = warp::sse::Event::default().data(data);
        if let Some(n) = name {
            ev = ev.event(n);
        }
        self.0.send(Ok(ev)).await.is_ok()
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
fn merged(streams: Vec<RequestStream>) -> impl Stream<Item = (usize, Event)> {
    stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| Box::pin(stream::unfold(s, move |mut s| async move { s.recv().await.map(|e| ((i, e), s)) }))),
    )
}

/// A streaming route's side of the one stream loop ([`stream_events`]).
pub(crate) trait EventStream: Send + 'static {
    type Chunk: Serialize + Send + Sync + 'static;
    /// Chunks that go out at once.
    fn first(&mut self) -> Vec<Self::Chunk>;
    /// The chunks for one engine event of stream `i`; an `Err` (a generation that failed) ends the stream with
    /// its error body.
    fn on_event(&mut self, i: usize, event: Event) -> Result<Vec<Self::Chunk>, ApiError>;
    /// The chunks after every stream has finished.
    fn last(self) -> Vec<Self::Chunk>;
    /// The SSE `event:` name of a chunk (none: a bare `data:` event, as chat completions send).
    fn event_name(_chunk: &Self::Chunk) -> Option<&'static str> {
        None
    }
    /// Whether the stream ends with `data: [DONE]` (chat and completions do; the Responses API does not).
    const DONE: bool = true;
}

/// The stream loop every streaming route runs: `state`'s first chunks; then each engine event of `streams`
/// (merged, tagged with its stream's index) as the chunks `state` makes of it; once every stream has finished,
/// its last chunks; then `[DONE]`. The client leaving cancels everything at once (see [`sse_response`]).
pub(crate) fn stream_events<S: EventStream>(streams: Vec<RequestStream>, mut state: S) -> Response {
    sse_response(move |tx| async move {
        for chunk in &state.first() {
            if !tx.send_named(S::event_name(chunk), chunk).await {
                return;
            }
        }
        let mut events = Box::pin(merged(streams));
        while let Some((i, event)) = events.next().await {
            match state.on_event(i, event) {
                Ok(chunks) => {
                    for chunk in &chunks {
                        if !tx.send_named(S::event_name(chunk), chunk).await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tx.send_named(Some("error").filter(|_| !S::DONE), &e.body()).await;
                    if S::DONE {
                        tx.done().await;
                    }
                    return;
                }
            }
        }
        for chunk in &state.last() {
            if !tx.send_named(S::event_name(chunk), chunk).await {
                return;
            }
        }
        if S::DONE {
            tx.done().await;
        }
    })
}
