//! PKCS#11 URIs (RFC 7512): which token, which object, and where the PIN
//! comes from.
//!
//! `pkcs11:token=depin;object=device-key?pin-source=file:/etc/depin/pin`
//!
//! Path attributes (separated by `;`) select the token, the slot, the
//! library and the object; query attributes (separated by `&`) say where
//! the PIN is and which module to load. Values are percent-decoded (`id`
//! is bytes, the others UTF-8). An attribute the gateway does not know,
//! vendor-specific (`x-…`) ones included, is an error rather than ignored:
//! a URI that would select a different object than the operator meant
//! must never name the device key. A PIN given in the URI (`pin-value`)
//! never appears in the URI's `Display` or `Debug` form.

use std::fmt;
use std::path::PathBuf;

/// A parsed PKCS#11 URI.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token label (CKA_LABEL of the token, `CK_TOKEN_INFO.label`).
    pub token: Option<String>,
    /// `manufacturer`: the token's manufacturer id.
    pub manufacturer: Option<String>,
    /// `serial`: the token's serial number.
    pub serial: Option<String>,
    /// `model`: the token's model.
    pub model: Option<String>,
    /// `slot-id`: the slot number.
    pub slot_id: Option<u64>,
    /// `slot-description`.
    pub slot_description: Option<String>,
    /// `slot-manufacturer`.
    pub slot_manufacturer: Option<String>,
    /// `library-manufacturer`.
    pub library_manufacturer: Option<String>,
    /// `library-description`.
    pub library_description: Option<String>,
    /// `library-version`: `major[.minor]`.
    pub library_version: Option<(u8, u8)>,
    /// `object`: the key's label (CKA_LABEL).
    pub object: Option<String>,
    /// `id`: the key's CKA_ID, bytes.
    pub id: Option<Vec<u8>>,
    /// `type`: the object class; the device key is `private` (its public
    /// half is found next to it).
    pub object_type: Option<String>,
    /// `pin-source`: the file holding the user PIN.
    pub pin_source: Option<PathBuf>,
    /// `pin-value`: the user PIN itself (discouraged: configuration files
    /// are read by more people than PIN files).
    pub pin_value: Option<Pin>,
    /// `module-path`: the PKCS#11 module (shared library) to load.
    pub module_path: Option<PathBuf>,
}

/// A user PIN. Its `Debug` form hides it; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(String);

