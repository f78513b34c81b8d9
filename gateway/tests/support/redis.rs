//! Real `redis-server` processes for the rate limit tests: one node, or a 3-master cluster,
//! each on ephemeral loopback ports with persistence off, killed on drop.

use super::{Proc, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    proc: Option<Proc>,
    pub port: u16,
    dir: tempfile::TempDir,
    cluster: bool,
}

fn require_redis() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is not installed; `script/setup test` installs it (Debian package redis-server)"
    );
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_node(false)
    }

    fn start_node(cluster: bool) -> Redis {
        require_redis();
        let mut r = Redis {
            proc: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            cluster,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            // The bus port is the client port + 10000 unless set: for most of the test
            // ports that lands in the ephemeral range, where another connection may hold
            // it and the node then fails to start. It comes from the same pool instead.
            let bus = free_port().to_string();
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-port", &bus]);
        }
        let child = cmd.spawn().expect("redis-server starts");
        self.proc = Some(Proc {
            child,
            name: format!("redis {}", self.port),
        });
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_some_and(|r| r.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    /// Sends one inline command and returns the first reply chunk.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis vanishes without a goodbye, as in a crash or a node loss.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// SIGSTOP / SIGCONT: Redis hangs (accepts nothing, answers nothing) and comes back.
    pub fn pause(&self, stopped: bool) {
        let pid = self.proc.as_ref().expect("running").pid();
        let signal = if stopped { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts again on the same port, with every key lost (persistence is off).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Keys matching a pattern.
    pub fn keys(&self, pattern: &str) -> String {
        self.command(&format!("KEYS {pattern}")).unwrap_or_default()
    }
}

/// Three masters with every slot assigned, no replicas.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Redis> = (0..3).map(|_| Redis::start_node(true)).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let ok = |n: &Redis| {
            n.command("CLUSTER INFO")
                .is_some_and(|i| i.contains("cluster_state:ok"))
        };
        while !nodes.iter().all(ok) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Cluster { nodes }
    }

    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// Keys on every node matching a pattern, as (node port, KEYS reply).
    pub fn keys(&self, pattern: &str) -> Vec<(u16, String)> {
        self.nodes
            .iter()
            .map(|n| (n.port, n.keys(pattern)))
            .collect()
    }
}
