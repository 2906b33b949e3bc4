//! A control plane that cannot serve: a plain HTTP listener on loopback that reads each request
//! whole and then answers 503 with a JSON error, or closes the connection without an answer.
//!
//! The CLI's tests include this file too (`#[path]`), so both clients' failover is tested against
//! the same stand-in.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// What the stand-in does with each request.
#[derive(Clone, Copy)]
pub enum Reply {
    /// `503 Service Unavailable` with `{"error": <this>}`.
    Unavailable(&'static str),
    /// Close the connection once the request is read, with no answer at all.
    Close,
}

/// Starts the stand-in; its port and the number of requests it has read.
pub fn serve(reply: Reply) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            // The whole request: a body left unread would turn the close into a reset.
            let mut reader = BufReader::new(&mut stream);
            let (mut line, mut length) = (String::new(), 0);
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let _ = std::io::copy(&mut reader.take(length), &mut std::io::sink());
            counter.fetch_add(1, Ordering::SeqCst);
            if let Reply::Unavailable(error) = reply {
                let body = format!(r#"{{"error":"{error}"}}"#);
                let _ = write!(
                    stream,
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    (port, requests)
}
