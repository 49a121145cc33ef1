//! The gateway registry in `collector.redb`.

use redb::{ReadableDatabase, ReadableTable};

use super::redb::{CollectorStore, GATEWAYS};
use super::{ChainError, GatewayRecord, GatewayStatus, storage};

fn decode(bytes: &[u8]) -> Result<GatewayRecord, ChainError> {
    serde_json::from_slice(bytes).map_err(storage)
}

impl CollectorStore {
    /// Adds `record` unless `record.id` is registered; true if added.
    pub fn register(&self, record: &GatewayRecord) -> Result<bool, ChainError> {
        let txn = self.db.begin_write()?;
        let added = {
            let mut t = txn.open_table(GATEWAYS)?;
            if t.get(record.id.as_str())?.is_some() {
                false
            } else {
                let json = serde_json::to_vec(record).map_err(storage)?;
                t.insert(record.id.as_str(), json.as_slice())?;
                true
            }
        };
        txn.commit()?;
        Ok(added)
    }

    /// The registry entry of `id`.
    pub fn registered(&self, id: &str) -> Result<Option<GatewayRecord>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(GATEWAYS)?;
        let v = t.get(id)?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// The entry whose certificate has `sha256`. Scans the registry: the
    /// embedded store serves one box's worth of gateways.
    pub fn registered_by_cert(&self, sha256: &str) -> Result<Option<GatewayRecord>, ChainError> {
        let sha256 = sha256.to_lowercase();
        Ok(self
            .registry()?
            .into_iter()
            .find(|g| g.cert_sha256.as_deref() == Some(sha256.as_str())))
    }

    /// Every registered gateway, by id.
    pub fn registry(&self) -> Result<Vec<GatewayRecord>, ChainError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(GATEWAYS)?;
        let mut out = Vec::new();
        for e in t.iter()? {
            out.push(decode(e?.1.value())?);
        }
        Ok(out)
    }

    /// Sets `id`'s status; false if it is not registered.
    pub fn set_status(
        &self,
        id: &str,
        status: GatewayStatus,
        now_ms: u64,
    ) -> Result<bool, ChainError> {
        let txn = self.db.begin_write()?;
        let found = {
            let mut t = txn.open_table(GATEWAYS)?;
            let current = t.get(id)?.map(|v| decode(v.value())).transpose()?;
            match current {
                None => false,
                Some(mut g) => {
                    g.status = status;
                    g.updated_ms = now_ms;
                    let json = serde_json::to_vec(&g).map_err(storage)?;
                    t.insert(id, json.as_slice())?;
                    true
                }
            }
        };
        txn.commit()?;
        Ok(found)
    }
}
