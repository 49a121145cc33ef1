//! The device key on a PKCS#11 token: an Ed25519 key pair (CKK_EC_EDWARDS)
//! whose private half is sensitive and not extractable, so it never
//! leaves the token. Every signature is a `C_Sign` with CKM_EDDSA.
//!
//! One session per key, behind a mutex: signatures are made one at a time,
//! from any thread. A session the token dropped (token removed and put
//! back, module restarted, login lost) is reopened once per signature,
//! and the signature retried; if that fails too, the error names the URI,
//! the PKCS#11 function and its return code. Each signature is checked
//! against the public key read at start, so a token that answers with
//! something else (another key under the same label) is caught at once.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use super::pkcs11_uri::{Pin, Pkcs11Uri};
use super::{DeviceSigner, SignError};
use codes::{pkcs11_problem, session_lost};
use lookup::{find_one, find_slot, generate_pair, login, read_public_key};

mod codes;
mod lookup;

/// What the gateway signs once at start to check that the private key
/// and the public key next to it are one pair.
const PROBE: &[u8] = b"depin-gateway device-key probe v1";

/// Where a token key is: the URI naming token and object, the module to
/// load, and where the PIN comes from when the URI does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLocation {
    pub uri: Pkcs11Uri,
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The environment variable holding the user PIN, used when the URI
    /// has neither `pin-source` nor `pin-value`.
    pub pin_env: Option<String>,
}

/// Why the token key could not be opened, created or used. The message
/// names the key URI (never a PIN) and, when a PKCS#11 call failed, the
/// function and its return code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("device key {uri}: {problem}")]
pub struct TokenError {
    pub uri: String,
    pub problem: String,
}

/// A device key held by a PKCS#11 token.
pub struct TokenKey {
    location: TokenLocation,
    pin: Option<Pin>,
    module: Pkcs11,
    public: VerifyingKey,
    session: Mutex<Option<LiveSession>>,
}

/// An open, logged-in session and the private key's handle in it.
struct LiveSession {
    session: Session,
    key: ObjectHandle,
}

/// What `generate` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generated {
    /// A new key pair was made on the token.
    Created,
    /// A key with that label or id was there already; it was kept.
    Kept,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("uri", &self.location.uri.to_string())
            .field("module", &self.location.module)
            .finish()
    }
}

impl TokenKey {
    /// Opens the key at `location`: loads the module, finds the one token
    /// and the one private key the URI selects, logs in, reads the public
    /// key next to it and checks with one signature that they are a pair.
    pub fn open(location: &TokenLocation) -> Result<Self, TokenError> {
        let pin = read_pin(location)?;
        let module = load_module(&location.module).map_err(|p| error(location, p))?;
        let live = connect(&module, location, pin.as_ref())?;
        let public =
            read_public_key(&live.session, &location.uri).map_err(|p| error(location, p))?;
        let key = Self {
            location: location.clone(),
            pin,
            module,
            public,
            session: Mutex::new(Some(live)),
        };
        // `sign` checks the probe's signature against the public key.
        key.sign(PROBE)
            .map_err(|e| key.error(format!("cannot sign with it: {}", e.problem)))?;
        Ok(key)
    }

    /// Creates the device key on the token at `location` (Ed25519,
    /// CKM_EC_EDWARDS_KEY_PAIR_GEN; token objects; the private half
    /// sensitive, not extractable, for signing only), labelled with the
    /// URI's `object` and `id`. An existing private key with that label
    /// or id is kept, as `keygen` keeps an existing key file. Returns the
    /// public key.
    pub fn generate(location: &TokenLocation) -> Result<(VerifyingKey, Generated), TokenError> {
        let at = |p: String| error(location, p);
        location.uri.require_key().map_err(|e| at(e.0))?;
        let pin = read_pin(location)?;
        let module = load_module(&location.module).map_err(at)?;
        let slot = find_slot(&module, &location.uri).map_err(at)?;
        let session = module
            .open_rw_session(slot)
            .map_err(|e| at(pkcs11_problem(&e)))?;
        login(&module, slot, &session, pin.as_ref()).map_err(at)?;
        let status =
            match find_one(&session, &location.uri, ObjectClass::PRIVATE_KEY).map_err(at)? {
                Some(_) => Generated::Kept,
                None => {
                    generate_pair(&session, &location.uri).map_err(at)?;
                    Generated::Created
                }
            };
        let public = read_public_key(&session, &location.uri).map_err(at)?;
        Ok((public, status))
    }

    fn error(&self, problem: impl Into<String>) -> TokenError {
        error(&self.location, problem.into())
    }

    /// Signs with CKM_EDDSA on the current session; `Err` carries whether
    /// a fresh session may help.
    fn sign_once(&self, live: &LiveSession, message: &[u8]) -> Result<Vec<u8>, (bool, String)> {
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        live.session
            .sign(&mechanism, live.key, message)
            .map_err(|e| (session_lost(&e), pkcs11_problem(&e)))
    }
}

