//! A TCP relay between the daemon and the control plane that can hold one request: a
//! test sees the daemon send it, and decides whether it ever reaches the control plane
//! (e.g. after the daemon was killed). Shared by the crash tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The request a relay holds next: a pattern of its bytes, and what to do with it.
type Armed = Arc<Mutex<Option<(String, Arc<Held>)>>>;

/// A TCP relay between the daemon and the control plane that can hold one request: the
/// test sees the daemon send it, and decides whether it ever reaches the control plane.
#[derive(Debug)]
pub struct Relay {
    /// Where the daemon should send its requests.
    pub url: String,
    armed: Armed,
    task: tokio::task::JoinHandle<()>,
}

/// A request the relay holds.
#[derive(Debug)]
pub struct Held {
    seen: watch::Sender<bool>,
    /// `Some(true)`: forward it; `Some(false)`: drop it and close the connection.
    verdict: watch::Sender<Option<bool>>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let armed = Armed::default();
        let rule = armed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, rule.clone()));
            }
        });
        Relay { url, armed, task }
    }

    /// Hold the next request whose bytes contain `pattern` (e.g. its request line).
    pub fn hold(&self, pattern: String) -> Arc<Held> {
        let held = Arc::new(Held {
            seen: watch::Sender::new(false),
            verdict: watch::Sender::new(None),
        });
        *self.armed.lock().unwrap() = Some((pattern, held.clone()));
        held
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Held {
    /// Whether the request arrived within `limit`.
    pub async fn seen(&self, limit: Duration) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(limit, seen.wait_for(|s| *s))
            .await
            .is_ok()
    }

    /// Let it through.
    pub fn forward(&self) {
        self.verdict.send_replace(Some(true));
    }

    /// Drop it and close the connection.
    pub fn drop_it(&self) {
        self.verdict.send_replace(Some(false));
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, armed: Armed) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // Bytes the control plane sent back; its answers are read even when the daemon is
    // gone, so a forwarded request is carried out whatever became of its sender.
    let (replied_tx, mut replied) = watch::channel(0usize);
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut client_gone = false;
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            replied_tx.send_modify(|r| *r += n);
            client_gone = client_gone || to_client.write_all(&buf[..n]).await.is_err();
        }
    });
    let mut answered_after = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let held = {
            let mut armed = armed.lock().unwrap();
            let matches = armed.as_ref().is_some_and(|(pattern, _)| {
                buf[..n]
                    .windows(pattern.len())
                    .any(|w| w == pattern.as_bytes())
            });
            if matches { armed.take() } else { None }
        };
        if let Some((_, held)) = held {
            held.seen.send_replace(true);
            let mut verdict = held.verdict.subscribe();
            let forward = verdict
                .wait_for(Option::is_some)
                .await
                .map(|v| *v == Some(true))
                .unwrap_or(false);
            if !forward {
                break;
            }
            answered_after = Some(*replied.borrow_and_update());
        }
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // The daemon hung up; a held request that was forwarded is waited for, so the
    // control plane does not see its client leave mid-request.
    if let Some(before) = answered_after {
        let _ =
            tokio::time::timeout(Duration::from_secs(10), replied.wait_for(|r| *r > before)).await;
    }
    down.abort();
}
