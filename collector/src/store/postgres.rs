//! The PostgreSQL backend of the store, shared by any number of collector
//! replicas.
//!
//! How replicas stay out of each other's way:
//! - everything that reads and then writes one gateway's chain (report
//!   intake with its challenge decisions) runs in one transaction holding
//!   that gateway's advisory lock, so the same report through two replicas
//!   at once is counted once and the second sees the first's result;
//! - a challenge changes status only by an `UPDATE … WHERE status IN
//!   (open)` (hand-out through `FOR UPDATE SKIP LOCKED`), so it is handed
//!   out, decided or expired once;
//! - a gateway's challenge round is claimed by a conditional `UPDATE` of
//!   its stored next time, so one replica issues each round.
//!
//! The schema is versioned (`collector_schema`); migrations are embedded
//! and applied at start in one transaction under an advisory lock, and a
//! database whose schema is newer than this binary is refused.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use depin_protocol::Hash;
use depin_protocol::report::SignedReport;
use tokio_postgres::{GenericClient, NoTls, Row};

use super::{
    Accepted, ChainError, ChallengeRecord, Decide, GatewaySummary, StoreConfig, check_again,
    check_extends, storage,
};

/// The schema version this binary writes; migrations up to it are below.
pub const SCHEMA_VERSION: i32 = 1;

/// (version, SQL): applied in order to reach `SCHEMA_VERSION`.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_initial.sql"))];

/// Advisory lock key held while migrating ("dpg1schm").
const MIGRATION_LOCK: i64 = 0x6470_6731_7363_686d;

/// How long `connect` waits for the database.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) const CHALLENGE_COLUMNS: &str =
    "gateway, status, deadline_ms, issued_ms, decided_ms, digest, spec";

/// A pool of connections to the collector's database.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The connection settings, for connections outside the pool.
    config: std::sync::Arc<tokio_postgres::Config>,
}

pub(super) fn pg(e: impl std::fmt::Display) -> ChainError {
    ChainError::Storage(format!("postgres: {e}"))
}

fn to_hash(b: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    if b.len() == 32 {
        h.copy_from_slice(b);
    }
    h
}

pub(super) fn challenge_from(row: &Row) -> Result<ChallengeRecord, ChainError> {
    let spec: String = row.get("spec");
    Ok(ChallengeRecord {
        spec: serde_json::from_str(&spec).map_err(storage)?,
        gateway: row.get("gateway"),
        issued_ms: row.get::<_, i64>("issued_ms") as u64,
        deadline_ms: row.get::<_, i64>("deadline_ms") as u64,
        digest: row.get("digest"),
        status: row.get("status"),
        decided_ms: row.get::<_, Option<i64>>("decided_ms").map(|v| v as u64),
    })
}

fn parse_micro(s: &str) -> Result<u128, ChainError> {
    s.parse().map_err(|e| storage(format!("reward {s}: {e}")))
}

