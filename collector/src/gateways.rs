//! The registry of gateways allowed to report, kept in the store: seeded
//! from `[[gateway]]` at start, managed with `depin-collector gateways
//! add|list|approve|revoke` and the `[admin]` HTTP API (one
//! implementation of each operation, here), consulted on every request.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use depin_gateway::upstream::tls::fingerprint;
use depin_protocol::time::now_ms;
use hyper::StatusCode;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{CollectorConfig, EnrollmentConfig, GatewayEntry};
use crate::store::{ChainError, GatewayRecord, GatewayStatus, Store, is_gateway_id};

/// Adds every `[[gateway]]` not yet registered as active. One already
/// registered keeps its status: a revoked gateway stays revoked even
/// though the file still lists it.
pub async fn seed(store: &Store, entries: &[GatewayEntry]) -> Result<(), ChainError> {
    let now = now_ms();
    for g in entries {
        let record =
            GatewayRecord::new(&g.id, g.cert_sha256.as_deref(), GatewayStatus::Active, now);
        if store.register(&record).await? {
            tracing::info!(gateway = %g.id, "gateway registered from the configuration");
        }
    }
    Ok(())
}

/// The gateway id a client certificate proves: the `[[gateway]]`
/// (`certs`: fingerprint -> id) or registry entry with its sha256
/// (certificates from the operator's CA). Whether that gateway may speak
/// is `admit`'s question, asked per request.
pub async fn proved(
    store: &Store,
    certs: &BTreeMap<String, String>,
    cert: &rustls::pki_types::CertificateDer<'_>,
) -> Option<String> {
    // A device-key certificate names its gateway by its public key; the
    // handshake proved possession of that key. Admission decides the rest.
    if let Some(id) = crate::peer::device_key_id(cert) {
        return Some(id);
    }
    let sha256 = fingerprint(cert);
    if let Some(id) = certs.get(&sha256) {
        return Some(id.clone());
    }
    match store.registered_by_cert(&sha256).await {
        Ok(found) => found.map(|g| g.id),
        Err(e) => {
            tracing::error!(error = %e, "cannot look up a client certificate");
            None
        }
    }
}

/// Why a request from a gateway is not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("gateway {0} is revoked")]
    Revoked(String),
    #[error("gateway {0} is registered but not yet approved (depin-collector gateways approve)")]
    Pending(String),
    #[error("gateway {0} is not registered (depin-collector gateways add)")]
    Unknown(String),
    #[error("the gateway registry cannot be read: {0}")]
    Storage(ChainError),
}

impl Refused {
    /// The HTTP status of the refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// Whether `gateway` (the id its client certificate proves) may speak
/// now. An unknown gateway is added as active when
/// `approve_on_first_contact` is on (logged).
pub async fn admit(
    store: &Store,
    enrollment: &EnrollmentConfig,
    gateway: &str,
) -> Result<(), Refused> {
    match store.registered(gateway).await.map_err(Refused::Storage)? {
        Some(g) => match g.status {
            GatewayStatus::Active => Ok(()),
            GatewayStatus::Revoked => Err(Refused::Revoked(gateway.into())),
            GatewayStatus::Pending => Err(Refused::Pending(gateway.into())),
        },
        None if enrollment.approve_on_first_contact => {
            let record = GatewayRecord::new(gateway, None, GatewayStatus::Active, now_ms());
            if store.register(&record).await.map_err(Refused::Storage)? {
                tracing::warn!(%gateway, "gateway approved on first contact");
            }
            // Registered by another replica in between: its status holds.
            Box::pin(admit(store, &EnrollmentConfig::default(), gateway)).await
        }
        None => Err(Refused::Unknown(gateway.into())),
    }
}

/// A gateway to register, as the CLI and the HTTP API take it: by id, by
/// its device-key certificate (which names the id), or both (they must
/// agree).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGateway {
    /// `dpg1` + 64 hex digits.
    #[serde(default)]
    pub id: Option<String>,
    /// The gateway's device-key certificate, PEM (`depin-gateway keygen
    /// --cert`); its public key is the id.
    #[serde(default)]
    pub device_cert_pem: Option<String>,
    /// sha256 (hex) of a client certificate the operator's CA issued.
    #[serde(default)]
    pub cert_sha256: Option<String>,
    /// Known but not admitted until approved.
    #[serde(default)]
    pub pending: bool,
}

