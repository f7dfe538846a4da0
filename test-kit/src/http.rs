//! A minimal HTTP/1.1 server on loopback that answers from a table the test can change
//! while it runs: path (with query) → status, content type and body. Enough to replay
//! captured real responses, and to serve an error page or a 500 on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One canned response.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// 200 with a body.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status: 200,
            content_type,
            body: body.into(),
        }
    }
}

/// The server; dropping it does not stop it (the runtime's end does).
#[derive(Clone)]
pub struct FixtureServer {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    hits: Arc<Mutex<Vec<String>>>,
}

impl FixtureServer {
    /// Starts on 127.0.0.1 on a free port.
    pub async fn start() -> FixtureServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let server = FixtureServer {
            addr,
            routes: Arc::default(),
            hits: Arc::default(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    s.hits.lock().unwrap().push(path.clone());
                    let reply = s
                        .routes
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or(Reply {
                            status: 404,
                            content_type: "text/plain",
                            body: format!("no route for {path}").into_bytes(),
                        });
                    let head = format!(
                        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        reply.status,
                        reply.content_type,
                        reply.body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&reply.body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets (or replaces) the reply for a path with query.
    pub fn set(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    /// How many requests asked for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}
