//! CPU time of processes and threads, from `/proc` (Linux).
//!
//! The embedded nodes are threads of the bench process, so their CPU is the sum over their
//! threads (`/proc/self/task/<tid>/stat`), told apart by thread name; bench's own CPU is the
//! process total minus theirs. An external cluster's nodes are read by pid.

use std::path::Path;

/// `utime`/`stime` are in clock ticks; Linux reports them at USER_HZ, which is 100 on every
/// architecture we build for (`getconf CLK_TCK`).
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds from a `stat` file, or `None` if unreadable.
fn stat_cpu_seconds(path: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some((user + system) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// CPU seconds used so far by the process `pid` (this process if `None`).
pub fn process_cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    stat_cpu_seconds(Path::new(&path))
}

/// CPU seconds used so far by the threads of this process whose name satisfies `select`.
pub fn threads_cpu_seconds(select: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut seconds = 0.0;
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if select(name.trim_end()) {
            seconds += stat_cpu_seconds(&task.path().join("stat")).unwrap_or(0.0);
        }
    }
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_and_threads_are_readable() {
        // Burn a little CPU so the counters are not all zero on a fast machine.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let total = process_cpu_seconds(None).unwrap();
        let threads = threads_cpu_seconds(|_| true);
        assert!(total >= 0.0 && threads >= 0.0);
        assert_eq!(threads_cpu_seconds(|_| false), 0.0);
        assert!(process_cpu_seconds(Some(u32::MAX)).is_none());
    }
}
