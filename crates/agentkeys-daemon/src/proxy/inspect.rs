//! What a request head through the proxy carries, whether its binding allows it, and
//! putting the real value where the binding says. The agent's request names a credential
//! only by its placeholder; a placeholder found anywhere its binding does not allow refuses
//! the whole request (nothing is replaced, nothing forwarded). The body is `body.rs`'s.

use agentkeys_types::ServiceName;
use agentkeys_types::binding::{BasicPart, Binding, Inject, OVERRIDE_HEADERS};
use base64::Engine as _;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::request::Parts;
use zeroize::Zeroizing;

/// One credential of the run: its placeholder and the binding it came with.
#[derive(Clone)]
pub struct Route {
    /// The credential.
    pub service: ServiceName,
    /// What the agent holds instead of the value.
    pub placeholder: String,
    /// Where it may go (from the server, signed with the value).
    pub binding: Binding,
}

/// Where in a request a placeholder was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// A header value (not inside basic auth).
    Header(HeaderName),
    /// The user part of `Authorization: Basic`.
    BasicUser,
    /// The password part of `Authorization: Basic`.
    BasicPassword,
    /// The query string.
    Query,
    /// The path.
    Path,
}

impl Where {
    fn describe(&self) -> String {
        match self {
            Where::Header(h) => format!("the {h} header"),
            Where::BasicUser => "the basic-auth user".into(),
            Where::BasicPassword => "the basic-auth password".into(),
            Where::Query => "the query string".into(),
            Where::Path => "the path".into(),
        }
    }
}

/// The user and password of `Authorization: Basic …`, decoded.
fn basic_parts(value: &HeaderValue) -> Option<(Zeroizing<Vec<u8>>, usize)> {
    let v = value.as_bytes();
    if v.len() < 6 || !v[..6].eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(v[6..].trim_ascii())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((Zeroizing::new(decoded), colon))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Every place each route's placeholder appears in the request head: `(route index, where)`.
pub fn find(routes: &[Route], parts: &Parts) -> Vec<(usize, Where)> {
    let mut found = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let ph = route.placeholder.as_bytes();
        for (name, value) in &parts.headers {
            if contains(value.as_bytes(), ph) {
                found.push((i, Where::Header(name.clone())));
            }
            if name == AUTHORIZATION
                && let Some((decoded, colon)) = basic_parts(value)
            {
                if contains(&decoded[..colon], ph) {
                    found.push((i, Where::BasicUser));
                }
                if contains(&decoded[colon + 1..], ph) {
                    found.push((i, Where::BasicPassword));
                }
            }
        }
        if parts
            .uri
            .query()
            .is_some_and(|q| contains(q.as_bytes(), ph))
        {
            found.push((i, Where::Query));
        }
        if contains(parts.uri.path().as_bytes(), ph) {
            found.push((i, Where::Path));
        }
    }
    found
}

/// The request as the binding sees it.
pub struct Target<'a> {
    /// The host the connection goes to (the CONNECT target, or the absolute URI's).
    pub host: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// Whether it goes over TLS.
    pub tls: bool,
    /// A header or parameter in the request that asks the upstream for another method or
    /// path than the request line's ([`overrides`]).
    pub overrides: Option<&'a str>,
}

/// The first method or path override the request carries: one of the binding crate's
/// [`OVERRIDE_HEADERS`], or a `_method` query parameter (Express's method-override, Laravel).
/// On upstreams that honour them, they would turn an allowed `POST /v1/x` into a `DELETE` or
/// another path after the binding's check.
pub fn overrides(parts: &Parts) -> Option<String> {
    if let Some(h) = OVERRIDE_HEADERS
        .iter()
        .find(|h| parts.headers.contains_key(**h))
    {
        return Some(format!("the {h} header"));
    }
    let query = parts.uri.query()?;
    query
        .split('&')
        .map(|pair| pair.split('=').next().unwrap_or_default())
        .any(|name| {
            let lower = name.to_ascii_lowercase();
            lower == "_method" || lower == "%5fmethod"
        })
        .then(|| "a _method query parameter".to_owned())
}

