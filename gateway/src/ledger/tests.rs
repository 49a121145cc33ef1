//! The ledger's behaviour as a whole: numbering and chaining, visibility
//! before and after checkpoints, and what survives a crash at each step of
//! logging and checkpointing.

use std::time::{Duration, Instant};

use super::writer::CHECKPOINT_AFTER;
use super::*;

fn rec(unit: &str, q: u64) -> NewRecord {
    NewRecord {
        time_ms: 1,
        unit: unit.into(),
        quantity: q,
        source: Source::Plugin,
        subject: None,
        evidence: None,
    }
}

/// Verifies the ledger in `dir` (no broken link) and counts its records.
fn verified_records(dir: &Path) -> u64 {
    let report = LedgerReader::open(dir).unwrap().verify().unwrap();
    assert_eq!(report.broken, None);
    report.records
}

fn effects(records: Vec<NewRecord>) -> CallEffects {
    CallEffects {
        records,
        ..CallEffects::default()
    }
}

#[tokio::test]
async fn concurrent_commits_are_numbered_without_gaps_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            l.commit("p".into(), effects(vec![rec("u", i), rec("v", 1)]))
                .await
                .unwrap()
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let (a, b) = t.await.unwrap().seqs.unwrap();
        assert_eq!(b, a + 1, "a call's records are contiguous");
        seen.push(a);
    }
    seen.sort();
    assert_eq!(seen, (0..64).map(|i| 1 + 2 * i).collect::<Vec<_>>());
    ledger.close();
    drop(ledger);
    let reader = LedgerReader::open(dir.path()).unwrap();
    let report = reader.verify().unwrap();
    assert_eq!(report.records, 128);
    assert_eq!(report.broken, None);
    let summary = reader.summary().unwrap();
    assert_eq!(summary.len(), 2);
    assert_eq!(summary[0].quantity, (0..64).sum::<u64>() as u128);
    assert_eq!(summary[1].records, 64);
}

#[tokio::test]
async fn records_encoded_by_the_caller_are_numbered_stamped_and_chained_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut records = EncodedRecords::with_capacity(2);
    records.push_host("p", "bytes-in", 10, "req-1").unwrap();
    records.push("p", &rec("u", 5)).unwrap();
    assert!(
        records.decode().iter().all(|r| r.seq == 0),
        "numbered at commit"
    );
    let receipt = ledger
        .commit_encoded("p".into(), records, KvEffects::default())
        .await
        .unwrap();
    assert_eq!(receipt.seqs, Some((1, 2)));
    let mut got = Vec::new();
    ledger
        .scan_from(1, |_, r| {
            got.push(r);
            true
        })
        .unwrap();
    assert_eq!(got[0].unit, "bytes-in");
    assert_eq!(got[0].subject.as_deref(), Some("req-1"));
    assert!(got[0].time_ms > 1_700_000_000_000, "stamped at commit");
    assert_eq!((got[1].seq, got[1].time_ms), (2, 1), "a given time is kept");
    // An oversized record fails its own call, before it reaches the
    // writer; other calls go on.
    let mut huge = rec("u", 1);
    huge.subject = Some("s".repeat(u16::MAX as usize));
    huge.evidence = Some(vec![0; u16::MAX as usize]);
    let e = ledger
        .commit("p".into(), effects(vec![huge]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("larger than 64 KiB"), "{e}");
    ledger
        .commit("p".into(), effects(vec![rec("u", 6)]))
        .await
        .unwrap();
    ledger.close();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), 3);
}

#[tokio::test]
async fn kv_writes_commit_with_records_and_are_namespaced() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut e = effects(vec![]);
    e.kv.writes
        .insert("a/1".into(), KvWrite::Set(b"x".to_vec()));
    e.kv.writes
        .insert("a/2".into(), KvWrite::Set(b"y".to_vec()));
    e.kv.writes.insert("b".into(), KvWrite::Set(b"z".to_vec()));
    ledger.commit("one".into(), e).await.unwrap();
    assert_eq!(ledger.kv_get("one", "a/1").unwrap(), Some(b"x".to_vec()));
    assert_eq!(ledger.kv_get("two", "a/1").unwrap(), None);
    assert_eq!(ledger.kv_list("one", "a/", 10).unwrap(), vec!["a/1", "a/2"]);
    assert_eq!(ledger.kv_list("one", "", 2).unwrap(), vec!["a/1", "a/2"]);
    assert!(ledger.kv_list("two", "", 10).unwrap().is_empty());
    let mut e = effects(vec![]);
    e.kv.writes.insert("a/1".into(), KvWrite::Delete);
    ledger.commit("one".into(), e).await.unwrap();
    assert_eq!(ledger.kv_get("one", "a/1").unwrap(), None);
}

