//! Checks every request passes before its handler runs, each answered through the one error mapping: header
//! limits (431), the allowed `Host`s (403), the API key (401) and the body's media type (415).
//!
//! Two of them close the hole local LLM servers have had, a web page driving a server on the user's own machine:
//! - A page can POST `text/plain` (or a typeless `Blob`) cross-origin without a CORS preflight. JSON routes take
//!   `application/json` only; a body with no `Content-Type` is taken from non-browser clients (scripts often send
//!   none) but not when the request carries an `Origin`, which browsers send on every cross-origin POST.
//! - DNS rebinding points an attacker's name at 127.0.0.1, so the page's requests reach us same-origin. Served on
//!   a loopback address, only loopback names are accepted in `Host` unless `--allowed-hosts` says otherwise.

use std::net::IpAddr;

use subtle::ConstantTimeEq;
use warp::http::{HeaderMap, StatusCode};

use super::error::ApiError;

/// Most bytes of request headers (names and values) a request may carry.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Most request headers.
pub const MAX_HEADERS: usize = 128;

/// 431 when the request's headers are over our limits.
pub fn check_header_size(headers: &HeaderMap) -> Result<(), ApiError> {
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError {
            code: Some("request_header_fields_too_large"),
            ..ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                format!(
                    "The request headers are too large: {} headers, {bytes} bytes (at most {MAX_HEADERS} headers, \
                     {MAX_HEADER_BYTES} bytes).",
                    headers.len()
                ),
            )
        });
    }
    Ok(())
}

/// Which `Host` names are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHosts {
    Any,
    /// Host names (no port), lower case.
    Only(Vec<String>),
}

impl AllowedHosts {
    /// From `--allowed-hosts` (a comma-separated list, `*` for any); by default any name, except on a loopback
    /// address, where only loopback names.
    pub fn new(option: Option<&str>, bind: IpAddr) -> Self {
        match option {
            Some(list) if list.split(',').any(|h| h.trim() == "*") => AllowedHosts::Any,
            Some(list) => AllowedHosts::Only(
                list.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect(),
            ),
            None if bind.is_loopback() => {
                AllowedHosts::Only(vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into(), bind.to_string()])
            }
            None => AllowedHosts::Any,
        }
    }

    /// 403 when the `Host` header names a host not served (a request without one is let through).
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let AllowedHosts::Only(names) = self else { return Ok(()) };
        let Some(host) = headers.get("host") else { return Ok(()) };
        let host = host.to_str().unwrap_or_default().to_ascii_lowercase();
        // Strip the port: the last ':' outside an IPv6 literal's brackets.
        let name = match host.rfind(':') {
            Some(i) if !host[i..].contains(']') => &host[..i],
            _ => &host[..],
        };
        if names.iter().any(|n| n == name || n.parse::<IpAddr>().is_ok_and(|ip| ip.to_string() == name)) {
            return Ok(());
        }
        Err(ApiError {
            code: Some("host_not_allowed"),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!("Host {host:?} is not served here (allowed: {}; see --allowed-hosts).", names.join(", ")),
            )
        })
    }
}

/// 401 unless `Authorization: Bearer <key>` carries the key (when one is set), compared in constant time.
pub fn check_api_key(key: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let token = given.strip_prefix("Bearer ").or_else(|| given.strip_prefix("bearer ")).unwrap_or_default();
    if bool::from(token.as_bytes().ct_eq(key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// 415 unless the body is declared JSON (`application/json` or `application/*+json`), or declared nothing by a
/// client that is not a browser (no `Origin`).
pub fn check_json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |what: String| {
        Err(ApiError {
            code: Some("unsupported_media_type"),
            ..ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                format!("{what}: send the JSON body with Content-Type: application/json."),
            )
        })
    };
    match headers.get("content-type").map(|v| v.to_str().unwrap_or_default().to_ascii_lowercase()) {
        None if headers.contains_key("origin") => refuse("A cross-origin request without a Content-Type".into()),
        None => Ok(()),
        Some(ct) => {
            let media = ct.split(';').next().unwrap_or_default().trim();
            if media == "application/json" || (media.starts_with("application/") && media.ends_with("+json")) {
                Ok(())
            } else {
                refuse(format!("Content-Type {media:?} is not JSON"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (warp::http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn hosts_media_types_and_keys() {
        let loopback = AllowedHosts::new(None, "127.0.0.1".parse().unwrap());
        for ok in ["127.0.0.1:30000", "localhost", "LOCALHOST:1", "[::1]:8080"] {
            assert!(loopback.check(&headers(&[("host", ok)])).is_ok(), "{ok}");
        }
        let e = loopback.check(&headers(&[("host", "attacker.example:30000")])).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, Some("host_not_allowed")));
        assert!(loopback.check(&HeaderMap::new()).is_ok());
        assert_eq!(AllowedHosts::new(None, "0.0.0.0".parse().unwrap()), AllowedHosts::Any);
        assert_eq!(AllowedHosts::new(Some("*"), "127.0.0.1".parse().unwrap()), AllowedHosts::Any);
        let mine = AllowedHosts::new(Some("llm.internal, Example.org"), "127.0.0.1".parse().unwrap());
        assert!(mine.check(&headers(&[("host", "example.org:443")])).is_ok());
        assert!(mine.check(&headers(&[("host", "localhost")])).is_err());

        for ok in ["application/json", "application/json; charset=utf-8", "Application/JSON", "application/x+json"] {
            assert!(check_json_body(&headers(&[("content-type", ok)])).is_ok(), "{ok}");
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            assert_eq!(check_json_body(&headers(&[("content-type", bad)])).unwrap_err().status.as_u16(), 415);
        }
        assert!(check_json_body(&HeaderMap::new()).is_ok(), "a script that sends no type");
        assert!(check_json_body(&headers(&[("origin", "https://a.example")])).is_err(), "a browser that sends none");

        assert!(check_api_key(None, &HeaderMap::new()).is_ok());
        assert!(check_api_key(Some("k"), &headers(&[("authorization", "Bearer k")])).is_ok());
        assert!(check_api_key(Some("k"), &headers(&[("authorization", "Bearer kk")])).is_err());
        assert!(check_api_key(Some("k"), &HeaderMap::new()).is_err());

        let mut many = HeaderMap::new();
        many.insert("x-big", "a".repeat(MAX_HEADER_BYTES).parse().unwrap());
        assert_eq!(check_header_size(&many).unwrap_err().status.as_u16(), 431);
    }
}
