//! One request and its answer, as far as credentials go: which placeholders the request
//! carries and whether each may go where it goes, the values fetched and put in, the head
//! fixed for the upstream; then the answer scrubbed of every echo of those values on its
//! way back, and the injection audited. The wire calls [`Exchange::open`] with a request
//! and [`Exchange::answer`] with the upstream's answer; this module moves no bytes of a
//! connection itself.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::body;
use super::decode::Decoder;
use super::inspect::{self, Route, Target, Where};
use super::response::{Body, BoxError, empty, json_response};
use super::scrub::{Replacer, Table};
use super::state::{Fetched, RunProxy};
use super::streamed::{Record, Streamed};
use super::ws;

/// One credential injected into a request.
struct Injected {
    service: agentkeys_types::ServiceName,
    placeholder: String,
    value: Fetched,
    /// Not put into the request, only scrubbed out of its answer (a body-field value the
    /// upstream may have kept, [`Exchange::open`]).
    scrub_only: bool,
}

/// The table scrubbing an answer of the injected credentials: the held one for a single
/// credential, else one made for the set.
fn echo_table(injected: &[Injected]) -> std::io::Result<Arc<Table>> {
    match injected {
        [one] => Ok(one.value.echoes.clone()),
        many => {
            let secrets: Vec<(&[u8], &[u8])> = many
                .iter()
                .map(|i| (i.value.page.expose_secret(), i.placeholder.as_bytes()))
                .collect();
            Table::echoes(&secrets)
        }
    }
}

/// What was injected into a request, for scrubbing its answer and auditing it.
pub(super) struct Exchange {
    /// Every injected credential.
    injected: Vec<Injected>,
    method: String,
    /// `host` + path, without the query.
    target: String,
    started: Instant,
    client_upgrade: Option<OnUpgrade>,
}

/// A switched connection (`101`) for the wire to splice: both sides' upgrades, the
/// WebSocket reframer that scrubs the upstream's frames (none when nothing was injected),
/// and the injection's trail line, written once the splice ends.
pub(super) struct Switched {
    pub(super) client: OnUpgrade,
    pub(super) upstream: OnUpgrade,
    pub(super) reframer: Option<ws::Reframer>,
    pub(super) record: Option<Record>,
}

impl Exchange {
    /// Inspects, checks and rewrites a request: refuses it (403) when a placeholder goes where
    /// its binding does not allow, fetches the values to inject (checking the binding that came
    /// with each), puts them in, and fixes the head for the upstream (origin-form, `Host` set to
    /// the target, hop headers gone). A body is read whole first (bounded) when a binding with
    /// body fields allows the request, and searched before anything is fetched.
    pub(super) async fn open(
        proxy: &Arc<RunProxy>,
        mut req: Request<Incoming>,
        host: &str,
        tls: bool,
    ) -> Result<(Request<Body>, Exchange), Response<Body>> {
        let started = Instant::now();
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, incoming) = req.into_parts();
        let method = parts.method.as_str().to_owned();
        let path = parts.uri.path().to_owned();
        let overrides = inspect::overrides(&parts);
        let target = Target {
            host,
            method: &method,
            path: &path,
            tls,
            overrides: overrides.as_deref(),
        };
        let found = inspect::find(&proxy.routes, &parts);
        let at_of = |i: usize| -> Vec<Where> {
            found
                .iter()
                .filter(|f| f.0 == i)
                .map(|f| f.1.clone())
                .collect()
        };

        let body_routes = body_routes(proxy, &target);
        let request_body = if body_routes.is_empty() || http_body::Body::is_end_stream(&incoming) {
            RequestBody::Streamed(incoming)
        } else {
            RequestBody::Read(read_body(proxy, &parts, incoming).await?)
        };
        let read = match &request_body {
            RequestBody::Read(read) => Some(read),
            RequestBody::Streamed(_) => None,
        };
        let in_body = match read {
            Some(read) => {
                placeholders_in_body(proxy, read, &body_routes).map_err(|(i, place)| {
                    let r = &proxy.routes[i];
                    proxy.exfiltration(r, &not_injected(r, &place))
                })?
            }
            None => Vec::new(),
        };