/// Whether `binding` lets the placeholder of `service`, seen at `at`, be replaced in a
/// request to `target`; the reason when not (for the 403 and the trail).
pub fn check(
    service: &ServiceName,
    binding: &Binding,
    target: &Target<'_>,
    at: &[Where],
) -> Result<(), String> {
    if !binding.allows_host(target.host) {
        return Err(format!(
            "the placeholder of {service} was sent toward {}, which its binding does not allow",
            target.host
        ));
    }
    if !target.tls && !binding.allow_http {
        return Err(format!(
            "the placeholder of {service} was sent over plain http to {}; its binding allows TLS only",
            target.host
        ));
    }
    if !binding.allows_request(target.method, target.path) {
        return Err(format!(
            "{} {} is not among the methods and paths the binding of {service} allows",
            target.method, target.path
        ));
    }
    // Refused rather than stripped: stripping would quietly send another request than the
    // agent's client meant (a PATCH tunnelled through POST would arrive as a POST).
    if binding.limits_requests()
        && let Some(how) = target.overrides
    {
        return Err(format!(
            "the request carries {how}, which could get around the methods and paths the \
             binding of {service} allows"
        ));
    }
    for w in at {
        let allowed = match (&binding.inject, w) {
            (Inject::Bearer, Where::Header(h)) => h == AUTHORIZATION,
            (Inject::Header { name, .. }, Where::Header(h)) => h.as_str() == name,
            (
                Inject::Basic {
                    part: BasicPart::User,
                },
                Where::BasicUser,
            ) => true,
            (
                Inject::Basic {
                    part: BasicPart::Password,
                },
                Where::BasicPassword,
            ) => true,
            (Inject::Substitute { headers, .. }, Where::Header(h)) => named(headers, h.as_str()),
            (Inject::Substitute { headers, .. }, Where::BasicUser | Where::BasicPassword) => {
                named(headers, AUTHORIZATION.as_str())
            }
            (Inject::Substitute { query, .. }, Where::Query) => *query,
            _ => false,
        };
        if !allowed {
            return Err(format!(
                "the placeholder of {service} was found in {}, where its binding does not inject it",
                w.describe()
            ));
        }
    }
    Ok(())
}

/// Whether a `substitute` binding names the header `name` (a retired binding, which names
/// none, never reaches here: `Binding::in_force` refused or upgraded it).
fn named(headers: &Option<Vec<String>>, name: &str) -> bool {
    headers
        .as_ref()
        .is_some_and(|h| h.iter().any(|n| n == name))
}

fn header_value(bytes: &[u8]) -> Result<HeaderValue, String> {
    let mut v = HeaderValue::from_bytes(bytes)
        .map_err(|_| "the credential cannot travel in a header (control characters)".to_owned())?;
    v.set_sensitive(true);
    Ok(v)
}

