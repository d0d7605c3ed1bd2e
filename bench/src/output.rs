//! The run's files: `results/bench/<UTC date-time>/` and the `results/latest` link.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct OutputError {
    pub path: String,
    pub source: std::io::Error,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `<results>/bench/<stamp>` (with `-2`, `-3`, ... if two runs start in one second).
pub fn create_run_dir(results: &Path, stamp: &str) -> Result<PathBuf, OutputError> {
    let parent = results.join("bench");
    std::fs::create_dir_all(&parent).map_err(io_error(&parent))?;
    let mut suffix = 1;
    loop {
        let name = match suffix {
            1 => stamp.to_string(),
            _ => format!("{stamp}-{suffix}"),
        };
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => suffix += 1,
            Err(error) => return Err(io_error(&path)(error)),
        }
    }
}

/// Points `<results>/latest` at `run` (relative), replacing an older link atomically.
pub fn point_latest(results: &Path, run: &Path) -> Result<(), OutputError> {
    let target = run.strip_prefix(results).unwrap_or(run);
    let link = results.join("latest");
    let temporary = results.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(target, &temporary).map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, &link).map_err(io_error(&link))
}

pub fn write(path: &Path, contents: &[u8]) -> Result<(), OutputError> {
    std::fs::write(path, contents).map_err(io_error(path))
}

/// `2026-11-29T18-30-05Z`: UTC, sortable, and valid in file names.
pub fn utc_stamp(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}-{minute:02}-{second:02}Z")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// What ran the benchmark.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub git_revision: Option<String>,
    pub kernel: Option<String>,
}

impl Machine {
    pub fn describe() -> Machine {
        let git_revision = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|text| text.trim().to_string());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |count| count.get()),
            git_revision,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_stamps_match_known_dates() {
        let at = |seconds| UNIX_EPOCH + Duration::from_secs(seconds);
        assert_eq!(utc_stamp(at(0)), "1970-01-01T00-00-00Z");
        assert_eq!(utc_stamp(at(951_782_400)), "2000-02-29T00-00-00Z");
        assert_eq!(utc_stamp(at(1_795_977_005)), "2026-11-29T18-30-05Z");
    }

    #[test]
    fn run_dirs_are_unique_and_latest_follows_the_newest() {
        let results = tempfile::tempdir().unwrap();
        let first = create_run_dir(results.path(), "stamp").unwrap();
        let second = create_run_dir(results.path(), "stamp").unwrap();
        assert_ne!(first, second);
        point_latest(results.path(), &first).unwrap();
        point_latest(results.path(), &second).unwrap();
        let link = std::fs::read_link(results.path().join("latest")).unwrap();
        assert_eq!(link, Path::new("bench/stamp-2"));
    }
}
