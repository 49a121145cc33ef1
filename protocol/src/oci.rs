//! The OCI distribution grammar both sides of a registry exchange check
//! before anything is fetched: repository names, tags and sha256 digests
//! (the distribution spec's `name`, `tag` and `digest` productions). The
//! gateway checks the references it pulls; the storage-cache plugin the
//! paths clients ask it for. Each error names the offending text.

/// `sha256:` and 64 lower-case hex digits.
pub fn check_digest(digest: &str) -> Result<(), String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("digest `{digest}` must be `sha256:<64 hex digits>`"))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "digest `{digest}` must be `sha256:` and 64 lower-case hex digits"
        ))
    }
}

/// At most 255 bytes of `/`-separated components, each runs of a-z and
/// 0-9 joined by `.`, `_`, `__` or one or more `-`
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`).
pub fn check_repository(name: &str) -> Result<(), String> {
    if name.len() <= 255 && name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!(
            "repository `{name}` must be `/`-separated parts of a-z, 0-9, `.`, `_`, `-`"
        ))
    }
}

fn component_ok(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        // A run of letters and digits...
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // ...then one separator before the next run.
        let separator = match bytes[i] {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|&&b| b == b'-').count(),
            _ => return false,
        };
        i += separator;
    }
}

/// 1 to 128 of A-Z, a-z, 0-9, `.`, `_`, `-`, not starting with `.` or `-`
/// (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`).
pub fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` must be 1 to 128 of A-Z, a-z, 0-9, `.`, `_`, `-`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_follow_the_distribution_grammar() {
        for good in ["a", "library/alpine", "a/b-c", "a__b", "a---b", "a.b_c/d9"] {
            assert!(check_repository(good).is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a..b", "a___b", "-a", "a-", "a_", "a b",
        ] {
            assert!(check_repository(bad).is_err(), "{bad}");
        }
        assert!(check_repository(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags_and_digests_are_checked() {
        for good in ["latest", "v1.2", "_x", "A-b.C_d"] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", ".."] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
        assert!(check_tag(&"a".repeat(129)).is_err());
        let d = format!("sha256:{}", "0a".repeat(32));
        assert!(check_digest(&d).is_ok());
        for bad in ["sha256:00", "sha512:00", "", "sha256:../../etc/passwd"] {
            assert!(check_digest(bad).is_err(), "{bad}");
        }
        let upper = format!("sha256:{}", "AB".repeat(32));
        assert!(check_digest(&upper).unwrap_err().contains("lower-case"));
    }
}
