//! One kept-alive connection across idle gaps and pipelined requests (issue 16). Between
//! requests the control plane lets go of hyper's buffers and serves the next request with a new
//! hyper connection on the same TLS stream, handing it the bytes already read: the first bytes
//! that ended the idle wait, and whatever hyper had read beyond the last request. Real binary,
//! real mutual TLS, and one raw TLS stream per test, so a connection closed or reset in between
//! fails the test instead of being redialled the way ureq would.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// One raw TLS stream to the control plane, presenting `<who>-cert.pem`.
struct Conn {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// Bytes received and not yet taken as a response.
    got: Vec<u8>,
}

impl Conn {
    fn open(cp: &Cp, who: &str) -> Conn {
        let pem = |name: &str| std::fs::read(cp.pki_dir.join(name)).unwrap();
        let certs = |name: &str| -> Vec<_> {
            rustls_pemfile::certs(&mut &pem(name)[..])
                .map(Result::unwrap)
                .collect()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(certs("ca.pem"));
        let key = rustls_pemfile::private_key(&mut &pem(&format!("{who}-key.pem"))[..])
            .unwrap()
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&format!("{who}-cert.pem")), key)
        .unwrap();
        let server = "localhost".try_into().unwrap();
        let sock = TcpStream::connect(("127.0.0.1", cp.port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let session = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        Conn {
            tls: rustls::StreamOwned::new(session, sock),
            got: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).unwrap();
        self.tls.flush().unwrap();
    }

    /// The next response on the stream (to `what`): its status, head and body. Panics if the
    /// server closes the stream or sends nothing for 20 s.
    fn response(&mut self, what: &str) -> (u16, String, String) {
        loop {
            if let Some(end) = self.got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if self.got.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&self.got[end + 4..end + 4 + len]);
                    let body = body.into_owned();
                    self.got.drain(..end + 4 + len);
                    let status = head[9..12].parse().unwrap();
                    return (status, head, body);
                }
            }
            let mut buf = [0u8; 8192];
            match self.tls.read(&mut buf) {
                Ok(0) => panic!(
                    "{what}: the server closed the connection; received {:?}",
                    String::from_utf8_lossy(&self.got)
                ),
                Ok(n) => self.got.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "{what}: no response ({e}); received {:?}",
                    String::from_utf8_lossy(&self.got)
                ),
            }
        }
    }

    /// The next response, which must have status `want` and keep the connection alive.
    fn expect(&mut self, want: u16, what: &str) -> String {
        let (status, head, body) = self.response(what);
        assert_eq!(status, want, "{what}: {head}\n{body}");
        assert!(!head.contains("connection: close"), "{what}: {head}");
        body
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// A report of generation `n`, padded with `pad` spaces (JSON allows them) to make it long.
fn report_request(n: u32, pad: usize) -> Vec<u8> {
    let body = report("web-01", &gen("web-01", n), true, Some(true), &["web"]) + &" ".repeat(pad);
    format!(
        "POST /api/v1/machines/web-01/report HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The agent's poll: 404 while no desired generation is set (403 if the connection's certificate
/// were no longer known).
const DESIRED: &str = "/api/v1/machines/web-01/desired-generation";

fn setup() -> (tempfile::TempDir, Cp) {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_pki(dir.path(), &["web-01"]);
    let cp = Cp::start(dir.path(), &pki);
    (dir, cp)
}

#[test]
fn one_kept_alive_connection_serves_requests_across_idle_gaps() {
    // Given a control plane and one agent connection
    let (_d, cp) = setup();
    let mut c = Conn::open(&cp, "web-01");
    // When the agent reports and polls with pauses of 0 to 2.5 s in between (each long enough
    // for the server to go idle and let go of hyper)
    for (round, pause_ms) in [0u64, 30, 300, 1200, 2500, 0, 700, 100]
        .into_iter()
        .enumerate()
    {
        let n = round as u32 + 1;
        // one of them with a body longer than the first read after the idle wait
        let pad = if round % 3 == 1 { 6000 } else { 0 };
        c.send(&report_request(n, pad));
        // Then each request is answered on the same connection, kept alive
        c.expect(200, &format!("report {n}"));
        c.send(&get(DESIRED));
        c.expect(404, &format!("poll {n}"));
        std::thread::sleep(Duration::from_millis(pause_ms));
    }
    // And a request whose first bytes end an idle wait alone, the rest 300 ms later, is whole
    std::thread::sleep(Duration::from_millis(500));
    let req = report_request(20, 0);
    c.send(&req[..7]);
    std::thread::sleep(Duration::from_millis(300));
    c.send(&req[7..]);
    c.expect(200, "a report sent in two parts");
    // And what was reported is what the machine shows
    let machine = cp.client("operator", Some(&bootstrap(&cp))).json(
        "GET",
        "/api/v1/machines/web-01",
        None,
        200,
    );
    assert!(
        machine.to_string().contains(&gen("web-01", 20)),
        "{machine}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    // Given a control plane and one agent connection
    let (_d, cp) = setup();
    let mut c = Conn::open(&cp, "web-01");
    // When three requests are sent in one write
    let mut burst = get("/health");
    burst.extend(report_request(1, 0));
    burst.extend(get(DESIRED));
    c.send(&burst);
    // Then the three are answered, in order
    assert!(c.expect(200, "health").contains("ok"), "health");
    c.expect(200, "report");
    c.expect(404, "poll");
    // When a request goes with the first bytes of the next (part of its head, or its head and
    // half its body), and the rest follows after the server has gone idle between them
    for split in [20, 1700] {
        let next = report_request(2, 3000);
        let mut first = get(DESIRED);
        first.extend(&next[..split]);
        c.send(&first);
        c.expect(
            404,
            &format!("poll before the first {split} bytes of a report"),
        );
        std::thread::sleep(Duration::from_millis(500));
        c.send(&next[split..]);
        // Then the second is answered whole
        c.expect(200, &format!("the report split after {split} bytes"));
    }
    // When 40 requests are sent in one write, then 40 more after a pause
    for _ in 0..2 {
        let burst: Vec<u8> = (0..40).flat_map(|_| get(DESIRED)).collect();
        c.send(&burst);
        for i in 0..40 {
            c.expect(404, &format!("pipelined poll {i}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // And a request asking to close is answered, and then the connection is closed
    c.send(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (status, head, _) = c.response("a request asking to close");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = c.tls.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn sigterm_closes_idle_connections_at_once_and_lets_a_long_poll_finish() {
    // Given a control plane, an agent connection idle after its report, and an operator's long
    // poll for events in progress
    let (_d, mut cp) = setup();
    let key = bootstrap(&cp);
    let mut idle = Conn::open(&cp, "web-01");
    idle.send(&report_request(1, 0));
    idle.expect(200, "report");
    let mut poll = Conn::open(&cp, "operator");
    poll.send(
        format!(
            "GET /api/v1/events?after=1000000&wait=3 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\r\n"
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(500));
    // When the control plane gets SIGTERM
    let sent = std::time::Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &cp.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Then the idle connection is closed at once
    let mut rest = Vec::new();
    let _ = idle.tls.read_to_end(&mut rest);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the idle connection was closed after {:?}",
        sent.elapsed()
    );
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // And the long poll is answered when its wait ends, with the connection closed after it
    let (status, head, _) = poll.response("the long poll");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // And the control plane exits, well within the 10 s it gives open requests
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while cp.child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running 8 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sent.elapsed() < Duration::from_secs(6),
        "exited {:?} after SIGTERM",
        sent.elapsed()
    );
    assert!(cp.log_text().contains("SIGTERM"), "{}", cp.log_text());
}
