//! The distribution token flow for a token-authenticated [`super::Registry`]:
//! a token service and the key that signs its tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;

use super::{pseudo_random, read_head};

/// The `service` and `issuer` a token-authenticated [`Registry`] expects.
pub(super) const TOKEN_SERVICE: &str = "depin-test-registry";
pub(super) const TOKEN_ISSUER: &str = "depin-test-tokens";

/// Signs registry tokens: ES256 JSON web tokens carrying their certificate
/// (`x5c`), which the registry trusts as its root bundle.
#[derive(Clone)]
pub(super) struct TokenSigner {
    key: Arc<ring::signature::EcdsaKeyPair>,
    cert_der: Vec<u8>,
    pub(super) cert_pem: String,
}

impl TokenSigner {
    fn generate() -> Self {
        let key = rcgen::KeyPair::generate().expect("generate a token key");
        let cert = rcgen::CertificateParams::new(vec!["depin-test-tokens".to_string()])
            .expect("certificate params")
            .self_signed(&key)
            .expect("self-sign the token certificate");
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("load the token key");
        Self {
            key: Arc::new(key),
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    /// A token for `scopes` (space-separated `repository:<name>:<actions>`),
    /// valid for five minutes.
    pub(super) fn token(&self, scopes: &str, subject: &str) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let access: Vec<serde_json::Value> = scopes
            .split_whitespace()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({
            "alg": "ES256", "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", pseudo_random(8, now).iter().map(|b| format!("{b:02x}")).collect::<String>()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .expect("sign a token");
        format!("{input}.{}", b64.encode(signature.as_ref()))
    }
}

/// A registry token service on a free loopback port: `GET
/// /token?service=…&scope=…` answers `{"token": …, "expires_in": 300}` to
/// clients that present the basic credentials it was started with and
/// name the registry's service, 401 to others without those credentials,
/// 400 without the service. Counts the tokens it issued.
pub struct TokenService {
    pub addr: SocketAddr,
    pub(super) signer: TokenSigner,
    issued: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenService {
    pub async fn start(user: &str, password: &str) -> Self {
        use base64::Engine as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the token service");
        let addr = listener.local_addr().expect("token service addr");
        let signer = TokenSigner::generate();
        let issued = Arc::new(AtomicUsize::new(0));
        let expected =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let (s, n) = (signer.clone(), issued.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (signer, issued, expected) = (s.clone(), n.clone(), expected.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let target = head.split_whitespace().nth(1).unwrap_or("");
                    let query = target.split_once('?').map_or("", |(_, q)| q);
                    let scopes: Vec<String> = query
                        .split('&')
                        .filter_map(|kv| kv.strip_prefix("scope="))
                        .map(percent_decode)
                        .collect();
                    let for_us = query.split('&').any(|kv| {
                        kv.strip_prefix("service=").map(percent_decode).as_deref()
                            == Some(TOKEN_SERVICE)
                    });
                    let authorized = head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization")
                                && v.trim()
                                    .split_once(' ')
                                    .is_some_and(|(scheme, credentials)| {
                                        scheme.eq_ignore_ascii_case("basic")
                                            && credentials == expected
                                    })
                        })
                    });
                    let (status, body) = if !for_us {
                        (
                            "400 Bad Request",
                            "{\"details\":\"unknown or missing service\"}".to_string(),
                        )
                    } else if authorized {
                        issued.fetch_add(1, Ordering::SeqCst);
                        let token = signer.token(&scopes.join(" "), "puller");
                        (
                            "200 OK",
                            serde_json::json!({ "token": token, "expires_in": 300 }).to_string(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            "{\"details\":\"credentials required\"}".to_string(),
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            signer,
            issued,
            task,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
