//! The connection to OCI registries: one `oci-client` client, plain HTTP
//! only for registries that allow it, credentials read when needed.

use std::collections::BTreeMap;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use super::local::LocalCopies;
use crate::config::RegistryConfig;

/// Longest a registry may take to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a registry may leave a response unread (between chunks).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The registries a gateway (or a command) talks to, with the local copy
/// of what it pulled.
pub struct Registries {
    pub(super) client: oci_client::Client,
    entries: BTreeMap<String, RegistryConfig>,
    pub(super) local: LocalCopies,
}

impl Registries {
    /// `entries`: the `[[registry]]` tables; `local`: where pulled
    /// artifacts are kept.
    pub fn new(entries: &[RegistryConfig], local: LocalCopies) -> Result<Self, String> {
        crate::install_crypto_provider();
        let mut extra_root_certificates = Vec::new();
        for e in entries {
            if let Some(ca) = &e.ca_file {
                let data = std::fs::read(ca).map_err(|err| {
                    format!("registry {}: cannot read {}: {err}", e.host, ca.display())
                })?;
                extra_root_certificates.push(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                });
            }
        }
        let insecure: Vec<String> = entries
            .iter()
            .filter(|e| e.insecure)
            .map(|e| e.host.clone())
            .collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            extra_root_certificates,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            user_agent: concat!("depin-gateway/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config)
            .map_err(|e| format!("cannot set up the registry client: {e}"))?;
        Ok(Self {
            client,
            entries: entries
                .iter()
                .map(|e| (e.host.clone(), e.clone()))
                .collect(),
            local,
        })
    }

    /// Where pulled artifacts are kept.
    pub fn local(&self) -> &LocalCopies {
        &self.local
    }

    /// The credentials for `host`, read now from their file or variable.
    pub(super) fn auth(&self, host: &str) -> Result<RegistryAuth, String> {
        let Some(e) = self.entries.get(host) else {
            return Ok(RegistryAuth::Anonymous);
        };
        let secret = |file: &Option<std::path::PathBuf>, env: &Option<String>, what: &str| {
            if let Some(f) = file {
                let text = std::fs::read_to_string(f).map_err(|err| {
                    format!(
                        "registry {host}: cannot read the {what} file {}: {err}",
                        f.display()
                    )
                })?;
                return Ok(Some(text.lines().next().unwrap_or("").to_string()));
            }
            if let Some(var) = env {
                return std::env::var(var).map(Some).map_err(|_| {
                    format!("registry {host}: the {what} variable `{var}` is not set")
                });
            }
            Ok(None)
        };
        if let Some(token) = secret(&e.token_file, &e.token_env, "token")? {
            return Ok(RegistryAuth::Bearer(token));
        }
        match (
            &e.username,
            secret(&e.password_file, &e.password_env, "password")?,
        ) {
            (Some(user), password) => Ok(RegistryAuth::Basic(
                user.clone(),
                password.unwrap_or_default(),
            )),
            (None, _) => Ok(RegistryAuth::Anonymous),
        }
    }
}

/// Why a registry request failed, in words; "not found" is named as such.
pub(super) fn describe(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let missing = envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            });
            let said: Vec<String> = envelope
                .errors
                .iter()
                .map(|x| format!("{:?}: {}", x.code, x.message))
                .collect();
            if missing {
                format!(
                    "not found in the registry (missing artifact; the registry said {})",
                    said.join("; ")
                )
            } else {
                format!("the registry refused: {}", said.join("; "))
            }
        }
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => {
            "not found in the registry (missing artifact)".into()
        }
        OciDistributionError::DigestError(d) => format!("wrong digest: {d}"),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => {
            format!("not authorized by the registry: {e} (check the [[registry]] credentials)")
        }
        OciDistributionError::RequestError(r) => {
            let mut text = format!("cannot reach the registry: {r}");
            let mut source = std::error::Error::source(r);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
        other => other.to_string(),
    }
}

/// Whether the error is "not there" (as opposed to "cannot ask").
pub(super) fn is_missing(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code: 404, .. } => true,
        _ => false,
    }
}
