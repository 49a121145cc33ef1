//! Validly signed reports that cheat, each refused or cut by name.

use std::time::{Duration, Instant};

use depin_e2e::plugin;
use depin_e2e::upstream::{approve, file_digest};
use depin_protocol::GENESIS_HASH;
use depin_protocol::proofs::ChallengeSpec;
use depin_protocol::report::{ProofOutcome, REPORT_VERSION_LEGACY};
use serde_json::Value;

use super::*;

on_both_stores!(schedule_cheats_are_refused_by_name_and_count_nothing);
async fn schedule_cheats_are_refused_by_name_and_count_nothing(backend: Backend) {
    let fx = Fixture::new(backend);
    let (mut f, _collector) = fx.template_forger("forger", "interval_ms = 0\n");
    let template = fx.template.clone();
    let tpl = [("template", digest_bytes(&template))];
    let work = [("template", "other", "requests", 10)];
    let e0 = current_epoch() - 3;
    let (status, body) = f.post(f.report(e0, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"]["reward_micro"], "70", "{body}");
    let first = f.prev;

    let refused = |want: u16, name: &'static str| {
        move |(status, body): (u16, Value)| {
            assert_eq!(status, want, "{name}: {body}");
            assert_eq!(body["refused"], name, "{body}");
        }
    };
    // 100 ms epochs: 36 000 times the caps per hour
    let mut short = f.report(e0 * 10 + 10, &tpl, &work);
    short.length_ms = 100;
    refused(422, "wrong-length")(f.post(short).await);
    // the epoch running now, and one an hour ahead
    let now = current_epoch();
    refused(425, "not-ended")(f.post(f.report(now, &tpl, &work)).await);
    refused(425, "future")(f.post(f.report(now + 3600, &tpl, &work)).await);
    // a gap: epoch e0 + 2 without e0 + 1
    refused(409, "gap")(f.post(f.report(e0 + 2, &tpl, &work)).await);
    let gap = f.explain(e0 + 2).await;
    assert_eq!(gap["status"], "refused", "{gap}");
    assert_eq!(gap["refusal"], "gap", "{gap}");
    assert_eq!(gap["reason"], "refused-report", "{gap}");
    assert_eq!(gap["reward_micro"], "0", "{gap}");
    // an epoch before the first accepted one
    f.prev = first;
    refused(409, "preceding")(f.post(f.report(e0 - 1, &tpl, &work)).await);
    // the next epoch, honest
    let (status, body) = f.post(f.report(e0 + 1, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    // an overlapping report for epoch e0 + 1 with more work in it
    let accepted = f.prev;
    f.prev = first;
    let more = [("template", "other", "requests", 10_000)];
    refused(409, "overlapping")(f.post(f.report(e0 + 1, &tpl, &more)).await);
    // the first report replayed
    f.prev = GENESIS_HASH;
    refused(409, "replayed")(f.post(f.report(e0, &tpl, &work)).await);
    f.prev = accepted;
    // a version-1 report: no digests, refused unless the policy admits it
    let mut v1 = f.report(e0 + 2, &[], &work);
    v1.version = REPORT_VERSION_LEGACY;
    refused(422, "legacy-report")(f.post(v1).await);

    // Nothing of it counted: two reports of 70 each.
    let gws = get_json(&f.https, "/v1/gateways").await;
    assert_eq!(gws[0]["reports"], 2, "{gws}");
    assert_eq!(gws[0]["reward_micro"], "140", "{gws}");
    let (_, m) = f
        .https
        .request("GET", "/metrics", Vec::new())
        .await
        .unwrap();
    let m = String::from_utf8_lossy(&m);
    for name in [
        "wrong-length",
        "not-ended",
        "future",
        "gap",
        "preceding",
        "overlapping",
        "replayed",
        "legacy-report",
    ] {
        assert!(m.contains(&format!("reason=\"{name}\"}} 1")), "{name}: {m}");
    }
}

on_both_stores!(unapproved_components_earn_nothing_whatever_kind_they_claim);
async fn unapproved_components_earn_nothing_whatever_kind_they_claim(backend: Backend) {
    let fx = Fixture::new(backend);
    let (mut f, cert) = fx.forger("forger");
    let template = fx.template.clone();
    let cache = file_digest(&plugin("storage_cache_plugin"));
    // Only the real storage cache is approved, as storage-cache; the
    // template is approved as `other`.
    let _collector = fx.collector(
        &[(f.id(), cert.sha256.clone())],
        &format!(
            "{}{}[challenges]\ninterval_ms = 0\n",
            approve(&cache, "storage-cache", None, &[]),
            approve(&template, "other", None, &[])
        ),
    );
    let e0 = current_epoch() - 2;
    let report = f.report(
        e0,
        &[
            ("cache", digest_bytes(&cache)),
            ("fake-cache", digest_bytes(&template)),
            ("mystery", [0xab; 32]),
        ],
        &[
            ("cache", "storage-cache", "bytes-out", 1000),
            // the template claims to be a storage cache: rated as what
            // its digest is approved as, `other`, which has no such rate
            ("fake-cache", "storage-cache", "bytes-out", 1000),
            // a component nobody approved, claiming a rated kind
            ("mystery", "storage-cache", "bytes-out", 1000),
            // a plugin the report gives no digest for
            ("unlisted", "other", "requests", 1000),
        ],
    );
    let (status, body) = f.post(report).await;
    assert_eq!(status, 200, "{body}");
    let d = f.explain(e0).await;
    assert_eq!(
        d, body["decision"],
        "the acknowledgement carries the decision"
    );
    assert_eq!(
        reasons(&d),
        [
            "rated",
            "no-rate",
            "unapproved-component",
            "unapproved-component"
        ],
        "{d}"
    );
    let lines = d["lines"].as_array().unwrap();
    assert_eq!(lines[0]["amount_micro"], "5000", "{d}");
    assert_eq!(lines[0]["kind"], "storage-cache", "{d}");
    assert_eq!(
        lines[1]["kind"], "other",
        "the digest decides the kind: {d}"
    );
    assert_eq!(lines[2]["digest"], format!("sha256:{}", "ab".repeat(32)));
    assert_eq!(lines[2]["amount_micro"], "0");
    assert_eq!(lines[3]["digest"], "");
    assert_eq!(d["reward_micro"], "5000", "{d}");
    assert_eq!(d["estimate_micro"], (1u128 << 60).to_string());
}

on_both_stores!(omitted_and_unanswered_challenges_count_as_failed);
async fn omitted_and_unanswered_challenges_count_as_failed(backend: Backend) {
    let fx = Fixture::new(backend);
    let (mut f, _collector) = fx.template_forger(
        "forger",
        "interval_ms = 200\ninclusion = true\nmax_open = 4\nanswer_timeout_ms = 600\n",
    );
    let template = fx.template.clone();
    let tpl = [("template", digest_bytes(&template))];
    let work = [("template", "other", "requests", 100)];
    let mut next = current_epoch() - 1;
    until_acceptable(next).await;
    let (status, body) = f.post(f.report(next, &tpl, &work)).await;
    assert_eq!(status, 200, "{body}");
    next += 1;
    // Challenges come; the forger fails the first and ignores the rest.
    let mut received: Vec<ChallengeSpec> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < 2 {
        assert!(Instant::now() < deadline, "no challenges came");
        let fresh = f.poll().await;
        if received.is_empty()
            && let Some(first) = fresh.first()
        {
            let verdict = f.answer(&first.id, false, b"cannot".to_vec()).await;
            assert_eq!(verdict["status"], "failed", "{verdict}");
        }
        received.extend(fresh);
    }
    let failed = &received[0];
    // Its reports claim the failed one passed and leave out the others.
    let last_due = received.iter().map(|c| c.deadline_ms).max().unwrap() / LENGTH_MS;
    let mut decisions = Vec::new();
    while next <= last_due {
        until_acceptable(next).await;
        let mut r = f.report(next, &tpl, &work);
        if failed.deadline_ms / LENGTH_MS == next {
            r.proofs.push(ProofOutcome {
                challenge_id: failed.id.clone(),
                passed: true,
            });
        }
        let (status, body) = f.post(r).await;
        assert_eq!(status, 200, "{body}");
        decisions.push(body["decision"].clone());
        next += 1;
    }
    let mut statuses = std::collections::BTreeMap::new();
    for d in &decisions {
        for c in d["proofs"]["challenges"].as_array().unwrap() {
            statuses.insert(c["id"].as_str().unwrap().to_string(), c["status"].clone());
        }
        let due = d["proofs"]["due"].as_u64().unwrap();
        let passed = d["proofs"]["passed"].as_u64().unwrap();
        if due > passed {
            // the score is the collector's: every paying line is cut
            assert!(reasons(d).iter().all(|r| r == "proof-score"), "{d}");
            assert_ne!(d["proof_score_ppm"], "1000000", "{d}");
            assert_eq!(d["reward_micro"], "350", "floor of one half: {d}");
        }
    }
    assert_eq!(statuses[&failed.id], "failed", "{statuses:?}");
    for c in &received[1..] {
        assert_eq!(statuses[&c.id], "expired", "{statuses:?}");
    }
    let with_failed = decisions
        .iter()
        .find(|d| d["epoch"].as_u64() == Some(failed.deadline_ms / LENGTH_MS))
        .unwrap();
    let problems: Vec<&Value> = with_failed["proofs"]["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["id"] == failed.id.as_str())
        .collect();
    assert_eq!(problems[0]["problem"], "contradicted", "{with_failed}");
}
