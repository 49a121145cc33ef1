//! Read-set checks, snapshots and `kv.add` reservations (`serial.rs`).

use super::super::{CallEffects, KvWrite, Ledger, LedgerError};
use super::*;

fn writes(pairs: &[(&str, &str)]) -> CallEffects {
    let mut e = CallEffects::default();
    for (k, v) in pairs {
        e.kv.writes
            .insert(k.to_string(), KvWrite::Set(v.as_bytes().to_vec()));
    }
    e
}

/// A call that read `keys` and scanned `prefixes` from `snapshot`, and
/// writes `out`.
fn reader(
    snapshot: Snapshot,
    keys: &[&str],
    prefixes: &[&str],
    out: &[(&str, &str)],
) -> CallEffects {
    let mut e = writes(out);
    e.kv.reads = ReadSet {
        snapshot: Some(snapshot),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
    };
    e
}

#[tokio::test]
async fn a_read_of_a_key_written_after_the_snapshot_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger
        .commit("p".into(), writes(&[("k", "1")]))
        .await
        .unwrap();
    let old = ledger.snapshot();
    assert_eq!(
        ledger.kv_get_at(&old, "p", "k").unwrap(),
        Some(b"1".to_vec())
    );
    ledger
        .commit("p".into(), writes(&[("k", "2")]))
        .await
        .unwrap();
    assert!(matches!(
        ledger.kv_get_at(&old, "p", "k"),
        Err(LedgerError::Conflict)
    ));
    // Another key, and the same key of another plugin, are unaffected.
    assert_eq!(ledger.kv_get_at(&old, "p", "other").unwrap(), None);
    assert_eq!(ledger.kv_get_at(&old, "q", "k").unwrap(), None);
    let late = reader(old, &["k"], &[], &[("k", "late")]);
    assert!(matches!(
        ledger.commit("p".into(), late).await,
        Err(LedgerError::Conflict)
    ));
    assert_eq!(
        ledger.kv_get("p", "k").unwrap(),
        Some(b"2".to_vec()),
        "nothing of it kept"
    );
    let fresh = reader(ledger.snapshot(), &["k"], &[], &[("k", "3")]);
    ledger.commit("p".into(), fresh).await.unwrap();
    assert_eq!(ledger.kv_get("p", "k").unwrap(), Some(b"3".to_vec()));
}

#[tokio::test]
async fn an_insert_under_a_scanned_prefix_conflicts_and_one_elsewhere_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let snap = ledger.snapshot();
    ledger
        .commit("p".into(), writes(&[("b/1", "x")]))
        .await
        .unwrap();
    assert!(ledger.kv_list_at(&snap, "p", "a/", 10).unwrap().is_empty());
    let scan_a = reader(snap, &[], &["a/"], &[("a/count", "0")]);
    ledger.commit("p".into(), scan_a).await.unwrap();

    let snap = ledger.snapshot();
    ledger
        .commit("p".into(), writes(&[("a/2", "y")]))
        .await
        .unwrap();
    assert!(matches!(
        ledger.kv_list_at(&snap, "p", "a/", 10),
        Err(LedgerError::Conflict)
    ));
    let scan_a = reader(snap, &[], &["a/"], &[("a/count", "1")]);
    assert!(matches!(
        ledger.commit("p".into(), scan_a).await,
        Err(LedgerError::Conflict)
    ));
}

#[test]
fn a_call_conflicts_with_an_earlier_call_of_its_own_group() {
    let mut serial = Serial::default();
    let overlay = Arc::new(Mutex::new(Overlay::default()));
    let snapshot = Snapshot::new(serial.begin(), overlay.clone());
    let plugin: Arc<str> = "p".into();
    let mut first = writes(&[("k", "1")]).kv;
    let mut second = reader(snapshot, &["k"], &[], &[("j", "1")]).kv;
    let mut unrelated = reader(Snapshot::new(serial.begin(), overlay), &["x"], &[], &[]).kv;
    let (verdicts, order) = serial.check_group(&mut [
        (&plugin, &mut first),
        (&plugin, &mut second),
        (&plugin, &mut unrelated),
    ]);
    assert_eq!(verdicts, [Verdict::Pass, Verdict::Conflict, Verdict::Pass]);
    assert_eq!(order, [0, 2]);
}

