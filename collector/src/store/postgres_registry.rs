//! The gateway registry in PostgreSQL (`gateways`).

use tokio_postgres::Row;

use super::postgres::{PgStore, pg};
use super::{ChainError, GatewayRecord, GatewayStatus, storage};

const GATEWAY_COLUMNS: &str = "id, cert_sha256, status, added_ms, updated_ms";

fn gateway_from(row: &Row) -> Result<GatewayRecord, ChainError> {
    let status: String = row.get("status");
    Ok(GatewayRecord {
        id: row.get("id"),
        cert_sha256: row.get("cert_sha256"),
        status: GatewayStatus::parse(&status)
            .ok_or_else(|| storage(format!("unknown gateway status {status}")))?,
        added_ms: row.get::<_, i64>("added_ms") as u64,
        updated_ms: row.get::<_, i64>("updated_ms") as u64,
    })
}

impl PgStore {
    pub async fn register(&self, record: &GatewayRecord) -> Result<bool, ChainError> {
        let n = self
            .client()
            .await?
            .execute(
                &format!(
                    "INSERT INTO gateways ({GATEWAY_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &record.id,
                    &record.cert_sha256,
                    &record.status.as_str(),
                    &(record.added_ms as i64),
                    &(record.updated_ms as i64),
                ],
            )
            .await
            .map_err(pg)?;
        Ok(n == 1)
    }

    pub async fn registered(&self, id: &str) -> Result<Option<GatewayRecord>, ChainError> {
        self.gateway_where("id = $1", id).await
    }

    pub async fn registered_by_cert(
        &self,
        sha256: &str,
    ) -> Result<Option<GatewayRecord>, ChainError> {
        self.gateway_where("cert_sha256 = $1", &sha256.to_lowercase())
            .await
    }

    async fn gateway_where(
        &self,
        condition: &str,
        value: &str,
    ) -> Result<Option<GatewayRecord>, ChainError> {
        self.client()
            .await?
            .query_opt(
                &format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE {condition}"),
                &[&value],
            )
            .await
            .map_err(pg)?
            .as_ref()
            .map(gateway_from)
            .transpose()
    }

    pub async fn registry(&self) -> Result<Vec<GatewayRecord>, ChainError> {
        self.client()
            .await?
            .query(
                &format!("SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY id COLLATE \"C\""),
                &[],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(gateway_from)
            .collect()
    }

    pub async fn set_status(
        &self,
        id: &str,
        status: GatewayStatus,
        now_ms: u64,
    ) -> Result<bool, ChainError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE gateways SET status = $2, updated_ms = $3 WHERE id = $1",
                &[&id, &status.as_str(), &(now_ms as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(n == 1)
    }
}