impl Pin {
    /// A PIN from its text.
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The PIN, for the one call that logs in.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(hidden)")
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Overwrite the PIN before its memory is freed.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        for b in bytes.iter_mut() {
            // SAFETY: a plain write to an initialised, owned byte; volatile so
            // the compiler does not drop it as a dead store.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Why a PKCS#11 URI was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a usable PKCS#11 URI (RFC 7512): {0}")]
pub struct UriError(pub String);

fn err<T>(problem: impl Into<String>) -> Result<T, UriError> {
    Err(UriError(problem.into()))
}

/// The object classes RFC 7512 names for `type`.
const OBJECT_TYPES: &[&str] = &["public", "private", "cert", "secret-key", "data"];

impl Pkcs11Uri {
    /// Parses `text`. Errors say which attribute is wrong and why; they
    /// never repeat a `pin-value`.
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let Some(rest) = strip_scheme(text) else {
            return err("it does not start with `pkcs11:`");
        };
        if rest.contains('#') {
            return err("a PKCS#11 URI has no fragment (`#`); percent-encode it as %23");
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        let mut seen = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = split_attribute(attr)?;
            if seen.contains(&name) {
                return err(format!("`{name}` is given twice"));
            }
            seen.push(name);
            uri.set_path_attribute(name, value)?;
        }
        for attr in query.into_iter().flat_map(|q| q.split('&')) {
            if attr.is_empty() {
                continue;
            }
            let (name, value) = split_attribute(attr)?;
            if seen.contains(&name) {
                return err(format!("`{name}` is given twice"));
            }
            seen.push(name);
            uri.set_query_attribute(name, value)?;
        }
        if uri.pin_source.is_some() && uri.pin_value.is_some() {
            return err("give the PIN once: `pin-source` or `pin-value`, not both");
        }
        Ok(uri)
    }

    fn set_path_attribute(&mut self, name: &str, value: &str) -> Result<(), UriError> {
        let text = || decode_text(name, value);
        match name {
            "token" => self.token = Some(text()?),
            "manufacturer" => self.manufacturer = Some(text()?),
            "serial" => self.serial = Some(text()?),
            "model" => self.model = Some(text()?),
            "slot-description" => self.slot_description = Some(text()?),
            "slot-manufacturer" => self.slot_manufacturer = Some(text()?),
            "library-manufacturer" => self.library_manufacturer = Some(text()?),
            "library-description" => self.library_description = Some(text()?),
            "object" => self.object = Some(text()?),
            "id" => self.id = Some(decode(name, value)?),
            "slot-id" => {
                let t = text()?;
                match t.parse::<u64>() {
                    Ok(n) if !t.starts_with('+') => self.slot_id = Some(n),
                    _ => return err(format!("`slot-id` must be a decimal number, not `{t}`")),
                }
            }
            "library-version" => {
                let t = text()?;
                let number = |s: &str| s.parse::<u8>().ok().filter(|_| !s.starts_with('+'));
                let version = match t.split_once('.') {
                    Some((major, minor)) => number(major).zip(number(minor)),
                    None => number(&t).map(|major| (major, 0)),
                };
                match version {
                    Some(v) => self.library_version = Some(v),
                    None => {
                        return err(format!(
                            "`library-version` must be `major` or `major.minor`, not `{t}`"
                        ));
                    }
                }
            }
            "type" => {
                let t = text()?;
                if !OBJECT_TYPES.contains(&t.as_str()) {
                    return err(format!(
                        "`type` must be one of {}, not `{t}`",
                        OBJECT_TYPES.join(", ")
                    ));
                }
                self.object_type = Some(t);
            }
            "pin-source" | "pin-value" | "module-name" | "module-path" => {
                return err(format!(
                    "`{name}` belongs in the query part, after `?` (e.g. `pkcs11:object=key?{name}=…`)"
                ));
            }
            _ if name.starts_with("x-") => {
                return err(format!(
                    "the vendor-specific attribute `{name}` is not supported"
                ));
            }
            _ => return err(format!("unknown path attribute `{name}`")),
        }
        Ok(())
    }

    fn set_query_attribute(&mut self, name: &str, value: &str) -> Result<(), UriError> {
        match name {
            "pin-source" => {
                let source = decode_text(name, value)?;
                let path = source
                    .strip_prefix("file://")
                    .or_else(|| source.strip_prefix("file:"))
                    .unwrap_or(&source);
                if !path.starts_with('/') {
                    return err(format!(
                        "`pin-source` must be an absolute file path or a `file:` URI, not `{source}`"
                    ));
                }
                self.pin_source = Some(PathBuf::from(path));
            }
            "pin-value" => {
                // Decoded without echoing the value in any error.
                let bytes = decode(name, value)
                    .map_err(|_| UriError("`pin-value` is not correctly percent-encoded".into()))?;
                let pin = String::from_utf8(bytes)
                    .map_err(|_| UriError("`pin-value` is not UTF-8".into()))?;
                self.pin_value = Some(Pin(pin));
            }
            "module-path" => {
                let path = decode_text(name, value)?;
                if !path.starts_with('/') {
                    return err(format!(
                        "`module-path` must be an absolute path, not `{path}`"
                    ));
                }
                self.module_path = Some(PathBuf::from(path));
            }
            "module-name" => {
                return err(
                    "`module-name` is not supported: name the module file with `module-path` or the gateway's `[pkcs11] module`",
                );
            }
            _ if name.starts_with("x-") => {
                return err(format!(
                    "the vendor-specific attribute `{name}` is not supported"
                ));
            }
            _ => return err(format!("unknown query attribute `{name}`")),
        }
        Ok(())
    }

    /// Checks that the URI names one private key: by `object` or `id`,
    /// with no `type` other than `private`.
    pub fn require_key(&self) -> Result<(), UriError> {
        if self.object.is_none() && self.id.is_none() {
            return err("name the key with `object=<label>` or `id=<bytes>`");
        }
        if let Some(t) = self.object_type.as_deref().filter(|t| *t != "private") {
            return err(format!(
                "`type={t}` names no private key; the device key is `type=private` (or omit `type`)"
            ));
        }
        Ok(())
    }
}

fn strip_scheme(text: &str) -> Option<&str> {
    let scheme = text.get(..7)?;
    scheme.eq_ignore_ascii_case("pkcs11:").then(|| &text[7..])
}

fn split_attribute(attr: &str) -> Result<(&str, &str), UriError> {
    let Some((name, value)) = attr.split_once('=') else {
        return err(format!(
            "`{}` is not an attribute (`name=value`)",
            attr.chars().take(40).collect::<String>()
        ));
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return err(format!("`{name}` is not an attribute name"));
    }
    Ok((name, value))
}

/// Percent-decodes `value` (RFC 3986): `%XX` is a byte; characters that
/// are not allowed unencoded in a URI are refused, so a value is never
/// silently cut at a space or changed by an encoding.
fn decode(name: &str, value: &str) -> Result<Vec<u8>, UriError> {
    let query = QUERY_ATTRIBUTES.contains(&name);
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(b) = hex else {
                    return err(format!("`{name}`: `%` must be followed by two hex digits"));
                };
                out.push(b);
                i += 3;
            }
            b if allowed_raw(b, query) => {
                out.push(b);
                i += 1;
            }
            b => {
                return err(format!(
                    "`{name}`: the character {:?} must be percent-encoded (as %{b:02X})",
                    char::from(b)
                ));
            }
        }
    }
    Ok(out)
}

