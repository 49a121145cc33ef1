//! What the storage cache meters: hits, misses, stored and served bytes,
//! byte-seconds, including the hits the host answers from memory without
//! calling the plugin.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_misses_stored_bytes_served_bytes_and_byte_seconds_are_metered() {
    let origin = Origin::start(Duration::ZERO).await;
    let bytes = pseudo_random(30_000, 7);
    let digest = sha256_digest(&bytes);
    origin.serve(&format!("/b/{digest}"), bytes.clone());
    let table = format!(
        "tick_interval_ms = 100\n[plugin.blobs]\nquota_bytes = 1000000\n\
         [plugin.outbound]\nhttp = [\"{}\"]\n",
        origin.url()
    );
    let spec = PluginSpec::new("cache", plugin("storage_cache_plugin"), "/")
        .table(table.leak())
        .config(format!("origin = \"{}/b\"\n", origin.url()).leak());
    let home = Home::new(&[spec], "");
    let gw = RunningGateway::start(&home.config()).await.expect("start");
    let path = format!("/blobs/{digest}");
    assert_eq!(call(gw.http_addr, "GET", &path, &[]).await.0, 200);
    assert_eq!(call(gw.http_addr, "GET", &path, &[]).await.0, 200);
    let (status, _, _) = call(gw.http_addr, "GET", &path, &[("range", "bytes=0-9")]).await;
    assert_eq!(status, 206);
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.shutdown().await;

    let mut total = std::collections::BTreeMap::<(String, String), u64>::new();
    let mut subjects = Vec::new();
    LedgerReader::open(&home.data_dir())
        .unwrap()
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            let source = format!("{:?}", r.source).to_lowercase();
            if r.unit.starts_with("cache-") {
                subjects.push((r.subject.clone(), r.evidence.clone()));
            }
            *total.entry((source, r.unit)).or_default() += r.quantity;
            true
        })
        .unwrap();
    let get = |source: &str, unit: &str| {
        total
            .get(&(source.to_string(), unit.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(get("plugin", "cache-misses"), 1);
    assert_eq!(get("plugin", "cache-hits"), 2);
    assert_eq!(get("plugin", "blobs-stored"), bytes.len() as u64);
    assert!(get("plugin", "byte-seconds") > 0, "{total:?}");
    let served = 2 * bytes.len() as u64 + 10;
    assert!(get("host", "bytes-out") >= served, "{total:?}");
    assert!(get("host", "bytes-out") < served + 3000, "{total:?}");
    let evidence = hex::decode(digest.trim_start_matches("sha256:")).unwrap();
    for (subject, ev) in subjects {
        assert_eq!(subject.as_deref(), Some(digest.as_str()));
        assert_eq!(ev.as_deref(), Some(evidence.as_slice()));
    }
}

/// For each request to the plugin `cache`, in ledger order, whether the
/// plugin was called: a call has a host-attested `fuel` record, a reused
/// answer has none (no plugin ran).
fn plugin_called_per_request(home: &Home) -> Vec<bool> {
    let mut requests: Vec<(String, bool)> = Vec::new();
    LedgerReader::open(&home.data_dir())
        .unwrap()
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            if r.plugin != "cache" || format!("{:?}", r.source) != "Host" {
                return true;
            }
            let id = r.subject.clone().unwrap_or_default();
            if r.unit == "bytes-in" {
                requests.push((id, false));
            } else if r.unit == "fuel" {
                let last = requests.last_mut().expect("bytes-in comes first");
                assert_eq!(last.0, id);
                assert!(r.quantity > 0, "a plugin call uses fuel");
                last.1 = true;
            }
            true
        })
        .unwrap();
    requests.into_iter().map(|(_, called)| called).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_hits_are_answered_by_the_host_and_still_metered_each_time() {
    let origin = Origin::start(Duration::ZERO).await;
    // Larger than the blobs the store keeps in memory, so the host opens
    // the file each time (see the next test for small ones).
    let bytes = pseudo_random(100_000, 31);
    let digest = sha256_digest(&bytes);
    let origin_path = format!("/b/{digest}");
    origin.serve(&origin_path, bytes.clone());
    let (home, gw) = gateway_for(&origin, 1_000_000, "hit_reuse_ms = 400\n").await;
    let addr = gw.http_addr;
    let path = format!("/blobs/{digest}");

    // A miss, then a hit the plugin marks reusable.
    assert_eq!(call(addr, "GET", &path, &[]).await.0, 200);
    let (status, headers, body) = call(addr, "GET", &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), bytes.as_slice());
    assert!(
        headers.get("depin-reuse-ms").is_none(),
        "the host removes the marker"
    );
    // Repeats are answered by the host, with Range and If-None-Match.
    for _ in 0..5 {
        let (status, headers, body) = call(addr, "GET", &path, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(body.as_ref(), bytes.as_slice());
        assert!(headers.get("x-request-id").is_some());
        assert!(headers.get("depin-reuse-ms").is_none());
    }
    let (status, headers, body) = call(addr, "GET", &path, &[("range", "bytes=10-19")]).await;
    assert_eq!(status, 206);
    assert_eq!(body.as_ref(), &bytes[10..20]);
    assert_eq!(
        headers["content-range"],
        format!("bytes 10-19/{}", bytes.len())
    );
    let etag = format!("\"{digest}\"");
    let (status, _, body) = call(addr, "GET", &path, &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    // Another query is another request: the plugin answers it.
    assert_eq!(call(addr, "GET", &format!("{path}?x=1"), &[]).await.0, 200);

    // The blob disappears (say, deleted by hand): the host notices when
    // it opens the file and calls the plugin, which pulls it again.
    std::fs::remove_file(blob_file(&home, &digest)).unwrap();
    let (status, _, body) = call(addr, "GET", &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), bytes.as_slice());
    assert_eq!(origin.hits(&origin_path), 2, "pulled again after the loss");
    // The reuse time runs out: the next request calls the plugin again.
    assert_eq!(call(addr, "GET", &path, &[]).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(call(addr, "GET", &path, &[]).await.0, 200);
    gw.shutdown().await;

    // miss, hit (marked), 5 + range + 304 reused, query (plugin), miss after
    // the loss (plugin), hit (marked), expired -> hit (plugin).
    let mut expected = vec![true, true];
    expected.extend([false; 7]);
    expected.extend([true, true, true, true]);
    assert_eq!(plugin_called_per_request(&home), expected);

    // Every hit is metered, reused or not, with the digest as evidence.
    let mut hits = 0;
    let evidence = hex::decode(digest.trim_start_matches("sha256:")).unwrap();
    LedgerReader::open(&home.data_dir())
        .unwrap()
        .for_each(|_, r| {
            let (_, _, r) = r.unwrap();
            if r.unit == "cache-hits" {
                assert_eq!(r.subject.as_deref(), Some(digest.as_str()));
                assert_eq!(r.evidence.as_deref(), Some(evidence.as_slice()));
                hits += r.quantity;
            }
            true
        })
        .unwrap();
    assert_eq!(hits, 1 + 7 + 1 + 1 + 1, "every hit, reused or not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_reused_blobs_are_served_from_memory_and_forgotten_on_eviction() {
    let origin = Origin::start(Duration::ZERO).await;
    let a = pseudo_random(30_000, 41);
    let b = pseudo_random(30_000, 42);
    let (da, db) = (sha256_digest(&a), sha256_digest(&b));
    let (oa, ob) = (format!("/b/{da}"), format!("/b/{db}"));
    origin.serve(&oa, a.clone());
    origin.serve(&ob, b.clone());
    // Room for one of the two.
    let (home, gw) = gateway_for(&origin, 50_000, "hit_reuse_ms = 60000\n").await;
    let addr = gw.http_addr;
    let (pa, pb) = (format!("/blobs/{da}"), format!("/blobs/{db}"));
    let get = |path: String| async move {
        let (status, _, body) = call(addr, "GET", &path, &[]).await;
        assert_eq!(status, 200);
        body
    };

    // Miss, hit (marked reusable), two repeats (the second from memory).
    for _ in 0..4 {
        assert_eq!(get(pa.clone()).await.as_ref(), a.as_slice());
    }
    // b does not fit beside a: the plugin evicts a through the store, which
    // forgets its copy in memory. The reused answer for a then finds no
    // blob and the plugin pulls a again.
    assert_eq!(origin.hits(&oa), 1);
    assert_eq!(get(pb.clone()).await.as_ref(), b.as_slice());
    assert_eq!(get(pa.clone()).await.as_ref(), a.as_slice());
    // Each miss that had to evict pulled once: the response the quota
    // refused was resumed after the eviction, not requested again.
    assert_eq!(origin.hits(&ob), 1);
    let pulled = origin.hits(&oa);
    assert_eq!(pulled, 2, "a was pulled again after its eviction, once");
    // A hit marked reusable, a repeat (kept in memory), then the file is
    // removed behind the gateway's back: the repeat is still served, from
    // memory, with the same bytes (content-addressed, so never stale).
    assert_eq!(get(pa.clone()).await.as_ref(), a.as_slice());
    assert_eq!(get(pa.clone()).await.as_ref(), a.as_slice());
    std::fs::remove_file(blob_file(&home, &da)).unwrap();
    assert_eq!(get(pa.clone()).await.as_ref(), a.as_slice());
    assert_eq!(origin.hits(&oa), pulled);
    gw.shutdown().await;

    // a: miss, hit, 2 reused; b: miss; a: the failed reuse goes to the
    // plugin (miss), hit, 2 reused.
    assert_eq!(
        plugin_called_per_request(&home),
        [true, true, false, false, true, true, true, false, false]
    );
}
