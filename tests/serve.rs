//! `podar serve` under abuse, as a stranger's page or a broken client would use it: paths and links
//! that lead out of the served folders, foreign Host and Origin headers, malformed and oversized
//! requests, slow clients, and many concurrent range requests on a model. Bounded in count and time;
//! it ends with the server alive and every good response byte-exact.
#![cfg(not(target_arch = "wasm32"))]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(root: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_podar"))
            .args(["serve", "--port", "0", "--root"])
            .arg(root)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 1];
        while !seen.ends_with(b"\n") {
            assert_eq!(err.read(&mut b).unwrap(), 1, "podar serve ended: {}", String::from_utf8_lossy(&seen));
            seen.push(b[0]);
        }
        let line = String::from_utf8(seen).unwrap();
        let port = line.rsplit_once(':').unwrap().1.split('/').next().unwrap().parse().unwrap();
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, port }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends raw bytes; the whole answer (the server closes every connection).
    fn raw(&self, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(req);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    /// A GET with the usual Host and the given extra header lines: (status, headers, body).
    fn get(&self, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{headers}\r\n", self.port);
        split(&self.raw(req.as_bytes()))
    }
}

fn split(resp: &[u8]) -> (u16, String, Vec<u8>) {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {resp:?}"));
    let head = String::from_utf8(resp[..end + 2].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, resp[end + 4..].to_vec())
}

fn status(resp: &[u8]) -> u16 {
    split(resp).0
}