/// Why a registry operation did not happen; each maps to one HTTP status
/// and one CLI message.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is already registered (see `gateways list`)")]
    AlreadyRegistered(String),
    #[error("{0} is not registered (see `gateways list`)")]
    NotRegistered(String),
    #[error("the gateway registry cannot be used: {0}")]
    Storage(#[from] ChainError),
}

impl RegistryError {
    /// The HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::AlreadyRegistered(_) => StatusCode::CONFLICT,
            RegistryError::NotRegistered(_) => StatusCode::NOT_FOUND,
            RegistryError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The gateway id `new` names, checked: the id given, or the one its
/// device-key certificate proves; both must agree when both are given.
fn new_gateway_id(new: &NewGateway) -> Result<String, RegistryError> {
    let invalid = |m: String| Err(RegistryError::Invalid(m));
    let from_cert = match &new.device_cert_pem {
        None => None,
        Some(pem) => {
            let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
            let der = match certs.next() {
                Some(Ok(der)) => der,
                Some(Err(e)) => return invalid(format!("device_cert_pem: not PEM: {e}")),
                None => return invalid("device_cert_pem: no PEM certificate in it".into()),
            };
            match crate::peer::device_key_id(&der) {
                Some(id) => Some(id),
                None => {
                    return invalid(
                        "device_cert_pem is not a device-key certificate (self-signed X.509 v3 \
                         over an Ed25519 key, valid now, as `depin-gateway keygen --cert` makes)"
                            .into(),
                    );
                }
            }
        }
    };
    match (&new.id, from_cert) {
        (Some(id), Some(proved)) if *id != proved => invalid(format!(
            "the id {id} is not the one the device-key certificate names ({proved})"
        )),
        (Some(id), _) if !is_gateway_id(id) => {
            invalid(format!("`{id}` is not a gateway id (dpg1 + 64 hex digits)"))
        }
        (Some(id), _) => Ok(id.clone()),
        (None, Some(proved)) => Ok(proved),
        (None, None) => invalid("give the gateway's id or its device-key certificate".into()),
    }
}

/// Registers `new` (active, or pending); refuses bad input and a gateway
/// already registered (its status is changed with approve and revoke).
pub async fn add(store: &Store, new: &NewGateway) -> Result<GatewayRecord, RegistryError> {
    let id = new_gateway_id(new)?;
    if let Some(c) = &new.cert_sha256
        && (c.len() != 64 || hex::decode(c).is_err())
    {
        return Err(RegistryError::Invalid(
            "cert_sha256 must be 64 hex digits (sha256 of the DER certificate)".into(),
        ));
    }
    let status = if new.pending {
        GatewayStatus::Pending
    } else {
        GatewayStatus::Active
    };
    let record = GatewayRecord::new(&id, new.cert_sha256.as_deref(), status, now_ms());
    if !store.register(&record).await? {
        return Err(RegistryError::AlreadyRegistered(id));
    }
    tracing::info!(gateway = %id, status = status.as_str(), "gateway registered");
    Ok(record)
}

/// Every registered gateway, by id.
pub async fn list(store: &Store) -> Result<Vec<GatewayRecord>, RegistryError> {
    Ok(store.registry().await?)
}

/// Sets a registered gateway's status (approve: active; revoke: revoked);
/// it holds from the gateway's next request on, on every replica.
pub async fn set_status(
    store: &Store,
    id: &str,
    status: GatewayStatus,
) -> Result<GatewayRecord, RegistryError> {
    if !store.set_status(id, status, now_ms()).await? {
        return Err(RegistryError::NotRegistered(id.to_string()));
    }
    tracing::info!(gateway = %id, status = status.as_str(), "gateway status set");
    store
        .registered(id)
        .await?
        .ok_or_else(|| RegistryError::NotRegistered(id.to_string()))
}

/// `depin-collector gateways …`: the registry in the store the
/// configuration names (PostgreSQL: while replicas run; redb: with the
/// collector stopped). The same operations as the HTTP API (`[admin]`).
#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// Register a gateway as active (or pending with --pending), by its id
    /// or its device-key certificate.
    Add {
        /// The gateway id, `dpg1...` (`depin-gateway keygen` prints it).
        #[arg(long, required_unless_present = "device_cert")]
        id: Option<String>,
        /// Its device-key certificate, PEM (`depin-gateway keygen --cert
        /// FILE` writes it); the id is its public key.
        #[arg(long)]
        device_cert: Option<std::path::PathBuf>,
        /// sha256 (hex) of its client certificate's DER, for a
        /// certificate issued by your CA; omit for device-key certificates.
        #[arg(long)]
        cert_sha256: Option<String>,
        /// Register it as pending: known, not admitted until approved.
        #[arg(long)]
        pending: bool,
    },
    /// List registered gateways: id, status, certificate, times.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Admit a pending (or revoked) gateway again.
    Approve {
        #[arg(long)]
        id: String,
    },
    /// Refuse a gateway from its next request on, on every replica.
    Revoke {
        #[arg(long)]
        id: String,
    },
}

