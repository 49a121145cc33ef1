//! Where a redirect leads: its `location` resolved against the request's
//! URL, and the origin it belongs to (checked against the allow-list).

use hyper::Uri;

use super::OutboundError;

/// The request headers a redirect to another origin carries on: content
/// negotiation, ranges and validators. Everything else (`authorization`,
/// `cookie`, `proxy-authorization`, API keys and tokens under any name) is
/// meant for the origin it was sent to and is dropped.
pub const CROSS_ORIGIN_HEADERS: [&str; 12] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "pragma",
    "range",
    "user-agent",
];

/// Whether request header `name` may follow a redirect to another origin.
pub(super) fn passes_to_another_origin(name: &str) -> bool {
    CROSS_ORIGIN_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// `scheme://host:port` of an absolute URI.
pub(super) fn origin_of(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{}:{port}", uri.host().unwrap_or_default())
}

/// A redirect's `location` as an absolute URL, resolved against the
/// request's URL as RFC 3986 section 5.2 says (absolute, `//authority...`,
/// absolute path, relative path, or query only).
pub(super) fn resolve_location(base: &Uri, location: &str) -> Result<String, OutboundError> {
    let location = location.trim();
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    if let Some((name, rest)) = location.split_once(':')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Ok(format!("{}:{rest}", name.to_ascii_lowercase()));
    }
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    let cut = location.find(['?', '#']).unwrap_or(location.len());
    let (path, suffix) = location.split_at(cut);
    let merged = if path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() {
        base.path().to_string()
    } else {
        let dir = &base.path()[..base.path().rfind('/').map_or(0, |i| i + 1)];
        format!("{}{path}", if dir.is_empty() { "/" } else { dir })
    };
    let suffix = if path.is_empty() && !suffix.starts_with('?') {
        // A fragment only: keep the request's query.
        base.query().map_or(String::new(), |q| format!("?{q}"))
    } else {
        suffix.split('#').next().unwrap_or("").to_string()
    };
    Ok(format!(
        "{scheme}://{authority}{}{suffix}",
        remove_dot_segments(&merged)
    ))
}

/// `path` without `.` and `..` segments (RFC 3986 section 5.2.4).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}
