//! The registry of gateways allowed to report: who they are, which client
//! certificate (if any) stands for them, and whether they may speak.

/// Whether a registered gateway may report and answer challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayStatus {
    /// Admitted.
    Active,
    /// Refused from its next request on, on every replica.
    Revoked,
    /// Known but not yet admitted.
    Pending,
}

impl GatewayStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayStatus::Active => "active",
            GatewayStatus::Revoked => "revoked",
            GatewayStatus::Pending => "pending",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(GatewayStatus::Active),
            "revoked" => Some(GatewayStatus::Revoked),
            "pending" => Some(GatewayStatus::Pending),
            _ => None,
        }
    }
}

/// One registered gateway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayRecord {
    /// `dpg1` + the device key, hex.
    pub id: String,
    /// sha256 of its client certificate (DER), lower-case hex, for
    /// certificates issued by the operator's CA; none for device-key
    /// certificates, which name the gateway themselves.
    pub cert_sha256: Option<String>,
    pub status: GatewayStatus,
    /// When it was added, Unix ms.
    pub added_ms: u64,
    /// When its status last changed, Unix ms.
    pub updated_ms: u64,
}

impl GatewayRecord {
    /// A gateway registered as `status` now.
    pub fn new(id: &str, cert_sha256: Option<&str>, status: GatewayStatus, now_ms: u64) -> Self {
        Self {
            id: id.to_string(),
            cert_sha256: cert_sha256.map(|s| s.to_lowercase()),
            status,
            added_ms: now_ms,
            updated_ms: now_ms,
        }
    }
}

/// Whether `id` has the shape of a gateway id (`dpg1` + 64 hex digits).
pub fn is_gateway_id(id: &str) -> bool {
    id.len() == 68 && id.starts_with("dpg1") && hex::decode(&id[4..]).is_ok()
}
