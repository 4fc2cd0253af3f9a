//! Tests that measure the process (its resident memory) run alone in a process of their
//! own: the other tests of this binary run on other threads of the same process, so
//! their memory would count, and a lock taken by one file's tests does not stop the
//! others.

/// Set in the process that runs one test alone.
const ALONE: &str = "REPLIC8_TEST_ALONE";

/// Whether the caller, the test `path` (`file::name`), runs alone in this process. If
/// not, runs it in a new process of this test binary with no other test, waits, and
/// panics with that process's output unless exactly that one test ran and passed; the
/// caller then returns.
pub(crate) fn in_own_process(path: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let binary = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(binary)
        .args([path, "--exact", "--test-threads", "1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{path} in a process of its own:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// This process's resident set size in bytes (`VmRSS` in `/proc/self/status`).
pub(crate) fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}
