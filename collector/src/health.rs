//! The probe listener (`[server] health_listen`): plain HTTP, no client
//! certificate, two answers — `/healthz` while the process runs, `/readyz`
//! while its store answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{Collector, text};

/// Serves `GET /healthz` and `GET /readyz` over plain HTTP on `listener`.
pub async fn serve(collector: Arc<Collector>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let this = collector.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let this = this.clone();
                async move {
                    let r = match req.uri().path() {
                        "/healthz" => text(StatusCode::OK, "ok".into()),
                        "/readyz" => match this.store.ping().await {
                            Ok(()) => text(StatusCode::OK, "ready".into()),
                            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                        },
                        p => text(StatusCode::NOT_FOUND, format!("no route {p}")),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