/// www/ with an index and links that lead out; models/ with a model-sized file of known bytes.
fn tree(name: &str) -> (PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("podar-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    for d in ["www", "models", "pkg"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::fs::write(dir.join("outside/secret.txt"), "secret").unwrap();
    std::fs::write(root.join("Cargo.toml"), "not served").unwrap();
    std::fs::write(root.join("www/index.html"), "<!doctype html>hello").unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), root.join("www/out")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside/secret.txt"), root.join("models/secret.gguf")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("www/etc")).unwrap();
    let mut x = 0x9e3779b97f4a7c15u64;
    let model: Vec<u8> = (0..6 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(root.join("models/m.gguf"), &model).unwrap();
    (root, model)
}

#[test]
fn serves_only_its_folders_to_its_own_origin_and_survives_abuse() {
    let (root, model) = tree("soak");
    let mut srv = Server::start(&root, &["--allow-origin", "http://localhost:3000"]);
    let p = srv.port;

    // Good requests, with COOP/COEP and no wildcard CORS.
    let (st, head, body) = srv.get("/", "");
    assert_eq!((st, body.as_slice()), (200, &b"<!doctype html>hello"[..]));
    assert!(head.contains("Cross-Origin-Embedder-Policy: require-corp"), "{head}");
    assert!(!head.to_lowercase().contains("access-control-allow-origin"), "{head}");

    // Nothing outside the served folders: .., encoded .., absolute paths, links that lead out.
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/models/%2E%2E/Cargo.toml",
        "//etc/passwd",
        "/out/secret.txt",
        "/etc/passwd",
        "/models/secret.gguf",
        "/%2fetc/passwd",
        "/www/../../Cargo.toml",
        "/index.html%00",
    ] {
        let (st, _, body) = srv.get(path, "");
        assert_eq!(st, 404, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("secret"), "{path}");
    }

    // Only origins the user allowed may read; others get no CORS header (the browser hides the body).
    let (_, head, _) = srv.get("/", "Origin: http://evil.example\r\n");
    assert!(!head.to_lowercase().contains("access-control-allow-origin"), "{head}");
    let (_, head, _) = srv.get("/", "Origin: http://localhost:3000\r\n");
    assert!(head.contains("Access-Control-Allow-Origin: http://localhost:3000\r\n"), "{head}");
    let pre =
        format!("OPTIONS /models/m.gguf HTTP/1.1\r\nHost: localhost:{p}\r\nOrigin: http://localhost:3000\r\n\r\n");
    let (st, head, _) = split(&srv.raw(pre.as_bytes()));
    assert_eq!(st, 204);
    assert!(head.contains("Access-Control-Allow-Headers: Range"), "{head}");

    // Host headers other than this server's are refused (DNS rebinding).
    for host in ["evil.example", &format!("evil.example:{p}"), "127.0.0.1:1", &format!("10.0.0.1:{p}")] {
        let r = srv.raw(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert_eq!(status(&r), 421, "{host}");
    }
    for host in [format!("localhost:{p}"), format!("[::1]:{p}"), format!("127.0.0.1:{p}")] {
        let r = srv.raw(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert_eq!(status(&r), 200, "{host}");
    }

    // Malformed and oversized requests: a 4xx each, the server goes on.
    let host = format!("Host: 127.0.0.1:{p}\r\n");
    let mut bad: Vec<(Vec<u8>, u16)> = vec![
        (b"\r\n\r\n".to_vec(), 400),
        (b"GET\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400), // no Host
        (format!("GET / HTTP/9.9\r\n{host}\r\n").into_bytes(), 400),
        (format!("GET / HTTP/1.1\r\n{host}{host}\r\n").into_bytes(), 400),
        (format!("POST / HTTP/1.1\r\n{host}\r\n").into_bytes(), 405),
        (format!("GET /{} HTTP/1.1\r\n{host}\r\n", "a".repeat(20_000)).into_bytes(), 414),
        (format!("GET / HTTP/1.1\r\n{host}X: {}\r\n\r\n", "b".repeat(20_000)).into_bytes(), 431),
        (format!("GET / HTTP/1.1\r\n{host}{}\r\n", "X: y\r\n".repeat(500)).into_bytes(), 431),
        (format!("GET /models/m.gguf HTTP/1.1\r\n{host}Range: bytes=99999999-\r\n\r\n").into_bytes(), 416),
        (format!("GET /models/m.gguf HTTP/1.1\r\n{host}Range: bytes=-0\r\n\r\n").into_bytes(), 416),
        (b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n".to_vec(), 400),
        (b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n".to_vec(), 400),
    ];
    let mut x = 12345u32;
    for i in 0..300 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let junk: Vec<u8> = (0..(x % 200) as usize + i % 7).map(|j| (x >> (j % 24)) as u8 | 1).collect();
        bad.push(([b"GET /".as_slice(), &junk, b"\r\n\r\n"].concat(), 0));
    }
    for (req, want) in &bad {
        let r = srv.raw(req);
        let st = status(&r);
        assert!((400..500).contains(&st), "{st} for {:?}", String::from_utf8_lossy(&req[..req.len().min(80)]));
        if *want != 0 {
            assert_eq!(st, *want, "{:?}", String::from_utf8_lossy(&req[..req.len().min(80)]));
        }
    }
    // Clients that send half a request and hang up, or send nothing.
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", p)).unwrap();
        let _ = s.write_all(b"GET /models/m.gguf HTTP/1.1\r\nHo");
    }
    for _ in 0..20 {
        drop(TcpStream::connect(("127.0.0.1", p)).unwrap());
    }

    // Many concurrent range requests on the model, each answer byte-exact.
    let len = model.len() as u64;
    std::thread::scope(|sc| {
        for t in 0..16u64 {
            let (srv, model) = (&srv, &model);
            sc.spawn(move || {
                let mut y = t.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
                for _ in 0..25 {
                    y ^= y << 13;
                    y ^= y >> 7;
                    y ^= y << 17;
                    let a = y % len;
                    let b = (a + (y >> 20) % (1 << 20)).min(len - 1);
                    let (st, head, body) = srv.get("/models/m.gguf", &format!("Range: bytes={a}-{b}\r\n"));
                    assert_eq!(st, 206, "{head}");
                    assert!(head.contains(&format!("Content-Range: bytes {a}-{b}/{len}\r\n")), "{head}");
                    assert!(body == model[a as usize..=b as usize], "bytes {a}-{b} differ");
                }
                let (st, _, body) = srv.get("/models/m.gguf", "Range: bytes=-1000\r\n");
                assert_eq!((st, body.as_slice()), (206, &model[model.len() - 1000..]));
            });
        }
    });
    let (st, _, body) = srv.get("/models/m.gguf", "");
    assert!(st == 200 && body == model, "whole model");
    let (st, head, body) = srv.get("/models/m.gguf", "Range: bytes=5-2\r\n"); // reversed: ignored
    assert!(st == 200 && body.len() == model.len(), "{head}");

    assert!(srv.alive(), "the server died");
    let (st, _, body) = srv.get("/index.html", "");
    assert_eq!((st, body.as_slice()), (200, &b"<!doctype html>hello"[..]));
    drop(srv);
    std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
}

#[test]
fn binds_loopback_and_refuses_a_missing_root() {
    let out = Command::new(env!("CARGO_BIN_EXE_podar"))
        .args(["serve", "--port", "0", "--root", "/no/such/folder"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--root must be a folder"));
    let (root, _) = tree("bind");
    let mut child = Command::new(env!("CARGO_BIN_EXE_podar"))
        .args(["serve", "--port", "0", "--root"])
        .arg(&root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stderr.take().unwrap()), &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains(" on http://127.0.0.1:"), "{line}");
    std::fs::remove_dir_all(root.parent().unwrap()).unwrap();
}