#[tokio::test]
async fn reopening_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .commit("p".into(), effects(vec![rec("u", 1)]))
            .await
            .unwrap();
        ledger.close();
    }
    assert_eq!(verified_records(dir.path()), 3);
}

#[tokio::test]
async fn verify_names_the_first_altered_record() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    for q in 0..5 {
        ledger
            .commit("p".into(), effects(vec![rec("u", q)]))
            .await
            .unwrap();
    }
    ledger.close();
    drop(ledger);
    let reader = LedgerReader::open(dir.path()).unwrap();
    // Change the quantity of record 3 (last 8 bytes before source + 2 flags).
    reader
        .tamper(3, |v| {
            let n = v.len();
            v[n - 4] ^= 1;
        })
        .unwrap();
    let report = reader.verify().unwrap();
    let broken = report.broken.unwrap();
    assert_eq!(broken.seq, 3);
    assert!(broken.problem.contains("altered"), "{}", broken.problem);
}

fn records_of(ledger: &Ledger, from: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    ledger
        .scan_from(from, |_, r| {
            seqs.push(r.seq);
            true
        })
        .unwrap();
    seqs
}

#[tokio::test]
async fn logged_groups_are_visible_before_and_after_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut e = effects(vec![rec("u", 1), rec("u", 2)]);
    e.kv.writes
        .insert("k/1".into(), KvWrite::Set(b"a".to_vec()));
    e.kv.writes
        .insert("k/2".into(), KvWrite::Set(b"b".to_vec()));
    ledger.commit("p".into(), e).await.unwrap();
    // Logged, not yet checkpointed: readers see it.
    assert!(ledger.overlay().head().is_some(), "still in the log");
    assert_eq!(ledger.head().unwrap().seq, 2);
    assert_eq!(ledger.kv_get("p", "k/1").unwrap(), Some(b"a".to_vec()));
    assert_eq!(records_of(&ledger, 1), vec![1, 2]);
    // Checkpointed: the same from redb.
    // (Polled: a loaded machine may run the checkpoint late.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.overlay().head().is_some() && Instant::now() < deadline {
        tokio::time::sleep(CHECKPOINT_AFTER).await;
    }
    assert!(ledger.overlay().head().is_none(), "checkpointed");
    assert_eq!(ledger.head().unwrap().seq, 2);
    assert_eq!(ledger.kv_list("p", "k/", 10).unwrap(), vec!["k/1", "k/2"]);
    // A logged delete hides a stored key; a logged set adds one.
    let mut e = effects(vec![rec("u", 3)]);
    e.kv.writes.insert("k/1".into(), KvWrite::Delete);
    e.kv.writes
        .insert("k/0".into(), KvWrite::Set(b"z".to_vec()));
    ledger.commit("p".into(), e).await.unwrap();
    assert_eq!(ledger.kv_get("p", "k/1").unwrap(), None);
    assert_eq!(ledger.kv_list("p", "k/", 10).unwrap(), vec!["k/0", "k/2"]);
    assert_eq!(ledger.kv_list("p", "k/", 1).unwrap(), vec!["k/0"]);
    assert_eq!(ledger.kv_list("q", "k/", 10).unwrap(), Vec::<String>::new());
    // A scan spans redb and the log, without repeats.
    assert_eq!(records_of(&ledger, 1), vec![1, 2, 3]);
    assert_eq!(records_of(&ledger, 3), vec![3]);
}

#[tokio::test]
async fn a_crash_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    for i in 0..10u64 {
        let mut e = effects(vec![rec("u", i)]);
        e.kv.writes
            .insert(format!("k/{i}"), KvWrite::Set(vec![i as u8]));
        ledger.commit("p".into(), e).await.unwrap();
    }
    ledger.abandon();
    drop(ledger);
    // The reader replays the log, as a restarted gateway would.
    assert_eq!(verified_records(dir.path()), 10);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.kv_get("p", "k/9").unwrap(), Some(vec![9]));
    assert_eq!(ledger.kv_list("p", "k/", 100).unwrap().len(), 10);
    // The chain goes on from there, across another crash.
    ledger
        .commit("p".into(), effects(vec![rec("u", 10)]))
        .await
        .unwrap();
    ledger.abandon();
    drop(ledger);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.head().unwrap().seq, 11);
    ledger.close();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), 11);
}

