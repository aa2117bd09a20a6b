//! Process and machine CPU time from `/proc` (Linux only).
//!
//! Used by `neonet-load fanout` to charge a server process (the bare quinn fan-out or
//! `neonet-relay`, both children of the tool) with the CPU it used over a measurement window,
//! and by `neonet-load run` to split its own CPU between an in-process relay's threads and the
//! simulated clients ([`ThreadCpu`]).

use std::time::Duration;

use anyhow::{bail, Context};

/// Clock ticks per second of the times in `/proc/<pid>/stat` and `/proc/stat`: `USER_HZ`, which
/// the Linux ABI fixes at 100 on every architecture Rust targets (`getconf CLK_TCK` prints 100
/// here). Resolution is therefore 10 ms; over a 20 s window of a process using ≥ 10% of a core
/// that is ≤ 0.5% error.
pub const USER_HZ: u64 = 100;

/// User + system CPU time used so far by process `pid`, all its threads included (live and
/// exited), from fields 14 and 15 of `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_process_stat(&text).with_context(|| format!("parsing {path}"))
}

/// User + system CPU time used so far by this process.
pub fn own_cpu() -> anyhow::Result<Duration> {
    process_cpu(std::process::id())
}

/// The fields of a `/proc/<pid>/stat` line after the command name, from field 3 (state) on;
/// `None` without the name's closing ')'. The name (field 2) is in parentheses and may hold
/// spaces or ')': the split is after the last ')'.
fn fields_after_name(text: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(text[text.rfind(')')? + 1..].split_whitespace())
}

/// Parses the CPU time out of a `/proc/<pid>/stat` line.
fn parse_process_stat(text: &str) -> anyhow::Result<Duration> {
    // utime (14) and stime (15) are the 12th and 13th fields after the name.
    let Some(fields) = fields_after_name(text) else {
        bail!("no ')' after the command name");
    };
    let rest: Vec<&str> = fields.collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        rest.get(i)
            .with_context(|| format!("only {} fields after the name", rest.len()))?
            .parse::<u64>()
            .with_context(|| format!("field {} is not a number", i + 3))
    };
    let ticks = field(11)? + field(12)?;
    Ok(ticks_to_duration(ticks))
}

/// The process group (field 5) of a `/proc/<pid>/stat` line, `None` if it does not parse.
pub fn process_group_of_stat(text: &str) -> Option<u32> {
    // The third field after the name.
    fields_after_name(text)?.nth(2)?.parse().ok()
}

/// Whole-machine CPU counters from the first line of `/proc/stat`, in clock ticks summed over
/// every core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Ticks not idle (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All ticks, idle and I/O wait included.
    pub total: u64,
}

