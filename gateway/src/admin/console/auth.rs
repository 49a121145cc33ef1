//! Console sign-in: the admin token, typed once into a form, becomes a
//! session cookie (`HttpOnly`, `SameSite=Strict`, path `/ui`), so the
//! token is never kept by the browser. Every form that changes something
//! carries the session's CSRF token, and is refused when it does not match
//! or when the request comes from another origin.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

/// The session cookie's name.
pub const COOKIE: &str = "depin_console";
/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; signing in past it ends the oldest.
pub const MAX_SESSIONS: usize = 32;

#[derive(Debug, Clone)]
struct Session {
    id: String,
    csrf: String,
    started: Instant,
}

/// The signed-in browsers.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<Vec<Session>>,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// Starts a session; returns its cookie value.
    pub fn start(&self) -> String {
        let mut s = self.sessions.lock().expect("sessions lock");
        s.retain(|x| x.started.elapsed() < SESSION_TTL);
        if s.len() >= MAX_SESSIONS {
            s.remove(0);
        }
        let id = random_hex();
        s.push(Session {
            id: id.clone(),
            csrf: random_hex(),
            started: Instant::now(),
        });
        id
    }

    /// The CSRF token of the live session `id`.
    pub fn csrf(&self, id: &str) -> Option<String> {
        let s = self.sessions.lock().expect("sessions lock");
        s.iter()
            .find(|x| super::constant_time_eq(x.id.as_bytes(), id.as_bytes()))
            .filter(|x| x.started.elapsed() < SESSION_TTL)
            .map(|x| x.csrf.clone())
    }

    /// Ends session `id`.
    pub fn end(&self, id: &str) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .retain(|x| x.id != id);
    }
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id in a `Cookie` header, if any.
pub fn session_id(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The value of `key` in an `application/x-www-form-urlencoded` body.
pub fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| decode(k).as_deref() == Some(key))
        .and_then(|(_, v)| decode(v))
}

fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value(b"a=1&token=s3%2Fc+r%3Det", "token").as_deref(),
            Some("s3/c r=et")
        );
        assert_eq!(form_value(b"token=", "token").as_deref(), Some(""));
        assert_eq!(form_value(b"x=1", "token"), None);
        assert_eq!(form_value(b"token=%zz", "token"), None);
    }

    #[test]
    fn sessions_are_found_by_cookie_and_end_on_logout() {
        let s = Sessions::default();
        let id = s.start();
        let header = format!("other=1; {COOKIE}={id}");
        assert_eq!(session_id(&header), Some(id.as_str()));
        let csrf = s.csrf(&id).unwrap();
        assert_eq!(csrf.len(), 64);
        assert!(s.csrf("nope").is_none());
        s.end(&id);
        assert!(s.csrf(&id).is_none());
        assert!(set_cookie(&id).contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        let first = s.start();
        for _ in 0..MAX_SESSIONS {
            s.start();
        }
        assert!(s.csrf(&first).is_none());
        assert_eq!(s.sessions.lock().unwrap().len(), MAX_SESSIONS);
    }
}
