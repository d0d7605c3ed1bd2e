//! Seeded fault schedules for campaigns: quiet for `interval_ms`, one fault for `duration_ms`,
//! quiet again, ... until `time_limit_ms`. The same spec and seed give the same schedule.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::fault::{DiskFault, Fault, PartitionKind, Target};
use crate::rng::Rng;

/// The fault families a campaign names on its command line (`--faults kill,pause,partition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    /// A membership change: a voter (or the leader) removed, added back as a learner and
    /// promoted (`Fault::Membership`).
    Membership,
    /// Disk faults through the fault-injecting filesystem (`nemesis::fs`, root only).
    DiskLoseUnsynced,
    DiskTorn,
    DiskCorrupt,
    DiskFsyncError,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Membership => "membership",
            FaultKind::DiskLoseUnsynced => DiskFault::LoseUnsynced.name(),
            FaultKind::DiskTorn => DiskFault::Torn.name(),
            FaultKind::DiskCorrupt => DiskFault::Corrupt.name(),
            FaultKind::DiskFsyncError => DiskFault::FsyncError.name(),
        }
    }
    /// The disk fault this kind injects, if it is one.
    pub fn disk(self) -> Option<DiskFault> {
        match self {
            FaultKind::DiskLoseUnsynced => Some(DiskFault::LoseUnsynced),
            FaultKind::DiskTorn => Some(DiskFault::Torn),
            FaultKind::DiskCorrupt => Some(DiskFault::Corrupt),
            FaultKind::DiskFsyncError => Some(DiskFault::FsyncError),
            _ => None,
        }
    }
    /// The targets a schedule draws from. Corruption never hits every node: a node may
    /// rightly refuse to start on corrupt data, and all of them refusing leaves no cluster.
    pub fn targets(self) -> &'static [Target] {
        match self {
            FaultKind::Partition | FaultKind::Membership => &[],
            FaultKind::DiskCorrupt => &CORRUPT_TARGETS,
            _ => &ALL_TARGETS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "unknown fault kind '{0}': use kill, pause, partition, membership, disk-lose-unsynced, \
         disk-torn, disk-corrupt or disk-fsync-error"
    )]
    Kind(String),
    #[error("target {target} does not apply to {kind}")]
    Target { target: Target, kind: &'static str },
    #[error("no fault kinds given")]
    Empty,
    #[error("duration_ms must be > 0")]
    Duration,
}

impl FromStr for FaultKind {
    type Err = ScheduleError;
    fn from_str(text: &str) -> Result<FaultKind, ScheduleError> {
        match text.trim() {
            "kill" => Ok(FaultKind::Kill),
            "pause" => Ok(FaultKind::Pause),
            "partition" => Ok(FaultKind::Partition),
            "membership" => Ok(FaultKind::Membership),
            "disk-lose-unsynced" => Ok(FaultKind::DiskLoseUnsynced),
            "disk-torn" => Ok(FaultKind::DiskTorn),
            "disk-corrupt" => Ok(FaultKind::DiskCorrupt),
            "disk-fsync-error" => Ok(FaultKind::DiskFsyncError),
            other => Err(ScheduleError::Kind(other.to_string())),
        }
    }
}

/// `"kill,pause"` -> `[Kill, Pause]`.
pub fn parse_fault_kinds(text: &str) -> Result<Vec<FaultKind>, ScheduleError> {
    let kinds: Vec<FaultKind> = text
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if kinds.is_empty() {
        return Err(ScheduleError::Empty);
    }
    Ok(kinds)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub kinds: Vec<FaultKind>,
    /// Quiet time before each fault.
    pub interval_ms: u64,
    /// How long each fault lasts (kill: the restart delay).
    pub duration_ms: u64,
    /// No fault is active past this (the run's fault phase length).
    pub time_limit_ms: u64,
    pub seed: u64,
    /// Every kill, pause and disk fault hits this target instead of a drawn one.
    #[serde(default)]
    pub target: Option<Target>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// Offset from the start of the run.
    pub at_ms: u64,
    pub fault: Fault,
}

const ALL_TARGETS: [Target; 4] = [Target::One, Target::Minority, Target::Leader, Target::All];
const CORRUPT_TARGETS: [Target; 3] = [Target::One, Target::Minority, Target::Leader];

