//! A plugin with a correct `verify` and a broken `prove`, for the
//! self-check tests: challenge kind `echo-hash` should be answered with
//! `sha256(nonce || params)`, but `prove` hashes only the parameters (a
//! stale proof that ignores the fresh nonce), so every proof fails.
//! `GET /ok` answers 200 and meters one request.

use depin_plugin_sdk::{
    Challenge, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind, export_plugin,
    meter,
};
use sha2::{Digest, Sha256};

struct BrokenProofs;

impl Plugin for BrokenProofs {
    fn describe() -> PluginInfo {
        PluginInfo::new("broken-proofs", "0.0.0", ResourceKind::Other)
            .unit("requests", "one HTTP request answered")
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        match req.path.as_str() {
            "/ok" => {
                let _ = meter("requests", 1);
                HttpResponse::text(200, "ok")
            }
            _ => HttpResponse::text(404, "unknown"),
        }
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        match c.kind.as_str() {
            "echo-hash" => Ok(Proof {
                challenge_id: c.id.clone(),
                payload: Sha256::digest(&c.params).to_vec(),
            }),
            other => Err(format!("no challenge kind `{other}`")),
        }
    }

    fn verify(c: Challenge, p: Proof) -> bool {
        let mut h = Sha256::new();
        h.update(&c.nonce);
        h.update(&c.params);
        c.kind == "echo-hash" && p.challenge_id == c.id && p.payload == h.finalize().to_vec()
    }
}

export_plugin!(BrokenProofs);
