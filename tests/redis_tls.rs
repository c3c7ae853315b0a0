//! `rediss://`: the queue over TLS, against a real `redis-server` with a
//! private certificate authority made by `openssl` for the test.

mod common;
mod redis_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jobmill::job::{NewJob, WorkerId};
use jobmill::queue::redis::{RedisConfig, RedisQueue};
use jobmill::queue::{Completion, Queue};
use redis_support::RedisServer;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): the TLS test needs it on PATH"));
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=jobmill test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

fn tls_server(dir: &Path) -> (RedisServer, u16) {
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = |f: &str| dir.join(f).display().to_string();
    let (port, cert, key, ca) = (
        tls_port.to_string(),
        p("srv.pem"),
        p("srv.key"),
        p("ca.pem"),
    );
    let server = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    (server, tls_port)
}

#[test]
fn the_queue_works_over_tls_with_a_private_ca_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (_server, tls_port) = tls_server(dir.path());
    let url = format!("rediss://127.0.0.1:{tls_port}/secure");
    let config = RedisConfig {
        tls_ca: Some(std::fs::read(dir.path().join("ca.pem")).unwrap()),
        ..RedisConfig::default()
    };
    let q = RedisQueue::connect(&url, config).expect("connect over TLS");
    q.put(NewJob::new(1, &b"over tls"[..])).unwrap();
    let l = q.get(WorkerId(1), Some(Duration::from_secs(30))).unwrap();
    assert_eq!(&l.job.payload[..], b"over tls");
    assert_eq!(q.complete(&l).unwrap(), Completion::Recorded);

    // Without the CA the server's certificate is not trusted: a clear error.
    let e = RedisQueue::connect(&url, RedisConfig::default()).unwrap_err();
    let msg = jobmill::events::error_chain(&e);
    assert!(msg.contains(&format!("127.0.0.1:{tls_port}")), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
}

#[test]
fn the_cli_reads_the_ca_from_jobmill_redis_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (_server, tls_port) = tls_server(dir.path());
    let url = format!("rediss://127.0.0.1:{tls_port}/cli");
    let out = common::jobmill()
        .env("JOBMILL_REDIS_CA", dir.path().join("ca.pem"))
        .args(["submit", "--queue", &url, ":::", "a", "b"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = common::jobmill()
        .env("JOBMILL_REDIS_CA", dir.path().join("ca.pem"))
        .args(["worker", "--queue", &url, "-j", "1", "--", "echo", "tls-{}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "tls-a\ntls-b\n");
}
