//! Upstream registry authentication, as registry clients do it. An
//! upstream that answers 401 with `www-authenticate: Bearer realm="…",
//! service="…", scope="…"` (the distribution token flow, used by Docker Hub,
//! GHCR, Quay and registries with token auth) is asked again with a token
//! from `realm`, which is requested with the configured credentials, or
//! anonymously without them. One that answers `Basic` gets the credentials
//! directly. A token that worked is kept in kv per repository until shortly
//! before it expires, so one token serves every pull of a repository for
//! its lifetime; an expired or refused one is deleted.
//!
//! The realm's origin must be on the plugin's outbound allow-list like the
//! upstream's. The configured credentials go only to the upstream's own
//! origin, or to a realm whose origin is listed in `upstream_auth_realms`
//! and is `https://` (or plain `http://` when the upstream itself is, so
//! the credentials travel no less protected than to the upstream). Any
//! other realm named by a challenge is asked anonymously: a registry, or
//! whoever answers in its name, cannot collect the credentials by naming a
//! realm of its choosing.

use base64::Engine as _;
use depin_plugin_sdk::{config, kv, outbound_http};

/// Seconds a token is valid when the realm does not say (the distribution
/// token specification's default).
const DEFAULT_EXPIRES_IN_S: u64 = 60;
/// A token is not used in its last seconds.
const MARGIN_S: u64 = 10;
/// A token is kept for a day at most, whatever the realm says.
const MAX_KEEP_S: u64 = 86_400;

/// A parsed `www-authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic`, lower case.
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Scheme key="value", key=value, …` (quoted values may hold commas).
pub fn parse(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (quoted[..end].to_string(), &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeptToken {
    token: String,
    /// Unix time in microseconds after which it is not used.
    until_us: u64,
}

fn key(name: &str) -> String {
    format!("auth/repository:{name}:pull")
}

/// The `authorization` header for repository `name` from a token kept
/// earlier, while it is valid (an expired one is deleted).
pub fn kept(name: &str, now_us: u64) -> Option<(String, String)> {
    let kept = kv::get_json::<KeptToken>(&key(name)).ok().flatten()?;
    if now_us >= kept.until_us {
        forget(name);
        return None;
    }
    Some((
        "authorization".to_string(),
        format!("Bearer {}", kept.token),
    ))
}

/// Deletes the token kept for `name` (expired, or refused upstream).
pub fn forget(name: &str) {
    let _ = kv::delete(&key(name));
}

/// Keeps the token of `answer` for `name`, once it has worked.
pub fn keep(name: &str, answer: &Answer) {
    if let Some(token) = &answer.token
        && let Err(e) = kv::set_json(&key(name), token)
    {
        depin_plugin_sdk::log::warn(&format!("cannot keep the token for {name}: {e}"));
    }
}

/// What to ask again with after a challenge.
pub struct Answer {
    /// The `authorization` header.
    pub header: (String, String),
    /// A bearer token to keep if it works (see [`keep`]).
    token: Option<KeptToken>,
}

fn basic() -> Option<String> {
    let user = config::get("upstream_username")?;
    let password = config::get("upstream_password").unwrap_or_default();
    let pair = format!("{user}:{password}");
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// Answers the challenge `header` of a 401 for repository `name`: the
/// `authorization` header to ask again with. Nothing is kept yet.
pub fn answer(header: &str, name: &str, now_us: u64) -> Result<Answer, String> {
    let challenge = parse(header).ok_or_else(|| format!("cannot read the challenge `{header}`"))?;
    match challenge.scheme.as_str() {
        "basic" => basic()
            .map(|b| Answer {
                header: ("authorization".to_string(), b),
                token: None,
            })
            .ok_or_else(|| {
                "the upstream wants a user name and password (config upstream_username, \
                 upstream_password)"
                    .to_string()
            }),
        "bearer" => {
            let realm = challenge
                .param("realm")
                .ok_or("the bearer challenge names no realm")?;
            let default_scope = format!("repository:{name}:pull");
            let scope = challenge.param("scope").unwrap_or(&default_scope);
            let mut url = format!(
                "{realm}{}scope={}",
                if realm.contains('?') { '&' } else { '?' },
                encode(scope)
            );
            if let Some(service) = challenge.param("service") {
                url.push_str(&format!("&service={}", encode(service)));
            }
            let credentials = basic().filter(|_| {
                let trusted = realm_is_trusted(
                    realm,
                    config::get("upstream").as_deref(),
                    config::get("upstream_auth_realms").as_deref(),
                );
                if !trusted {
                    depin_plugin_sdk::log::warn(&format!(
                        "the token service {realm} is neither the upstream's origin nor in \
                         upstream_auth_realms: asking it without credentials"
                    ));
                }
                trusted
            });
            let mut headers = vec![("accept", "application/json")];
            if let Some(b) = &credentials {
                headers.push(("authorization", b.as_str()));
            }
            let response = outbound_http::get(&url, &headers)
                .map_err(|e| format!("cannot ask the token service {realm}: {e}"))?;
            if response.status != 200 {
                return Err(format!(
                    "the token service {realm} answered {}{}",
                    response.status,
                    if credentials.is_none() && response.status == 401 {
                        " (anonymous; set upstream_username and upstream_password)"
                    } else {
                        ""
                    }
                ));
            }
            #[derive(serde::Deserialize)]
            struct TokenAnswer {
                token: Option<String>,
                access_token: Option<String>,
                expires_in: Option<u64>,
            }
            let parsed: TokenAnswer = serde_json::from_slice(&response.body)
                .map_err(|e| format!("the token service {realm} sent no token: {e}"))?;
            let token = parsed
                .token
                .or(parsed.access_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("the token service {realm} sent no token"))?;
            let life_s = parsed
                .expires_in
                .unwrap_or(DEFAULT_EXPIRES_IN_S)
                .min(MAX_KEEP_S)
                .saturating_sub(MARGIN_S);
            Ok(Answer {
                header: ("authorization".to_string(), format!("Bearer {token}")),
                token: Some(KeptToken {
                    token,
                    until_us: now_us.saturating_add(life_s * 1_000_000),
                }),
            })
        }
        other => Err(format!(
            "the upstream asks for `{other}` authentication, which this mirror does not speak"
        )),
    }
}

/// `(scheme, host, port)` of an `http(s)://` URL, lower case, default ports
/// filled in.
pub fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(port) if !p.is_empty() => (h, port),
            _ if authority.ends_with(']') => (authority, default),
            _ => return None,
        },
        _ => (authority, default),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// The first entry of an `upstream_auth_realms` value that is not an