fn replace_all(hay: &[u8], needle: &[u8], with: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(hay.len() + with.len()));
    let mut rest = hay;
    while let Some(at) = memchr::memmem::find(rest, needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// `Authorization: Basic` with the placeholder replaced in the user (`Some(User)`), the
/// password (`Some(Password)`) or both (`None`).
fn rewrite_basic(
    value: &HeaderValue,
    ph: &[u8],
    real: &[u8],
    part: Option<BasicPart>,
) -> Result<Option<HeaderValue>, String> {
    let Some((decoded, colon)) = basic_parts(value) else {
        return Ok(None);
    };
    let user = &decoded[..colon];
    let pass = &decoded[colon + 1..];
    let user = if part != Some(BasicPart::Password) {
        replace_all(user, ph, real)
    } else {
        Zeroizing::new(user.to_vec())
    };
    let pass = if part != Some(BasicPart::User) {
        replace_all(pass, ph, real)
    } else {
        Zeroizing::new(pass.to_vec())
    };
    let mut joined = Zeroizing::new(Vec::with_capacity(user.len() + pass.len() + 1));
    joined.extend_from_slice(&user);
    joined.push(b':');
    joined.extend_from_slice(&pass);
    let mut encoded = Zeroizing::new(String::from("Basic "));
    base64::engine::general_purpose::STANDARD.encode_string(&*joined, &mut encoded);
    header_value(encoded.as_bytes()).map(Some)
}

/// Puts `real` into the request head where `route`'s binding says, in place of the
/// placeholder. Only called once [`check`] passed.
pub fn inject(parts: &mut Parts, route: &Route, real: &[u8]) -> Result<(), String> {
    let ph = route.placeholder.as_bytes();
    match &route.binding.inject {
        Inject::Bearer => {
            let mut v = Zeroizing::new(b"Bearer ".to_vec());
            v.extend_from_slice(real);
            parts.headers.insert(AUTHORIZATION, header_value(&v)?);
        }
        Inject::Header { name, prefix } => {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| "the binding's header name is invalid".to_owned())?;
            let mut v = Zeroizing::new(prefix.as_bytes().to_vec());
            v.extend_from_slice(real);
            parts.headers.insert(name, header_value(&v)?);
        }
        Inject::Basic { part } => {
            if let Some(value) = parts.headers.get(AUTHORIZATION)
                && let Some(new) = rewrite_basic(value, ph, real, Some(*part))?
            {
                parts.headers.insert(AUTHORIZATION, new);
            }
        }
        Inject::Substitute { headers, query, .. } => {
            let names: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|n| named(headers, n.as_str()))
                .cloned()
                .collect();
            for name in names {
                let values: Vec<HeaderValue> =
                    parts.headers.get_all(&name).iter().cloned().collect();
                let mut changed = false;
                let mut new_values = Vec::with_capacity(values.len());
                for v in &values {
                    let basic = if name == AUTHORIZATION {
                        rewrite_basic(v, ph, real, None)?
                    } else {
                        None
                    };
                    let nv = match basic {
                        Some(b) => b,
                        None if contains(v.as_bytes(), ph) => {
                            header_value(&replace_all(v.as_bytes(), ph, real))?
                        }
                        None => v.clone(),
                    };
                    changed |= nv != v;
                    new_values.push(nv);
                }
                if changed {
                    parts.headers.remove(&name);
                    for v in new_values {
                        parts.headers.append(name.clone(), v);
                    }
                }
            }
            if *query
                && let Some(pq) = parts.uri.path_and_query()
                && contains(pq.as_str().as_bytes(), ph)
            {
                let path = pq.path();
                let q = pq.query().unwrap_or("");
                let new_q = replace_all(q.as_bytes(), ph, real);
                let mut pq_bytes = Zeroizing::new(Vec::with_capacity(path.len() + new_q.len() + 1));
                pq_bytes.extend_from_slice(path.as_bytes());
                pq_bytes.push(b'?');
                pq_bytes.extend_from_slice(&new_q);
                let mut uri = http::uri::Parts::from(std::mem::take(&mut parts.uri));
                uri.path_and_query = Some(
                    http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(
                        &pq_bytes,
                    ))
                    .map_err(|_| "the credential cannot travel in a query string".to_owned())?,
                );
                parts.uri = http::Uri::from_parts(uri)
                    .map_err(|_| "the credential cannot travel in a query string".to_owned())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(inject: Inject) -> Route {
        Route {
            service: ServiceName::parse("svc").unwrap(),
            placeholder: "ph-0123456789abcdef".into(),
            binding: Binding::new(vec!["api.example.com".into()], inject),
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri).method("POST");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// Where `r`'s placeholder appears in `p`.
    fn places(r: &Route, p: &Parts) -> Vec<Where> {
        find(std::slice::from_ref(r), p)
            .into_iter()
            .map(|f| f.1)
            .collect()
    }

    fn target<'a>(host: &'a str, path: &'a str) -> Target<'a> {
        Target {
            host,
            method: "POST",
            path,
            tls: true,
            overrides: None,
        }
    }

    fn substitute(headers: &[&str], query: bool) -> Inject {
        Inject::Substitute {
            headers: Some(headers.iter().map(|h| (*h).to_owned()).collect()),
            query,
            body_fields: vec![],
            body: false,
        }
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    #[test]
    fn bearer_replaces_only_the_authorization_header() {
        let r = route(Inject::Bearer);
        let mut p = parts("/v1/x", &[("authorization", "Bearer ph-0123456789abcdef")]);
        let at = places(&r, &p);
        assert_eq!(at, [Where::Header(AUTHORIZATION)]);
        check(
            &r.service,
            &r.binding,
            &target("api.example.com", "/v1/x"),
            &at,
        )
        .unwrap();
        inject(&mut p, &r, b"sk-real").unwrap();
        assert_eq!(p.headers[AUTHORIZATION], "Bearer sk-real");

        // The same placeholder in the query, another header, or toward another host: refused.
        let q = parts("/v1/x?key=ph-0123456789abcdef", &[]);
        let at = places(&r, &q);
        let e = check(
            &r.service,
            &r.binding,
            &target("api.example.com", "/v1/x"),
            &at,
        )
        .unwrap_err();
        assert!(e.contains("query string"), "{e}");
        let h = parts("/", &[("x-leak", "ph-0123456789abcdef")]);
        let at = places(&r, &h);
        assert!(check(&r.service, &r.binding, &target("api.example.com", "/"), &at).is_err());
        let e = check(
            &r.service,
            &r.binding,
            &target("evil.example.org", "/"),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("evil.example.org"), "{e}");
        let e = check(
            &r.service,
            &r.binding,
            &Target {
                tls: false,
                ..target("api.example.com", "/")
            },
            &[],
        )
        .unwrap_err();
        assert!(e.contains("plain http"), "{e}");
    }

    #[test]
    fn basic_auth_is_decoded_and_rebuilt_in_the_bound_part_only() {
        let r = route(Inject::Basic {
            part: BasicPart::Password,
        });
        let mut p = parts(
            "/",
            &[(
                "authorization",
                &basic("x-access-token", "ph-0123456789abcdef"),
            )],
        );
        let at = places(&r, &p);
        assert_eq!(at, [Where::BasicPassword]);
        check(&r.service, &r.binding, &target("api.example.com", "/"), &at).unwrap();
        inject(&mut p, &r, b"ghp_real").unwrap();
        assert_eq!(
            p.headers[AUTHORIZATION],
            basic("x-access-token", "ghp_real").as_str()
        );

        let p = parts("/", &[("authorization", &basic("ph-0123456789abcdef", ""))]);
        let at = places(&r, &p);
        assert!(check(&r.service, &r.binding, &target("api.example.com", "/"), &at).is_err());
    }

    #[test]
    fn substitute_reaches_the_named_headers_and_the_query_only_when_opted_in() {
        let r = route(substitute(&["x-goog-api-key", "authorization"], true));
        let mut p = parts(
            "/v1/models?key=ph-0123456789abcdef&x=1",
            &[
                ("x-goog-api-key", "ph-0123456789abcdef"),
                ("authorization", &basic("u", "ph-0123456789abcdef")),
                ("x-other", "unrelated"),
            ],
        );
        let at = places(&r, &p);
        check(
            &r.service,
            &r.binding,
            &target("api.example.com", "/v1/models"),
            &at,
        )
        .unwrap();
        inject(&mut p, &r, b"AIzaREAL").unwrap();
        assert_eq!(p.uri.query(), Some("key=AIzaREAL&x=1"));
        assert_eq!(p.uri.path(), "/v1/models");
        assert_eq!(p.headers["x-goog-api-key"], "AIzaREAL");
        assert_eq!(p.headers[AUTHORIZATION], basic("u", "AIzaREAL").as_str());
        assert_eq!(p.headers["x-other"], "unrelated");

        let headers_only = route(substitute(&["x-goog-api-key"], false));
        let p = parts("/v1/models?key=ph-0123456789abcdef", &[]);
        let at = places(&headers_only, &p);
        assert!(
            check(
                &r.service,
                &headers_only.binding,
                &target("api.example.com", "/"),
                &at
            )
            .is_err()
        );
        // Never in the path.
        let p = parts("/ph-0123456789abcdef/x", &[]);
        let at = places(&r, &p);
        assert!(check(&r.service, &r.binding, &target("api.example.com", "/"), &at).is_err());
    }

    #[test]
    fn substitute_refuses_a_placeholder_in_a_header_it_does_not_name() {
        let r = route(substitute(&["x-api-key"], false));
        // A header the upstream might reflect (or log and show) is not a place for the key.
        for (name, value) in [
            ("x-reflect-me", "ph-0123456789abcdef"),
            ("user-agent", "curl ph-0123456789abcdef"),
            ("authorization", "Bearer ph-0123456789abcdef"),
            ("authorization", &basic("ph-0123456789abcdef", "")),
        ] {
            let mut p = parts("/", &[("x-api-key", "ph-0123456789abcdef"), (name, value)]);
            let at = places(&r, &p);
            let e =
                check(&r.service, &r.binding, &target("api.example.com", "/"), &at).unwrap_err();
            assert!(
                e.contains("where its binding does not inject it"),
                "{name}: {e}"
            );
            // Even if asked to, inject touches the named headers only.
            inject(&mut p, &r, b"real").unwrap();
            assert_eq!(p.headers["x-api-key"], "real");
            assert!(
                !p.headers[name].to_str().unwrap().contains("real"),
                "{name}"
            );
        }
    }

    #[test]
    fn a_method_or_path_override_is_refused_on_a_binding_that_limits_them() {
        let mut r = route(Inject::Bearer);
        let with = |extra: &[(&str, &str)], uri: &str| {
            let mut headers = vec![("authorization", "Bearer ph-0123456789abcdef")];
            headers.extend_from_slice(extra);
            parts(uri, &headers)
        };
        let overridden = [
            with(&[("X-HTTP-Method-Override", "DELETE")], "/v1/x"),
            with(&[("x-http-method", "DELETE")], "/v1/x"),
            with(&[("X-Method-Override", "PUT")], "/v1/x"),
            with(&[("X-Original-URL", "/admin")], "/v1/x"),
            with(&[("X-Rewrite-URL", "/admin")], "/v1/x"),
            with(&[], "/v1/x?a=1&_method=DELETE"),
            with(&[], "/v1/x?%5Fmethod=DELETE"),
        ];
        // Without limits the headers change nothing the binding cares about.
        for p in &overridden {
            let how = overrides(p);
            assert!(how.is_some(), "{:?}", p.headers);
            let t = Target {
                overrides: how.as_deref(),
                ..target("api.example.com", "/v1/x")
            };
            check(&r.service, &r.binding, &t, &places(&r, p)).unwrap();
        }
        for limit in [
            |b: &mut Binding| b.methods = vec!["POST".into()],
            |b: &mut Binding| b.paths = vec!["/v1/".into()],
        ] {
            r.binding.methods.clear();
            r.binding.paths.clear();
            limit(&mut r.binding);
            for p in &overridden {
                let how = overrides(p);
                let t = Target {
                    overrides: how.as_deref(),
                    ..target("api.example.com", "/v1/x")
                };
                let e = check(&r.service, &r.binding, &t, &places(&r, p)).unwrap_err();
                assert!(e.contains("could get around the methods and paths"), "{e}");
            }
            let plain = with(&[("x-forwarded-for", "1.2.3.4")], "/v1/x?method=x");
            assert_eq!(overrides(&plain), None);
            check(
                &r.service,
                &r.binding,
                &target("api.example.com", "/v1/x"),
                &places(&r, &plain),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_named_header_gets_its_prefix() {
        let r = route(Inject::Header {
            name: "x-api-key".into(),
            prefix: "key ".into(),
        });
        let mut p = parts("/", &[("x-api-key", "ph-0123456789abcdef")]);
        let at = places(&r, &p);
        check(&r.service, &r.binding, &target("api.example.com", "/"), &at).unwrap();
        inject(&mut p, &r, b"real").unwrap();
        assert_eq!(p.headers["x-api-key"], "key real");
        assert!(p.headers["x-api-key"].is_sensitive());
        assert!(inject(&mut p, &r, b"bad\r\nvalue").is_err());
    }
}