        let mut chosen: Vec<usize> = found
            .iter()
            .map(|f| f.0)
            .chain(in_body.iter().copied())
            .collect();
        chosen.sort_unstable();
        chosen.dedup();
        for &i in &chosen {
            let r = &proxy.routes[i];
            if let Err(why) = inspect::check(&r.service, &r.binding, &target, &at_of(i)) {
                return Err(proxy.exfiltration(r, &why));
            }
        }
        let mut injected = Vec::new();
        // Each body site with the index (in `injected`) of the value that goes there.
        let mut body_sites: Vec<(Range<usize>, usize)> = Vec::new();
        for &i in &chosen {
            let r = &proxy.routes[i];
            let (one, sites) = inject_one(
                proxy,
                r,
                &target,
                &at_of(i),
                read,
                in_body.contains(&i),
                &mut parts,
            )
            .await?;
            body_sites.extend(sites.into_iter().map(|s| (s, injected.len())));
            injected.push(one);
        }
        scrub_only_values(proxy, &chosen, &mut injected).await?;
        fix_head(&mut parts.headers, upgrade, !injected.is_empty());
        let body = outgoing_body(request_body, &body_sites, &injected, &mut parts.headers)
            .map_err(|why| json_response(StatusCode::BAD_GATEWAY, "INTERNAL", &why, ""))?;
        let exchange = Exchange {
            injected,
            method,
            target: format!("{host}{path}"),
            started,
            client_upgrade,
        };
        Ok((Request::from_parts(parts, body), exchange))
    }

    /// Whether the agent asked to switch protocols (the request goes over HTTP/1.1).
    pub(super) fn upgrades(&self) -> bool {
        self.client_upgrade.is_some()
    }

    /// The upstream's answer on its way back: a switch to WebSocket handed to the wire to
    /// splice (its frames scrubbed), else the body streamed with any echo of an injected
    /// value replaced by its placeholder; the injection audited once the body is done.
    pub(super) fn answer(
        mut self,
        proxy: &Arc<RunProxy>,
        answer: Response<Incoming>,
    ) -> (Response<Body>, Option<Switched>) {
        if answer.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client) = self.client_upgrade.take()
        {
            return self.switch(proxy, answer, client);
        }
        (self.stream_back(proxy, answer), None)
    }

    /// The injection's trail line (`None` when only scrub-only values were involved).
    fn record(&self, proxy: &Arc<RunProxy>) -> Option<Record> {
        let services = self
            .injected
            .iter()
            .filter(|i| !i.scrub_only)
            .map(|i| i.service.clone())
            .collect();
        Record::new(proxy, services, &self.method, &self.target, self.started)
    }

    /// A `101`: refused (502) unless it is a WebSocket without extensions when values were
    /// injected; its headers scrubbed.
    fn switch(
        &self,
        proxy: &Arc<RunProxy>,
        mut answer: Response<Incoming>,
        client: OnUpgrade,
    ) -> (Response<Body>, Option<Switched>) {
        let upstream = hyper::upgrade::on(&mut answer);
        let mut record = self.record(proxy);
        // The upstream's frames are parsed, scrubbed message by message and framed again
        // (extensions were refused, so none is compressed), and the 101's headers are
        // scrubbed like any answer's. Anything else it could switch to cannot be looked into.
        let table = if self.injected.is_empty() {
            None
        } else {
            let headers = answer.headers();
            let websocket = headers
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
            let refused = if !websocket {
                Some(
                    "the upstream switched to a protocol the proxy cannot check for the credential",
                )
            } else if headers.contains_key("sec-websocket-extensions") {
                Some(
                    "the upstream turned on a WebSocket extension the proxy refused (its frames could not be checked for the credential)",
                )
            } else {
                None
            };
            let table = match refused {
                Some(why) => Err(why.to_owned()),
                None => echo_table(&self.injected)
                    .map_err(|e| format!("no secret page for the scrubber: {e}")),
            };
            match table {
                Ok(t) => Some(t),
                Err(why) => {
                    if let Some(r) = record.as_mut() {
                        r.status = 502;
                    }
                    let refused = json_response(StatusCode::BAD_GATEWAY, "UNAVAILABLE", &why, "");
                    return (refused, None);
                }
            }
        };
        let (mut parts, _) = answer.into_parts();
        if let Some(t) = &table {
            t.scrub_headers(&mut parts.headers);
        }
        let reframer = table.map(ws::Reframer::new);
        let switched = Switched {
            client,
            upstream,
            reframer,
            record,
        };
        (Response::from_parts(parts, empty()), Some(switched))
    }

    /// Any answer but a switch: hop headers dropped, headers and body scrubbed (opened
    /// first when compressed in gzip or deflate), the injection recorded.
    fn stream_back(&self, proxy: &Arc<RunProxy>, answer: Response<Incoming>) -> Response<Body> {
        let status = answer.status();
        let (mut parts, body) = answer.into_parts();
        // `Trailer` names the trailers to come; an HTTP/1.1 agent gets them only if it is kept.
        let declared: Vec<HeaderValue> = parts
            .headers
            .get_all(header::TRAILER)
            .iter()
            .cloned()
            .collect();
        strip_hop_headers(&mut parts.headers, false);
        for v in declared {
            parts.headers.append(header::TRAILER, v);
        }
        let mut record = self.record(proxy);
        if let Some(r) = record.as_mut() {
            r.status = status.as_u16();
        }
        if self.injected.is_empty() {
            return Response::from_parts(parts, Streamed::new(body, None, record).boxed());
        }
        let table = match echo_table(&self.injected) {
            Ok(t) => t,
            Err(e) => {
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    "INTERNAL",
                    &format!("no secret page for the scrubber: {e}"),
                    "",
                );
            }
        };
        // Asked for identity, an upstream may still compress: every gzip and deflate layer is
        // opened (and the answer passed on uncompressed) so an echo inside is found; any other
        // coding the proxy cannot look into, so the agent gets nothing rather than a body that
        // might hold the value.
        let decoder = match Decoder::for_encodings(
            parts
                .headers
                .get_all(header::CONTENT_ENCODING)
                .iter()
                .map(HeaderValue::as_bytes),
        ) {
            Ok(d) => d,
            Err(coding) => {
                if let Some(r) = record.as_mut() {
                    r.status = 502;
                }
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    &format!(
                        "the upstream answered in a content coding the proxy cannot check for the \
                         credential ({coding})"
                    ),
                    "the proxy asks for identity and opens gzip and deflate; an upstream that \
                     compresses anyway must use one of those",
                );
            }
        };
        if decoder.is_some() {
            parts.headers.remove(header::CONTENT_ENCODING);
        }
        table.scrub_headers(&mut parts.headers);
        // An echo may be replaced by a placeholder of another length, or be found escaped: the
        // body's length is only known once it has streamed.
        parts.headers.remove(header::CONTENT_LENGTH);
        let mut streamed = Streamed::new(body, Some(Replacer::new(table.clone())), record);
        streamed.decoder = decoder;
        streamed.trailers = Some(table);
        Response::from_parts(parts, streamed.boxed())
    }
}