impl DeviceSigner for TokenKey {
    fn public_key(&self) -> VerifyingKey {
        self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, SignError> {
        let fail = |problem: String| SignError {
            key: self.location.uri.to_string(),
            problem,
        };
        let mut current = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let mut reconnected = false;
        let bytes = loop {
            if current.is_none() {
                let live = connect(&self.module, &self.location, self.pin.as_ref());
                *current = Some(live.map_err(|e| fail(e.problem))?);
                reconnected = true;
            }
            let live = current.as_ref().expect("connected above");
            match self.sign_once(live, message) {
                Ok(bytes) => break bytes,
                Err((true, problem)) if !reconnected => {
                    tracing::warn!(key = %self.location.uri, %problem, "the token session was lost; reopening it");
                    *current = None;
                }
                Err((_, problem)) => {
                    if reconnected {
                        *current = None;
                    }
                    return Err(fail(problem));
                }
            }
        };
        let signature = <[u8; 64]>::try_from(bytes.as_slice())
            .map(|b| Signature::from_bytes(&b))
            .map_err(|_| {
                fail(format!(
                    "the token returned a {}-byte signature, not a 64-byte Ed25519 one",
                    bytes.len()
                ))
            })?;
        self.public.verify(message, &signature).map_err(|_| {
            fail("the token's signature does not verify under the device public key (is the public key object the private key's pair?)".into())
        })?;
        Ok(signature)
    }

    fn location(&self) -> String {
        self.location.uri.to_string()
    }

    /// `sha256(label || signature of label)`: Ed25519 signatures are
    /// deterministic, so this is the same on every start and known only
    /// to whoever holds the key. Checked by signing twice.
    fn derive_secret(&self, label: &[u8]) -> Result<[u8; 32], SignError> {
        use sha2::Digest as _;
        let a = self.sign(label)?;
        let b = self.sign(label)?;
        if a != b {
            return Err(SignError {
                key: self.location(),
                problem: "the token's Ed25519 signatures are not deterministic".into(),
            });
        }
        let mut h = sha2::Sha256::new();
        h.update(label);
        h.update(a.to_bytes());
        Ok(h.finalize().into())
    }
}

/// Finds the token and the key and logs in: a fresh session.
fn connect(
    module: &Pkcs11,
    location: &TokenLocation,
    pin: Option<&Pin>,
) -> Result<LiveSession, TokenError> {
    let at = |p: String| error(location, p);
    // After a module restart the library may need initialising again;
    // "already initialised" is the usual answer.
    initialize(module).map_err(at)?;
    let slot = find_slot(module, &location.uri).map_err(at)?;
    let session = module
        .open_ro_session(slot)
        .map_err(|e| at(pkcs11_problem(&e)))?;
    login(module, slot, &session, pin).map_err(at)?;
    let key = find_one(&session, &location.uri, ObjectClass::PRIVATE_KEY)
        .map_err(at)?
        .ok_or_else(|| {
            at("the token has no private key with this label/id; create it with `depin-gateway keygen --pkcs11 …`".into())
        })?;
    let types = session
        .get_attributes(key, &[AttributeType::KeyType])
        .map_err(|e| at(pkcs11_problem(&e)))?;
    if !types
        .iter()
        .any(|a| matches!(a, Attribute::KeyType(t) if *t == KeyType::EC_EDWARDS))
    {
        return Err(at(
            "the object is not an Edwards-curve key (CKK_EC_EDWARDS); the device key is Ed25519"
                .into(),
        ));
    }
    Ok(LiveSession { session, key })
}

fn error(location: &TokenLocation, problem: String) -> TokenError {
    TokenError {
        uri: location.uri.to_string(),
        problem,
    }
}

/// The user PIN: the URI's `pin-value`, else the file its `pin-source`
/// names (one line; a trailing newline is not part of it; refused when
/// others may read it), else the environment variable `pin_env`.
fn read_pin(location: &TokenLocation) -> Result<Option<Pin>, TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let uri = &location.uri;
    if let Some(pin) = &uri.pin_value {
        return Ok(Some(pin.clone()));
    }
    if let Some(path) = &uri.pin_source {
        let at = |p: String| error(location, format!("pin-source {}: {p}", path.display()));
        let mode = std::fs::metadata(path)
            .map_err(|e| at(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            return Err(at(format!(
                "others may read or write the PIN file (mode {:04o}); run `chmod o-rwx {}`",
                mode & 0o7777,
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let pin = text.strip_suffix('\n').unwrap_or(&text);
        let pin = pin.strip_suffix('\r').unwrap_or(pin);
        return Ok(Some(Pin::new(pin.to_string())));
    }
    if let Some(var) = &location.pin_env {
        return match std::env::var(var) {
            Ok(pin) => Ok(Some(Pin::new(pin))),
            Err(_) => Err(error(
                location,
                format!("the PIN variable {var} (pkcs11.pin_env) is not set or not UTF-8"),
            )),
        };
    }
    Ok(None)
}

/// The loaded modules, one context each for the life of the process (a
/// PKCS#11 library is initialised once per process).
fn load_module(path: &Path) -> Result<Pkcs11, String> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = modules.get(path) {
        return Ok(m.clone());
    }
    if !path.is_file() {
        return Err(format!(
            "the PKCS#11 module {} does not exist (set `[pkcs11] module` or `module-path` in the URI)",
            path.display()
        ));
    }
    let module = Pkcs11::new(path)
        .map_err(|e| format!("cannot load the PKCS#11 module {}: {e}", path.display()))?;
    initialize(&module)?;
    modules.insert(path.to_path_buf(), module.clone());
    Ok(module)
}

fn initialize(module: &Pkcs11) -> Result<(), String> {
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(pkcs11_problem(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_is_named() {
        let e = load_module(Path::new("/nonexistent/libpkcs11.so")).unwrap_err();
        assert!(e.contains("/nonexistent/libpkcs11.so"), "{e}");
        assert!(e.contains("does not exist"), "{e}");
    }
}
