//! Reads what a PKCS#11 token holds under a label, on its own (not through
//! the gateway), and prints it as JSON: the public key's CKA_EC_POINT, and
//! for the private key whether CKA_VALUE can be read and its
//! CKA_SENSITIVE / CKA_EXTRACTABLE / CKA_NEVER_EXTRACTABLE /
//! CKA_ALWAYS_SENSITIVE flags. A separate process, so each test's token
//! configuration (SOFTHSM2_CONF) stays in that test's processes.
//!
//! Usage: pkcs11-probe MODULE TOKEN_LABEL OBJECT_LABEL PIN_FILE

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
