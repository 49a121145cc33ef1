//! The device identity: an Ed25519 key that signs everything the gateway
//! reports upstream. Plugins never see it.
//!
//! The key lives in a file ([`DeviceKey`], `key_path`) or on a PKCS#11
//! token ([`token::TokenKey`], `key = "pkcs11:…"`), where its private half
//! never leaves the hardware. Either way the gateway signs only through
//! [`DeviceSigner`]: epoch reports, challenge answers, the self-signed TLS
//! client certificate and the TLS handshake itself
//! ([`certificate::DeviceTlsKey`]).
//!
//! The gateway id is the public key as `dpg1<64 hex digits>`.

pub mod certificate;
mod file;
pub mod pkcs11_uri;
pub mod token;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use depin_protocol::proofs::Answer;
use depin_protocol::report::{EpochReport, SignedReport};
use ed25519_dalek::{Signature, VerifyingKey};

pub use certificate::{CertificateError, DeviceCertificate, DeviceTlsKey, device_certificate};
pub use file::DeviceKey;
pub use pkcs11_uri::{Pkcs11Uri, UriError};
pub use token::{TokenError, TokenKey, TokenLocation};

const ID_PREFIX: &str = "dpg1";

/// Why the device key could not be written, opened or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: already exists; refusing to overwrite a device key (pass --force to replace it)"
    )]
    Exists { path: PathBuf },
    #[error(
        "{path}: the device key is readable or writable by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a depin-gateway key file ({problem})")]
    Malformed { path: PathBuf, problem: String },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A signature the device key could not make (a token that is gone, a
/// session that cannot be reopened). Names the key, never a PIN.
#[derive(Debug, Clone, thiserror::Error)]
#[error("device key {key}: cannot sign: {problem}")]
pub struct SignError {
    pub key: String,
    pub problem: String,
}

/// The device key, wherever it is held. Every signature the gateway makes
/// goes through here. Implementations are thread-safe; `sign` may block
/// (a token round trip), so async code calls it off the runtime threads.
pub trait DeviceSigner: Send + Sync + fmt::Debug {
    /// The public half (the gateway id's bytes).
    fn public_key(&self) -> VerifyingKey;

    /// A pure Ed25519 signature (RFC 8032) over `message`.
    fn sign(&self, message: &[u8]) -> Result<Signature, SignError>;

    /// Where the key is, for messages: a file path or a PKCS#11 URI (never
    /// with a PIN).
    fn location(&self) -> String;

    /// A 32-byte secret for `label` that only this key can derive and that
    /// is the same on every start (keys local secrets, such as the seal of
    /// compiled code).
    fn derive_secret(&self, label: &[u8]) -> Result<[u8; 32], SignError>;

    /// The gateway id: `dpg1` followed by the public key in hex.
    fn gateway_id(&self) -> String {
        gateway_id(&self.public_key())
    }

    /// Signs an epoch report: its canonical encoding followed by the
    /// signature over it, the bytes `SignedReport::decode` checks.
    fn sign_report(&self, report: EpochReport) -> Result<SignedReport, SignError> {
        report.try_sign(|body| self.sign(body))
    }

    /// Encodes and signs a challenge answer.
    fn sign_answer(&self, answer: &Answer) -> Result<Vec<u8>, SignError> {
        answer.try_sign(|body| self.sign(body))
    }
}

/// Where the configuration says the device key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file written by `keygen`.
    File(PathBuf),
    /// A key on a PKCS#11 token.
    Token(Box<TokenLocation>),
}

impl KeySource {
    /// Opens the key: reads the file, or finds the key on the token and
    /// logs in. Fails with what to fix.
    pub fn open(&self) -> Result<Arc<dyn DeviceSigner>, IdentityError> {
        Ok(match self {
            KeySource::File(path) => Arc::new(DeviceKey::load(path)?),
            KeySource::Token(location) => Arc::new(TokenKey::open(location)?),
        })
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "{}", p.display()),
            KeySource::Token(t) => write!(f, "{}", t.uri),
        }
    }
}

/// The gateway id of a public key.
pub fn gateway_id(key: &VerifyingKey) -> String {
    format!("{ID_PREFIX}{}", hex::encode(key.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use depin_protocol::report::REPORT_VERSION;

    #[test]
    fn reports_and_answers_signed_through_the_trait_match_the_protocol() {
        let key = DeviceKey::generate();
        let report = EpochReport {
            version: REPORT_VERSION,
            gateway_key: key.verifying_key().to_bytes(),
            epoch: 7,
            length_ms: 1000,
            prev_hash: [1; 32],
            first_seq: 0,
            records: 0,
            merkle_root: [2; 32],
            components: Vec::new(),
            totals: Vec::new(),
            subject_totals: Vec::new(),
            proofs: Vec::new(),
            reward_micro: 0,
        };
        let signer: &dyn DeviceSigner = &key;
        let through_trait = signer.sign_report(report.clone()).unwrap();
        assert_eq!(through_trait, report.sign(key.signing_key()));
        SignedReport::decode(&through_trait.bytes).unwrap();
        let answer = Answer {
            gateway_key: key.verifying_key().to_bytes(),
            challenge_id: "c1".into(),
            answered: true,
            payload: vec![1, 2, 3],
        };
        let signed = signer.sign_answer(&answer).unwrap();
        assert_eq!(signed, answer.sign(key.signing_key()));
        assert_eq!(Answer::decode(&signed).unwrap(), answer);
        assert_eq!(signer.gateway_id(), key.gateway_id());
    }
}
