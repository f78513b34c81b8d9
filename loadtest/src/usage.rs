//! What running processes use, read from `/proc`: memory (RSS, PSS) and CPU time, the
//! figures the harnesses report beside their peers'.

/// Resident set size of `pid` alone, in KiB (`VmRSS`); 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// The number after `key` in a `/proc` file of `Key: N kB` lines; 0 if absent.
fn kib_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(key))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Proportional set size of `pid` and its children, in KiB: PSS splits pages that nginx's
/// master and worker share, where adding their RSS would count them twice.
pub fn pss_kib(pid: u32) -> u64 {
    let own = kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:");
    own + over_children(pid, pss_kib)
}

/// CPU time (user + system) `pid` and its children have used so far, in milliseconds.
/// `/proc` counts in clock ticks, 100 a second on Linux (`USER_HZ`, fixed by the ABI), so
/// compare only totals well above 10 ms.
pub fn cpu_ms(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // The command name, in parentheses, may hold spaces: fields count after it.
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some((ticks(11)? + ticks(12)?) * 10)
        })
        .unwrap_or(0);
    own + over_children(pid, cpu_ms)
}

/// `of` summed over the children of `pid` (each of which sums its own children in turn).
fn over_children(pid: u32, of: fn(u32) -> u64) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(of)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        let me = std::process::id();
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_ms(me) >= 10);
        assert!(rss_kib(me) > 0 && pss_kib(me) > 0);
        assert_eq!(rss_kib(u32::MAX), 0);
    }
}
