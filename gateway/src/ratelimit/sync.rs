//! The sync task: the only code that talks to Redis. It runs on the control runtime
//! (`crate::control`), never on a proxy thread, so that a slow Redis or a busy proxy thread
//! never delays the other.
//!
//! Every 50 ms it sends the keys whose unsynced admits are due (a key far below its limit
//! waits up to 500 ms, see [`sync_period_ms`]), and at once whenever a request waits for a
//! lease. Each round is one pipelined script call per Redis node; the answers bring the
//! fleet's counts back. Failures feed the breaker; while it is open the task only probes.

use super::breaker::{Breaker, Tripped};
use super::store::{Op, OpResult, Store};
use super::target::Target;
use super::window::{NEAR_PERIOD_MS, sync_period_ms};
use super::{Entry, LeaseRequest, Shared};
use redis::RedisError;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The round period: that of keys close to their limit.
const TICK: Duration = Duration::from_millis(NEAR_PERIOD_MS);
/// Any Redis call taking this long counts as a failure that opens the breaker.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// After a failed round the next one comes sooner, so that three errors open the breaker
/// well within 100 ms.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(20);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

type Waiters = HashMap<u64, Vec<(u64, oneshot::Sender<u64>)>>;

/// The background work of a limiter, run on the control runtime.
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Without Redis: only the housekeeping, until the limiter is dropped.
pub(crate) async fn housekeeping_only(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        housekeeping(&shared);
    }
}

/// Runs until the limiter is dropped (its lease channel closes).
pub(crate) async fn run(
    shared: Weak<Shared>,
    target: Target,
    gateway_id: String,
    mut rx: mpsc::Receiver<LeaseRequest>,
) {
    // The limiter owns the sending side, so the channel outlives it only until it is gone.
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut breaker = Breaker::new(shared.breaker_open.clone());
    let mut store: Option<Store> = None;
    let mut waiters: Waiters = HashMap::new();
    let mut last_heartbeat: Option<Instant> = None;
    let mut next_round = tokio::time::Instant::now();
    loop {
        // Wait for the next round, or a lease request, whichever comes first.
        tokio::select! {
            _ = tokio::time::sleep_until(next_round) => {}
            req = rx.recv() => match req {
                Some(req) => waiters.entry(req.key).or_default().push((req.want, req.reply)),
                None => return,
            },
        }
        while let Ok(req) = rx.try_recv() {
            waiters
                .entry(req.key)
                .or_default()
                .push((req.want, req.reply));
        }
        let ticked = tokio::time::Instant::now() >= next_round;
        if ticked {
            next_round = tokio::time::Instant::now() + TICK;
        }

        if store.is_none() {
            match tokio::time::timeout(CALL_TIMEOUT, Store::connect(&target, CALL_TIMEOUT)).await {
                Ok(Ok(s)) => store = Some(s),
                Ok(Err(e)) => {
                    fail(&shared, &mut breaker, Some(&e), &mut waiters);
                    continue;
                }
                Err(_) => {
                    fail(&shared, &mut breaker, None, &mut waiters);
                    continue;
                }
            }
        }
        let Some(conn) = store.as_mut() else { continue };

        if breaker.is_open() {
            // Requests are decided by the failure mode meanwhile; nobody waits.
            release(&shared, &mut waiters);
            if ticked
                && breaker.probe_due(Instant::now())
                && heartbeat(&shared, conn, &gateway_id, &mut breaker).await
            {
                last_heartbeat = Some(Instant::now());
            }
            continue;
        }

        if ticked && last_heartbeat.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
            if !heartbeat(&shared, conn, &gateway_id, &mut breaker).await {
                next_round = tokio::time::Instant::now() + RETRY_AFTER_FAILURE;
                continue;
            }
            last_heartbeat = Some(Instant::now());
            housekeeping(&shared);
        }

        if !round(&shared, conn, &mut breaker, &mut waiters, ticked).await {
            next_round = tokio::time::Instant::now() + RETRY_AFTER_FAILURE;
        }
    }
}

/// Records a failed call: the breaker counts it, and the waiting requests are released to
/// their failure mode by dropping their reply channels.
fn fail(shared: &Shared, breaker: &mut Breaker, error: Option<&RedisError>, waiters: &mut Waiters) {
    shared.metrics.rl_sync_errors.inc();
    release(shared, waiters);
    // No error means the call timed out.
    let timed_out = error.is_none();
    let error = error.map_or_else(
        || format!("no answer within {CALL_TIMEOUT:?}"),
        |e| e.to_string(),
    );
    tracing::debug!(%error, "Redis call failed");
    if breaker.failure(timed_out) == Tripped::Opened {
        shared.outages.fetch_add(1, Ordering::Relaxed);
        shared.metrics.rl_breaker_open.set(1);
        tracing::warn!(%error, "Redis is failing: rate limits follow each policy's failureMode until it is back");
    }
}

