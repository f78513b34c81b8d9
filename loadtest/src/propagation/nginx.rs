//! The memory peer: nginx holding the same number of virtual hosts, one `server` block per
//! route with the route's two path rules as `location`s.

use crate::procs::Proc;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Moved to [`crate::usage`], which every harness shares.
pub use crate::usage::pss_kib;

fn config(dir: &Path, servers: usize, port: u16) -> String {
    let mut c = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  server_names_hash_bucket_size 128;\n  server_names_hash_max_size 65536;\n  upstream echo {{ server 127.0.0.1:9; }}\n  upstream echo_canary {{ server 127.0.0.1:9; }}\n",
        d = dir.display()
    );
    for i in 0..servers {
        c += &format!(
            "  server {{ listen 127.0.0.1:{port}; server_name r{i}.example.com;\n    location /api {{ proxy_pass http://echo; }}\n    location / {{ proxy_pass http://echo; }} }}\n"
        );
    }
    c + "}\n"
}

/// Starts nginx with `servers` server blocks and returns its PSS once its worker runs.
pub fn pss_with(servers: usize) -> anyhow::Result<u64> {
    let dir =
        std::env::temp_dir().join(format!("weir-prop-nginx-{}-{servers}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(&dir, servers, port))?;
    let mut child = Proc::new(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let began = Instant::now();
    let pss = loop {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap_or_default();
        if !kids.trim().is_empty() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
            break pss_kib(child.id());
        }
        if began.elapsed() > Duration::from_secs(20)
            || child.wait_timeout(Duration::ZERO)?.is_some()
        {
            child.terminate(Duration::from_secs(5));
            anyhow::bail!(
                "nginx did not start; see {}",
                dir.join("error.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.terminate(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(pss)
}