impl MachineCpu {
    /// Reads `/proc/stat`.
    pub fn now() -> anyhow::Result<MachineCpu> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_machine_stat(&text).context("parsing /proc/stat")
    }

    /// Busy time between `self` (earlier) and `later`, in cores (2.0 = both cores of a 2-core
    /// machine fully busy), over `wall`.
    pub fn busy_cores_until(&self, later: &MachineCpu, wall: Duration) -> f64 {
        let busy = ticks_to_duration(later.busy.saturating_sub(self.busy));
        busy.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

fn parse_machine_stat(text: &str) -> anyhow::Result<MachineCpu> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no aggregate `cpu` line")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().context("a non-numeric field"))
        .collect::<anyhow::Result<_>>()?;
    if v.len() < 8 {
        bail!("{} fields on the cpu line, expected ≥ 8", v.len());
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let idle = v[3] + v[4];
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok(MachineCpu {
        busy,
        total: busy + idle,
    })
}

/// CPU time used so far by a process's threads, summed by thread name
/// (`/proc/<pid>/task/*/comm` and `stat`). Threads that already exited are not counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadCpu(pub std::collections::BTreeMap<String, Duration>);

impl ThreadCpu {
    /// Reads every live thread of this process.
    pub fn now() -> anyhow::Result<ThreadCpu> {
        ThreadCpu::read("/proc/self/task")
    }

    /// Reads every live thread of process `pid` (a relay process: its core, I/O and store
    /// threads told apart by name).
    pub fn of_process(pid: u32) -> anyhow::Result<ThreadCpu> {
        ThreadCpu::read(&format!("/proc/{pid}/task"))
    }

    fn read(task_dir: &str) -> anyhow::Result<ThreadCpu> {
        let mut by_name = std::collections::BTreeMap::new();
        let tasks = std::fs::read_dir(task_dir).with_context(|| format!("listing {task_dir}"))?;
        for task in tasks {
            let dir = task.with_context(|| format!("listing {task_dir}"))?.path();
            // A thread may end between listing and reading: skip it.
            let (Ok(name), Ok(stat)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("stat")),
            ) else {
                continue;
            };
            let cpu = parse_process_stat(&stat)
                .with_context(|| format!("parsing {}", dir.join("stat").display()))?;
            *by_name
                .entry(name.trim_end().to_string())
                .or_insert(Duration::ZERO) += cpu;
        }
        Ok(ThreadCpu(by_name))
    }

    /// CPU used since `earlier`, in cores over `wall`, for the threads `pick` selects by name.
    pub fn cores_since(
        &self,
        earlier: &ThreadCpu,
        wall: Duration,
        pick: impl Fn(&str) -> bool,
    ) -> f64 {
        let used: Duration = self
            .0
            .iter()
            .filter(|(name, _)| pick(name))
            .map(|(name, &t)| t.saturating_sub(earlier.0.get(name).copied().unwrap_or_default()))
            .sum();
        used.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Resident memory of process `pid`, bytes: `VmRSS` of `/proc/<pid>/status` (which the kernel
/// gives in kB, 1024 bytes).
pub fn process_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS in {path}"))
}

fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Cores the machine has online (`sysconf(_SC_NPROCESSORS_ONLN)`): unlike
/// `std::thread::available_parallelism`, not narrowed by this process's own pinning.
pub fn online_cores() -> usize {
    // SAFETY: sysconf only reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// A CPU set holding only `cpu`.
fn cpu_set(cpu: usize) -> std::io::Result<libc::cpu_set_t> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::other(format!("CPU {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is plain bits; all zeroes is the empty set, and `cpu` was checked to be
    // inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    Ok(set)
}

/// Pins the calling thread to `cpu` (`sched_setaffinity`); threads it starts afterwards inherit
/// the pin, so calling it on the main thread before any runtime starts pins the whole process.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    let set = cpu_set(cpu)?;
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes the process `cmd` starts run on `cpu` only: the child pins itself between fork and
/// exec, so every thread it ever starts inherits the pin (no window where a thread runs
/// elsewhere, as pinning it after the start would leave).
pub fn pin_before_exec(cmd: &mut std::process::Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes one system call
    // (sched_setaffinity) on memory of its own: async-signal-safe, no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || pin_current_thread(cpu));
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_micros(ticks * (1_000_000 / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_process_group_of_a_stat_line() {
        let line = "1234 (a b) c) S 1 777 1234 0 -1 4194304 500 0 0 0 250 75";
        assert_eq!(process_group_of_stat(line), Some(777));
        assert_eq!(process_group_of_stat("1234 (x"), None);
    }

    #[test]
    fn parses_a_process_stat_line_with_a_nasty_name() {
        let line = "1234 (a b) c) S 1 1234 1234 0 -1 4194304 500 0 0 0 250 75 0 0 20 0 4 0 \
                    100 1000000 300 18446744073709551615";
        assert_eq!(
            parse_process_stat(line).unwrap(),
            Duration::from_millis(3250)
        );
        assert!(parse_process_stat("1234 (x) S 1").is_err());
    }

    #[test]
    fn reads_resident_memory() {
        let text = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(text), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(process_rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn parses_the_machine_line() {
        let text = "cpu  100 5 50 1000 10 1 2 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let m = parse_machine_stat(text).unwrap();
        assert_eq!(m.busy, 161);
        assert_eq!(m.total, 1171);
    }

    #[test]
    fn reads_its_own_cpu() {
        let a = own_cpu().unwrap();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(own_cpu().unwrap() >= a);
        assert!(MachineCpu::now().unwrap().total > 0);
        let threads = ThreadCpu::now().unwrap();
        assert!(!threads.0.is_empty(), "this test's own thread at least");
        std::hint::black_box(x);
    }
}
