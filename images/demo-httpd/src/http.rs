//! The HTTP/1.1 subset demo-httpd speaks: read one bounded request head, answer, close.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Request line plus headers; anything longer is refused (431).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 400, with a short reason for the log.
    Bad(&'static str),
    /// 505
    UnsupportedVersion,
}

/// Parses a request head (everything before the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, ParseError> {
    let head = std::str::from_utf8(head).map_err(|_| ParseError::Bad("request head is not UTF-8"))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(ParseError::Bad("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Bad("request line must be METHOD TARGET VERSION"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(ParseError::Bad("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(ParseError::Bad("request target must be an absolute path"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => return Err(ParseError::UnsupportedVersion),
        _ => return Err(ParseError::Bad("bad HTTP version")),
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, _value)) = line.split_once(':') else {
            return Err(ParseError::Bad("header line without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::Bad("bad header name"));
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request { method: method.to_string(), path: path.to_string() })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where the head ends: just past the first blank line (`\r\n\r\n`, or a bare `\n\n`).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// The client closed before sending a whole head.
    Closed,
    TooLarge,
    /// The head did not arrive before the deadline.
    TimedOut,
    /// The connection failed (reset, broken); nothing can be answered.
    Broken,
}

/// Reads one request head, at most `MAX_HEAD_BYTES`, all of it within `deadline`: a
/// client trickling bytes cannot hold a connection thread for longer.
pub fn read_head(stream: &mut (impl Read + SetTimeout), deadline: Instant) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        stream.set_timeout(left).map_err(|_| ReadError::Broken)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadError::TimedOut);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Broken),
        };
        // Look again only where the terminator could newly appear.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            buf.truncate(from + end);
            return Ok(buf);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ReadError::TooLarge);
        }
    }
}

/// Lets `read_head` bound each read; implemented for sockets and, in tests, fakes.
pub trait SetTimeout {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl SetTimeout for std::net::TcpStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// What the page at `/` shows.
#[derive(Debug, Clone)]
pub struct Identity {
    pub hostname: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub extra_headers: Vec<(&'static str, &'static str)>,
    /// HEAD answers carry the headers of a GET but no body.
    pub omit_body: bool,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, body: body.into(), extra_headers: Vec::new(), omit_body: false }
    }

    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut head = String::new();
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        for (name, value) in &self.extra_headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if !self.omit_body {
            out.write_all(self.body.as_bytes())?;
        }
        out.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Answers a parsed request. `uptime` is passed in so this stays pure.
pub fn route(req: &Request, id: &Identity, uptime: Duration) -> Response {
    let is_head = req.method == "HEAD";
    if req.method != "GET" && !is_head {
        let mut r = Response::text(405, "method not allowed\n");
        r.extra_headers.push(("Allow", "GET, HEAD"));
        return r;
    }
    let mut response = match req.path.as_str() {
        "/healthz" => Response::text(200, "ok"),
        "/" => Response::text(
            200,
            format!(
                "Flotilla demo\nhostname: {}\nversion: {}\nuptime: {}s\n",
                id.hostname,
                id.version,
                uptime.as_secs()
            ),
        ),
        _ => Response::text(404, "not found\n"),
    };
    response.omit_body = is_head;
    response
}

/// The response for a request that could not be read or parsed, if one is owed.
pub fn error_response(err: &ReadError) -> Option<Response> {
    match err {
        ReadError::TooLarge => Some(Response::text(431, "request head too large\n")),
        ReadError::TimedOut => Some(Response::text(408, "request timeout\n")),
        ReadError::Closed | ReadError::Broken => None,
    }
}

pub fn parse_error_response(err: &ParseError) -> Response {
    match err {
        ParseError::Bad(why) => Response::text(400, format!("bad request: {why}\n")),
        ParseError::UnsupportedVersion => Response::text(505, "only HTTP/1.0 and HTTP/1.1\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity { hostname: "edge-1".into(), version: "1.2.3".into() }
    }

    #[test]
    fn parses_request_lines_and_headers() {
        let req = parse_head(b"GET /healthz?probe=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n").unwrap();
        assert_eq!(req, Request { method: "GET".into(), path: "/healthz".into() });
        let req = parse_head(b"HEAD / HTTP/1.0\n\n").unwrap();
        assert_eq!(req.method, "HEAD");
    }

    #[test]
    fn refuses_malformed_requests() {
        for (head, expected) in [
            (&b"GET /\r\n\r\n"[..], ParseError::Bad("request line must be METHOD TARGET VERSION")),
            (b"GET  / HTTP/1.1\r\n\r\n", ParseError::Bad("request line must be METHOD TARGET VERSION")),
            (b"G(T / HTTP/1.1\r\n\r\n", ParseError::Bad("bad method")),
            (b"GET http://x/ HTTP/1.1\r\n\r\n", ParseError::Bad("request target must be an absolute path")),
            (b"GET / HTTP/2.0\r\n\r\n", ParseError::UnsupportedVersion),
            (b"GET / FTP/1.0\r\n\r\n", ParseError::Bad("bad HTTP version")),
            (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", ParseError::Bad("header line without a colon")),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", ParseError::Bad("bad header name")),
            (b"GET /\xff HTTP/1.1\r\n\r\n", ParseError::Bad("request head is not UTF-8")),
        ] {
            assert_eq!(parse_head(head), Err(expected), "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    /// Yields the request in the given pieces, then reports a timeout.
    struct Trickle(Vec<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let piece = self.0.remove(0);
            buf[..piece.len()].copy_from_slice(&piece);
            Ok(piece.len())
        }
    }

    impl SetTimeout for Trickle {
        fn set_timeout(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn reads_a_head_split_across_reads() {
        // The terminator itself is split between two reads.
        let mut s =
            Trickle(vec![b"GET / HTTP/1.1\r\nHost: a\r".to_vec(), b"\n\r".to_vec(), b"\nextra".to_vec()]);
        let head = read_head(&mut s, far()).unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn bounds_head_size_and_time() {
        let mut s = Trickle((0..20).map(|_| vec![b'a'; 1000]).collect());
        assert!(matches!(read_head(&mut s, far()), Err(ReadError::TooLarge)));
        let mut s = Trickle(vec![b"GET / HT".to_vec()]);
        assert!(matches!(read_head(&mut s, far()), Err(ReadError::TimedOut)));
        let mut s = Trickle(vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()]);
        assert!(matches!(read_head(&mut s, Instant::now()), Err(ReadError::TimedOut)));
        let mut s = Trickle(vec![]);
        s.0.push(Vec::new());
        assert!(matches!(read_head(&mut s, far()), Err(ReadError::Closed)));
    }

    #[test]
    fn routes() {
        let get = |path: &str| {
            route(&Request { method: "GET".into(), path: path.into() }, &id(), Duration::from_secs(42))
        };
        assert_eq!(get("/healthz"), Response::text(200, "ok"));
        let home = get("/");
        assert_eq!(home.status, 200);
        assert_eq!(home.body, "Flotilla demo\nhostname: edge-1\nversion: 1.2.3\nuptime: 42s\n");
        assert_eq!(get("/nope").status, 404);
        let post = route(&Request { method: "POST".into(), path: "/".into() }, &id(), Duration::ZERO);
        assert_eq!(post.status, 405);
        let head = route(&Request { method: "HEAD".into(), path: "/healthz".into() }, &id(), Duration::ZERO);
        let mut out = Vec::new();
        head.write_to(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
    }
}
