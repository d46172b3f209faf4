//! The process's peak resident memory, for the tests that bound what a load costs (a process
//! of their own: the peak is the whole process's).

/// `VmHWM` (peak resident set) of this process, in KiB.
pub fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number")
}

/// Resets the peak to the current resident set (`clear_refs` 5, Linux 4.0+).
pub fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}
