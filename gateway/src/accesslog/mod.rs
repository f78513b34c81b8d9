//! The access log: one JSON object per request, to stdout or a file (`--access-log`), off
//! by default.
//!
//! A proxy thread must never wait on a disk or a pipe, nor take a lock another thread
//! holds: it serialises the line into a buffer of its own and pushes it onto a bounded
//! lock-free queue. One writer thread drains the queue into a buffered writer and flushes
//! whenever the queue runs dry. When the writer falls behind and the queue is full, the line
//! is dropped and counted (`weir_access_log_dropped_total`): a stalled log must not stall or
//! grow the gateway. Written lines' buffers go back to the proxy threads through a second
//! queue: a buffer allocated on one thread and freed on another costs the allocator a slow
//! path each time (about 1k instructions a line).
//!
//! Log rotation: a file target is opened for appending, so copy-and-truncate works as is;
//! after a rename, SIGUSR1 makes the writer reopen the path (as `nginx -s reopen`).

mod entry;

pub use entry::{Entry, RateLimitDecision};

use crossbeam_queue::ArrayQueue;
use parking_lot::Mutex;
use prometheus::{IntCounter, Opts, Registry};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// Lines the queue holds before new ones are dropped: about 4 MiB of typical lines, and a
/// few tenths of a second at the gateway's full rate on one core.
const QUEUE_LINES: usize = 16 * 1024;
/// A queue this full wakes the writer at once; below it, the writer looks every
/// [`IDLE_WAKE`], so a quiet gateway's lines show within that and a busy one's proxy
/// threads make no wake-up call per line.
const WAKE_AT: usize = 256;
const IDLE_WAKE: Duration = Duration::from_millis(100);
/// The writer's buffer: one write to the file or pipe per this much, or per drained queue.
const WRITE_BUFFER: usize = 64 * 1024;
/// A new line buffer's size: most lines fit.
const LINE_CAPACITY: usize = 512;
/// Buffers kept for reuse.
const SPARE_BUFFERS: usize = 1024;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("an access log needs `stdout` or a file path".into()),
            "stdout" | "-" => Ok(Self::Stdout),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// The access log's counters.
#[derive(Debug, Clone)]
pub struct AccessLogMetrics {
    pub written: IntCounter,
    pub dropped: IntCounter,
    pub write_errors: IntCounter,
}

impl AccessLogMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help)).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        Self {
            written: counter(
                "access_log_lines_total",
                "Access log lines handed to the log's file or stdout.",
            ),
            dropped: counter(
                "access_log_dropped_total",
                "Access log lines dropped because the writer fell behind and its queue was full.",
            ),
            write_errors: counter(
                "access_log_write_errors_total",
                "Failed writes to the access log's file or stdout (the lines in them are lost).",
            ),
        }
    }
}

/// The running access log. Shared by every proxy thread.
pub struct AccessLog {
    shared: Arc<Shared>,
    writer: Thread,
    handle: Mutex<Option<JoinHandle<()>>>,
}

/// What the proxy threads and the writer share.
struct Shared {
    queue: ArrayQueue<Vec<u8>>,
    /// Empty line buffers for reuse.
    spare: ArrayQueue<Vec<u8>>,
    stop: AtomicBool,
    reopen: AtomicBool,
    metrics: AccessLogMetrics,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("queued", &self.shared.queue.len())
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Opens the target (a file is created if missing and appended to, so that log
    /// rotation by rename-and-reopen or copy-and-truncate both work) and starts the writer.
    pub fn start(target: &Target, metrics: AccessLogMetrics) -> std::io::Result<Self> {
        let out = open(target)?;
        let shared = Arc::new(Shared {
            queue: ArrayQueue::new(QUEUE_LINES),
            spare: ArrayQueue::new(SPARE_BUFFERS),
            stop: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            metrics,
        });
        let handle = std::thread::Builder::new()
            .name("weir-access-log".into())
            .spawn({
                let writer = Writer {
                    target: target.clone(),
                    shared: shared.clone(),
                };
                move || writer.drain(out)
            })?;
        Ok(Self {
            shared,
            writer: handle.thread().clone(),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Queues the request's line; never blocks.
    pub fn write(&self, entry: &Entry<'_>) {
        let s = &self.shared;
        let mut line = s
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LINE_CAPACITY));
        entry.write_line(&mut line);
        match s.queue.push(line) {
            Ok(()) if s.queue.len() >= WAKE_AT => self.writer.unpark(),
            Ok(()) => {}
            Err(_) => s.metrics.dropped.inc(),
        }
    }

    /// Has the writer reopen a file target at its path (after the file was renamed away by
    /// log rotation), once what is queued is written to the old one.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::SeqCst);
        self.writer.unpark();
    }

    /// Writes what is queued and stops the writer: at shutdown, after the proxy threads.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.writer.unpark();
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

fn open(target: &Target) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("opening the access log {}: {e}", path.display()),
                    )
                })?,
        ),
    })
}

