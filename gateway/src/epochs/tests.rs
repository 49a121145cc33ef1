use super::*;
use crate::identity::DeviceKey;
use crate::ledger::{CallEffects, NewRecord, Source};

fn record(unit: &str, q: u64, time_ms: u64) -> NewRecord {
    NewRecord {
        time_ms,
        unit: unit.into(),
        quantity: q,
        source: Source::Plugin,
        subject: Some(format!("s{q}")),
        evidence: None,
    }
}

async fn commit(ledger: &Ledger, records: Vec<NewRecord>) {
    let effects = CallEffects {
        records,
        ..CallEffects::default()
    };
    ledger.commit("tpl".into(), effects).await.unwrap();
}

#[tokio::test]
async fn epochs_close_in_order_with_contiguous_records_and_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    // epoch length 1000: records in epochs 5, 5, 7
    commit(
        &ledger,
        vec![record("hits", 2, 5_100), record("hits", 3, 5_900)],
    )
    .await;
    commit(&ledger, vec![record("hits", 4, 7_000)]).await;
    let policy = crate::config::parse_policy(
        std::path::Path::new("p.toml"),
        "[[rate]]\nkind = \"other\"\nunit = \"hits\"\nmicro = 10\n",
    )
    .unwrap();
    let store = Arc::new(EpochStore::open(dir.path()).unwrap());
    let closer = EpochCloser {
        ledger: ledger.clone(),
        store: store.clone(),
        key: Arc::new(DeviceKey::generate()),
        policy,
        identities: PluginIdentities::from_kinds(BTreeMap::new()),
        length_ms: 1000,
        close_delay_ms: 100,
        deliver: true,
    };
    // first run at t=5_500: the cursor starts at epoch 5, nothing due
    assert!(closer.close_due(5_500).unwrap().is_empty());
    assert!(closer.close_due(6_050).unwrap().is_empty());
    let made = closer.close_due(8_100).unwrap();
    let epochs: Vec<u64> = made.iter().map(|r| r.report.epoch).collect();
    assert_eq!(epochs, [5, 6, 7]);
    assert_eq!(made[0].report.records, 2);
    assert_eq!(made[0].report.totals[0].quantity, 5);
    assert_eq!(made[0].report.totals[0].subjects, 2);
    let subjects: Vec<&str> = made[0]
        .report
        .subject_totals
        .iter()
        .map(|t| t.subject.as_str())
        .collect();
    assert_eq!(subjects, ["s2", "s3"]);
    assert_eq!(made[0].report.reward_micro, 50);
    assert_eq!(made[1].report.records, 0);
    assert_eq!(made[1].report.merkle_root, merkle::EMPTY_ROOT);
    assert_eq!(made[2].report.first_seq, 3);
    assert_eq!(made[1].report.prev_hash, made[0].hash());
    assert_eq!(made[2].report.prev_hash, made[1].hash());
    // all three wait in the outbox, oldest first
    assert_eq!(store.outbox_len().unwrap(), 3);
    let first = store.outbox_first().unwrap().unwrap();
    assert_eq!(first.epoch, 5);
    store.acknowledge(&first, 9_000, None).unwrap();
    assert_eq!(store.outbox_first().unwrap().unwrap().epoch, 6);
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].acknowledged_ms, Some(9_000));
    assert!(listed[1].pending);
    // closing again closes nothing twice
    assert!(closer.close_due(8_200).unwrap().is_empty());
    // epochs closed without a collector are queued once one is configured
    assert_eq!(store.enqueue_unacknowledged().unwrap(), 0);
    let local = EpochCloser {
        deliver: false,
        ..closer
    };
    assert_eq!(local.close_due(9_200).unwrap().len(), 1);
    assert_eq!(store.outbox_len().unwrap(), 2);
    assert_eq!(store.enqueue_unacknowledged().unwrap(), 1);
    assert_eq!(store.outbox_len().unwrap(), 3);
    ledger.close();
}

#[tokio::test]
async fn the_outbox_keeps_close_order_when_the_length_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    commit(&ledger, vec![record("hits", 1, 5_100)]).await;
    let store = Arc::new(EpochStore::open(dir.path()).unwrap());
    let closer = |length_ms| EpochCloser {
        ledger: ledger.clone(),
        store: store.clone(),
        key: Arc::new(DeviceKey::from_signing_key(
            ed25519_dalek::SigningKey::from_bytes(&[4; 32]),
        )),
        policy: RewardPolicy::default(),
        identities: PluginIdentities::fixed(BTreeMap::from([(
            "tpl".to_string(),
            PluginIdentity {
                kind: "other".into(),
                digest: [9; 32],
                loaded: true,
                signer: None,
            },
        )])),
        length_ms,
        close_delay_ms: 100,
        deliver: true,
    };
    closer(1000).close_due(5_500).unwrap();
    let made = closer(1000).close_due(8_100).unwrap();
    assert_eq!(made.len(), 3);
    assert_eq!(made[0].report.components.len(), 1);
    assert_eq!(made[0].report.components[0].digest, [9; 32]);
    // twice as long: epoch 4 of 2000 ms starts where epoch 8 of 1000
    // would have; its number is smaller, its place in the chain later
    let made = closer(2000).close_due(10_200).unwrap();
    assert_eq!(made[0].report.epoch, 4);
    let mut delivered = Vec::new();
    while let Some(entry) = store.outbox_first().unwrap() {
        delivered.push(entry.epoch);
        store.acknowledge(&entry, 11_000, None).unwrap();
    }
    assert_eq!(delivered, [5, 6, 7, 4]);
    ledger.close();
}