/// Faults at `interval`, `2 * interval + duration`, ... each ending by `time_limit_ms`. Kinds,
/// targets and partition shapes are drawn from the seed.
pub fn schedule(spec: &ScheduleSpec) -> Result<Vec<ScheduledFault>, ScheduleError> {
    if spec.kinds.is_empty() {
        return Err(ScheduleError::Empty);
    }
    if spec.duration_ms == 0 {
        return Err(ScheduleError::Duration);
    }
    if let Some(target) = spec.target {
        let misfit = spec
            .kinds
            .iter()
            .find(|k| !k.targets().is_empty() && !k.targets().contains(&target));
        if let Some(kind) = misfit {
            return Err(ScheduleError::Target {
                target,
                kind: kind.name(),
            });
        }
    }
    let mut rng = Rng::new(spec.seed);
    let mut faults = Vec::new();
    let mut at_ms = spec.interval_ms;
    while at_ms + spec.duration_ms <= spec.time_limit_ms {
        let kind = *rng.choose(&spec.kinds).ok_or(ScheduleError::Empty)?;
        let drawn = rng.choose(kind.targets()).copied();
        let target = spec.target.or(drawn).unwrap_or(Target::One);
        let fault = match kind {
            FaultKind::Kill => Fault::Kill {
                target,
                restart_after_ms: spec.duration_ms,
            },
            FaultKind::Pause => Fault::Pause {
                target,
                duration_ms: spec.duration_ms,
            },
            FaultKind::Partition => Fault::Partition {
                kind: *rng
                    .choose(&PartitionKind::ALL)
                    .ok_or(ScheduleError::Empty)?,
                duration_ms: spec.duration_ms,
            },
            FaultKind::Membership => Fault::Membership {
                leader: rng.choose(&[false, true]).copied().unwrap_or(false),
                duration_ms: spec.duration_ms,
            },
            disk => Fault::Disk {
                kind: disk.disk().unwrap_or(DiskFault::LoseUnsynced),
                target,
                duration_ms: spec.duration_ms,
            },
        };
        faults.push(ScheduledFault { at_ms, fault });
        at_ms += spec.duration_ms + spec.interval_ms;
    }
    Ok(faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> ScheduleSpec {
        ScheduleSpec {
            kinds: parse_fault_kinds("kill,pause,partition").unwrap(),
            interval_ms: 5_000,
            duration_ms: 3_000,
            time_limit_ms: 60_000,
            seed,
            target: None,
        }
    }

    #[test]
    fn schedule_is_seeded_spaced_and_bounded() {
        let a = schedule(&spec(42)).unwrap();
        assert_eq!(a, schedule(&spec(42)).unwrap());
        assert_ne!(a, schedule(&spec(43)).unwrap());
        assert_eq!(a.len(), 7, "5s quiet + 3s fault fits 7 times in 60s");
        assert_eq!(a[0].at_ms, 5_000);
        for pair in a.windows(2) {
            assert_eq!(pair[1].at_ms - pair[0].at_ms, 8_000);
        }
        let last = a.last().unwrap();
        assert!(last.at_ms + last.fault.duration_ms() <= 60_000);
        let names: std::collections::BTreeSet<&str> = a.iter().map(|s| s.fault.name()).collect();
        assert!(names.len() >= 2, "{names:?}");
    }

    #[test]
    fn membership_faults_replace_a_voter_or_the_leader() {
        let mut membership = spec(5);
        membership.kinds = parse_fault_kinds("membership").unwrap();
        membership.time_limit_ms = 600_000;
        let faults = schedule(&membership).unwrap();
        let leaders: Vec<bool> = (faults.iter())
            .map(|s| match s.fault {
                Fault::Membership { leader, .. } => leader,
                other => panic!("not a membership fault: {other:?}"),
            })
            .collect();
        assert!(leaders.contains(&true) && leaders.contains(&false));
        assert_eq!(faults[0].fault.name(), "membership");
        // A target does not apply to it, as to partitions.
        membership.target = Some(Target::One);
        membership.kinds = parse_fault_kinds("membership,kill").unwrap();
        assert!(schedule(&membership).is_ok());
    }

    #[test]
    fn only_the_requested_kinds_appear_and_bad_input_is_refused() {
        let mut only_pause = spec(1);
        only_pause.kinds = vec![FaultKind::Pause];
        assert!(schedule(&only_pause)
            .unwrap()
            .iter()
            .all(|s| matches!(s.fault, Fault::Pause { .. })));
        assert!(matches!(
            parse_fault_kinds("kill,explode"),
            Err(ScheduleError::Kind(_))
        ));
        assert!(matches!(parse_fault_kinds(""), Err(ScheduleError::Empty)));
        let mut zero = spec(1);
        zero.duration_ms = 0;
        assert!(matches!(schedule(&zero), Err(ScheduleError::Duration)));
    }

    #[test]
    fn disk_faults_draw_their_targets_and_corruption_never_hits_all_nodes() {
        let mut disk = spec(3);
        disk.kinds =
            parse_fault_kinds("disk-lose-unsynced,disk-torn,disk-corrupt,disk-fsync-error")
                .unwrap();
        disk.time_limit_ms = 600_000;
        let faults = schedule(&disk).unwrap();
        let mut names = std::collections::BTreeSet::new();
        for scheduled in &faults {
            let Fault::Disk { kind, target, .. } = scheduled.fault else {
                panic!("not a disk fault: {scheduled:?}");
            };
            assert!(kind != DiskFault::Corrupt || target != Target::All);
            names.insert(kind.name());
        }
        assert_eq!(names.len(), 4, "{names:?}");
        let mut all = disk.clone();
        all.kinds = vec![FaultKind::DiskLoseUnsynced];
        all.target = Some(Target::All);
        assert!(schedule(&all).unwrap().iter().all(|s| matches!(
            s.fault,
            Fault::Disk {
                target: Target::All,
                ..
            }
        )));
        all.kinds = vec![FaultKind::DiskCorrupt];
        assert!(matches!(schedule(&all), Err(ScheduleError::Target { .. })));
    }
}
