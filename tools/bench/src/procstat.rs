//! CPU time and resident memory of a process, read from /proc (Linux).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // utime and stime are the 14th and 15th fields of the whole line.
    let fields = fields_after_command(&stat)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// The fields of a `/proc/PID/stat` line after the parenthesised command
/// name (which may hold spaces): the line's 3rd field is the first.
fn fields_after_command(stat: &str) -> Option<Vec<&str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// The peak resident set size in KiB (`VmHWM`): the kernel's own high-water
/// mark, so a peak between two samples is not missed.
pub fn hwm_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM")
}

/// Starts `VmHWM` again from the current RSS (`clear_refs` 5, Linux 4.0+),
/// so the next reading is the peak of what follows.
pub fn reset_hwm(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// A `kB` field of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Open file descriptors (sockets included) of a process.
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// A child process of `pid`, if it has one.
pub fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // The parent's pid is the line's 4th field.
        let parent = *fields_after_command(&stat)?.get(1)?;
        (parent.parse::<u32>().ok()? == pid).then_some(child)
    })
}

/// CPU seconds used so far by a set of processes (a peer's workers), summed.
pub fn total_cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// Samples the summed RSS and open descriptors of a set of processes every
/// few milliseconds and keeps the peaks.
pub struct ProcessWatch {
    peak_kib: Arc<AtomicU64>,
    peak_fds: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ProcessWatch {
    pub fn start(pids: Vec<u32>) -> ProcessWatch {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak_fds = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, fds, stopped) = (peak_kib.clone(), peak_fds.clone(), stop.clone());
        tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                let rss: u64 = pids.iter().filter_map(|pid| rss_kib(*pid).ok()).sum();
                peak.fetch_max(rss, Ordering::Relaxed);
                let open: u64 = pids.iter().filter_map(|pid| open_fds(*pid).ok()).sum();
                fds.fetch_max(open, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        ProcessWatch {
            peak_kib,
            peak_fds,
            stop,
        }
    }

    /// The peak RSS so far.
    pub fn peak_kib(&self) -> u64 {
        self.peak_kib.load(Ordering::Relaxed)
    }

    /// The most descriptors open at once so far.
    pub fn peak_fds(&self) -> u64 {
        self.peak_fds.load(Ordering::Relaxed)
    }
}

impl Drop for ProcessWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
