//! The challenge half of the redb store: every challenge issued,
//! indexed by (gateway, status) and (gateway, deadline), and its
//! verdict.

use redb::{ReadableDatabase, ReadableTable};

use super::redb::{BY_DEADLINE, BY_STATUS, CHALLENGES, CollectorStore, ROUNDS};
use super::{ChainError, ChallengeRecord, DECIDED, OPEN, storage};

/// Decides every challenge of `gateway` due in `[start, end)`: open ones
/// expire (their deadline has passed); returns them all.
pub(crate) fn decide_due(
    txn: &redb::WriteTransaction,
    gateway: &str,
    start: u64,
    end: u64,
    now_ms: u64,
) -> Result<Vec<ChallengeRecord>, ChainError> {
    if start >= end {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = {
        let t = txn.open_table(BY_DEADLINE)?;
        let mut ids = Vec::new();
        for e in t.range((gateway, start, "")..(gateway, end, ""))? {
            ids.push(e?.0.value().2.to_string());
        }
        ids
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(mut c) = get_challenge(txn, &id)? else {
            continue;
        };
        if OPEN.contains(&c.status.as_str()) && c.deadline_ms <= now_ms {
            set_status(txn, &mut c, "expired", now_ms)?;
        }
        out.push(c);
    }
    Ok(out)
}

fn get_challenge(
    txn: &redb::WriteTransaction,
    id: &str,
) -> Result<Option<ChallengeRecord>, ChainError> {
    let t = txn.open_table(CHALLENGES)?;
    let v = t.get(id)?;
    v.map(|v| serde_json::from_slice(v.value()).map_err(storage))
        .transpose()
}

fn put_challenge(txn: &redb::WriteTransaction, c: &ChallengeRecord) -> Result<(), ChainError> {
    let json = serde_json::to_vec(c).map_err(storage)?;
    txn.open_table(CHALLENGES)?
        .insert(c.spec.id.as_str(), json.as_slice())?;
    Ok(())
}

/// Moves `c` to `status` in the record and the (gateway, status) index.
fn set_status(
    txn: &redb::WriteTransaction,
    c: &mut ChallengeRecord,
    status: &str,
    now_ms: u64,
) -> Result<(), ChainError> {
    {
        let mut idx = txn.open_table(BY_STATUS)?;
        idx.remove((c.gateway.as_str(), c.status.as_str(), c.spec.id.as_str()))?;
        idx.insert(
            (c.gateway.as_str(), status, c.spec.id.as_str()),
            c.deadline_ms,
        )?;
    }
    c.status = status.to_string();
    if DECIDED.contains(&status) {
        c.decided_ms = Some(now_ms);
    }
    put_challenge(txn, c)
}

impl CollectorStore {
    /// Stores a newly issued challenge.
    pub fn issue(&self, c: &ChallengeRecord) -> Result<(), ChainError> {
        let txn = self.db.begin_write()?;
        put_challenge(&txn, c)?;
        txn.open_table(BY_STATUS)?.insert(
            (c.gateway.as_str(), c.status.as_str(), c.spec.id.as_str()),
            c.deadline_ms,
        )?;
        txn.open_table(BY_DEADLINE)?
            .insert((c.gateway.as_str(), c.deadline_ms, c.spec.id.as_str()), ())?;
        txn.commit()?;
        Ok(())
    }

    /// Ids and deadlines of `gateway`'s challenges in `status`.
    pub fn ids_in(&self, gateway: &str, status: &str) -> Result<Vec<(String, u64)>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BY_STATUS)?;
        let mut out = Vec::new();
        for e in t.range((gateway, status, "")..(gateway, status, "\u{10ffff}"))? {
            let (k, v) = e?;
            out.push((k.value().2.to_string(), v.value()));
        }
        Ok(out)
    }

    /// Every challenge of `gateway` in `status`.
    pub fn challenges_in(
        &self,
        gateway: &str,
        status: &str,
    ) -> Result<Vec<ChallengeRecord>, ChainError> {
        let mut out = Vec::new();
        for (id, _) in self.ids_in(gateway, status)? {
            out.extend(self.challenge(&id)?);
        }
        Ok(out)
    }

    /// Hands out `gateway`'s pending challenges, marking them sent. Reads
    /// only (no commit) when there are none.
    pub fn take_pending(&self, gateway: &str) -> Result<Vec<ChallengeRecord>, ChainError> {
        if self.ids_in(gateway, "pending")?.is_empty() {
            return Ok(Vec::new());
        }
        let now = depin_protocol::time::now_ms();
        let txn = self.db.begin_write()?;
        let ids: Vec<String> = {
            let t = txn.open_table(BY_STATUS)?;
            let mut ids = Vec::new();
            for e in t.range((gateway, "pending", "")..(gateway, "pending", "\u{10ffff}"))? {
                ids.push(e?.0.value().2.to_string());
            }
            ids
        };
        let mut taken = Vec::new();
        for id in ids {
            if let Some(mut c) = get_challenge(&txn, &id)? {
                set_status(&txn, &mut c, "sent", now)?;
                taken.push(c);
            }
        }
        txn.commit()?;
        Ok(taken)
    }

    /// Records the verdict on challenge `id` if it is still open; returns
    /// the status it ends in (an answer after the deadline finds it
    /// `expired`).
    pub fn resolve(&self, id: &str, passed: bool, now_ms: u64) -> Result<String, ChainError> {
        let txn = self.db.begin_write()?;
        let Some(mut c) = get_challenge(&txn, id)? else {
            return Err(ChainError::Storage(format!("no challenge {id}")));
        };
        if OPEN.contains(&c.status.as_str()) {
            let status = if c.deadline_ms < now_ms {
                "expired"
            } else if passed {
                "passed"
            } else {
                "failed"
            };
            set_status(&txn, &mut c, status, now_ms)?;
        }
        txn.commit()?;
        Ok(c.status)
    }

    /// Expires `gateway`'s open challenges whose deadline passed; returns
    /// how many are still open.
    pub fn expire_overdue(&self, gateway: &str, now_ms: u64) -> Result<usize, ChainError> {
        let mut open = Vec::new();
        for s in OPEN {
            open.extend(self.ids_in(gateway, s)?);
        }
        let overdue: Vec<&String> = open
            .iter()
            .filter(|(_, d)| *d < now_ms)
            .map(|(id, _)| id)
            .collect();
        if !overdue.is_empty() {
            let txn = self.db.begin_write()?;
            for id in &overdue {
                if let Some(mut c) = get_challenge(&txn, id)?
                    && OPEN.contains(&c.status.as_str())
                {
                    set_status(&txn, &mut c, "expired", now_ms)?;
                }
            }
            txn.commit()?;
        }
        Ok(open.len() - overdue.len())
    }

    /// Removes decided challenges whose deadline is older than
    /// `before_ms`, at most `limit`; returns how many. Reads only the
    /// (gateway, deadline) index range below `before_ms`.
    pub fn prune_decided(&self, before_ms: u64, limit: usize) -> Result<usize, ChainError> {
        let mut old = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let t = txn.open_table(BY_DEADLINE)?;
            for gateway in self.gateway_ids()? {
                let range = (gateway.as_str(), 0, "")..(gateway.as_str(), before_ms, "");
                for e in t.range(range)?.take(limit - old.len().min(limit)) {
                    let (k, _) = e?;
                    let (g, d, id) = k.value();
                    old.push((g.to_string(), d, id.to_string()));
                }
            }
        }
        if old.is_empty() {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let mut pruned = 0;
        {
            let mut all = txn.open_table(CHALLENGES)?;
            let mut by_status = txn.open_table(BY_STATUS)?;
            let mut by_deadline = txn.open_table(BY_DEADLINE)?;
            for (g, d, id) in &old {
                let record: Option<ChallengeRecord> = all
                    .get(id.as_str())?
                    .map(|v| serde_json::from_slice(v.value()))
                    .transpose()
                    .map_err(storage)?;
                // Open ones are expired first (by the issuer), then pruned.
                if let Some(c) = &record
                    && !DECIDED.contains(&c.status.as_str())
                {
                    continue;
                }
                if let Some(c) = &record {
                    by_status.remove((g.as_str(), c.status.as_str(), id.as_str()))?;
                }
                all.remove(id.as_str())?;
                by_deadline.remove((g.as_str(), *d, id.as_str()))?;
                pruned += 1;
            }
        }
        txn.commit()?;
        Ok(pruned)
    }

    /// Claims `gateway`'s round if due (see `Store::claim_round`).
    pub fn claim_round(
        &self,
        gateway: &str,
        now_ms: u64,
        first_ms: u64,
        next_ms: u64,
    ) -> Result<bool, ChainError> {
        let txn = self.db.begin_write()?;
        let due = {
            let mut rounds = txn.open_table(ROUNDS)?;
            let at = rounds.get(gateway)?.map(|v| v.value());
            match at {
                None => {
                    rounds.insert(gateway, first_ms)?;
                    false
                }
                Some(t) if t <= now_ms => {
                    rounds.insert(gateway, next_ms)?;
                    true
                }
                Some(_) => return Ok(false),
            }
        };
        txn.commit()?;
        Ok(due)
    }

    /// One challenge.
    pub fn challenge(&self, id: &str) -> Result<Option<ChallengeRecord>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(CHALLENGES)?;
        match t.get(id)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(storage),
        }
    }
}