/// The routes whose binding has body fields and allows this host, method and path: the
/// body is read and searched for their placeholders (an override header is refused later,
/// once a placeholder makes the binding matter).
fn body_routes(proxy: &RunProxy, target: &Target<'_>) -> Vec<usize> {
    let plain_target = Target {
        overrides: None,
        ..*target
    };
    proxy
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            !r.binding.body_fields().is_empty()
                && inspect::check(&r.service, &r.binding, &plain_target, &[]).is_ok()
        })
        .map(|(i, _)| i)
        .collect()
}

/// Which of `body_routes` have their placeholder in the body, where their binding injects
/// it; else the first route whose placeholder is somewhere else in the body, and where (a
/// refusal).
fn placeholders_in_body(
    proxy: &RunProxy,
    read: &ReadBody,
    body_routes: &[usize],
) -> Result<Vec<usize>, (usize, String)> {
    let mut in_body = Vec::new();
    for &i in body_routes {
        let r = &proxy.routes[i];
        match body::sites(
            &read.bytes,
            &read.kind,
            r.binding.body_fields(),
            r.placeholder.as_bytes(),
        ) {
            Ok(sites) if sites.is_empty() => {}
            Ok(_) => in_body.push(i),
            Err(place) => return Err((i, place)),
        }
    }
    Ok(in_body)
}