/// Releases the waiting requests to their failure mode by dropping their reply channels,
/// each key's under its lock: the admits that requests which gave up waiting made without
/// an answer will get none, so they are counted as pending.
fn release(shared: &Shared, waiters: &mut Waiters) {
    let now = shared.now_ms();
    for (key, list) in waiters.drain() {
        if let Some(mut e) = shared.table.get_mut(&key) {
            let shape = e.shape;
            e.state.owed_to_pending(now, shape);
            shared.queue(key, &mut e.state);
            drop(list);
        }
    }
}

/// Records a successful call. When it closes the breaker, what this gateway remembers
/// (counts, cached denials) may no longer be what Redis holds, if it lost its data: the
/// limiter starts over from Redis's view.
fn succeed(shared: &Shared, breaker: &mut Breaker) {
    if breaker.success() {
        shared.table.clear();
        shared.dirty.lock().clear();
        shared.orphans.lock().clear();
        shared.metrics.rl_breaker_open.set(0);
        tracing::info!("Redis is back: rate limits are shared by the fleet again");
    }
}

/// Learns Redis's clock from a reply to a call sent at `sent`: the reply left Redis about
/// half a round trip ago.
fn set_clock(shared: &Shared, redis_now: u64, sent: Instant) {
    let local = super::unix_ms() as i64 - (sent.elapsed().as_millis() / 2) as i64;
    shared
        .clock_offset
        .store(redis_now as i64 - local, Ordering::Relaxed);
}

/// Announces this gateway; learns the live count and Redis's clock. Closes an open breaker
/// on success.
async fn heartbeat(
    shared: &Shared,
    conn: &mut Store,
    gateway_id: &str,
    breaker: &mut Breaker,
) -> bool {
    let sent = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT, conn.heartbeat(gateway_id)).await;
    shared
        .metrics
        .rl_redis_calls
        .inc_by(conn.take_calls().max(1));
    match result {
        Ok(Ok((live, redis_now))) => {
            set_clock(shared, redis_now, sent);
            shared.live.store(live.max(1), Ordering::Relaxed);
            shared.metrics.rl_live_gateways.set(i64::from(live));
            succeed(shared, breaker);
            true
        }
        Ok(Err(e)) => {
            fail(shared, breaker, Some(&e), &mut HashMap::new());
            false
        }
        Err(_) => {
            fail(shared, breaker, None, &mut HashMap::new());
            false
        }
    }
}

/// One sync round: the due dirty keys (all of them on a tick) and every key a request waits
/// for. Returns false when Redis failed.
async fn round(
    shared: &Shared,
    conn: &mut Store,
    breaker: &mut Breaker,
    waiters: &mut Waiters,
    ticked: bool,
) -> bool {
    let now = shared.now_ms();
    let live = shared.live.load(Ordering::Relaxed);
    let mut keys: Vec<u64> = Vec::new();
    let mut ops: Vec<Op> = Vec::new();
    {
        // The request path locks a table entry and then this list: never hold the list
        // while locking entries.
        let dirty = std::mem::take(&mut *shared.dirty.lock());
        let mut keep = Vec::with_capacity(dirty.len());
        for key in dirty {
            let Some(mut e) = shared.table.get_mut(&key) else {
                continue;
            };
            if e.state.pending() == 0 {
                e.state.queued = false;
                continue;
            }
            let est = e.state.estimate(now, e.shape);
            let rate = e.state.fleet_rate(now, live);
            let due = ticked && now >= e.state.synced_at + sync_period_ms(est, e.shape.cap, rate);
            if waiters.contains_key(&key) {
                // Sent below with its waiters.
            } else if due {
                keys.push(key);
            } else {
                keep.push(key);
            }
        }
        shared.dirty.lock().extend(keep);
    }
    // A key forgotten (see `keys`) while on the list, and back since, is on it twice.
    keys.sort_unstable();
    keys.dedup();
    keys.extend(waiters.keys().copied());
    // The keys actually sent, in the order of `ops`.
    let mut sent = Vec::with_capacity(keys.len());
    for key in keys {
        let want = waiters.get(&key).map_or(0, |w| {
            let first = w.first().map_or(0, |(want, _)| *want);
            first + w.len() as u64 - 1
        });
        let Some(mut e) = shared.table.get_mut(&key) else {
            // Evicted meanwhile: nothing to send; its waiters fall back.
            waiters.remove(&key);
            continue;
        };
        e.state.synced_at = now;
        sent.push(key);
        ops.push(Op {
            base: e.base.clone(),
            bucket_ms: e.shape.bucket_ms,
            buckets: e.shape.buckets,
            add: e.state.pending_buckets.clone(),
            want,
            cap: e.shape.cap,
            live,
        });
    }
    // The admits of forgotten keys go last: nothing waits for their answers.
    let keyed = ops.len();
    ops.append(&mut shared.orphans.lock());
    if ops.is_empty() {
        return true;
    }

    let started = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT, conn.run(&ops)).await;
    shared.metrics.rl_redis_calls.inc_by(conn.take_calls());
    shared
        .metrics
        .rl_sync_seconds
        .observe(started.elapsed().as_secs_f64());
    let results = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            requeue(shared, &sent, ops.drain(keyed..));
            fail(shared, breaker, Some(&e), waiters);
            return false;
        }
        Err(_) => {
            requeue(shared, &sent, ops.drain(keyed..));
            fail(shared, breaker, None, waiters);
            return false;
        }
    };
    succeed(shared, breaker);
    if let Some(r) = results.first() {
        set_clock(shared, r.now, started);
    }
    let mut still_dirty = Vec::new();
    for ((key, op), r) in sent.iter().zip(&ops).zip(&results) {
        let Some(mut e) = shared.table.get_mut(key) else {
            continue;
        };
        let shape = e.shape;
        e.state.apply_sync(r.now, shape, r.full, r.oldest, &op.add);
        if let Some(list) = waiters.remove(key) {
            answer(&mut e, r, list);
        }
        // A refused lease may have left an admit to send.
        if e.state.pending() > 0 {
            still_dirty.push(*key);
        } else {
            e.state.queued = false;
        }
    }
    shared.dirty.lock().extend(still_dirty);
    true
}

