//! The challenge half of the PostgreSQL store: every status change is
//! one conditional UPDATE, so replicas never hand out, judge or expire a
//! challenge twice; round times are claimed the same way. Issuing one
//! notifies every replica's waiting polls (`postgres_notify`).

use super::postgres::{CHALLENGE_COLUMNS, PgStore, challenge_from, pg};
use super::postgres_notify::CHALLENGE_CHANNEL;
use super::{ChainError, ChallengeRecord, storage};

impl PgStore {
    pub async fn issue(&self, c: &ChallengeRecord) -> Result<(), ChainError> {
        let spec = serde_json::to_string(&c.spec).map_err(storage)?;
        // The NOTIFY is part of the statement: it is sent when (and only
        // if) the challenge is committed.
        self.client()
            .await?
            .query(
                &format!(
                    "WITH issued AS (
                         INSERT INTO challenges (id, {CHALLENGE_COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING gateway)
                     SELECT pg_notify('{CHALLENGE_CHANNEL}', gateway) FROM issued"
                ),
                &[
                    &c.spec.id,
                    &c.gateway,
                    &c.status,
                    &(c.deadline_ms as i64),
                    &(c.issued_ms as i64),
                    &c.decided_ms.map(|v| v as i64),
                    &c.digest,
                    &spec,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub async fn take_pending(&self, gateway: &str) -> Result<Vec<ChallengeRecord>, ChainError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "UPDATE challenges SET status = 'sent'
                     WHERE status = 'pending' AND id IN (
                         SELECT id FROM challenges WHERE gateway = $1 AND status = 'pending'
                         FOR UPDATE SKIP LOCKED)
                     RETURNING id, {CHALLENGE_COLUMNS}"
                ),
                &[&gateway],
            )
            .await
            .map_err(pg)?;
        let mut out: Vec<ChallengeRecord> =
            rows.iter().map(challenge_from).collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok(out)
    }

    pub async fn resolve(&self, id: &str, passed: bool, now_ms: u64) -> Result<String, ChainError> {
        let client = self.client().await?;
        let decided = client
            .query_opt(
                "UPDATE challenges SET decided_ms = $2, status = CASE
                     WHEN deadline_ms < $2 THEN 'expired'
                     WHEN $3::boolean THEN 'passed' ELSE 'failed' END
                 WHERE id = $1 AND status IN ('pending', 'sent')
                 RETURNING status",
                &[&id, &(now_ms as i64), &passed],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = decided {
            return Ok(row.get(0));
        }
        client
            .query_opt("SELECT status FROM challenges WHERE id = $1", &[&id])
            .await
            .map_err(pg)?
            .map(|r| r.get(0))
            .ok_or_else(|| storage(format!("no challenge {id}")))
    }

    pub async fn expire_overdue(&self, gateway: &str, now_ms: u64) -> Result<usize, ChainError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE challenges SET status = 'expired', decided_ms = $2
                 WHERE gateway = $1 AND status IN ('pending', 'sent') AND deadline_ms < $2",
                &[&gateway, &(now_ms as i64)],
            )
            .await
            .map_err(pg)?;
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM challenges
                 WHERE gateway = $1 AND status IN ('pending', 'sent')",
                &[&gateway],
            )
            .await
            .map_err(pg)?
            .get(0);
        Ok(open as usize)
    }

    pub async fn prune_decided(&self, before_ms: u64, limit: usize) -> Result<usize, ChainError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM challenges WHERE id IN (
                     SELECT id FROM challenges
                     WHERE deadline_ms < $1 AND status IN ('passed', 'failed', 'expired')
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&(before_ms as i64), &(limit as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(n as usize)
    }

    pub async fn challenge(&self, id: &str) -> Result<Option<ChallengeRecord>, ChainError> {
        self.client()
            .await?
            .query_opt(
                &format!("SELECT id, {CHALLENGE_COLUMNS} FROM challenges WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(pg)?
            .as_ref()
            .map(challenge_from)
            .transpose()
    }

    pub async fn challenges_in(
        &self,
        gateway: &str,
        status: &str,
    ) -> Result<Vec<ChallengeRecord>, ChainError> {
        self.client()
            .await?
            .query(
                &format!(
                    "SELECT id, {CHALLENGE_COLUMNS} FROM challenges
                     WHERE gateway = $1 AND status = $2 ORDER BY id COLLATE \"C\""
                ),
                &[&gateway, &status],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(challenge_from)
            .collect()
    }

    pub async fn claim_round(
        &self,
        gateway: &str,
        now_ms: u64,
        first_ms: u64,
        next_ms: u64,
    ) -> Result<bool, ChainError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO rounds (gateway, next_ms) VALUES ($1, $2)
                 ON CONFLICT (gateway) DO NOTHING",
                &[&gateway, &(first_ms as i64)],
            )
            .await
            .map_err(pg)?;
        if inserted == 1 {
            return Ok(false);
        }
        // Row-locked and re-checked: of two replicas, one moves it.
        let claimed = client
            .execute(
                "UPDATE rounds SET next_ms = $3 WHERE gateway = $1 AND next_ms <= $2",
                &[&gateway, &(now_ms as i64), &(next_ms as i64)],
            )
            .await
            .map_err(pg)?;
        Ok(claimed == 1)
    }
}
