//! `podar serve`: a small static file server for the app (www/, pkg/, models/, examples/) with the MIME types
//! browsers insist on, the COOP/COEP headers wasm threads need, and byte ranges for models read in
//! slices.
//!
//! It serves what a stranger's web page must not read, so it is strict:
//! - it binds loopback unless told otherwise (`--host`);
//! - it answers only requests whose `Host` names the bound address, a loopback address or
//!   `localhost` (or a name given with `--allow-host`), which defeats DNS rebinding;
//! - it sends no wildcard CORS: only origins given with `--allow-origin` may read its responses
//!   from another origin;
//! - it serves a file only when its real path (symlinks resolved) lies inside the folder its URL
//!   maps to; the served folders themselves (`models/` linked to a model folder, say) may be links;
//! - requests are read with caps on line length, header count and time; anything malformed or too
//!   large gets a 4xx and the connection is closed.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The longest request line or header line read.
const MAX_LINE: usize = 8 * 1024;
/// The most header lines read.
const MAX_HEADERS: usize = 100;
/// The most connections answered at once; more get 503.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request, and to take each write of the answer.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What `podar serve` was told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The checkout: www/, pkg/, models/, examples/ below it.
    pub root: PathBuf,
    /// Address to bind: 127.0.0.1 unless told otherwise.
    pub host: IpAddr,
    /// 0: any free port (printed).
    pub port: u16,
    /// Origins (`scheme://host:port`) allowed to read responses from another origin.
    pub allow_origins: Vec<String>,
    /// Host names, besides the bound address, loopback and `localhost`, that requests may name.
    pub allow_hosts: Vec<String>,
}

/// A request as far as the server reads it.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub range: Option<String>,
}

/// Why a request is refused before it is looked at: its status line.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    BadRequest,
    UriTooLong,
    HeadersTooLarge,
}

impl Refusal {
    fn status(&self) -> &'static str {
        match self {
            Refusal::BadRequest => "400 Bad Request",
            Refusal::UriTooLong => "414 URI Too Long",
            Refusal::HeadersTooLarge => "431 Request Header Fields Too Large",
        }
    }
}

/// Reads one line of at most `MAX_LINE` bytes with its ending LF (CR before it dropped). `None` at
/// the end of the stream before any byte.
fn read_line(r: &mut impl BufRead, too_long: Refusal) -> Result<Option<String>, Refusal> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE as u64).read_until(b'\n', &mut line).map_err(|_| Refusal::BadRequest)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if n == MAX_LINE { too_long } else { Refusal::BadRequest });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map(Some).map_err(|_| Refusal::BadRequest)
}

/// Parses an HTTP/1.x request head: the request line, then headers up to the empty line.
pub fn parse_request(r: &mut impl BufRead) -> Result<Request, Refusal> {
    let line = read_line(r, Refusal::UriTooLong)?.ok_or(Refusal::BadRequest)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    if !token(method) || !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Err(Refusal::BadRequest);
    }
    let mut req = Request { method: method.into(), target: target.into(), host: None, origin: None, range: None };
    for _ in 0..=MAX_HEADERS {
        let h = read_line(r, Refusal::HeadersTooLarge)?.ok_or(Refusal::BadRequest)?;
        if h.is_empty() {
            return Ok(req);
        }
        let Some((k, v)) = h.split_once(':') else { return Err(Refusal::BadRequest) };
        if k.is_empty() || k.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Refusal::BadRequest);
        }
        let slot = match k.to_ascii_lowercase().as_str() {
            "host" => &mut req.host,
            "origin" => &mut req.origin,
            "range" => &mut req.range,
            _ => continue,
        };
        if slot.replace(v.trim().to_string()).is_some() {
            return Err(Refusal::BadRequest); // two Host (or Origin, Range) headers
        }
    }
    Err(Refusal::HeadersTooLarge)
}