#[tokio::test]
async fn adds_commit_in_reservation_order_and_a_released_one_refuses_the_later() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p: Arc<str> = "p".into();
    let add = |delta| ledger.kv_add(&p, "n", delta).unwrap().unwrap();
    let one = add(1);
    let two = add(1);
    assert_eq!(
        (one.value(), two.value()),
        (1, 2),
        "each sees the ones before"
    );
    let with = |t: AddTicket| {
        let mut e = CallEffects::default();
        e.kv.adds.push(t);
        e
    };
    // Out of order: the later one waits for the earlier one, and
    // conflicts when that does not commit in time.
    assert!(matches!(
        ledger.commit(p.clone(), with(two)).await,
        Err(LedgerError::Conflict)
    ));
    ledger.commit(p.clone(), with(one)).await.unwrap();
    assert_eq!(ledger.kv_get("p", "n").unwrap(), Some(b"1".to_vec()));
    let three = add(5);
    assert_eq!(three.value(), 6);
    ledger.commit(p.clone(), with(three)).await.unwrap();
    assert_eq!(ledger.kv_get("p", "n").unwrap(), Some(b"6".to_vec()));

    // A reservation dropped without commit: the one after it is refused,
    // and a new one no longer counts it.
    let lost = add(10);
    let after = add(1);
    assert_eq!(after.value(), 17);
    drop(lost);
    let fresh = add(1);
    assert_eq!(fresh.value(), 7);
    assert!(matches!(
        ledger.commit(p.clone(), with(after)).await,
        Err(LedgerError::Conflict)
    ));
    ledger.commit(p.clone(), with(fresh)).await.unwrap();
    assert_eq!(ledger.kv_get("p", "n").unwrap(), Some(b"7".to_vec()));

    // A plain write of the key refuses reservations made before it.
    let before_set = add(1);
    ledger
        .commit(p.clone(), writes(&[("n", "100")]))
        .await
        .unwrap();
    assert!(matches!(
        ledger.commit(p.clone(), with(before_set)).await,
        Err(LedgerError::Conflict)
    ));
    assert_eq!(add(1).value(), 101);
    // A key that is not a counter is refused at once.
    ledger
        .commit(p.clone(), writes(&[("s", "text")]))
        .await
        .unwrap();
    assert_eq!(
        ledger.kv_add(&p, "s", 1).unwrap().unwrap_err(),
        AddRefused::NotACounter
    );
}

#[tokio::test]
async fn a_later_increment_waits_for_an_earlier_one_committed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p: Arc<str> = "p".into();
    let one = ledger.kv_add(&p, "n", 1).unwrap().unwrap();
    let two = ledger.kv_add(&p, "n", 1).unwrap().unwrap();
    let with = |t: AddTicket| {
        let mut e = CallEffects::default();
        e.kv.adds.push(t);
        e
    };
    let later = {
        let (ledger, p, e) = (ledger.clone(), p.clone(), with(two));
        tokio::spawn(async move { ledger.commit(p, e).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    ledger.commit(p.clone(), with(one)).await.unwrap();
    later.await.unwrap().unwrap();
    assert_eq!(ledger.kv_get("p", "n").unwrap(), Some(b"2".to_vec()));
}

#[tokio::test]
async fn versions_are_kept_only_while_a_snapshot_needs_them() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let kept = |l: &Ledger| l.overlay().serial.kept();
    let snap = ledger.snapshot();
    ledger
        .commit("p".into(), writes(&[("a", "1"), ("b", "1")]))
        .await
        .unwrap();
    assert_eq!(kept(&ledger), 2, "the snapshot may still read them");
    drop(snap);
    ledger
        .commit("p".into(), writes(&[("c", "1")]))
        .await
        .unwrap();
    assert_eq!(kept(&ledger), 0);
    // A snapshot taken now reads what is committed without conflict.
    let snap = ledger.snapshot();
    assert_eq!(
        ledger.kv_get_at(&snap, "p", "a").unwrap(),
        Some(b"1".to_vec())
    );
}
