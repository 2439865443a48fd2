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
