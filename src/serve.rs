//! `podar serve`: a small static file server for the app (www/, pkg/, models/) on loopback, with the
//! MIME types browsers insist on, the COOP/COEP headers wasm threads need, and byte ranges for
//! models read in slices.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

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

/// Maps a URL path to a file under `root`: /pkg/… and /models/… to those folders, the rest to www/.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("/");
    let decoded = percent_decode(path)?;
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let first = rel.components().next().and_then(|c| c.as_os_str().to_str()).unwrap_or("");
    let mut p = match first {
        "pkg" | "models" => root.join(rel),
        _ => root.join("www").join(rel),
    };
    if p.is_dir() {
        p = p.join("index.html");
    }
    p.is_file().then_some(p)
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

fn respond(mut s: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                if let Some((a, b)) = v.trim().strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
                    if let Ok(a) = a.parse() {
                        range = Some((a, b.parse().ok()));
                    }
                }
            }
        }
    }
    let common = "Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n\
                  Cross-Origin-Resource-Policy: same-origin\r\nCache-Control: no-cache\r\nAccept-Ranges: bytes\r\n\
                  Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Content-Length, Content-Range\r\nConnection: close\r\n";
    if method != "GET" && method != "HEAD" {
        return write!(s, "HTTP/1.1 405 Method Not Allowed\r\n{common}Content-Length: 0\r\n\r\n");
    }
    let Some(path) = resolve(root, target) else {
        let body = "not found\n";
        return write!(
            s,
            "HTTP/1.1 404 Not Found\r\n{common}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    };
    let mut f = std::fs::File::open(&path)?;
    let len = f.metadata()?.len();
    let (status, start, end) = match range {
        Some((a, b)) if a < len => ("206 Partial Content", a, b.unwrap_or(len - 1).min(len - 1)),
        Some(_) => {
            return write!(s, "HTTP/1.1 416 Range Not Satisfiable\r\n{common}Content-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n");
        }
        None => ("200 OK", 0, len.saturating_sub(1)),
    };
    let n = if len == 0 { 0 } else { end + 1 - start };
    let mut head = format!("HTTP/1.1 {status}\r\n{common}Content-Type: {}\r\nContent-Length: {n}\r\n", mime(&path));
    if range.is_some() {
        head.push_str(&format!("Content-Range: bytes {start}-{end}/{len}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if method == "GET" && n > 0 {
        f.seek(SeekFrom::Start(start))?;
        std::io::copy(&mut f.take(n), &mut s)?;
    }
    Ok(())
}

/// Serves `root` on 127.0.0.1:`port` (0: any free port, printed) until killed.
pub fn serve(root: &Path, port: u16) -> std::io::Result<()> {
    if !root.is_dir() {
        return Err(std::io::Error::other("--root must be a folder (the podar checkout: www/, pkg/, models/)"));
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
    let port = listener.local_addr()?.port();
    eprintln!("podar: serving {} on http://127.0.0.1:{port}/ (Ctrl-C to stop)", root.display());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            let _ = respond(stream, &root);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_outside_root() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(resolve(root, "/../Cargo.toml").is_none());
        assert!(resolve(root, "/%2e%2e/Cargo.toml").is_none());
        assert!(resolve(root, "/models/../Cargo.toml").is_none());
    }
}
