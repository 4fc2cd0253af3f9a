//! What the tests that drive the `replic8` binary share: the command, and a daemon
//! process that is stopped with SIGTERM (and killed if a test fails first).
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The guard on every wait: far above what each step takes on a loaded machine.
pub(crate) const DEADLINE: Duration = Duration::from_secs(90);

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

/// A client command left running (`--follow`, `--watch`), its output read on a thread
/// and handed out in order: what one read did not take stays for the next.
pub(crate) struct Running {
    pub(crate) child: Child,
    out: mpsc::Receiver<Vec<u8>>,
    pending: std::cell::RefCell<Vec<u8>>,
}

impl Running {
    pub(crate) fn start(data: &Path, args: &[&str]) -> Running {
        let mut child = replic8()
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            out,
            pending: Default::default(),
        }
    }

    /// Waits for more output until `done` says the pending bytes are enough, within
    /// the deadline.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&[u8]) -> bool) {
        let until = Instant::now() + DEADLINE;
        let mut pending = self.pending.borrow_mut();
        while !done(&pending) {
            let left = until.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => pending.extend(chunk),
                Err(e) => panic!(
                    "{what}: {e}; got {} bytes: {}",
                    pending.len(),
                    String::from_utf8_lossy(&pending[..pending.len().min(2000)])
                ),
            }
        }
    }

    /// The next `want` bytes, within the deadline.
    pub(crate) fn read_exact(&self, want: usize, what: &str) -> Vec<u8> {
        self.wait_for(what, |p| p.len() >= want);
        let mut pending = self.pending.borrow_mut();
        let rest = pending.split_off(want);
        std::mem::replace(&mut *pending, rest)
    }

    /// The next JSON line, within the deadline.
    pub(crate) fn next_line(&self, what: &str) -> Value {
        self.wait_for(what, |p| p.contains(&b'\n'));
        let mut pending = self.pending.borrow_mut();
        let end = pending.iter().position(|b| *b == b'\n').unwrap();
        let line: Vec<u8> = pending.drain(..=end).collect();
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&line)))
    }

    /// Reads JSON lines until one matches `want`, within the deadline; returns it.
    pub(crate) fn read_line_until(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self.next_line(what);
            if want(&line) {
                return line;
            }
        }
    }

    /// Waits, within the deadline, for the command to end by itself; its exit status
    /// and all it printed.
    pub(crate) fn finish(mut self, what: &str) -> (std::process::ExitStatus, Vec<u8>) {
        let until = Instant::now() + DEADLINE;
        let mut all = std::mem::take(&mut *self.pending.borrow_mut());
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => all.extend(chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("{what}: {e}; got {}", String::from_utf8_lossy(&all)),
            }
        }
        (self.child.wait().unwrap(), all)
    }

    /// Everything printed so far (after it was stopped).
    pub(crate) fn stop(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut all = std::mem::take(&mut *self.pending.borrow_mut());
        while let Ok(chunk) = self.out.recv_timeout(Duration::from_secs(5)) {
            all.extend(chunk);
        }
        all
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client command on `data` fed `stdin`: its exit status, standard output and
/// standard error.
pub(crate) fn run_with_input(
    data: &Path,
    args: &[&str],
    stdin: &[u8],
) -> (std::process::ExitStatus, Vec<u8>, String) {
    let mut child = replic8()
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A command that fails early stops reading: a broken pipe here is its business.
    let feeder = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut input, &stdin);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client command on `data` that must fail with one line on stderr; that line.
pub(crate) fn run_fails(data: &Path, args: &[&str]) -> String {
    let (status, _, err) = run_with_input(data, args, &[]);
    assert!(!status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    err
}

/// The control socket of the daemon on `data` (`DATA/run/control.sock`).
pub(crate) fn socket_path(data: &std::path::Path) -> std::path::PathBuf {
    data.join("run").join("control.sock")
}

/// The tree hash, in hex, of `data` cut into blocks of `block_size` bytes, computed with
/// the store's tree functions: what a feed holding those blocks must report.
pub(crate) fn tree_hash(data: &[u8], block_size: usize) -> String {
    let mut roots = Vec::new();
    for (index, block) in data.chunks(block_size).enumerate() {
        replic8_store::tree::push_leaf(
            &mut roots,
            replic8_store::tree::leaf(index as u64, block),
            |_| {},
        );
    }
    hex::encode(replic8_store::tree::tree_hash(&roots))
}

/// A binary-mode frame header of the control socket: a kind byte, then the payload's
/// length as a big-endian `u32`.
pub(crate) fn frame_header(kind: u8, len: usize) -> Vec<u8> {
    let mut header = vec![kind];
    header.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    header
}