/// Commits record `i` with key `k/<i>` set to `value`.
async fn commit_numbered(
    ledger: &Ledger,
    i: u64,
    value: Vec<u8>,
) -> Result<CommitReceipt, LedgerError> {
    let mut e = effects(vec![rec("u", i)]);
    e.kv.writes.insert(format!("k/{i}"), KvWrite::Set(value));
    ledger.commit("p".into(), e).await
}

/// Waits until the writer has frozen a generation for a checkpoint.
async fn until_frozen(ledger: &Ledger) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger.overlay().applying.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ledger.overlay().applying.is_some(),
        "a generation is frozen"
    );
}

#[tokio::test]
async fn a_crash_while_a_checkpoint_runs_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger.hook(TestHook::HoldCheckpoints);
    commit_numbered(&ledger, 0, vec![0]).await.unwrap();
    // The first generation is frozen for a checkpoint that never
    // commits, while the next groups go to the log's other region.
    until_frozen(&ledger).await;
    for i in 1..4u64 {
        commit_numbered(&ledger, i, vec![i as u8]).await.unwrap();
    }
    assert!(ledger.overlay().current.head.is_some());
    assert_eq!(ledger.kv_list("p", "k/", 10).unwrap().len(), 4);
    assert_eq!(ledger.kv_get("p", "k/0").unwrap(), Some(vec![0]));
    assert_eq!(records_of(&ledger, 1), vec![1, 2, 3, 4]);
    ledger.abandon();
    drop(ledger);
    // Both generations are replayed, in order.
    assert_eq!(verified_records(dir.path()), 4);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.kv_get("p", "k/0").unwrap(), Some(vec![0]));
    assert_eq!(ledger.kv_get("p", "k/3").unwrap(), Some(vec![3]));
    commit_numbered(&ledger, 4, vec![4]).await.unwrap();
    ledger.close();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), 5);
}

#[tokio::test]
async fn a_full_log_region_never_overwrites_a_generation_not_yet_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger.hook(TestHook::HoldCheckpoints);
    commit_numbered(&ledger, 0, vec![0]).await.unwrap();
    until_frozen(&ledger).await;
    // 1 MiB values fill the other region within a few commits; the
    // frozen generation is still in the first one, so the commit that
    // does not fit fails instead of overwriting it.
    let value = |i: u64| vec![i as u8; 1 << 20];
    let mut acknowledged = vec![0];
    let mut refused = None;
    for i in 1..8u64 {
        match commit_numbered(&ledger, i, value(i)).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the region fills up");
    assert!(refused.to_string().contains("held"), "{refused}");
    assert!(acknowledged.len() >= 3, "{acknowledged:?}");
    ledger.abandon();
    drop(ledger);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.head().unwrap().seq, acknowledged.len() as u64);
    for i in acknowledged.into_iter().skip(1) {
        assert_eq!(
            ledger.kv_get("p", &format!("k/{i}")).unwrap(),
            Some(value(i))
        );
    }
    // With checkpoints running again, regions fill and are freed in
    // turn (a commit waits for the checkpoint when it must).
    for i in 100..112u64 {
        commit_numbered(&ledger, i, value(i)).await.unwrap();
    }
    let head = ledger.head().unwrap().seq;
    ledger.close();
    drop(ledger);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.head().unwrap().seq, head);
    assert_eq!(ledger.kv_get("p", "k/111").unwrap(), Some(value(111)));
    ledger.close();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), head);
}

#[tokio::test]
async fn a_torn_last_log_entry_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    for i in 0..3u64 {
        ledger
            .commit("p".into(), effects(vec![rec("u", i)]))
            .await
            .unwrap();
    }
    ledger.abandon();
    drop(ledger);
    // Damage the last byte of the third entry (the log is otherwise
    // zeros after it).
    let path = dir.path().join(WAL_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|b| *b != 0).unwrap();
    bytes[end] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.head().unwrap().seq, 2, "the torn group is gone");
    // Its place is taken by the next commit; the old bytes never return.
    ledger
        .commit("p".into(), effects(vec![rec("v", 7)]))
        .await
        .unwrap();
    ledger.abandon();
    drop(ledger);
    let reader = LedgerReader::open(dir.path()).unwrap();
    let report = reader.verify().unwrap();
    assert_eq!((report.records, report.broken), (3, None));
    let summary = reader.summary().unwrap();
    assert_eq!(summary.iter().map(|t| t.records).sum::<u64>(), 3);
    assert!(summary.iter().any(|t| t.unit == "v" && t.quantity == 7));
}

