//! Reads what a PKCS#11 token holds under a label, on its own (not through
//! the gateway), and prints it as JSON: the public key's CKA_EC_POINT, and
//! for the private key whether CKA_VALUE can be read and its
//! CKA_SENSITIVE / CKA_EXTRACTABLE / CKA_NEVER_EXTRACTABLE /
//! CKA_ALWAYS_SENSITIVE flags. A separate process, so each test's token
//! configuration (SOFTHSM2_CONF) stays in that test's processes.
//!
//! Usage: pkcs11-probe MODULE TOKEN_LABEL OBJECT_LABEL PIN_FILE
//!
//! `pkcs11-probe restart MODULE KEY_URI` instead opens the key the way the
//! gateway does, signs, then finalises and re-initialises the module under
//! it (what a module or token restart does to an open session) and signs
//! again; it prints whether both signatures verify and agree.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, module, uri] = args.as_slice()
        && mode == "restart"
    {
        return restart(module, uri);
    }
    let [module, token, object, pin_file] = args.as_slice() else {
        eprintln!("usage: pkcs11-probe MODULE TOKEN_LABEL OBJECT_LABEL PIN_FILE");
        std::process::exit(2);
    };
    let pkcs11 = Pkcs11::new(module).expect("load the module");
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .expect("slots")
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).expect("token info").label() == token)
        .expect("the token");
    let session = pkcs11.open_ro_session(slot).expect("C_OpenSession");
    let pin = std::fs::read_to_string(pin_file).expect("PIN file");
    session
        .login(UserType::User, Some(&AuthPin::new(pin.trim_end().into())))
        .expect("C_Login");
    let label = Attribute::Label(object.as_bytes().to_vec());
    let find = |class| {
        session
            .find_objects(&[Attribute::Class(class), label.clone()])
            .expect("C_FindObjects")
    };
    let privates = find(ObjectClass::PRIVATE_KEY);
    let publics = find(ObjectClass::PUBLIC_KEY);
    assert_eq!(privates.len(), 1, "one private key under the label");
    assert_eq!(publics.len(), 1, "one public key under the label");
    let private = privates[0];
    // What C_GetAttributeValue says about CKA_VALUE (the secret scalar).
    let value = match session
        .get_attribute_info(private, &[AttributeType::Value])
        .expect("C_GetAttributeValue")[0]
    {
        AttributeInfo::Sensitive => "sensitive".to_string(),
        AttributeInfo::Available(n) => format!("available ({n} bytes)"),
        AttributeInfo::Unavailable => "unavailable".to_string(),
        AttributeInfo::TypeInvalid => "type-invalid".to_string(),
    };
    let value_read = session
        .get_attributes(private, &[AttributeType::Value])
        .expect("C_GetAttributeValue")
        .iter()
        .any(|a| matches!(a, Attribute::Value(_)));
    let flags = session
        .get_attributes(
            private,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
                AttributeType::Token,
            ],
        )
        .expect("C_GetAttributeValue");
    let flag = |want: AttributeType| {
        flags.iter().find_map(|a| match (a, want) {
            (Attribute::Sensitive(b), AttributeType::Sensitive)
            | (Attribute::Extractable(b), AttributeType::Extractable)
            | (Attribute::NeverExtractable(b), AttributeType::NeverExtractable)
            | (Attribute::AlwaysSensitive(b), AttributeType::AlwaysSensitive)
            | (Attribute::Token(b), AttributeType::Token) => Some(*b),
            _ => None,
        })
    };
    let point = session
        .get_attributes(publics[0], &[AttributeType::EcPoint])
        .expect("C_GetAttributeValue")
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .expect("CKA_EC_POINT");
    let report = serde_json::json!({
        "ec_point": hex::encode(point),
        "private": {
            "value": value,
            "value_read": value_read,
            "sensitive": flag(AttributeType::Sensitive),
            "extractable": flag(AttributeType::Extractable),
            "never_extractable": flag(AttributeType::NeverExtractable),
            "always_sensitive": flag(AttributeType::AlwaysSensitive),
            "token": flag(AttributeType::Token),
        },
    });
    println!("{report}");
}

/// Signs with the gateway's token key across a module restart.
fn restart(module: &str, uri: &str) {
    use depin_gateway::identity::{DeviceSigner, Pkcs11Uri, TokenKey, TokenLocation};
    use ed25519_dalek::Verifier as _;
    let location = TokenLocation {
        uri: Pkcs11Uri::parse(uri).expect("key URI"),
        module: module.into(),
        pin_env: None,
    };
    let key = TokenKey::open(&location).expect("open the token key");
    let message = b"signed before and after a module restart";
    let before = key.sign(message).expect("sign before");
    // The same library, loaded again in this process: C_Finalize ends every
    // session of the process, the gateway's included.
    let other = Pkcs11::new(module).expect("load the module");
    other.finalize().expect("C_Finalize");
    let after = key.sign(message);
    let report = serde_json::json!({
        "before_verifies": key.public_key().verify(message, &before).is_ok(),
        "after": match &after {
            Ok(sig) => serde_json::json!({
                "verifies": key.public_key().verify(message, sig).is_ok(),
                "same_as_before": *sig == before,
            }),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        },
    });
    println!("{report}");
}
