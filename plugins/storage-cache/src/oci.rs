//! OCI distribution paths below `/v2/`: repository names, references and
//! digests, checked before anything is fetched.

/// A request below `/v2/` this mirror serves.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Blob { name: &'a str, digest: &'a str },
    Manifest { name: &'a str, reference: &'a str },
}

/// Parses `<name>/blobs/<digest>` or `<name>/manifests/<reference>`.
pub fn parse(rest: &str) -> Result<Request<'_>, String> {
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        check_name(name)?;
        check_digest(digest)?;
        return Ok(Request::Blob { name, digest });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        check_name(name)?;
        if reference.starts_with("sha256:") {
            check_digest(reference)?;
        } else {
            check_tag(reference)?;
        }
        return Ok(Request::Manifest { name, reference });
    }
    Err(format!("`/v2/{rest}` is not a blob or manifest path"))
}

/// `[a-z0-9]+([._-][a-z0-9]+)*` components joined by `/`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|component| {
            !component.is_empty()
                && component.split(['.', '_', '-']).all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid repository name"))
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("`{tag}` is not a valid tag"))
    }
}

/// `sha256:<64 lower-case hex>`.
pub fn check_digest(digest: &str) -> Result<(), String> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!("`{digest}` is not a sha256 digest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_and_manifest_paths_parse() {
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(
            parse(&format!("library/alpine/blobs/{d}")),
            Ok(Request::Blob {
                name: "library/alpine",
                digest: &d
            })
        );
        assert_eq!(
            parse("a/b-c/manifests/v1.2"),
            Ok(Request::Manifest {
                name: "a/b-c",
                reference: "v1.2"
            })
        );
    }

    #[test]
    fn traversal_and_bad_names_are_refused() {
        for bad in [
            "../x/blobs/sha256:00",
            "a/../b/manifests/latest",
            "a/blobs/sha256:../../etc/passwd",
            "A/manifests/latest",
            "a/manifests/..",
            "a//b/manifests/x",
            "a/tags/list",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
