//! What the tests that drive the `replic8` binary share: the command, and a daemon
//! process that is stopped with SIGTERM (and killed if a test fails first).
#![allow(clippy::unwrap_used, dead_code)]

use std::io::BufRead;
use std::process::{Child, Command};

/// The `replic8` binary of this build.
pub(crate) fn replic8() -> Command {
    Command::new(env!("CARGO_BIN_EXE_replic8"))
}

/// `cmd` made a `replic8 daemon` on loopback without DHT or LAN, on `data`, its stderr
/// piped for [`Daemon::spawn`].
pub(crate) fn private_daemon<'a>(cmd: &'a mut Command, data: &std::path::Path) -> &'a mut Command {
    cmd.args(["daemon", "--listen", "127.0.0.1:0", "--no-dht", "--no-lan"])
        .arg("--data-dir")
        .arg(data)
        .stderr(std::process::Stdio::piped())
}

/// A running `replic8 daemon`.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    /// Its ready line (`replic8 daemon: key ... quic ADDR ...`).
    pub(crate) banner: String,
}

impl Daemon {
    /// Spawns `cmd` (a `replic8 daemon` with stderr piped) and waits for its ready
    /// line; the rest of its stderr is drained on a thread.
    pub(crate) fn spawn(cmd: &mut Command) -> Daemon {
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let banner = lines.next().unwrap().unwrap();
        assert!(banner.starts_with("replic8 daemon: key "), "{banner}");
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, banner }
    }

    /// The QUIC address its ready line names.
    pub(crate) fn quic(&self) -> String {
        self.banner
            .split_whitespace()
            .skip_while(|w| *w != "quic")
            .nth(1)
            .unwrap()
            .to_owned()
    }

    /// SIGTERM, then expects a clean exit.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "daemon exit: {status}");
    }
}

/// A daemon left by a failing test is killed, so that it does not outlive the test run.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client command on `data` that must succeed; its standard output.
pub(crate) fn run(data: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = replic8()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