/// The bytes asked for by a `Range` value, for a file of `len` bytes: `Ok(None)` for the whole file
/// (no range, or one the server may ignore: malformed, several ranges, another unit), `Err(())` when
/// it cannot be satisfied (416), else the inclusive first and last byte.
pub fn byte_range(range: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else { return Ok(None) };
    let Some((a, b)) = spec.trim().split_once('-') else { return Ok(None) };
    let num =
        |s: &str| (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten();
    match (num(a), num(b), a.is_empty()) {
        // bytes=-N: the last N bytes.
        (None, Some(n), true) if n > 0 && len > 0 => Ok(Some((len.saturating_sub(n), len - 1))),
        (None, Some(_), true) => Err(()),
        (Some(first), last, false) if b.is_empty() || last.is_some() => {
            if last.is_some_and(|l| l < first) {
                return Ok(None);
            }
            if first >= len {
                return Err(());
            }
            Ok(Some((first, last.unwrap_or(len - 1).min(len - 1))))
        }
        _ => Ok(None),
    }
}

/// Whether a `Host` value names this server: `localhost`, a loopback address, the bound address
/// (any address literal when bound to all), or an allowed name; with the bound port, if any.
pub fn host_allowed(host: &str, opts: &ServeOptions, port: u16) -> bool {
    let (name, p) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        if !after.is_empty() && !after.starts_with(':') {
            return false;
        }
        (ip, after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if p.is_some_and(|p| p.parse::<u16>() != Ok(port)) {
        return false;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ip.is_loopback() || ip == opts.host || opts.host.is_unspecified();
    }
    name.eq_ignore_ascii_case("localhost") || opts.allow_hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// Maps a URL path to a file: /pkg/…, /models/… and /examples/… to those folders under `root`, the
/// rest to www/.
/// `None` unless the file exists and its real path lies inside the real path of that folder.
pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("/");
    let decoded = percent_decode(path)?;
    if decoded.contains('\0') {
        return None;
    }
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let first = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
    let (folder, rest) = match first {
        "pkg" | "models" | "examples" => (root.join(first), rel.strip_prefix(first).ok()?),
        _ => (root.join("www"), rel),
    };
    let folder = folder.canonicalize().ok()?;
    let mut p = folder.join(rest).canonicalize().ok()?;
    if p.is_dir() {
        p = p.join("index.html").canonicalize().ok()?;
    }
    (p.starts_with(&folder) && p.is_file()).then_some(p)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

const COMMON: &str = "Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n\
                      Cache-Control: no-cache\r\nAccept-Ranges: bytes\r\nConnection: close\r\n";

fn plain(s: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\n{COMMON}{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn respond(mut s: TcpStream, opts: &ServeOptions, port: u16) -> std::io::Result<()> {
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let req = match parse_request(&mut reader) {
        Ok(r) => r,
        Err(refusal) => {
            plain(&mut s, refusal.status(), "", "malformed or oversized request\n")?;
            return linger(s, reader);
        }
    };
    let Some(host) = req.host.as_deref() else {
        return plain(&mut s, "400 Bad Request", "", "a request must name its Host\n");
    };
    if !host_allowed(host, opts, port) {
        return plain(&mut s, "421 Misdirected Request", "", "this server answers only for its own address\n");
    }
    // Responses are same-origin only, except for origins the user allowed.
    let cors = match req.origin.as_deref() {
        Some(o) if opts.allow_origins.iter().any(|a| a == o) => format!(
            "Access-Control-Allow-Origin: {o}\r\nVary: Origin\r\n\
             Access-Control-Expose-Headers: Content-Length, Content-Range\r\nCross-Origin-Resource-Policy: cross-origin\r\n"
        ),
        _ => "Cross-Origin-Resource-Policy: same-origin\r\n".to_string(),
    };
    match req.method.as_str() {
        "GET" | "HEAD" => {}
        "OPTIONS" => {
            let pre = "Access-Control-Allow-Methods: GET, HEAD\r\nAccess-Control-Allow-Headers: Range\r\n\
                       Access-Control-Max-Age: 600\r\n";
            return write!(s, "HTTP/1.1 204 No Content\r\n{COMMON}{cors}{pre}\r\n");
        }
        _ => return plain(&mut s, "405 Method Not Allowed", &format!("{cors}Allow: GET, HEAD\r\n"), ""),
    }
    let Some(path) = resolve(&opts.root, &req.target) else {
        return plain(&mut s, "404 Not Found", &cors, "not found\n");
    };
    let mut f = std::fs::File::open(&path)?;
    let len = f.metadata()?.len();
    let (partial, start, n) = match byte_range(req.range.as_deref(), len) {
        Ok(Some((a, b))) => (true, a, b - a + 1),
        Ok(None) => (false, 0, len),
        Err(()) => {
            return plain(&mut s, "416 Range Not Satisfiable", &format!("{cors}Content-Range: bytes */{len}\r\n"), "");
        }
    };
    let status = if partial { "206 Partial Content" } else { "200 OK" };
    let mut head =
        format!("HTTP/1.1 {status}\r\n{COMMON}{cors}Content-Type: {}\r\nContent-Length: {n}\r\n", mime(&path));
    if partial {
        head.push_str(&format!("Content-Range: bytes {start}-{}/{len}\r\n", start + n - 1));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if req.method == "GET" && n > 0 {
        f.seek(SeekFrom::Start(start))?;
        std::io::copy(&mut f.take(n), &mut s)?;
    }
    Ok(())
}

/// After refusing a request that was not read to its end: closes the sending side, then reads
/// (briefly, and at most 1 MiB) what the client still sends, so that closing does not reset the
/// connection before the client has read the refusal.
fn linger(s: TcpStream, reader: BufReader<TcpStream>) -> std::io::Result<()> {
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let _ = std::io::copy(&mut reader.take(1 << 20), &mut std::io::sink());
    Ok(())
}

/// Serves the app until killed; prints the address it listens on.
pub fn serve(opts: ServeOptions) -> std::io::Result<()> {
    if !opts.root.is_dir() {
        return Err(std::io::Error::other("--root must be a folder (the podar checkout: www/, pkg/, models/)"));
    }
    let listener = TcpListener::bind((opts.host, opts.port))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}:{}: {e}", opts.host, opts.port)))?;
    let port = listener.local_addr()?.port();
    let shown = match opts.host {
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    eprintln!("podar: serving {} on http://{shown}:{port}/ (Ctrl-C to stop)", opts.root.display());
    if !opts.host.is_loopback() {
        eprintln!("podar: {shown} is reachable from other machines; anyone who can reach it can read what it serves");
    }
    let opts = Arc::new(opts);
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = plain(&mut stream, "503 Service Unavailable", "Retry-After: 1\r\n", "too many connections\n");
            continue;
        }
        let (opts, active) = (opts.clone(), active.clone());
        std::thread::spawn(move || {
            let _ = respond(stream, &opts, port);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn refuses_paths_outside_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(resolve(root, "/../Cargo.toml").is_none());
        assert!(resolve(root, "/%2e%2e/Cargo.toml").is_none());
        assert!(resolve(root, "/models/../Cargo.toml").is_none());
        assert!(resolve(root, "//etc/passwd").is_none());
        assert!(resolve(root, "/%2Fetc/passwd").is_none());
        assert!(resolve(root, "/index.html%00.js").is_none());
        assert!(resolve(root, "/index.html").is_some());
        assert!(resolve(root, "/").is_some());
    }

    #[test]
    fn symlinks_may_not_lead_out_but_served_folders_may_be_links() {
        let dir = std::env::temp_dir().join(format!("podar-serve-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (www, elsewhere) = (dir.join("root/www"), dir.join("elsewhere"));
        std::fs::create_dir_all(&www).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(www.join("index.html"), "hi").unwrap();
        std::fs::write(elsewhere.join("secret.txt"), "secret").unwrap();
        std::fs::write(elsewhere.join("m.gguf"), "model").unwrap();
        std::os::unix::fs::symlink(&elsewhere, www.join("out")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret.txt"), www.join("s.txt")).unwrap();
        std::fs::write(www.join("inside.txt"), "ok").unwrap();
        std::os::unix::fs::symlink(www.join("inside.txt"), www.join("link-inside.txt")).unwrap();
        let root = dir.join("root");
        assert!(resolve(&root, "/out/secret.txt").is_none());
        assert!(resolve(&root, "/s.txt").is_none());
        assert!(resolve(&root, "/link-inside.txt").is_some());
        // models/ itself a link to a folder of models: served.
        std::os::unix::fs::symlink(&elsewhere, root.join("models")).unwrap();
        assert!(resolve(&root, "/models/m.gguf").is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn parse(s: &str) -> Result<Request, Refusal> {
        parse_request(&mut std::io::Cursor::new(s.as_bytes()))
    }

    #[test]
    fn requests_parse_with_caps() {
        let r = parse("GET /a HTTP/1.1\r\nHost: localhost:8080\r\nRange: bytes=0-9\r\nX: y\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/a"));
        assert_eq!(
            (r.host.as_deref(), r.range.as_deref(), r.origin),
            (Some("localhost:8080"), Some("bytes=0-9"), None)
        );
        for bad in [
            "",
            "GET\r\n\r\n",
            "GET /a\r\n\r\n",
            "GET /a HTTP/2\r\n\r\n",
            "GET a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1 x\r\n\r\n",
            "G\u{e9}T /a HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: a\r\n", // ends before the empty line
            "GET /a HTTP/1.1\r\nBad Name: a\r\n\r\n",
        ] {
            assert_eq!(parse(bad), Err(Refusal::BadRequest), "{bad:?}");
        }
        // The caps, at their boundaries.
        let target = |n: usize| format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(n));
        let fixed = "GET / HTTP/1.1\r\n".len(); // the line's length, CRLF included, without the `a`s
        assert!(parse(&target(MAX_LINE - fixed)).is_ok());
        assert!(matches!(parse(&target(MAX_LINE - fixed + 1)), Err(Refusal::UriTooLong)));
        let headers = |n: usize| format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(n));
        assert!(parse(&headers(MAX_HEADERS)).is_ok());
        assert!(matches!(parse(&headers(MAX_HEADERS + 1)), Err(Refusal::HeadersTooLarge)));
        let header = |n: usize| format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(n));
        assert!(parse(&header(MAX_LINE - 5)).is_ok());
        assert!(matches!(parse(&header(MAX_LINE - 4)), Err(Refusal::HeadersTooLarge)));
    }

    #[test]
    fn ranges() {
        let r = |s: &str, len| byte_range(Some(s), len);
        assert_eq!(byte_range(None, 10), Ok(None));
        assert_eq!(r("bytes=0-9", 10), Ok(Some((0, 9))));
        assert_eq!(r("bytes=2-", 10), Ok(Some((2, 9))));
        assert_eq!(r("bytes=2-100", 10), Ok(Some((2, 9))));
        assert_eq!(r("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(r("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(r("bytes=9-9", 10), Ok(Some((9, 9))));
        assert_eq!(r("bytes=10-", 10), Err(()));
        assert_eq!(r("bytes=-0", 10), Err(()));
        assert_eq!(r("bytes=0-", 0), Err(()));
        assert_eq!(r("bytes=18446744073709551615-", 10), Err(()));
        // Ignored (the whole file): malformed, reversed, several ranges, other units, overflow.
        for s in [
            "bytes=5-2",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(r(s, 10), Ok(None), "{s}");
        }
    }

    #[test]
    fn hosts() {
        let mut o = ServeOptions {
            root: PathBuf::from("."),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8080,
            allow_origins: vec![],
            allow_hosts: vec![],
        };
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "127.0.0.2:8080", "localhost"] {
            assert!(host_allowed(ok, &o, 8080), "{ok}");
        }
        for bad in ["evil.example:8080", "127.0.0.1:8081", "192.168.1.2:8080", "[::1", "localhost:x", "", "[::1]x"] {
            assert!(!host_allowed(bad, &o, 8080), "{bad}");
        }
        o.allow_hosts.push("box.lan".into());
        assert!(host_allowed("box.lan:8080", &o, 8080));
        o.host = "0.0.0.0".parse().unwrap();
        assert!(host_allowed("192.168.1.2:8080", &o, 8080));
        assert!(!host_allowed("evil.example:8080", &o, 8080));
    }
}
