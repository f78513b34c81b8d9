//! Redis, single node or cluster, as the rate limiter uses it: one Lua script per key that
//! adds this gateway's pending admits, grants a lease when asked, and returns the fleet's
//! counts, all sent as one pipeline per Redis node per sync round.
//!
//! Every key of a limit shares a hash tag, so a script touches one slot; in a cluster the
//! scripts of a round are grouped by the node that owns their slot.

use super::target::{Nodes, Target};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Per key (a hash of bucket → count): add pending admits to the buckets they happened in, lease up
/// to `want` tokens against the sliding estimate, and report the counts, all on the
/// server's clock. The estimate sums the buckets wholly inside the window and weighs the
/// oldest, partly inside, by its overlap.
const SYNC_SCRIPT: &str = r#"
local base = KEYS[1]
local b = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local live = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = math.floor(now / b)
-- Admits per bucket they happened in (ARGV[6..], bucket and count pairs); those already
-- out of the window are dropped.
for i = 6, #ARGV, 2 do
  local at = tonumber(ARGV[i])
  if at > k - n then
    redis.call('HINCRBY', base, math.min(at, k), tonumber(ARGV[i + 1]))
  end
end
local fields = {}
for i = k - n, k do
  fields[#fields + 1] = i
end
local vals = redis.call('HMGET', base, unpack(fields))
local oldest = tonumber(vals[1] or '0')
local full = 0
for i = 2, #vals do
  full = full + tonumber(vals[i] or '0')
end
local granted = 0
if want > 0 then
  local left = ((k + 1) * b - now) / b
  local room = math.floor(cap - (full + oldest * left))
  if room > 0 then
    -- A share of the room per gateway: leases shrink toward one as the window fills, and
    -- tokens held but not yet used never crowd the other gateways out.
    granted = math.min(want, math.max(1, math.floor(room / (2 * live))))
    redis.call('HINCRBY', base, k, granted)
    full = full + granted
  end
end
if redis.call('HLEN', base) > n + 2 then
  for _, f in ipairs(redis.call('HKEYS', base)) do
    if tonumber(f) < k - n then
      redis.call('HDEL', base, f)
    end
  end
end
redis.call('PEXPIRE', base, b * (n + 1) * 2)
-- Refused: when will one more request fit? The oldest bucket fades out by the end of the
-- current bucket, and each later one over the bucket after it.
local retry = 0
if want > 0 and granted == 0 then
  local left = ((k + 1) * b - now) / b
  local need = full + oldest * left - (cap - 1)
  local fading = oldest * left
  if oldest > 0 and fading >= need then
    retry = now + math.ceil(need / oldest * b)
  else
    need = need - fading
    retry = (k + n + 1) * b
    for i = 2, #vals do
      local v = tonumber(vals[i] or '0')
      if v > 0 and v >= need then
        retry = (k + i - 1) * b + math.ceil(need / v * b)
        break
      end
      need = need - v
    end
  end
end
return {k, full, oldest, granted, now, retry}
"#;

/// Registers this gateway as live and counts the live ones (seen in the last 3 s).
const HEARTBEAT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3000)
redis.call('PEXPIRE', KEYS[1], 60000)
return {redis.call('ZCARD', KEYS[1]), now}
"#;

const LIVE_KEY: &str = "weir:rl:{gateways}";

/// One key's work in a sync round.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub base: Arc<str>,
    pub bucket_ms: u64,
    pub buckets: u64,
    /// Admits to add, per bucket.
    pub add: Vec<(u64, u64)>,
    pub want: u64,
    pub cap: u64,
    /// Live gateways, for the share of the room a lease may take.
    pub live: u32,
}

/// What Redis answered for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpResult {
    pub bucket: u64,
    /// The buckets wholly in the window (with this op's admits and grant), and the oldest.
    pub full: u64,
    pub oldest: u64,
    pub granted: u64,
    /// The server's clock, ms.
    pub now: u64,
    /// When refused, when one more request will fit (server clock, ms); 0 otherwise.
    pub retry_at: u64,
}

pub(crate) struct Store {
    conn: Conn,
    /// Round trips made since the last [`Store::take_calls`].
    calls: u64,
    sync: Script,
    heartbeat: Script,
}

enum Conn {
    Single(ConnectionManager),
    Cluster {
        conn: ClusterConnection,
        /// Slot ranges and the address of the primary serving them.
        slots: Vec<(u16, u16, String, u16)>,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.conn {
            Conn::Single(_) => f.write_str("Store::Single"),
            Conn::Cluster { slots, .. } => write!(f, "Store::Cluster({} slot ranges)", slots.len()),
        }
    }
}

