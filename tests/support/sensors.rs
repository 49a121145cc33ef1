//! Fixtures of the sensor tests: a real MQTT broker (Debian's `mosquitto`)
//! on a loopback port, signing sensor devices, and HTTP requests with
//! headers.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};

/// A `mosquitto` broker on 127.0.0.1, killed when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// Starts a broker on `port` (anonymous, no persistence) and waits until
    /// it accepts connections.
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, "")
    }

    /// Like `start_on`, with `extra` lines appended to the broker's
    /// configuration (more listeners, TLS files).
    pub fn start_with(port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 10000\nlog_dest stderr\n{extra}"
            ),
        )
        .expect("write mosquitto.conf");
        // Debian installs the broker in /usr/sbin, which a non-root PATH may lack.
        let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto mosquitto-clients)");
        let broker = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// Publishes one message at QoS 1 with the `mosquitto_pub` client.
    pub fn mosquitto_pub(&self, topic: &str, payload: &[u8]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("payload");
        std::fs::write(&file, payload).expect("write payload");
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
            ])
            .arg("-f")
            .arg(&file)
            .status()
            .expect("run mosquitto_pub");
        assert!(status.success(), "mosquitto_pub failed");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The `[plugin.mqtt]` table for a broker on `port` (leaked: test configs
/// take static strings).
pub fn mqtt_table(port: u16, client_id: &str, topic: &str) -> &'static str {
    let table = format!(
        "[plugin.mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client_id}\"\n\
         topics = [\"{topic}\"]\nqos = 1\nkeep_alive_s = 5\n"
    );
    Box::leak(table.into_boxed_str())
}

/// A sensor with an ed25519 key, signing packs as the plugin's README says.
pub struct Sensor {
    pub id: String,
    pub key: SigningKey,
}

impl Sensor {
    pub fn new(id: &str, seed: u8) -> Self {
        Self {
            id: id.into(),
            key: SigningKey::from_bytes(&[seed; 32]),
        }
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Signature (hex) over `depin-senml/1\n<id>\n<seq>\n<pack>`.
    pub fn sign(&self, seq: u64, pack: &[u8]) -> String {
        let mut m = format!("depin-senml/1\n{}\n{seq}\n", self.id).into_bytes();
        m.extend_from_slice(pack);
        hex::encode(self.key.sign(&m).to_bytes())
    }

    /// The MQTT payload: `<id> <seq> <signature>\n<pack>`.
    pub fn mqtt_payload(&self, seq: u64, pack: &[u8]) -> Vec<u8> {
        let mut p = format!("{} {seq} {}\n", self.id, self.sign(seq, pack)).into_bytes();
        p.extend_from_slice(pack);
        p
    }

    /// The headers of an HTTP pack.
    pub fn http_headers(&self, seq: u64, pack: &[u8]) -> Vec<(String, String)> {
        vec![
            ("content-type".into(), "application/senml+json".into()),
            ("x-device-id".into(), self.id.clone()),
            ("x-sequence".into(), seq.to_string()),
            ("x-signature".into(), self.sign(seq, pack)),
        ]
    }
}

/// A Rust MQTT client (rumqttc) that publishes at QoS 1; its event loop runs
/// in a task that ends when the test's runtime does.
pub async fn rumqtt_publisher(port: u16, id: &str) -> rumqttc::AsyncClient {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5)).set_inflight(50);
    let (client, mut eventloop) = AsyncClient::new(o, 1000);
    tokio::spawn(async move {
        while let Ok(e) = eventloop.poll().await {
            if let Event::Incoming(Packet::Disconnect) = e {
                break;
            }
        }
    });
    client
}
