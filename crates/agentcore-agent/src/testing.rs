//! A loopback HTTP server for tests of the clients that talk to endpoints (OpenAI-compatible
//! servers, HTTP tools, remote rewards, embeddings): real sockets and HTTP/1.1, the answers
//! given by the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reads one HTTP request from `stream` (headers, then `Content-Length` bytes) and returns its
/// body.
///
/// # Panics
/// On a request that is not HTTP/1.1 with a `Content-Length` body (a test's own client sent it).
#[must_use]
pub fn read_request_body(stream: &TcpStream) -> Vec<u8> {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a header line");
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("a Content-Length");
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("read the body");
    body
}

/// Writes a JSON answer and closes the connection.
pub fn respond(mut stream: TcpStream, status: u16, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A server on a free loopback port that answers every request with `answer(body)` (status,
/// JSON body), each connection on its own thread; its `http://127.0.0.1:PORT` and the number of
/// requests answered so far. It runs until the test process ends.
///
/// # Panics
/// When no loopback port can be bound.
pub fn serve(
    answer: impl Fn(&[u8]) -> (u16, String) + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (answer, counter) = (Arc::clone(&answer), Arc::clone(&counter));
            std::thread::spawn(move || {
                let body = read_request_body(&stream);
                let (status, out) = answer(&body);
                counter.fetch_add(1, Ordering::SeqCst);
                respond(stream, status, &out);
            });
        }
    });
    (url, hits)
}