/// Fetches the value for `r` and checks the binding that came with it against `target`,
/// then puts it into the head where the placeholder was (`at`); returns it with the body
/// sites (of a body read whole) it goes into.
async fn inject_one(
    proxy: &Arc<RunProxy>,
    r: &Route,
    target: &Target<'_>,
    at: &[Where],
    read: Option<&ReadBody>,
    in_body: bool,
    parts: &mut http::request::Parts,
) -> Result<(Injected, Vec<Range<usize>>), Response<Body>> {
    let fetched = proxy.value_for(r).await?;
    let (page, binding) = (fetched.page.clone(), fetched.binding.clone());
    let mut body_sites = Vec::new();
    // The binding that came with this very value decides.
    let Some(binding) = binding else {
        return Err(proxy.exfiltration(r, &format!("{} is no longer bound to any host", r.service)));
    };
    let binding = match binding.in_force(r.service.as_str()) {
        Ok(b) => b.into_owned(),
        Err(e) => {
            proxy.refused(Some(&r.service), &e.to_string());
            return Err(json_response(
                StatusCode::FORBIDDEN,
                "DENIED",
                &e.to_string(),
                "the credential's master rebinds it ('agentkeys bind --help')",
            ));
        }
    };
    if let Err(why) = inspect::check(&r.service, &binding, target, at) {
        return Err(proxy.exfiltration(r, &why));
    }
    if let Some(read) = read
        && (in_body || !binding.body_fields().is_empty())
    {
        let sites = body::sites(
            &read.bytes,
            &read.kind,
            binding.body_fields(),
            r.placeholder.as_bytes(),
        )
        .map_err(|place| proxy.exfiltration(r, &not_injected(r, &place)))?;
        body_sites = sites;
    }
    let current = Route {
        binding,
        ..r.clone()
    };
    if !at.is_empty() {
        inspect::inject(parts, &current, page.expose_secret())
            .map_err(|why| json_response(StatusCode::BAD_GATEWAY, "INTERNAL", &why, ""))?;
    }
    Ok((
        Injected {
            service: r.service.clone(),
            placeholder: r.placeholder.clone(),
            value: fetched,
            scrub_only: false,
        },
        body_sites,
    ))
}

/// Adds the values of the run's body-field credentials not injected into this request,
/// for its answer to be scrubbed of them.
async fn scrub_only_values(
    proxy: &RunProxy,
    chosen: &[usize],
    injected: &mut Vec<Injected>,
) -> Result<(), Response<Body>> {
    // A value that went into a body field may be kept upstream and sent back later, in the
    // answer to a request without any placeholder, on any path or name of that server: so
    // every answer of a run with body-field credentials is scrubbed of their values (held
    // for `proxy_hold`, so this is rarely a fetch). Hosts none of the run's credentials is
    // bound to are refused in such a run, unless its master said `tunnel_unbound`.
    for (i, r) in proxy.routes.iter().enumerate() {
        if chosen.contains(&i) || r.binding.body_fields().is_empty() {
            continue;
        }
        injected.push(Injected {
            service: r.service.clone(),
            placeholder: r.placeholder.clone(),
            value: proxy.value_for(r).await?,
            scrub_only: true,
        });
    }
    Ok(())
}

