//! Challenge wake-ups across replicas: issuing a challenge NOTIFYs
//! `CHALLENGE_CHANNEL` with the gateway id (in the INSERT's own
//! statement, so the notification leaves exactly when the challenge is
//! committed), and every replica LISTENs on one connection of its own —
//! one per replica, however many polls wait — to wake the polls of that
//! gateway.

use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::postgres::PgStore;

/// The NOTIFY channel; the payload is the gateway id.
pub(super) const CHALLENGE_CHANNEL: &str = "depin_challenges";

/// Wait before connecting again after the listening connection failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// TCP keepalive idle time of the listening connection, so that a
/// connection lost without a word is noticed (the polls' slow re-check
/// covers the gap).
const LISTEN_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// What the listening connection tells the waiting polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeEvent {
    /// Listening (again): notifications may have been missed before, so
    /// every waiting poll should look once.
    Listening,
    /// A challenge for this gateway was committed, by any replica.
    Issued(String),
    /// The connection is lost: until `Listening`, polls must look for
    /// themselves.
    Lost,
}

impl PgStore {
    /// LISTENs for issued challenges forever, reconnecting after a
    /// failure, and tells `on_event` what happens.
    pub async fn listen_for_challenges(&self, mut on_event: impl FnMut(ChallengeEvent)) {
        let mut config = self.config().clone();
        config.keepalives(true);
        config.keepalives_idle(LISTEN_KEEPALIVE_IDLE);
        loop {
            match config.connect(NoTls).await {
                Ok((client, mut connection)) => {
                    let listen = format!("LISTEN {CHALLENGE_CHANNEL}");
                    let mut listening = std::pin::pin!(client.batch_execute(&listen));
                    let mut listened = false;
                    let lost = loop {
                        tokio::select! {
                            done = &mut listening, if !listened => match done {
                                Ok(()) => {
                                    listened = true;
                                    tracing::debug!("listening for challenges of other replicas");
                                    on_event(ChallengeEvent::Listening);
                                }
                                Err(e) => break e.to_string(),
                            },
                            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                                match message {
                                    Some(Ok(AsyncMessage::Notification(n))) => {
                                        on_event(ChallengeEvent::Issued(n.payload().to_string()));
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(e)) => break e.to_string(),
                                    None => break "closed".to_string(),
                                }
                            }
                        }
                    };
                    tracing::warn!(error = %lost, "challenge notifications lost; polls re-check the database");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for challenge notifications");
                }
            }
            on_event(ChallengeEvent::Lost);
            tokio::time::sleep(RELISTEN_AFTER).await;
        }
    }
}
