//! The registry of gateways allowed to report, kept in the store: seeded
//! from `[[gateway]]` at start, managed with `depin-collector gateways
//! add|list|approve|revoke`, consulted on every request.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use depin_gateway::upstream::tls::fingerprint;
use depin_protocol::time::now_ms;
use hyper::StatusCode;

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

/// `depin-collector gateways …`: the registry in the store the
/// configuration names (PostgreSQL: while replicas run; redb: with the
/// collector stopped).
#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// Register a gateway as active (or pending with --pending).
    Add {
        /// The gateway id, `dpg1...` (`depin-gateway keygen` prints it).
        #[arg(long)]
        id: String,
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
        let now = now_ms();
        let mut out = std::io::stdout().lock();
        match command {
            GatewaysCommand::Add {
                id,
                cert_sha256,
                pending,
            } => {
                if !is_gateway_id(&id) {
                    anyhow::bail!("`{id}` is not a gateway id (dpg1 + 64 hex digits)");
                }
                if let Some(c) = &cert_sha256
                    && (c.len() != 64 || hex::decode(c).is_err())
                {
                    anyhow::bail!("--cert-sha256 must be 64 hex digits (sha256 of the DER)");
                }
                let status = if pending {
                    GatewayStatus::Pending
                } else {
                    GatewayStatus::Active
                };
                let record = GatewayRecord::new(&id, cert_sha256.as_deref(), status, now);
                if !store.register(&record).await? {
                    eprintln!("{id} is already registered (see `gateways list`)");
                    return Ok(ExitCode::FAILURE);
                }
                writeln!(out, "added {id} ({})", status.as_str())?;
            }
            GatewaysCommand::List { json } => {
                let all = store.registry().await?;
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<68}  {:<8}  {:<16}  UPDATED_MS",
                        "ID", "STATUS", "CERT"
                    )?;
                    for g in all {
                        let cert = g.cert_sha256.as_deref().unwrap_or("device-key");
                        writeln!(
                            out,
                            "{:<68}  {:<8}  {:<16}  {}",
                            g.id,
                            g.status.as_str(),
                            &cert[..cert.len().min(16)],
                            g.updated_ms
                        )?;
                    }
                }
            }
            GatewaysCommand::Approve { id } => {
                return set(&store, &id, GatewayStatus::Active, now, &mut out).await;
            }
            GatewaysCommand::Revoke { id } => {
                return set(&store, &id, GatewayStatus::Revoked, now, &mut out).await;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn set(
    store: &Store,
    id: &str,
    status: GatewayStatus,
    now: u64,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    if !store.set_status(id, status, now).await? {
        eprintln!("{id} is not registered (see `gateways list`)");
        return Ok(ExitCode::FAILURE);
    }
    writeln!(out, "{id} is {}", status.as_str())?;
    Ok(ExitCode::SUCCESS)
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