/// The head for the upstream: no hop headers (the target and `Host` are set when it is
/// sent); with values injected, no WebSocket extension and an uncompressed answer asked for.
fn fix_head(headers: &mut HeaderMap, upgrade: bool, injects: bool) {
    strip_hop_headers(headers, upgrade);
    if upgrade && injects {
        // No permessage-deflate: the upstream's frames stay readable for the scrubber.
        headers.remove("sec-websocket-extensions");
    }
    if injects {
        // An answer is scrubbed of the value: ask for it uncompressed.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
}

/// The request's body for the upstream: read whole (the values put into their sites, the
/// length set), or streamed through untouched; why the values could not be put in.
fn outgoing_body(
    request_body: RequestBody,
    body_sites: &[(Range<usize>, usize)],
    injected: &[Injected],
    headers: &mut HeaderMap,
) -> Result<Body, String> {
    Ok(match request_body {
        RequestBody::Read(read) => {
            let bytes = if body_sites.is_empty() {
                read.bytes
            } else {
                let mut sites: Vec<(std::ops::Range<usize>, &[u8])> = body_sites
                    .iter()
                    .map(|(range, k)| (range.clone(), injected[*k].value.page.expose_secret()))
                    .collect();
                let rewritten = body::rewrite(&read.bytes, &read.kind, &mut sites)?;
                // The buffer is wiped when hyper drops the last reference to it.
                Bytes::from_owner(rewritten)
            };
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            http_body_util::Full::new(bytes)
                .map_err(|e| match e {})
                .boxed()
        }
        RequestBody::Streamed(incoming) => incoming.map_err(BoxError::from).boxed(),
    })
}

/// The refusal reason for a placeholder found in a body at `place`.
fn not_injected(r: &Route, place: &str) -> String {
    format!(
        "the placeholder of {} was found in {place}, where its binding does not inject it \
         (only as the whole value of a field it names)",
        r.service
    )
}

/// A request body the proxy has read whole, to look for placeholders in it.
struct ReadBody {
    bytes: Bytes,
    kind: body::Kind,
}

/// The body of a request on its way: read whole (a binding with body fields allows the
/// request), or streamed through untouched.
enum RequestBody {
    Read(ReadBody),
    Streamed(Incoming),
}

/// How much of a refused body's rest is read and dropped so the client, still sending,
/// gets the refusal rather than a reset connection; and for how long.
const DRAIN: (usize, Duration) = (32 << 20, Duration::from_secs(10));

/// Reads the body of a request that a binding with body fields may substitute into, up to
/// [`body::MAX_BODY`]; refuses a larger or encoded one (413/415, audited `proxy-deny`).
async fn read_body(
    proxy: &RunProxy,
    parts: &http::request::Parts,
    mut incoming: Incoming,
) -> Result<ReadBody, Response<Body>> {
    use http_body::Body as _;
    let limit = body::MAX_BODY;
    let refuse = |status: StatusCode, why: String, hint: &str| {
        proxy.refused(None, &why);
        json_response(status, "BAD_REQUEST", &why, hint)
    };
    if let Some(encoding) = body::encoding(&parts.headers) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the request body is sent with Content-Encoding: {encoding}, which the proxy \
                 cannot look into for a credential bound to body fields"
            ),
            "send the body uncompressed",
        ));
    }
    let declared = usize::try_from(incoming.size_hint().lower()).unwrap_or(usize::MAX);
    let mut over = declared > limit;
    let mut bytes = Vec::with_capacity(if over { 0 } else { declared });
    let mut whole = false;
    while !over {
        match incoming.frame().await {
            None => {
                whole = true;
                break;
            }
            Some(Err(_)) => break,
            Some(Ok(frame)) => {
                // Trailers are dropped: a body read whole is sent with a Content-Length.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if bytes.len() + data.len() > limit {
                    over = true;
                } else {
                    bytes.extend_from_slice(&data);
                }
            }
        }
    }
    if over {
        let _ = tokio::time::timeout(DRAIN.1, async {
            let mut drained = 0usize;
            while let Some(Ok(frame)) = incoming.frame().await {
                drained += frame.data_ref().map_or(0, Bytes::len);
                if drained > DRAIN.0 {
                    break;
                }
            }
        })
        .await;
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is over {} KiB: the proxy reads a body whole, up to that size, \
                 before a credential bound to body fields goes into a request",
                limit / 1024
            ),
            "send a larger body without the placeholder to a path or method the binding does not \
             name, or have the master narrow the binding (--path, --method)",
        ));
    }
    if !whole {
        return Err(json_response(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "the request body could not be read whole",
            "",
        ));
    }
    Ok(ReadBody {
        bytes: Bytes::from(bytes),
        kind: body::Kind::of(&parts.headers),
    })
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), dropped before forwarding; `upgrade`
/// and `connection: upgrade` are kept for WebSocket.
fn strip_hop_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    for h in [
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(h);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether the request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"upgrade")
        })
}