impl PgStore {
    /// Connects (at most `pool_size` connections, each with the
    /// statement timeout) and brings the schema to `SCHEMA_VERSION`.
    pub async fn connect(config: &StoreConfig) -> Result<Self, ChainError> {
        let mut pg_config: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| storage(format!("[store] url: {e}")))?;
        pg_config.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout_ms
        ));
        pg_config.connect_timeout(CONNECT_TIMEOUT);
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .build()
            .map_err(pg)?;
        let store = Self {
            pool,
            config: std::sync::Arc::new(pg_config),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub(super) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, ChainError> {
        self.pool.get().await.map_err(pg)
    }

    /// Applies the missing migrations in one transaction under an
    /// advisory lock (replicas starting together wait for each other).
    async fn migrate(&self) -> Result<(), ChainError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS collector_schema (
                 version integer PRIMARY KEY, applied_ms bigint NOT NULL)",
        )
        .await
        .map_err(pg)?;
        let current: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM collector_schema",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(storage(format!(
                "the database's collector schema is version {current}, newer than this \
                 collector's version {SCHEMA_VERSION}: a newer collector migrated it; run that \
                 release (or newer) against this database"
            )));
        }
        let now = depin_protocol::time::now_ms() as i64;
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| storage(format!("migration {version}: {e}")))?;
            tx.execute(
                "INSERT INTO collector_schema (version, applied_ms) VALUES ($1, $2)",
                &[version, &now],
            )
            .await
            .map_err(pg)?;
            tracing::info!(version, "collector schema migrated");
        }
        tx.commit().await.map_err(pg)
    }

    pub async fn ping(&self) -> Result<(), ChainError> {
        self.client()
            .await?
            .query_one("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(pg)
    }

    pub async fn accept(
        &self,
        report: &SignedReport,
        end_ms: u64,
        now_ms: u64,
        decide: &dyn Decide,
    ) -> Result<Accepted, ChainError> {
        let gateway = report.report.gateway_id();
        let epoch = report.report.epoch;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // One gateway's chain is read and extended by one replica at a time.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&gateway],
        )
        .await
        .map_err(pg)?;
        let head = tx
            .query_opt(
                "SELECT epoch, hash FROM heads WHERE gateway = $1",
                &[&gateway],
            )
            .await
            .map_err(pg)?
            .map(|r| (r.get::<_, i64>(0) as u64, to_hash(r.get::<_, &[u8]>(1))));
        let existing = tx
            .query_opt(
                "SELECT bytes FROM reports WHERE gateway = $1 AND epoch = $2",
                &[&gateway, &(epoch as i64)],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = existing {
            check_again(row.get::<_, &[u8]>(0), report, head.map(|h| h.0))?;
            let d = decision(&*tx, &gateway, epoch).await?;
            return Ok(Accepted::Duplicate(d.unwrap_or(serde_json::Value::Null)));
        }
        check_extends(head, report)?;
        let start = report.report.start_ms();
        let mut due = Vec::new();
        if start < end_ms {
            let range: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
                &gateway,
                &(start as i64),
                &(end_ms as i64),
                &(now_ms as i64),
            ];
            tx.execute(
                "UPDATE challenges SET status = 'expired', decided_ms = $4
                 WHERE gateway = $1 AND deadline_ms >= $2 AND deadline_ms < $3
                   AND status IN ('pending', 'sent') AND deadline_ms <= $4",
                &range,
            )
            .await
            .map_err(pg)?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT id, {CHALLENGE_COLUMNS} FROM challenges
                         WHERE gateway = $1 AND deadline_ms >= $2 AND deadline_ms < $3
                         ORDER BY deadline_ms, id COLLATE \"C\""
                    ),
                    &range[..3],
                )
                .await
                .map_err(pg)?;
            for row in &rows {
                due.push(challenge_from(row)?);
            }
        }
        let listed: Vec<String> = report
            .report
            .proofs
            .iter()
            .map(|p| p.challenge_id.clone())
            .collect();
        if !listed.is_empty() {
            let known: Vec<String> = tx
                .query(
                    "SELECT id FROM challenges WHERE gateway = $1 AND id = ANY($2)",
                    &[&gateway, &listed],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if let Some(unknown) = listed.iter().find(|id| !known.contains(id)) {
                return Err(ChainError::UnknownChallenge(unknown.clone()));
            }
        }
        let (decision, reward) = decide.decide(report, &due);
        let json = serde_json::to_string(&decision).map_err(storage)?;
        let epoch_i = epoch as i64;
        tx.execute(
            "INSERT INTO reports (gateway, epoch, bytes) VALUES ($1, $2, $3)",
            &[&gateway, &epoch_i, &report.bytes],
        )
        .await
        .map_err(pg)?;
        tx.execute(
            "INSERT INTO heads (gateway, epoch, hash, start_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (gateway) DO UPDATE
             SET epoch = excluded.epoch, hash = excluded.hash, start_ms = excluded.start_ms",
            &[
                &gateway,
                &epoch_i,
                &report.hash().as_slice(),
                &(start as i64),
            ],
        )
        .await
        .map_err(pg)?;
        tx.execute(
            "INSERT INTO rewards (epoch, gateway, micro) VALUES ($1, $2, $3)",
            &[&epoch_i, &gateway, &reward.to_string()],
        )
        .await
        .map_err(pg)?;
        tx.execute(
            "INSERT INTO decisions (gateway, epoch, decision) VALUES ($1, $2, $3)",
            &[&gateway, &epoch_i, &json],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Accepted::New(decision))
    }

    pub async fn record_refusal(
        &self,
        gateway: &str,
        refusal: &serde_json::Value,
    ) -> Result<(), ChainError> {
        let json = serde_json::to_string(refusal).map_err(storage)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO refusals (gateway, refusal) VALUES ($1, $2)
                 ON CONFLICT (gateway) DO UPDATE SET refusal = excluded.refusal",
                &[&gateway, &json],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub async fn explain(
        &self,
        gateway: &str,
        epoch: u64,
    ) -> Result<Option<serde_json::Value>, ChainError> {
        let client = self.client().await?;
        if let Some(d) = decision(&**client, gateway, epoch).await? {
            return Ok(Some(d));
        }
        let Some(row) = client
            .query_opt(
                "SELECT refusal FROM refusals WHERE gateway = $1",
                &[&gateway],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let refusal: serde_json::Value =
            serde_json::from_str(row.get::<_, &str>(0)).map_err(storage)?;
        Ok((refusal["epoch"].as_u64() == Some(epoch)).then_some(refusal))
    }

    /// One aggregate query: rewards are summed exactly as numeric.
    pub async fn gateways(&self) -> Result<Vec<GatewaySummary>, ChainError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT h.gateway, h.epoch, h.hash, count(r.epoch),
                        coalesce(sum(r.micro::numeric), 0)::text
                 FROM heads h LEFT JOIN rewards r ON r.gateway = h.gateway
                 GROUP BY h.gateway, h.epoch, h.hash
                 ORDER BY h.gateway COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok(GatewaySummary {
                    gateway_id: r.get(0),
                    last_epoch: r.get::<_, i64>(1) as u64,
                    last_hash: hex::encode(r.get::<_, &[u8]>(2)),
                    reports: r.get::<_, i64>(3) as u64,
                    reward_micro: parse_micro(r.get(4))?.to_string(),
                })
            })
            .collect()
    }

    pub async fn rewards(&self, epoch: u64) -> Result<Vec<(String, u128)>, ChainError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT gateway, micro FROM rewards WHERE epoch = $1 ORDER BY gateway COLLATE \"C\"",
                &[&(epoch as i64)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| Ok((r.get(0), parse_micro(r.get(1))?)))
            .collect()
    }

    pub async fn report(&self, gateway: &str, epoch: u64) -> Result<Option<Vec<u8>>, ChainError> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT bytes FROM reports WHERE gateway = $1 AND epoch = $2",
                &[&gateway, &(epoch as i64)],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get(0)))
    }

    pub async fn latest_reports(
        &self,
        gateway: &str,
        n: usize,
    ) -> Result<Vec<SignedReport>, ChainError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT bytes FROM reports WHERE gateway = $1 ORDER BY epoch DESC LIMIT $2",
                &[&gateway, &(n as i64)],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| SignedReport::decode(r.get::<_, &[u8]>(0)).map_err(storage))
            .collect()
    }

    pub async fn gateway_ids(&self) -> Result<Vec<String>, ChainError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT gateway FROM heads ORDER BY gateway COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub async fn report_epochs(&self, gateway: &str) -> Result<Vec<u64>, ChainError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT epoch FROM reports WHERE gateway = $1 ORDER BY epoch",
                &[&gateway],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }
}

/// The stored decision on `gateway`'s `epoch`.
async fn decision(
    client: &impl GenericClient,
    gateway: &str,
    epoch: u64,
) -> Result<Option<serde_json::Value>, ChainError> {
    client
        .query_opt(
            "SELECT decision FROM decisions WHERE gateway = $1 AND epoch = $2",
            &[&gateway, &(epoch as i64)],
        )
        .await
        .map_err(pg)?
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).map_err(storage))
        .transpose()
}