#[tokio::test]
async fn a_group_whose_log_write_failed_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    commit_numbered(&ledger, 0, vec![0]).await.unwrap();
    // Checkpoints never commit, and the next group's entry reaches the
    // file whole but its sync fails, and so does the first erasure.
    ledger.hook(TestHook::HoldCheckpoints);
    ledger.hook(TestHook::FailLogWrites(2));
    let failed = commit_numbered(&ledger, 1, vec![1]).await.unwrap_err();
    assert!(failed.to_string().contains("injected"), "{failed}");
    // The next group is logged in its place (erasing it first).
    commit_numbered(&ledger, 2, vec![2]).await.unwrap();
    ledger.abandon();
    drop(ledger);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.head().unwrap().seq, 2);
    assert_eq!(ledger.kv_get("p", "k/1").unwrap(), None);
    assert_eq!(ledger.kv_get("p", "k/2").unwrap(), Some(vec![2]));
    assert_eq!(records_of(&ledger, 1), vec![1, 2]);
    ledger.close();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), 2);
}

#[tokio::test]
async fn a_failed_commit_shows_in_health_until_the_next_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let health = ledger.watch_health();
    commit_numbered(&ledger, 0, vec![0]).await.unwrap();
    assert!(ledger.health().is_ok());
    ledger.hook(TestHook::FailLogWrites(1));
    commit_numbered(&ledger, 1, vec![1]).await.unwrap_err();
    let failing = ledger.health();
    assert!(!failing.is_ok());
    assert!(
        failing.commit_failing.unwrap().contains("injected"),
        "the reason is kept"
    );
    assert_eq!(failing.storage_failed, None, "the log recovers by itself");
    assert!(health.has_changed().unwrap());
    commit_numbered(&ledger, 2, vec![2]).await.unwrap();
    assert!(ledger.health().is_ok());
}

#[tokio::test]
async fn a_failed_log_entry_is_erased_before_the_log_changes_region() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    commit_numbered(&ledger, 0, vec![0]).await.unwrap();
    // A group fails and its entry cannot be erased yet; the next group
    // does not fit the region (only in an empty one) and moves the log
    // to the other one, leaving the failed entry behind in the first.
    ledger.hook(TestHook::HoldCheckpoints);
    ledger.hook(TestHook::FailLogWrites(2));
    commit_numbered(&ledger, 1, vec![1]).await.unwrap_err();
    let big = vec![9u8; wal::REGION_BYTES as usize - 300];
    commit_numbered(&ledger, 2, big.clone()).await.unwrap();
    assert!(
        ledger.overlay().applying.is_some(),
        "the first region was frozen for a checkpoint (held)"
    );
    ledger.abandon();
    drop(ledger);
    let ledger = Ledger::open(dir.path()).unwrap();
    assert_eq!(ledger.head().unwrap().seq, 2);
    assert_eq!(ledger.kv_get("p", "k/1").unwrap(), None);
    assert_eq!(ledger.kv_get("p", "k/2").unwrap(), Some(big));
    ledger.close();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), 2);
}

#[tokio::test]
async fn a_group_larger_than_the_log_goes_straight_to_redb() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger
        .commit("p".into(), effects(vec![rec("u", 1)]))
        .await
        .unwrap();
    let mut e = effects(vec![rec("u", 2)]);
    let big = vec![7u8; wal::REGION_BYTES as usize + 1];
    e.kv.writes.insert("big".into(), KvWrite::Set(big.clone()));
    let receipt = ledger.commit("p".into(), e).await.unwrap();
    assert_eq!(receipt.seqs, Some((2, 2)));
    assert_eq!(ledger.kv_get("p", "big").unwrap(), Some(big));
    ledger
        .commit("p".into(), effects(vec![rec("u", 3)]))
        .await
        .unwrap();
    ledger.abandon();
    drop(ledger);
    assert_eq!(verified_records(dir.path()), 3);
}

#[tokio::test]
async fn a_second_open_is_refused_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _ledger = Ledger::open(dir.path()).unwrap();
    let e = LedgerReader::open(dir.path()).err().unwrap();
    assert!(matches!(e, LedgerError::InUse { .. }), "{e}");
}
