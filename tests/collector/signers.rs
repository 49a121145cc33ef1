//! Component signers in reports: a v3 report's signer is accepted and kept
//! with the decision; a v2 report (no signers) is still accepted.

use depin_protocol::report::{REPORT_VERSION, REPORT_VERSION_UNSIGNED_COMPONENTS};

use super::*;

on_both_stores!(signers_of_components_are_accepted_and_kept_and_v2_reports_still_are);
async fn signers_of_components_are_accepted_and_kept_and_v2_reports_still_are(backend: Backend) {
    let fx = Fixture::new(backend);
    let (mut f, _collector) = fx.template_forger("signed", "interval_ms = 0\n");
    let template = fx.template.clone();
    let tpl = [("template", digest_bytes(&template))];
    let work = [("template", "other", "requests", 10)];
    let e0 = current_epoch() - 3;

    let mut signed = f.report(e0, &tpl, &work);
    assert_eq!(signed.version, REPORT_VERSION);
    signed.components[0].signer = Some([0x5a; 32]);
    let (status, body) = f.post(signed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"]["reward_micro"], "70", "{body}");
    let d = f.explain(e0).await;
    assert_eq!(d["version"], 3, "{d}");
    assert_eq!(d["components"][0]["digest"], template.as_str(), "{d}");
    let signer = format!("sha256:{}", "5a".repeat(32));
    assert_eq!(d["components"][0]["signer"], signer.as_str(), "{d}");

    let mut v2 = f.report(e0 + 1, &tpl, &work);
    v2.version = REPORT_VERSION_UNSIGNED_COMPONENTS;
    let (status, body) = f.post(v2).await;
    assert_eq!(status, 200, "{body}");
    let d = f.explain(e0 + 1).await;
    assert_eq!(d["version"], 2, "{d}");
    assert_eq!(d["components"][0]["signer"], Value::Null, "{d}");
    assert_eq!(d["reward_micro"], "70", "{d}");
}
