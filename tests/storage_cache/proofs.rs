//! Possession proofs of cached blobs: a proof the plugin makes verifies,
//! and fails on a corrupted chunk, a wrong nonce or a wrong chunk.

use super::*;

fn challenge(digest: &str, chunk: u64, nonce: &[u8], root: &str, size: u64) -> Challenge {
    Challenge {
        id: format!("c-{chunk}"),
        kind: "chunk-possession".into(),
        nonce: nonce.to_vec(),
        params: serde_json::to_vec(&serde_json::json!({
            "digest": digest, "chunk": chunk, "root": root, "size": size,
        }))
        .unwrap(),
    }
}

async fn prove_and_verify(gw: &RunningGateway, prove: &Challenge, verify: &Challenge) -> bool {
    let rid = "proof".into();
    let cache = &gw.plugins[0];
    let proof: Proof = cache
        .prove(&rid, prove.clone())
        .await
        .result
        .expect("call")
        .expect("prove");
    let mut proof = proof;
    proof.challenge_id = verify.id.clone();
    cache
        .verify(&rid, verify.clone(), proof)
        .await
        .result
        .expect("call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn possession_proofs_verify_and_fail_on_corruption_wrong_nonce_or_wrong_chunk() {
    let origin = Origin::start(Duration::ZERO).await;
    let bytes = pseudo_random(600 * 1024, 5);
    let digest = sha256_digest(&bytes);
    origin.serve(&format!("/b/{digest}"), bytes.clone());
    let (home, gw) = gateway_for(&origin, 4 << 20, "").await;
    assert_eq!(
        call(gw.http_addr, "GET", &format!("/blobs/{digest}"), &[])
            .await
            .0,
        200
    );
    gw.shutdown().await;

    // The root the plugin committed in the ledger when it stored the blob.
    let mut root = None;
    LedgerReader::open(&home.data_dir())
        .unwrap()
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            if r.unit == "blobs-stored" && r.subject.as_deref() == Some(digest.as_str()) {
                assert_eq!(r.quantity, bytes.len() as u64);
                root = r.evidence.map(hex::encode);
            }
            true
        })
        .unwrap();
    let root = root.expect("a blobs-stored record with the root as evidence");
    let size = bytes.len() as u64;

    let gw = RunningGateway::start(&home.config())
        .await
        .expect("restart");
    let c1 = challenge(&digest, 1, b"nonce-1", &root, size);
    assert!(prove_and_verify(&gw, &c1, &c1).await, "an honest proof");
    let c2 = challenge(&digest, 2, b"nonce-1", &root, size);
    assert!(
        prove_and_verify(&gw, &c2, &c2).await,
        "the short last chunk"
    );
    let other_nonce = challenge(&digest, 1, b"nonce-2", &root, size);
    assert!(
        !prove_and_verify(&gw, &c1, &other_nonce).await,
        "wrong nonce"
    );
    let other_chunk = challenge(&digest, 0, b"nonce-1", &root, size);
    assert!(
        !prove_and_verify(&gw, &c1, &other_chunk).await,
        "wrong chunk"
    );

    // Corrupt one byte of chunk 1 on disk: its proof no longer verifies.
    let file = blob_file(&home, &digest);
    let mut on_disk = std::fs::read(&file).unwrap();
    on_disk[300 * 1024] ^= 0xff;
    std::fs::write(&file, on_disk).unwrap();
    assert!(!prove_and_verify(&gw, &c1, &c1).await, "corrupted chunk");
    // A blob that is gone cannot be proven at all.
    std::fs::remove_file(&file).unwrap();
    let gone = gw.plugins[0]
        .prove(&"p".into(), c1.clone())
        .await
        .result
        .unwrap();
    assert!(gone.is_err());
    gw.shutdown().await;
}