impl Store {
    pub(crate) async fn connect(target: &Target, timeout: Duration) -> RedisResult<Store> {
        let conn = match &target.nodes {
            Nodes::Single(url) => {
                let client = target.client(url)?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout))
                    .set_number_of_retries(1);
                Conn::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            Nodes::Cluster(nodes) => {
                let client = target.cluster_client(nodes, timeout)?;
                let mut conn = client.get_async_connection().await?;
                let slots = slot_map(&mut conn).await?;
                Conn::Cluster { conn, slots }
            }
        };
        let mut store = Store {
            conn,
            calls: 0,
            sync: Script::new(SYNC_SCRIPT),
            heartbeat: Script::new(HEARTBEAT_SCRIPT),
        };
        // Loaded up front, so that the first requests to need a lease do not also pay for
        // a NOSCRIPT round trip.
        store.load_scripts().await?;
        Ok(store)
    }

    /// Runs one sync round. Scripts missing after a Redis restart are loaded again and the
    /// round retried once: a Redis that lost everything is not an error.
    pub(crate) async fn run(&mut self, ops: &[Op]) -> RedisResult<Vec<OpResult>> {
        match self.run_once(ops).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.load_scripts().await?;
                self.run_once(ops).await
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
                ) =>
            {
                // The cluster moved slots: learn the new map for the next round.
                if let Conn::Cluster { conn, slots } = &mut self.conn {
                    *slots = slot_map(conn).await?;
                }
                Err(e)
            }
            other => other,
        }
    }

    async fn run_once(&mut self, ops: &[Op]) -> RedisResult<Vec<OpResult>> {
        let script = &self.sync;
        match &mut self.conn {
            Conn::Single(conn) => {
                let mut pipe = redis::pipe();
                for op in ops {
                    push_op(&mut pipe, script, op);
                }
                self.calls += 1;
                let values: Vec<Value> = pipe.query_async(conn).await?;
                values.iter().map(parse_result).collect()
            }
            Conn::Cluster { conn, slots } => {
                // One pipeline per node, each routed to the node owning its keys' slots.
                let mut by_node: BTreeMap<(String, u16), Vec<usize>> = BTreeMap::new();
                for (i, op) in ops.iter().enumerate() {
                    let slot = key_slot(&op.base);
                    let node = slots
                        .iter()
                        .find(|(start, end, _, _)| (*start..=*end).contains(&slot))
                        .map(|(_, _, host, port)| (host.clone(), *port))
                        .ok_or_else(|| {
                            RedisError::from((ErrorKind::Client, "no node serves the slot"))
                        })?;
                    by_node.entry(node).or_default().push(i);
                }
                let mut results = vec![None; ops.len()];
                for ((host, port), indices) in by_node {
                    let mut pipe = redis::pipe();
                    for &i in &indices {
                        push_op(&mut pipe, script, &ops[i]);
                    }
                    self.calls += 1;
                    let values = conn
                        .route_pipeline(
                            pipe,
                            0,
                            indices.len(),
                            SingleNodeRoutingInfo::ByAddress { host, port },
                        )
                        .await?;
                    for (&i, v) in indices.iter().zip(&values) {
                        results[i] = Some(parse_result(v)?);
                    }
                }
                results
                    .into_iter()
                    .map(|r| {
                        r.ok_or_else(|| RedisError::from((ErrorKind::Client, "missing reply")))
                    })
                    .collect()
            }
        }
    }

    async fn load_scripts(&mut self) -> RedisResult<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(SYNC_SCRIPT);
        let mut hb = redis::cmd("SCRIPT");
        hb.arg("LOAD").arg(HEARTBEAT_SCRIPT);
        match &mut self.conn {
            Conn::Single(conn) => {
                let _: String = load.query_async(conn).await?;
                let _: String = hb.query_async(conn).await?;
            }
            Conn::Cluster { conn, slots } => {
                // A node may serve several slot ranges: load the scripts once on each.
                let nodes: BTreeSet<(String, u16)> =
                    slots.iter().map(|(_, _, h, p)| (h.clone(), *p)).collect();
                for (host, port) in nodes {
                    let mut pipe = redis::pipe();
                    pipe.add_command(load.clone()).add_command(hb.clone());
                    conn.route_pipeline(
                        pipe,
                        0,
                        2,
                        SingleNodeRoutingInfo::ByAddress { host, port },
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Round trips since the last call, for the metrics.
    pub(crate) fn take_calls(&mut self) -> u64 {
        std::mem::take(&mut self.calls)
    }

    /// Announces this gateway and returns (live gateways, Redis clock in ms).
    pub(crate) async fn heartbeat(&mut self, id: &str) -> RedisResult<(u32, u64)> {
        let mut inv = self.heartbeat.key(LIVE_KEY);
        inv.arg(id).arg(3000);
        let (live, now): (u32, u64) = match &mut self.conn {
            Conn::Single(conn) => inv.invoke_async(conn).await?,
            Conn::Cluster { conn, .. } => inv.invoke_async(conn).await?,
        };
        Ok((live, now))
    }
}

fn push_op(pipe: &mut redis::Pipeline, script: &Script, op: &Op) {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(1)
        .arg(&*op.base)
        .arg(op.bucket_ms)
        .arg(op.buckets)
        .arg(op.want)
        .arg(op.cap)
        .arg(op.live.max(1));
    for (bucket, n) in &op.add {
        cmd.arg(*bucket).arg(*n);
    }
    pipe.add_command(cmd);
}

fn parse_result(v: &Value) -> RedisResult<OpResult> {
    let bad = || RedisError::from((ErrorKind::Client, "unexpected script reply"));
    let items = match v {
        Value::Array(items) => items,
        // A cluster pipeline reports each command's error in place (NOSCRIPT among them).
        Value::ServerError(e) => return Err(e.clone().into()),
        _ => return Err(bad()),
    };
    let num = |i: usize| -> RedisResult<u64> {
        match items.get(i) {
            Some(Value::Int(n)) => Ok((*n).max(0) as u64),
            _ => Err(bad()),
        }
    };
    Ok(OpResult {
        bucket: num(0)?,
        full: num(1)?,
        oldest: num(2)?,
        granted: num(3)?,
        now: num(4)?,
        retry_at: num(5)?,
    })
}

/// The cluster slot of a key: CRC16 (XMODEM) of its hash tag, as Redis computes it.
pub(crate) fn key_slot(key: &str) -> u16 {
    let tagged = key
        .find('{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.find('}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged.as_bytes()) % 16384
}

async fn slot_map(conn: &mut ClusterConnection) -> RedisResult<Vec<(u16, u16, String, u16)>> {
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
    let mut out = Vec::new();
    let Value::Array(ranges) = reply else {
        return Err((ErrorKind::Client, "unexpected CLUSTER SLOTS reply").into());
    };
    for r in ranges {
        let Value::Array(parts) = r else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match primary.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = primary.get(1) else {
            continue;
        };
        out.push((*start as u16, *end as u16, host, *port as u16));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_hash_tag() {
        // Reference values from the Redis cluster specification.
        assert_eq!(key_slot("123456789"), 12739);
        assert_eq!(
            key_slot("{user1000}.following"),
            key_slot("{user1000}.followers")
        );
        assert_eq!(
            key_slot("foo{}{bar}"),
            key_slot("foo{}{bar}"),
            "empty tag: the whole key"
        );
        assert_ne!(key_slot("weir:rl:{a/b/1}:5"), key_slot("weir:rl:{a/b/2}:5"));
        assert_eq!(key_slot("weir:rl:{a/b/1}:5"), key_slot("weir:rl:{a/b/1}:6"));
    }

    /// A real redis-server on an ephemeral port, killed on drop.
    struct Server(std::process::Child, u16);

    impl Server {
        fn start() -> Server {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let child = std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (Debian package redis-server) is installed");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "redis-server did not start"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Server(child, port)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn leases_take_a_share_of_the_room_and_shrink_toward_one() {
        let server = Server::start();
        let target: Target = format!("redis://127.0.0.1:{}", server.1).parse().unwrap();
        let mut store = Store::connect(&target, Duration::from_secs(2))
            .await
            .unwrap();
        // 100 per 1000 s in 50 s buckets: the test cannot cross a window.
        let op = |want, add| Op {
            base: "weir:rl:{test/l/1}".into(),
            bucket_ms: 50_000,
            buckets: 20,
            add,
            want,
            cap: 100,
            live: 4,
        };
        let mut grants = Vec::new();
        loop {
            let r = store.run(&[op(1000, vec![])]).await.unwrap()[0];
            if r.granted == 0 {
                assert_eq!(r.full, 100, "refused only when the window is full");
                // Everything was counted in the current 50 s bucket: room comes back when
                // it fades out, one window (1000 s) after it began.
                let wait = r.retry_at - r.now;
                assert!((950_000..=1_001_000).contains(&wait), "retry in {wait} ms");
                break;
            }
            grants.push(r.granted);
        }
        assert_eq!(
            grants[..3],
            [12, 11, 9],
            "an eighth of the room: 100, 88, 77 left"
        );
        assert_eq!(grants.iter().sum::<u64>(), 100);
        assert!(grants.ends_with(&[1, 1, 1, 1, 1, 1, 1]), "{grants:?}");
        // Local admits are added to the current bucket and reported back.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let r = store.run(&[op(0, vec![(now / 50_000, 5)])]).await.unwrap()[0];
        assert_eq!((r.full, r.oldest, r.granted), (105, 0, 0));
    }

    #[test]
    fn targets_parse() {
        let t: Target = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(t.nodes, Nodes::Single("redis://127.0.0.1:6379".into()));
        let t: Target = "redis+cluster://a:1,b:2".parse().unwrap();
        assert_eq!(
            t.nodes,
            Nodes::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert!("http://x".parse::<Target>().is_err());
        assert!("redis+cluster://".parse::<Target>().is_err());
    }
}
