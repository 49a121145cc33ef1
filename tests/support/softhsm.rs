//! A real SoftHSM2 token per test: its own configuration file
//! (SOFTHSM2_CONF) and token directory in a temporary directory,
//! initialised with `softhsm2-util`, removed when dropped. Only the
//! processes a test starts get SOFTHSM2_CONF; the test process's own
//! environment, shared by every test, is never changed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where distributions install the SoftHSM2 PKCS#11 module.
const MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
];

/// The user PIN of every test token (written to a 0600 file).
pub const USER_PIN: &str = "4711-test";
const SO_PIN: &str = "so-4711-test";

/// An initialised SoftHSM2 token in a temporary directory.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    /// The configuration file processes must see as SOFTHSM2_CONF.
    pub conf: PathBuf,
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token's label.
    pub label: String,
    /// A file holding [`USER_PIN`], mode 0600.
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// A fresh token labelled `label`, or `None` after saying why on
    /// stderr when SoftHSM2 is not installed (the Debian package
    /// `softhsm2`). Panics if it is installed but the token cannot be made.
    pub fn start(label: &str) -> Option<Self> {
        let Some(module) = MODULE_PATHS.iter().map(Path::new).find(|p| p.is_file()) else {
            eprintln!(
                "SKIPPED: SoftHSM2 is not installed (no libsofthsm2.so in {}); install the Debian package softhsm2",
                MODULE_PATHS.join(", ")
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .expect("run softhsm2-util (package softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("user.pin");
        std::fs::write(&pin_file, format!("{USER_PIN}\n")).expect("write PIN");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod PIN");
        Some(Self {
            dir,
            conf,
            module: module.to_path_buf(),
            label: label.to_string(),
            pin_file,
        })
    }

    /// The environment a process needs to see this token.
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [("SOFTHSM2_CONF", self.conf.to_str().expect("UTF-8 path"))]
    }

    /// `pkcs11:token=<label>;object=<object>?pin-source=file:<pin file>`.
    pub fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token={};object={object}?pin-source=file:{}",
            self.label,
            self.pin_file.display()
        )
    }

    /// `program` with this token's environment.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    /// The directory holding the configuration, the token and the PIN.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