/// Runs one `gateways` subcommand.
pub fn run(config_path: &Path, command: GatewaysCommand) -> anyhow::Result<ExitCode> {
    let config = CollectorConfig::load(config_path)?;
    crate::block_on(async move {
        let store = Store::open(config.store.as_ref(), &config.data_dir).await?;
        seed(&store, &config.gateways).await?;
        let mut out = std::io::stdout().lock();
        let done = match command {
            GatewaysCommand::Add {
                id,
                device_cert,
                cert_sha256,
                pending,
            } => {
                let device_cert_pem = match device_cert {
                    Some(file) => Some(
                        std::fs::read_to_string(&file)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
                    ),
                    None => None,
                };
                let new = NewGateway {
                    id,
                    device_cert_pem,
                    cert_sha256,
                    pending,
                };
                add(&store, &new)
                    .await
                    .map(|g| format!("added {} ({})", g.id, g.status.as_str()))
            }
            GatewaysCommand::List { json } => list(&store).await.map(|all| {
                if json {
                    return serde_json::to_string_pretty(&all).expect("records serialize");
                }
                let mut text = format!("{:<68}  {:<8}  {:<16}  UPDATED_MS", "ID", "STATUS", "CERT");
                for g in all {
                    let cert = g.cert_sha256.as_deref().unwrap_or("device-key");
                    text.push_str(&format!(
                        "\n{:<68}  {:<8}  {:<16}  {}",
                        g.id,
                        g.status.as_str(),
                        &cert[..cert.len().min(16)],
                        g.updated_ms
                    ));
                }
                text
            }),
            GatewaysCommand::Approve { id } => set_status(&store, &id, GatewayStatus::Active)
                .await
                .map(|g| format!("{} is {}", g.id, g.status.as_str())),
            GatewaysCommand::Revoke { id } => set_status(&store, &id, GatewayStatus::Revoked)
                .await
                .map(|g| format!("{} is {}", g.id, g.status.as_str())),
        };
        match done {
            Ok(text) => {
                writeln!(out, "{text}")?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ RegistryError::Storage(_)) => Err(e.into()),
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> String {
        format!("dpg1{}", hex::encode([n; 32]))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn admission_follows_the_registry_and_first_contact_adds_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(None, dir.path()).await.unwrap();
        let closed = EnrollmentConfig::default();
        let open = EnrollmentConfig {
            approve_on_first_contact: true,
        };
        assert!(matches!(
            admit(&store, &closed, &id(1)).await,
            Err(Refused::Unknown(_))
        ));
        admit(&store, &open, &id(1)).await.unwrap();
        assert_eq!(
            store.registered(&id(1)).await.unwrap().unwrap().status,
            GatewayStatus::Active
        );
        store
            .set_status(&id(1), GatewayStatus::Revoked, 5)
            .await
            .unwrap();
        // Revoked stays revoked, first contact or not.
        assert!(matches!(
            admit(&store, &open, &id(1)).await,
            Err(Refused::Revoked(_))
        ));
        let pending = GatewayRecord::new(&id(2), None, GatewayStatus::Pending, 1);
        assert!(store.register(&pending).await.unwrap());
        assert!(!store.register(&pending).await.unwrap());
        assert!(matches!(
            admit(&store, &open, &id(2)).await,
            Err(Refused::Pending(_))
        ));
        assert_eq!(store.registry().await.unwrap().len(), 2);
    }
}
