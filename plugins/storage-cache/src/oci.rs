//! OCI distribution paths below `/v2/`: repository names, references and
//! digests, checked before anything is fetched.

use depin_protocol::oci::{check_digest, check_repository, check_tag};

/// A request below `/v2/` this mirror serves.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Blob { name: &'a str, digest: &'a str },
    Manifest { name: &'a str, reference: &'a str },
}

/// Parses `<name>/blobs/<digest>` or `<name>/manifests/<reference>`.
pub fn parse(rest: &str) -> Result<Request<'_>, String> {
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        check_repository(name)?;
        check_digest(digest)?;
        return Ok(Request::Blob { name, digest });
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        check_repository(name)?;
        if reference.starts_with("sha256:") {
            check_digest(reference)?;
        } else {
            check_tag(reference)?;
        }
        return Ok(Request::Manifest { name, reference });
    }
    Err(format!("`/v2/{rest}` is not a blob or manifest path"))
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