/// origin, if any.
pub fn unreadable_realm(list: &str) -> Option<&str> {
    realm_entries(list).find(|r| origin(r).is_none())
}

fn realm_entries(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', ' ']).filter(|r| !r.is_empty())
}

/// Whether the configured credentials may go to the token service `realm`:
/// it is on the `upstream`'s origin, or its origin is in `allowed` (origins
/// separated by commas or spaces) and it is `https://` or the upstream is
/// plain `http://` too.
fn realm_is_trusted(realm: &str, upstream: Option<&str>, allowed: Option<&str>) -> bool {
    let Some(realm) = origin(realm) else {
        return false;
    };
    let upstream = upstream.and_then(origin);
    if upstream.as_ref() == Some(&realm) {
        return true;
    }
    let listed = realm_entries(allowed.unwrap_or(""))
        .filter_map(origin)
        .any(|o| o == realm);
    let transport_ok =
        realm.0 == "https" || upstream.is_some_and(|(scheme, _, _)| scheme == "http");
    listed && transport_ok
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let c = parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry.example"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let c = parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(
            (c.scheme.as_str(), c.param("realm")),
            ("basic", Some("Registry Realm"))
        );
        assert_eq!(parse("Bearer").unwrap().params, vec![]);
        assert_eq!(parse(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn credentials_go_to_the_upstream_origin_or_a_listed_https_realm_only() {
        let hub = Some("https://registry-1.docker.io");
        let listed = Some("https://auth.docker.io, https://other.example:8443");
        assert!(realm_is_trusted(
            "https://registry-1.docker.io:443/token",
            hub,
            None
        ));
        assert!(realm_is_trusted(
            "https://auth.docker.io/token",
            hub,
            listed
        ));
        assert!(realm_is_trusted(
            "https://other.example:8443/t?x=1",
            hub,
            listed
        ));
        assert!(!realm_is_trusted("https://auth.docker.io/token", hub, None));
        assert!(!realm_is_trusted("https://evil.example/token", hub, listed));
        assert!(!realm_is_trusted("https://other.example/t", hub, listed));
        // A listed realm over plain HTTP only when the upstream is plain too.
        let plain = Some("http://127.0.0.1:5000");
        assert!(!realm_is_trusted(
            "http://auth.docker.io/token",
            hub,
            Some("http://auth.docker.io")
        ));
        assert!(realm_is_trusted(
            "http://127.0.0.1:5001/token",
            plain,
            Some("http://127.0.0.1:5001")
        ));
        assert!(!realm_is_trusted(
            "http://127.0.0.1:5001/token",
            plain,
            None
        ));
        assert!(!realm_is_trusted(
            "https://user@auth.docker.io/",
            hub,
            listed
        ));
        assert_eq!(unreadable_realm("https://a.example, http://b:1"), None);
        assert_eq!(
            unreadable_realm("https://a.example,ftp://b"),
            Some("ftp://b")
        );
        assert_eq!(
            origin("http://[::1]:5000/x"),
            Some(("http".into(), "[::1]".into(), 5000))
        );
        assert_eq!(
            origin("HTTPS://Auth.Example"),
            Some(("https".into(), "auth.example".into(), 443))
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
