//! A process's CPU time and resident memory, read from /proc.

use anyhow::{Context, Result};

/// A process by pid.
pub struct Process(pub u32);

impl Process {
    /// User and system CPU time so far, in clock ticks.
    pub fn cpu_ticks(&self) -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .with_context(|| format!("process {}", self.0))?;
        // After the command's closing parenthesis, utime and stime are the
        // 12th and 13th fields (14th and 15th of the whole line).
        let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0))
            .with_context(|| format!("process {}", self.0))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")
    }
}

/// `ticks` of CPU time over `seconds`, as a percentage of one core.
pub fn cpu_percent(ticks: u64, seconds: f64) -> f64 {
    ticks as f64 / clock_ticks_per_second() / seconds * 100.0
}

/// The unit of [`Process::cpu_ticks`].
pub fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// CPU time the whole machine has spent busy so far, all CPUs together,
/// in clock ticks: user, nice, system, irq, softirq and steal (guest time
/// is inside user) from the first line of /proc/stat. Packet processing
/// runs in softirq on whichever CPU takes it, so no process's counters
/// hold it; only the machine's do.
///
/// # Errors
/// /proc/stat cannot be read or has no `cpu` line.
pub fn machine_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let line = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("/proc/stat's cpu line")?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7];
    Ok(busy.iter().filter_map(|&i| fields.get(i)).sum())
}
