//! An answer's body on its way back to the agent: decompressed, every echo of an injected
//! value replaced as it streams (trailers too), counted; and the injection's trail line,
//! written once the answer is done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use agentkeys_types::ServiceName;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::decode::Decoder;
use super::response::BoxError;
use super::scrub::{Replacer, Table};
use super::state::RunProxy;
use crate::trail::Event;

/// An injection's trail line, written when its answer is done (or dropped).
pub(super) struct Record {
    proxy: Arc<RunProxy>,
    services: Vec<ServiceName>,
    method: String,
    target: String,
    started: Instant,
    /// The answer's status (101 for a switched connection).
    pub(super) status: u16,
    /// Bytes passed back (both ways for a switched connection).
    pub(super) bytes: u64,
}

impl Record {
    /// The trail line for `services` injected into one request; `None` when there are none
    /// (a request with scrub-only values is not an injection).
    pub(super) fn new(
        proxy: &Arc<RunProxy>,
        services: Vec<ServiceName>,
        method: &str,
        target: &str,
        started: Instant,
    ) -> Option<Record> {
        (!services.is_empty()).then(|| Record {
            proxy: proxy.clone(),
            services,
            method: method.to_owned(),
            target: target.to_owned(),
            started,
            status: 0,
            bytes: 0,
        })
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        for service in &self.services {
            self.proxy.audit(Event {
                event: "inject".into(),
                service: Some(service.to_string()),
                mode: Some("proxy".into()),
                detail: Some(format!(
                    "{} {} -> {}, {} bytes, {} ms",
                    self.method,
                    self.target,
                    self.status,
                    self.bytes,
                    self.started.elapsed().as_millis()
                )),
                ..Default::default()
            });
        }
    }
}

/// A body passed through, optionally decompressed and with replacements, counting its
/// bytes for the trail; an answer's trailers scrubbed too.
pub(super) struct Streamed<B> {
    inner: B,
    pub(super) decoder: Option<Decoder>,
    replacer: Option<Replacer>,
    /// The table an answer's trailers are scrubbed with (none for a request's body, whose
    /// trailers get no substitution).
    pub(super) trailers: Option<Arc<Table>>,
    record: Option<Record>,
    /// Trailers waiting for the data the decoder and replacer still held to go first.
    pending: Option<Frame<Bytes>>,
    /// The decoder and replacer have given up what they held.
    drained: bool,
    done: bool,
}

impl<B> Streamed<B> {
    /// `inner` passed through `replacer`, counted into `record`.
    pub(super) fn new(inner: B, replacer: Option<Replacer>, record: Option<Record>) -> Self {
        Streamed {
            inner,
            decoder: None,
            replacer,
            trailers: None,
            record,
            pending: None,
            drained: false,
            done: false,
        }
    }

    /// The end of the body's data: what the decoder and the replacer still hold (once).
    fn drain(&mut self) -> Result<Bytes, BoxError> {
        if std::mem::replace(&mut self.drained, true) {
            return Ok(Bytes::new());
        }
        let tail = match self.decoder.as_mut().map(Decoder::finish) {
            None => Bytes::new(),
            Some(plain) => Bytes::from(plain?),
        };
        let rest = match self.replacer.as_mut() {
            Some(r) => {
                let mut all = r.push(&tail).to_vec();
                all.extend_from_slice(&r.finish());
                Bytes::from(all)
            }
            None => tail,
        };
        if let Some(r) = self.record.as_mut() {
            r.bytes += rest.len() as u64;
        }
        Ok(rest)
    }
}

impl<B> http_body::Body for Streamed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(trailers) = this.pending.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => {
                            let data = match this.decoder.as_mut().map(|d| d.push(&data)) {
                                None => data,
                                Some(Ok(plain)) => Bytes::from(plain),
                                Some(Err(e)) => {
                                    this.done = true;
                                    return Poll::Ready(Some(Err(e.into())));
                                }
                            };
                            let out = match this.replacer.as_mut() {
                                Some(r) => r.push(&data),
                                None => data,
                            };
                            if let Some(r) = this.record.as_mut() {
                                r.bytes += out.len() as u64;
                            }
                            if out.is_empty() {
                                continue;
                            }
                            Frame::data(out)
                        }
                        Err(frame) => match frame.into_trailers() {
                            // Trailers end the data: what was held goes out before them,
                            // and their values are scrubbed like headers.
                            Ok(mut trailers) => {
                                if let Some(table) = &this.trailers {
                                    table.scrub_headers(&mut trailers);
                                }
                                let rest = match this.drain() {
                                    Ok(rest) => rest,
                                    Err(e) => {
                                        this.done = true;
                                        return Poll::Ready(Some(Err(e)));
                                    }
                                };
                                if rest.is_empty() {
                                    Frame::trailers(trailers)
                                } else {
                                    this.pending = Some(Frame::trailers(trailers));
                                    Frame::data(rest)
                                }
                            }
                            Err(frame) => frame,
                        },
                    };
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.drain() {
                        Err(e) => Poll::Ready(Some(Err(e))),
                        Ok(rest) if rest.is_empty() => Poll::Ready(None),
                        Ok(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.replacer.is_none() && self.decoder.is_none() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}
