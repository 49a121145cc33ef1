//! A plugin that misbehaves on request, for the sandbox tests:
//! `/loop` never returns, `/bomb` allocates until it hits its memory cap,
//! `/panic` traps, `/meter-then-panic` records usage and writes kv before
//! trapping (none of which may be kept), `/log-flood` writes 4 KiB log
//! lines in a loop until its CPU deadline, `/ok` answers 200. Its `prove`
//! never returns for challenge kind `loop`, traps for `panic`, and for
//! `fetch` waits on the URL in the challenge's params.
//!
//! Datagrams: `panic` traps; `to <ip:port>` answers to that address instead
//! of the sender; `send <host:port>` asks `outbound-udp` to send there and
//! answers with the result; `slow-count <host:port>` reads the kv counter
//! `count`, waits 300 ms, writes it back plus one and sends `count-<n>`
//! there (a call that conflicts with a `/count` made meanwhile);
//! `flood <count> <size>` answers with that many datagrams of that size;
//! anything else is echoed back. `/count` adds one to `count` by a read and
//! a write.

use depin_plugin_sdk::{
    Challenge, Datagram, HttpRequest, HttpResponse, Plugin, PluginInfo, Proof, ResourceKind,
    export_plugin, kv, meter, outbound_http, outbound_udp,
};

struct Hostile;

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo::new("hostile", "0.0.0", ResourceKind::Other).unit("calls", "a call")
    }

    fn handle_http(req: HttpRequest) -> HttpResponse {
        match req.path.as_str() {
            "/ok" => {
                let _ = meter("calls", 1);
                HttpResponse::text(200, "ok")
            }
            "/loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "/bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/panic" => panic!("asked to panic"),
            "/log-flood" => {
                let line = "x".repeat(4096);
                loop {
                    depin_plugin_sdk::log::info(std::hint::black_box(&line));
                }
            }
            "/meter-then-panic" => {
                let _ = meter("calls", 1000);
                let _ = kv::set("poison", b"1");
                panic!("asked to panic after metering");
            }
            "/count" => match read_count().and_then(|n| write_count(n + 1)) {
                Ok(n) => HttpResponse::text(200, &n.to_string()),
                Err(e) => HttpResponse::text(500, &e),
            },
            "/poison" => match kv::get("poison") {
                Ok(Some(_)) => HttpResponse::text(200, "present"),
                _ => HttpResponse::text(404, "absent"),
            },
            _ => HttpResponse::text(404, "unknown"),
        }
    }

    fn prove(c: Challenge) -> Result<Proof, String> {
        match c.kind.as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "panic" => panic!("asked to panic in prove"),
            // Waits on the URL in `params` (an origin that never answers).
            "fetch" => {
                let url = String::from_utf8_lossy(&c.params).into_owned();
                Err(format!("{:?}", outbound_http::get(&url, &[])))
            }
            other => Err(format!("no challenge kind `{other}`")),
        }
    }

    fn handle_datagram(d: Datagram) -> Vec<Datagram> {
        let text = String::from_utf8_lossy(&d.payload).into_owned();
        let answer = |peer: &str, payload: Vec<u8>| {
            vec![Datagram {
                peer: peer.to_string(),
                payload,
            }]
        };
        if text == "panic" {
            let _ = meter("calls", 1);
            panic!("asked to panic on a datagram");
        } else if let Some(addr) = text.strip_prefix("to ") {
            answer(addr, b"hello".to_vec())
        } else if let Some(target) = text.strip_prefix("send ") {
            let result = outbound_udp::send(target, b"upstream", "s1");
            answer(&d.peer, format!("{result:?}").into_bytes())
        } else if let Some(target) = text.strip_prefix("slow-count ") {
            let n = read_count();
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_millis(300) {
                std::hint::black_box(started);
            }
            let result = n.and_then(|n| write_count(n + 1)).and_then(|n| {
                outbound_udp::send(target, format!("count-{n}").as_bytes(), "s1")
                    .map(|()| n)
                    .map_err(|e| format!("{e:?}"))
            });
            answer(&d.peer, format!("{result:?}").into_bytes())
        } else if let Some(args) = text.strip_prefix("flood ") {
            // `flood <count> <size> [padding]`: that many datagrams of that
            // size back to the sender.
            let mut args = args
                .split_whitespace()
                .map(|a| a.parse::<usize>().unwrap_or(0));
            let (count, size) = (args.next().unwrap_or(0), args.next().unwrap_or(0));
            (0..count)
                .map(|i| Datagram {
                    peer: d.peer.clone(),
                    payload: vec![i as u8; size],
                })
                .collect()
        } else if let Some(peer) = text.strip_prefix("reply ") {
            let result = outbound_udp::reply(peer, b"replied");
            answer(&d.peer, format!("{result:?}").into_bytes())
        } else {
            let _ = meter("calls", 1);
            answer(&d.peer, d.payload)
        }
    }
}

fn read_count() -> Result<u64, String> {
    match kv::get("count").map_err(|e| format!("{e:?}"))? {
        None => Ok(0),
        Some(b) => String::from_utf8_lossy(&b)
            .parse()
            .map_err(|e| format!("{e}")),
    }
}

fn write_count(n: u64) -> Result<u64, String> {
    kv::set("count", n.to_string().as_bytes())
        .map(|()| n)
        .map_err(|e| format!("{e:?}"))
}

export_plugin!(Hostile);