fn decode_text(name: &str, value: &str) -> Result<String, UriError> {
    String::from_utf8(decode(name, value)?)
        .map_err(|_| UriError(format!("`{name}` is not UTF-8 once percent-decoded")))
}

/// The query attributes (their values may hold `/`, `?` and `|`).
const QUERY_ATTRIBUTES: &[&str] = &["pin-source", "pin-value", "module-name", "module-path"];

/// Bytes a value may hold unencoded (RFC 7512 `pk11-pchar` and
/// `pk11-qchar`): unreserved characters, `:[]@!$'()*+,=`, and `&` in the
/// path or `/?|` in the query.
fn allowed_raw(b: u8, query: bool) -> bool {
    b.is_ascii_alphanumeric()
        || b"-._~:[]@!$'()*+,=".contains(&b)
        || if query {
            b"/?|".contains(&b)
        } else {
            b == b'&'
        }
}

/// Bytes written unencoded by `Display` (unreserved and a few safe
/// sub-delimiters; everything else is `%XX`).
fn keep_raw(b: u8, query: bool) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:@!$'()*+,".contains(&b) || (query && b == b'/')
}

fn encode(out: &mut fmt::Formatter<'_>, bytes: &[u8], query: bool) -> fmt::Result {
    for &b in bytes {
        if keep_raw(b, query) {
            write!(out, "{}", char::from(b))?;
        } else {
            write!(out, "%{b:02X}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Pkcs11Uri {
    /// The URI in a normal form, without `pin-value`: safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("pkcs11:")?;
        let version = self
            .library_version
            .map(|(major, minor)| format!("{major}.{minor}"));
        let slot = self.slot_id.map(|n| n.to_string());
        let path: [(&str, Option<&[u8]>); 13] = [
            ("token", self.token.as_deref().map(str::as_bytes)),
            (
                "manufacturer",
                self.manufacturer.as_deref().map(str::as_bytes),
            ),
            ("serial", self.serial.as_deref().map(str::as_bytes)),
            ("model", self.model.as_deref().map(str::as_bytes)),
            ("slot-id", slot.as_deref().map(str::as_bytes)),
            (
                "slot-description",
                self.slot_description.as_deref().map(str::as_bytes),
            ),
            (
                "slot-manufacturer",
                self.slot_manufacturer.as_deref().map(str::as_bytes),
            ),
            (
                "library-manufacturer",
                self.library_manufacturer.as_deref().map(str::as_bytes),
            ),
            (
                "library-description",
                self.library_description.as_deref().map(str::as_bytes),
            ),
            ("library-version", version.as_deref().map(str::as_bytes)),
            ("object", self.object.as_deref().map(str::as_bytes)),
            ("id", self.id.as_deref()),
            ("type", self.object_type.as_deref().map(str::as_bytes)),
        ];
        let mut first = true;
        for (name, value) in path {
            if let Some(v) = value {
                if !first {
                    f.write_str(";")?;
                }
                first = false;
                write!(f, "{name}=")?;
                encode(f, v, false)?;
            }
        }
        let source = self.pin_source.as_ref().map(|p| p.to_string_lossy());
        let module = self.module_path.as_ref().map(|p| p.to_string_lossy());
        let query = [
            ("pin-source", source.as_deref()),
            ("module-path", module.as_deref()),
        ];
        let mut sep = "?";
        for (name, value) in query {
            if let Some(v) = value {
                write!(f, "{sep}{name}=")?;
                encode(f, v.as_bytes(), true)?;
                sep = "&";
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({self})")
    }
}

impl std::str::FromStr for Pkcs11Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Pkcs11Uri {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_object_and_pin_source() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=depin;object=device%20key?pin-source=file:/etc/depin/pin",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("depin"));
        assert_eq!(u.object.as_deref(), Some("device key"));
        assert_eq!(u.pin_source, Some(PathBuf::from("/etc/depin/pin")));
        u.require_key().unwrap();
        assert_eq!(
            u.to_string(),
            "pkcs11:token=depin;object=device%20key?pin-source=/etc/depin/pin"
        );
    }

    #[test]
    fn percent_encoding_decodes_bytes_and_utf8() {
        let u =
            Pkcs11Uri::parse("pkcs11:id=%01%a2%FF;object=%C3%A9t%C3%A9;token=a%3Bb%3Fc").unwrap();
        assert_eq!(u.id.as_deref(), Some(&[0x01, 0xa2, 0xff][..]));
        assert_eq!(u.object.as_deref(), Some("été"));
        assert_eq!(u.token.as_deref(), Some("a;b?c"));
        // Display encodes what must be encoded and round-trips.
        let again = Pkcs11Uri::parse(&u.to_string()).unwrap();
        assert_eq!(again, u);
        assert!(u.to_string().contains("token=a%3Bb%3Fc"), "{u}");
    }

    #[test]
    fn bad_percent_encoding_is_refused() {
        for text in [
            "pkcs11:object=a%2",
            "pkcs11:object=a%zz",
            "pkcs11:object=two words",
            "pkcs11:object=%FF%FE",
        ] {
            let e = Pkcs11Uri::parse(text).unwrap_err();
            assert!(e.to_string().contains("`object`"), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_unknown_and_vendor_attributes() {
        let e = Pkcs11Uri::parse("pkcs11:objcet=key").unwrap_err();
        assert!(
            e.to_string().contains("unknown path attribute `objcet`"),
            "{e}"
        );
        let e = Pkcs11Uri::parse("pkcs11:object=key;x-vendor=1").unwrap_err();
        assert!(
            e.to_string()
                .contains("vendor-specific attribute `x-vendor`"),
            "{e}"
        );
        let e = Pkcs11Uri::parse("pkcs11:object=key?pin-sorce=/p").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown query attribute `pin-sorce`"),
            "{e}"
        );
        let e = Pkcs11Uri::parse("pkcs11:object=key;pin-value=1234").unwrap_err();
        assert!(e.to_string().contains("query part"), "{e}");
        let e = Pkcs11Uri::parse("pkcs11:object=key?module-name=softhsm2").unwrap_err();
        assert!(e.to_string().contains("module-path"), "{e}");
    }

    #[test]
    fn structural_errors_say_what_is_wrong() {
        let cases = [
            ("file:/etc/key", "pkcs11:"),
            ("pkcs11:object=a;object=b", "given twice"),
            ("pkcs11:object", "not an attribute"),
            ("pkcs11:object=a#frag", "fragment"),
            ("pkcs11:slot-id=one", "decimal"),
            ("pkcs11:library-version=1.x", "major.minor"),
            ("pkcs11:type=secret", "must be one of"),
            ("pkcs11:object=a?pin-source=pin.txt", "absolute"),
            ("pkcs11:object=a?module-path=lib.so", "absolute"),
            ("pkcs11:object=a?pin-source=/p&pin-value=1", "not both"),
        ];
        for (text, needle) in cases {
            let e = Pkcs11Uri::parse(text).unwrap_err();
            assert!(e.to_string().contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn all_standard_attributes_parse() {
        let u = Pkcs11Uri::parse(
            "PKCS11:token=T;manufacturer=M;serial=S;model=Mo;slot-id=3;slot-description=SD;\
             slot-manufacturer=SM;library-manufacturer=LM;library-description=LD;\
             library-version=2.6;object=O;id=%00;type=private\
             ?pin-value=12%2634&module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
        .unwrap();
        assert_eq!(u.slot_id, Some(3));
        assert_eq!(u.library_version, Some((2, 6)));
        assert_eq!(u.pin_value.as_ref().map(Pin::expose), Some("12&34"));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );
        u.require_key().unwrap();
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:library-version=3")
                .unwrap()
                .library_version,
            Some((3, 0))
        );
    }

    #[test]
    fn pin_value_never_shows_in_display_debug_or_errors() {
        let u = Pkcs11Uri::parse("pkcs11:object=k?pin-value=s3cret").unwrap();
        assert!(!u.to_string().contains("s3cret"));
        assert!(!format!("{u:?}").contains("s3cret"));
        let e = Pkcs11Uri::parse("pkcs11:object=k?pin-value=s3cret%").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn a_key_needs_object_or_id_and_a_private_type() {
        let e = Pkcs11Uri::parse("pkcs11:token=t").unwrap().require_key();
        assert!(e.unwrap_err().to_string().contains("object=<label>"));
        let e = Pkcs11Uri::parse("pkcs11:object=k;type=public")
            .unwrap()
            .require_key();
        assert!(e.unwrap_err().to_string().contains("type=private"));
        Pkcs11Uri::parse("pkcs11:id=%01")
            .unwrap()
            .require_key()
            .unwrap();
    }
}
