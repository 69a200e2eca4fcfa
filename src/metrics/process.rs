//! `process_*` metrics (the names every Prometheus client library exports), read from
//! `/proc/self` on each scrape. Linux only: elsewhere they are not registered.
//!
//! A scrape reads four small procfs files and lists `/proc/self/fd`: kernel memory,
//! no disk, so it does not block the admin task in any way that matters.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/*/stat` times. USER_HZ is 100 in the kernel ABI of
/// every architecture Rust targets (Prometheus' own procfs library assumes the same).
const USER_HZ: f64 = 100.0;

/// The collector; the start time is read once.
#[derive(Debug)]
pub struct Process {
    start_time: Option<f64>,
}

impl Process {
    pub fn new() -> Self {
        Self { start_time: start_time() }
    }
}

/// What `/proc/self/stat` says, fields named as in proc(5).
#[derive(Debug, Default, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may
/// contain spaces and parentheses itself: fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, starttime: field(22)?, vsize: field(23)? })
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The soft `Max open files` of `/proc/self/limits` (`None` when unlimited).
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: boot time, Unix seconds.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Process start, Unix seconds: boot time plus the start tick (procfs unreadable: now).
fn start_time() -> Option<f64> {
    let from_proc = || {
        let ticks = parse_stat(&read("/proc/self/stat")?)?.starttime;
        let boot = parse_btime(&read("/proc/stat")?)?;
        #[allow(clippy::cast_precision_loss)]
        Some(boot as f64 + ticks as f64 / USER_HZ)
    };
    from_proc().or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64()))
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: Option<f64>) -> Result<(), std::fmt::Error> {
    let Some(value) = value else { return Ok(()) };
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

#[allow(clippy::cast_precision_loss)]
impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = read("/proc/self/stat").as_deref().and_then(parse_stat);
        if let Some(s) = &stat {
            let cpu = ConstCounter::new((s.utime + s.stime) as f64 / USER_HZ);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent, seconds",
                None,
                cpu.metric_type(),
            )?;
            cpu.encode(metric)?;
        }
        let rss = read("/proc/self/status").as_deref().and_then(parse_rss);
        gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory size, bytes", rss.map(|v| v as f64))?;
        let vsize = stat.map(|s| s.vsize as f64);
        gauge(&mut encoder, "process_virtual_memory_bytes", "Virtual memory size, bytes", vsize)?;
        let open = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        gauge(&mut encoder, "process_open_fds", "Open file descriptors", open)?;
        let max = read("/proc/self/limits").as_deref().and_then(parse_max_fds).map(|v| v as f64);
        gauge(&mut encoder, "process_max_fds", "Soft limit on open file descriptors", max)?;
        let help = "Start time of the process since the Unix epoch, seconds";
        gauge(&mut encoder, "process_start_time_seconds", help, self.start_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procfs_text() {
        let stat = "4242 (side wire) (x)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 130 0 0 20 0 \
                    9 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some(Stat { utime: 250, stime: 130, starttime: 123456, vsize: 987654321 }));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_rss("Name:\tsidewire\nVmRSS:\t   5120 kB\n"), Some(5120 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 1048576              files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(parse_max_fds("Max open files            unlimited            unlimited            files\n"), None);
        assert_eq!(parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), Some(1_700_000_000));
    }

    #[test]
    fn reads_this_process() {
        let text = {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(Process::new()));
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        };
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
