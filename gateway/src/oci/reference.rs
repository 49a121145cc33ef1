//! `oci://HOST[:PORT]/REPO@sha256:<hex>` (or `:TAG`): where a component
//! lives in an OCI registry, always with an explicit registry host.

use std::fmt;

use depin_protocol::oci::{check_digest, check_repository, check_tag};

/// The scheme that marks a component as living in a registry.
pub const SCHEME: &str = "oci://";

/// What a reference pins: a manifest digest (immutable) or a tag (moves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// `sha256:<64 hex>` of the artifact's manifest.
    Digest(String),
    /// A tag, resolved to a digest when the component is loaded.
    Tag(String),
}

/// A parsed component reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRef {
    /// `host[:port]`, as the registry is addressed.
    pub registry: String,
    /// `name/space/repo`.
    pub repository: String,
    pub pin: Pin,
}

impl ComponentRef {
    /// Whether a configured `component` names a registry artifact.
    pub fn is_oci(component: &str) -> bool {
        component.starts_with(SCHEME)
    }

    /// Parses `oci://HOST[:PORT]/REPO@sha256:<hex>` or `oci://HOST/REPO:TAG`
    /// (`REPO:TAG@sha256:<hex>` is taken as the digest alone).
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("`{text}` must start with {SCHEME}"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{text}` has no repository (oci://HOST/REPO@sha256:…)"))?;
        check_registry(registry).map_err(|p| format!("`{text}`: {p}"))?;
        let (name, pin) = match path.split_once('@') {
            Some((name_and_tag, digest)) => {
                check_digest(digest).map_err(|p| format!("`{text}`: {p}"))?;
                let name = match name_and_tag.rsplit_once(':') {
                    Some((name, tag)) if !tag.contains('/') => name,
                    _ => name_and_tag,
                };
                (name, Pin::Digest(digest.to_string()))
            }
            None => match path.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    check_tag(tag).map_err(|p| format!("`{text}`: {p}"))?;
                    (name, Pin::Tag(tag.to_string()))
                }
                _ => {
                    return Err(format!(
                        "`{text}` is not pinned: add `@sha256:<digest>` (or a tag, with \
                         `allow_tag = true`)"
                    ));
                }
            },
        };
        check_repository(name).map_err(|p| format!("`{text}`: {p}"))?;
        Ok(Self {
            registry: registry.to_string(),
            repository: name.to_string(),
            pin,
        })
    }

    /// Like [`ComponentRef::parse`], with `oci://` optional (the command
    /// line takes `HOST/REPO:TAG` as registry tools write it).
    pub fn parse_lenient(text: &str) -> Result<Self, String> {
        if Self::is_oci(text) {
            Self::parse(text)
        } else {
            Self::parse(&format!("{SCHEME}{text}"))
        }
    }

    /// The manifest digest, when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        match &self.pin {
            Pin::Digest(d) => Some(d),
            Pin::Tag(_) => None,
        }
    }

    /// The same repository pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            pin: Pin::Digest(digest.to_string()),
            ..self.clone()
        }
    }

    /// The same repository at `tag`.
    pub fn with_tag(&self, tag: &str) -> Self {
        Self {
            pin: Pin::Tag(tag.to_string()),
            ..self.clone()
        }
    }

    /// `HOST/REPO`, as cosign's payload names the image.
    pub fn docker_reference(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The reference in the registry client's terms.
    pub fn to_client_reference(&self) -> oci_client::Reference {
        match &self.pin {
            Pin::Digest(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            Pin::Tag(t) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
            ),
        }
    }
}

impl fmt::Display for ComponentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        match &self.pin {
            Pin::Digest(d) => write!(f, "@{d}"),
            Pin::Tag(t) => write!(f, ":{t}"),
        }
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.strip_prefix('[') {
        Some(v6) => {
            let (addr, rest) = v6
                .split_once(']')
                .ok_or_else(|| format!("registry `{registry}`: unclosed `[`"))?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("registry `{registry}`: `{addr}` is not an IPv6 address"))?;
            (None, rest.strip_prefix(':'))
        }
        None => match registry.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        },
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            && !host.starts_with(['.', '-']);
        if !ok {
            return Err(format!("`{registry}` is not a registry host name"));
        }
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("registry `{registry}`: port must be 1 to 65535")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_pinned_reference_parses_and_prints_back() {
        let text = format!("oci://127.0.0.1:5000/plugins/echo@{D}");
        let r = ComponentRef::parse(&text).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "plugins/echo");
        assert_eq!(r.pin, Pin::Digest(D.into()));
        assert_eq!(r.to_string(), text);
        assert_eq!(r.docker_reference(), "127.0.0.1:5000/plugins/echo");
        let c = r.to_client_reference();
        assert_eq!(c.registry(), "127.0.0.1:5000");
        assert_eq!(c.repository(), "plugins/echo");
        assert_eq!(c.digest(), Some(D));
    }

    #[test]
    fn tag_and_tag_with_digest_parse() {
        let r = ComponentRef::parse("oci://registry.example/a/b:v1.2").unwrap();
        assert_eq!(r.pin, Pin::Tag("v1.2".into()));
        assert_eq!(r.repository, "a/b");
        let r = ComponentRef::parse(&format!("oci://reg.example:443/a:v1@{D}")).unwrap();
        assert_eq!((r.repository.as_str(), r.digest()), ("a", Some(D)));
        let r = ComponentRef::parse(&format!("oci://[::1]:5000/a@{D}")).unwrap();
        assert_eq!(r.registry, "[::1]:5000");
    }

    #[test]
    fn unpinned_and_malformed_references_are_refused_with_the_reason() {
        let cases = [
            ("oci://reg.example/a", "not pinned"),
            ("reg.example/a:v1", "must start with oci://"),
            ("oci://reg.example", "no repository"),
            ("oci://reg.example/A@sha256:00", "sha256:"),
            ("oci://reg.example/Upper:v1", "repository `Upper` must be"),
            ("oci://reg example/a:v1", "not a registry host name"),
            ("oci://reg.example:0/a:v1", "port must be"),
            ("oci://reg.example/a/:v1", "repository"),
            ("oci://reg.example/a:-v", "tag `-v`"),
        ];
        for (text, why) in cases {
            let e = ComponentRef::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let upper = format!("oci://reg.example/a@sha256:{}", "AB".repeat(32));
        assert!(
            ComponentRef::parse(&upper)
                .unwrap_err()
                .contains("lower-case")
        );
    }

    #[test]
    fn lenient_parse_adds_the_scheme() {
        let r = ComponentRef::parse_lenient("localhost:5000/x:latest").unwrap();
        assert_eq!(r.to_string(), "oci://localhost:5000/x:latest");
        assert_eq!(
            r.with_digest(D).to_string(),
            format!("oci://localhost:5000/x@{D}")
        );
    }
}
