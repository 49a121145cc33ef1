//! Finding things on a token: the slot whose token the URI selects, the
//! user login, the key's objects and its public key; and making the key
//! pair.

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ed25519_dalek::VerifyingKey;

use super::codes::pkcs11_problem;
use crate::identity::pkcs11_uri::{Pin, Pkcs11Uri};

/// `CKA_EC_PARAMS` of Ed25519: the OID id-Ed25519 (1.3.101.112), DER.
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `CKA_EC_PARAMS` of Ed25519 as the printable string `edwards25519`, the
/// form some modules take instead of the OID.
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// The one slot whose token (and library) the URI's attributes match.
pub(super) fn find_slot(module: &Pkcs11, uri: &Pkcs11Uri) -> Result<Slot, String> {
    let info = module.get_library_info().map_err(|e| pkcs11_problem(&e))?;
    let library_matches = uri
        .library_manufacturer
        .as_deref()
        .is_none_or(|m| m == info.manufacturer_id())
        && uri
            .library_description
            .as_deref()
            .is_none_or(|d| d == info.library_description())
        && uri.library_version.is_none_or(|(major, minor)| {
            let v = info.library_version();
            (v.major(), v.minor()) == (major, minor)
        });
    if !library_matches {
        return Err(format!(
            "the module is `{}` by `{}`, version {}.{}: not the library the URI names",
            info.library_description(),
            info.manufacturer_id(),
            info.library_version().major(),
            info.library_version().minor()
        ));
    }
    let slots = module
        .get_slots_with_initialized_token()
        .map_err(|e| pkcs11_problem(&e))?;
    let mut matching = Vec::new();
    let mut present = Vec::new();
    for slot in slots {
        let token = module
            .get_token_info(slot)
            .map_err(|e| pkcs11_problem(&e))?;
        present.push(format!("`{}`", token.label()));
        let same = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        if !(same(&uri.token, token.label())
            && same(&uri.manufacturer, token.manufacturer_id())
            && same(&uri.serial, token.serial_number())
            && same(&uri.model, token.model())
            && uri.slot_id.is_none_or(|id| id == slot.id()))
        {
            continue;
        }
        if uri.slot_description.is_some() || uri.slot_manufacturer.is_some() {
            let s = module.get_slot_info(slot).map_err(|e| pkcs11_problem(&e))?;
            if !(same(&uri.slot_description, s.slot_description())
                && same(&uri.slot_manufacturer, s.manufacturer_id()))
            {
                continue;
            }
        }
        matching.push(slot);
    }
    match matching.as_slice() {
        [one] => Ok(*one),
        [] if present.is_empty() => {
            Err("no initialised token is present in any slot of the module".into())
        }
        [] => Err(format!(
            "no token matches the URI; tokens present: {}",
            present.join(", ")
        )),
        more => Err(format!(
            "{} tokens match the URI; add `token=` or `serial=` to pick one",
            more.len()
        )),
    }
}

/// Logs the session in as the user, if the token wants a login.
pub(super) fn login(
    module: &Pkcs11,
    slot: Slot,
    session: &Session,
    pin: Option<&Pin>,
) -> Result<(), String> {
    let token = module
        .get_token_info(slot)
        .map_err(|e| pkcs11_problem(&e))?;
    if !token.login_required() {
        return Ok(());
    }
    let Some(pin) = pin else {
        return Err(
            "the token needs a user PIN: add `?pin-source=file:/path/to/pin` to the key URI or set `[pkcs11] pin_env`".into(),
        );
    };
    let pin = AuthPin::new(pin.expose().into());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(pkcs11_problem(&e)),
    }
}

/// The search template of the URI's object (`object` → CKA_LABEL, `id` →
/// CKA_ID) in `class`.
pub(super) fn template(uri: &Pkcs11Uri, class: ObjectClass) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(label) = &uri.object {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        t.push(Attribute::Id(id.clone()));
    }
    t
}

/// The one object of `class` the URI names, if any; more than one is an
/// error (the URI must say which).
pub(super) fn find_one(
    session: &Session,
    uri: &Pkcs11Uri,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, String> {
    let found = session
        .find_objects(&template(uri, class))
        .map_err(|e| pkcs11_problem(&e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        more => Err(format!(
            "{} objects of class {class} match; add `id=` to the URI to pick one",
            more.len()
        )),
    }
}

/// The Ed25519 public key of the URI's key pair, from the public key
/// object's CKA_EC_POINT (a DER OCTET STRING, or the 32 bytes bare).
pub(super) fn read_public_key(session: &Session, uri: &Pkcs11Uri) -> Result<VerifyingKey, String> {
    let object = find_one(session, uri, ObjectClass::PUBLIC_KEY)?
        .ok_or("the token has no public key object with this label/id next to the private key")?;
    let attrs = session
        .get_attributes(object, &[AttributeType::EcPoint])
        .map_err(|e| pkcs11_problem(&e))?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or("the public key object has no CKA_EC_POINT")?;
    let raw: &[u8] = match point.as_slice() {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        bare if bare.len() == 32 => bare,
        _ => {
            return Err(format!(
                "the public key is not an Ed25519 point ({} bytes of CKA_EC_POINT)",
                point.len()
            ));
        }
    };
    let bytes: [u8; 32] = raw.try_into().expect("32 bytes");
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "the public key is not a valid Ed25519 point".into())
}

/// Generates the pair with the Ed25519 curve parameters as an OID, or,
/// for modules that want it, as the name `edwards25519`.
pub(super) fn generate_pair(session: &Session, uri: &Pkcs11Uri) -> Result<(), String> {
    let mut named = Vec::new();
    if let Some(label) = &uri.object {
        named.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    if let Some(id) = &uri.id {
        named.push(Attribute::Id(id.clone()));
    }
    let private = [
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
        ],
        named.clone(),
    ]
    .concat();
    let mut last = String::new();
    for params in [ED25519_OID, ED25519_NAME] {
        let public = [
            vec![
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(params.to_vec()),
            ],
            named.clone(),
        ]
        .concat();
        match session.generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private) {
            Ok(_) => return Ok(()),
            Err(
                e @ CkError::Pkcs11(
                    RvError::AttributeValueInvalid
                    | RvError::CurveNotSupported
                    | RvError::DomainParamsInvalid
                    | RvError::TemplateInconsistent,
                    _,
                ),
            ) => {
                last = pkcs11_problem(&e);
            }
            Err(e) => return Err(pkcs11_problem(&e)),
        }
    }
    Err(last)
}
