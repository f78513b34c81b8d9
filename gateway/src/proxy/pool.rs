//! Idle HTTP/1 connections to plain-text backends, kept per proxy thread.
//!
//! Pingora's pool hashes the peer, takes a lock, calls `getpeername` and spawns a task to
//! watch each connection it is given back; per request, that cost more than the rest of the
//! upstream side. Here each proxy thread (one single-threaded runtime, `app`) keeps its own
//! stacks, so no lock is taken and no task is spawned:
//! - last in, first out per endpoint address: the warmest connection goes first, and the
//!   coldest age out;
//! - a connection is checked when it is taken: a backend's close (or stray bytes) has made
//!   its socket readable, and tokio knows that from its last poll without a system call;
//! - one sweep per thread drops connections idle longer than the idle timeout.
//!
//! The stacks live in a thread-local: they belong to the thread, as the connections do
//! (a connection's I/O is registered with that thread's runtime).

use super::backend_h1::Conn;
use pingora::protocols::Stream;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};

/// Idle connections kept per endpoint; more are closed on release.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How often a thread sweeps its idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

#[derive(Default)]
struct Stacks {
    /// foldhash: the default SipHash, twice per request, cost more than the rest of the pool.
    by_addr: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>,
    /// Whether this thread's sweep task runs.
    sweeping: bool,
}

thread_local! {
    static STACKS: RefCell<Stacks> = RefCell::new(Stacks::default());
}

/// The thread's most recently released live connection to `addr`, if any.
pub(super) fn take(addr: SocketAddr, idle_timeout: Duration) -> Option<Box<Conn>> {
    STACKS.with_borrow_mut(|s| {
        let stack = s.by_addr.get_mut(&addr)?;
        while let Some(mut idle) = stack.pop() {
            if idle.since.elapsed() < idle_timeout && alive(idle.conn.stream_mut()) {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Keeps `conn` for the next request to `addr` on this thread.
pub(super) fn put(addr: SocketAddr, conn: Box<Conn>, idle_timeout: Duration) {
    let start_sweep = STACKS.with_borrow_mut(|s| {
        let stack = s.by_addr.entry(addr).or_default();
        if stack.len() >= MAX_IDLE_PER_ENDPOINT {
            // The coldest goes: it is the likeliest to have been closed by the backend.
            stack.remove(0);
        }
        stack.push(Idle {
            conn,
            since: Instant::now(),
        });
        !std::mem::replace(&mut s.sweeping, true)
    });
    if start_sweep {
        tokio::spawn(sweep(idle_timeout));
    }
}

/// Drops this thread's connections idle longer than `idle_timeout`, for as long as the
/// thread runs.
async fn sweep(idle_timeout: Duration) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        STACKS.with_borrow_mut(|s| {
            for stack in s.by_addr.values_mut() {
                stack.retain(|i| i.since.elapsed() < idle_timeout);
            }
            s.by_addr.retain(|_, stack| !stack.is_empty());
        });
    }
}

/// An idle connection is usable when a read would wait: the backend has neither closed it
/// nor sent anything unasked. tokio answers a read on a socket it has seen no readiness for
/// with `Pending` at once, without a system call.
fn alive(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Box<Conn>, tokio::net::TcpStream, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        (Box::new(Conn::new(stream)), server, addr)
    }

    fn id(c: &mut Conn) -> i32 {
        c.stream_mut().id()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_last_released_goes_first_and_closed_ones_are_skipped() {
        let idle = Duration::from_secs(60);
        let (mut a, _server_a, addr) = pair().await;
        let (mut b, server_b, _) = pair().await;
        let (a_id, b_id) = (id(&mut a), id(&mut b));
        put(addr, a, idle);
        put(addr, b, idle);
        let mut taken = take(addr, idle).expect("a connection");
        assert_eq!(id(&mut taken), b_id, "last in, first out");
        put(addr, taken, idle);
        // The backend closes b: once the runtime has seen it, b is not handed out.
        drop(server_b);
        let mut seen_closed = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut t = take(addr, idle).expect("a is still there");
            if id(&mut t) == a_id {
                seen_closed = true;
                put(addr, t, idle);
                break;
            }
            put(addr, t, idle);
        }
        assert!(seen_closed, "the closed connection was skipped");
        assert_eq!(take(addr, idle).map(|mut c| id(&mut c)), Some(a_id));
        assert!(
            take(addr, idle).is_none(),
            "b was dropped when found closed"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unasked_bytes_and_age_retire_a_connection() {
        let (a, mut server, addr) = pair().await;
        put(addr, a, Duration::from_secs(60));
        server.write_all(b"HTTP/1.1 408 x\r\n\r\n").await.unwrap();
        let mut taken = None;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            match take(addr, Duration::from_secs(60)) {
                Some(s) => put(addr, s, Duration::from_secs(60)),
                None => {
                    taken = Some(());
                    break;
                }
            }
        }
        assert!(
            taken.is_some(),
            "a connection with unasked bytes is retired"
        );
        let (b, _server_b, addr_b) = pair().await;
        put(addr_b, b, Duration::from_secs(60));
        assert!(
            take(addr_b, Duration::ZERO).is_none(),
            "older than the idle timeout"
        );
    }
}
