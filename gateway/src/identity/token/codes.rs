//! PKCS#11 return codes in messages, and which of them a fresh session
//! may cure.

use cryptoki::error::{Error as CkError, RvError};

/// Whether a fresh session may succeed where this one failed.
pub(super) fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

/// `C_Sign: CKR_PIN_INCORRECT`, with a hint for the common codes.
pub(super) fn pkcs11_problem(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => {
            let code = return_code(rv);
            let hint = match rv {
                RvError::PinIncorrect => ": the PIN is wrong",
                RvError::PinLocked => ": the user PIN is locked; unlock it with the SO PIN",
                RvError::PinLenRange => ": the PIN has the wrong length for this token",
                RvError::UserPinNotInitialized => ": the token's user PIN is not set",
                RvError::MechanismInvalid => {
                    ": the token does not support Ed25519 (CKM_EDDSA / CKM_EC_EDWARDS_KEY_PAIR_GEN)"
                }
                RvError::CurveNotSupported => ": the token does not support the Ed25519 curve",
                RvError::TokenNotPresent | RvError::DeviceRemoved => ": the token is not present",
                RvError::TokenWriteProtected => ": the token is write-protected",
                _ => "",
            };
            format!("{}: {code}{hint}", function_name(function))
        }
        other => other.to_string(),
    }
}

/// `Function::Sign` → `C_Sign`.
fn function_name(f: &cryptoki::context::Function) -> String {
    format!("C_{f:?}")
}

/// The PKCS#11 name of a return code: `PinIncorrect` → `CKR_PIN_INCORRECT`.
fn return_code(rv: &RvError) -> String {
    if let RvError::VendorDefined(_) = rv {
        return rv.to_string();
    }
    let name = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_are_named_as_in_the_standard() {
        assert_eq!(return_code(&RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            return_code(&RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(return_code(&RvError::GeneralError), "CKR_GENERAL_ERROR");
        let e = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert_eq!(
            pkcs11_problem(&e),
            "C_Login: CKR_PIN_INCORRECT: the PIN is wrong"
        );
    }
}