/// The writer thread's side.
struct Writer {
    target: Target,
    shared: Arc<Shared>,
}

impl Writer {
    fn drain(self, out: Box<dyn Write + Send>) {
        let s = &*self.shared;
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
        let mut failing = false;
        loop {
            // Read before draining: a line queued before `close` is always written.
            let stopping = s.stop.load(Ordering::SeqCst);
            let mut wrote = false;
            while let Some(line) = s.queue.pop() {
                if let Err(e) = out.write_all(&line) {
                    note_error(&mut failing, &s.metrics, &e);
                } else {
                    s.metrics.written.inc();
                    wrote = true;
                }
                // A line far longer than most (a huge path) is not kept for reuse.
                if line.capacity() <= 4 * LINE_CAPACITY {
                    let _ = s.spare.push(line);
                }
            }
            if wrote {
                match out.flush() {
                    Ok(()) => failing = false,
                    Err(e) => note_error(&mut failing, &s.metrics, &e),
                }
            }
            if s.reopen.swap(false, Ordering::SeqCst) {
                // The old file keeps what was written; a failed open keeps writing to it.
                match open(&self.target) {
                    Ok(fresh) => {
                        let _ = out.flush();
                        out = std::io::BufWriter::with_capacity(WRITE_BUFFER, fresh);
                        tracing::info!(target = ?self.target, "access log reopened");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "access log: reopening failed; still writing to the old file")
                    }
                }
            }
            if stopping {
                return;
            }
            std::thread::park_timeout(IDLE_WAKE);
        }
    }
}

/// Counts a failed write, and logs the first of a run of them (a full disk fails every
/// write until it is freed).
fn note_error(failing: &mut bool, metrics: &AccessLogMetrics, e: &std::io::Error) {
    metrics.write_errors.inc();
    if !*failing {
        tracing::warn!(error = %e, "access log: write failed; lines are lost until writes succeed again");
        *failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry<'_> {
        Entry {
            path,
            ..Entry::default()
        }
    }

    #[test]
    fn targets_parse() {
        assert_eq!("stdout".parse::<Target>(), Ok(Target::Stdout));
        assert_eq!(
            "/var/log/weir.log".parse::<Target>(),
            Ok(Target::File("/var/log/weir.log".into()))
        );
        assert!("".parse::<Target>().is_err());
    }

    #[test]
    fn lines_reach_the_file_in_order_and_close_writes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let metrics = AccessLogMetrics::register(&Registry::new());
        let log = AccessLog::start(&Target::File(path.clone()), metrics.clone()).unwrap();
        for i in 0..1000 {
            log.write(&entry(&format!("/{i}")));
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let paths: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].to_string())
            .collect();
        assert_eq!(paths.len(), 1000);
        assert_eq!(paths[0], "\"/0\"");
        assert_eq!(paths[999], "\"/999\"");
        assert_eq!(metrics.written.get(), 1000);
        assert_eq!(metrics.dropped.get(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // No writer thread drains this one: it stands in for a writer stuck on a stalled
        // disk or an unread pipe.
        let metrics = AccessLogMetrics::register(&Registry::new());
        let log = AccessLog {
            shared: Arc::new(Shared {
                queue: ArrayQueue::new(4),
                spare: ArrayQueue::new(1),
                stop: AtomicBool::new(false),
                reopen: AtomicBool::new(false),
                metrics: metrics.clone(),
            }),
            writer: std::thread::current(),
            handle: Mutex::new(None),
        };
        for i in 0..10 {
            log.write(&entry(&format!("/{i}")));
        }
        assert_eq!(log.shared.queue.len(), 4);
        assert_eq!(metrics.dropped.get(), 6);
    }

    #[test]
    fn an_unopenable_file_is_a_clear_error() {
        let metrics = AccessLogMetrics::register(&Registry::new());
        let e = AccessLog::start(
            &Target::File("/nonexistent-dir/x/access.log".into()),
            metrics,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent-dir/x/access.log"),
            "{e}"
        );
    }
}