/// Answers a key's waiting requests from what its round brought back, under the key's lock
/// (the request that gives up waiting decides under it too).
fn answer(entry: &mut Entry, r: &OpResult, list: Vec<(u64, oneshot::Sender<u64>)>) {
    let (shape, base, e) = (entry.shape, &entry.base, &mut entry.state);
    e.expire_tokens(r.now, shape);
    if r.granted == 0 {
        // Refused until Redis expects room for one more: cached here, and the client's
        // Retry-After.
        let until = r.retry_at.max(r.now + 1);
        e.deny_until = until;
        tracing::debug!(
            key = %base,
            full = r.full,
            oldest = r.oldest,
            pending = e.pending(),
            tokens = e.tokens,
            wait_ms = until.saturating_sub(r.now),
            "lease refused: the window is full"
        );
    }
    // Each waiter gets one token while they last; the first one keeps the rest.
    let served = (r.granted as usize).min(list.len()) as u64;
    let mut extra = r.granted - served;
    for (i, (_, reply)) in list.into_iter().enumerate() {
        let give = if (i as u64) < served {
            1 + std::mem::take(&mut extra)
        } else if e.tokens > 0 {
            // Tokens of a request that gave up on an earlier lease.
            e.tokens -= 1;
            1
        } else {
            0
        };
        if let Err(unused) = reply.send(give) {
            // The request gave up waiting: its tokens pay for what it admitted, and
            // the rest are still good for the others.
            e.settle_gave_up(r.now, unused, shape);
        }
    }
}

/// Keys of a failed round keep their pending admits for the next one, and so do the
/// forgotten keys' admits.
fn requeue(shared: &Shared, keys: &[u64], orphans: impl Iterator<Item = Op>) {
    let pending: Vec<u64> = keys
        .iter()
        .copied()
        .filter(|k| shared.table.get(k).is_some_and(|e| e.state.pending() > 0))
        .collect();
    shared.dirty.lock().extend(pending);
    shared.orphans.lock().extend(orphans);
}

/// Once a second: evicts idle keys and publishes the local and global counts.
pub(crate) fn housekeeping(shared: &Shared) {
    let now = shared.now_ms();
    shared.table.retain(|_, e| {
        e.state.pending() > 0
            || e.state.queued
            || now.saturating_sub(e.state.last_used) < 2 * e.shape.window_ms + 1000
    });
    let mut sums: HashMap<(Arc<str>, Arc<str>), (u64, u64)> = HashMap::new();
    for e in shared.table.iter() {
        let s = sums.entry((e.policy.clone(), e.limit.clone())).or_default();
        s.0 += e.state.pending();
        s.1 += (e.state.estimate(now, e.shape) - e.state.pending() as f64).round() as u64;
    }
    let gauge = &shared.metrics.rl_counts;
    gauge.reset();
    for ((policy, limit), (local, global)) in sums {
        gauge
            .with_label_values(&[&*policy, &*limit, "local"])
            .set(local as i64);
        gauge
            .with_label_values(&[&*policy, &*limit, "global"])
            .set(global as i64);
    }
    for l in shared.fallback.iter() {
        l.limiter.retain_recent();
    }
    // A policy no compiled config holds any more stops tracking keys; their state expires
    // as above. Should the policy still exist (its new compiled version not yet checked),
    // only the tracking starts over: its keys keep their counts, and join the new list
    // when next used.
    let tracked = &shared.metrics.rl_tracked_keys;
    tracked.reset();
    shared.tracked.lock().retain(|policy, t| {
        let held = Arc::strong_count(t) > 1;
        if held {
            tracked.with_label_values(&[&**policy]).set(t.len() as i64);
        }
        held
    });
}
