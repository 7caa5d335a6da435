//! A TCP proxy the test controls, put between one process and a server (the operator and the
//! kube-apiserver, the operator and IBM Cloud) to cut that one path while everything else goes on,
//! and to see when that process last sent anything through it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Open,
    /// A partition: connections stay open (and new ones are accepted) but no byte crosses, so
    /// the client waits until its own timeouts fire. Traffic resumes when the path opens again.
    Blackhole,
    /// Connections are closed, existing ones at once and new ones on accept, as a server that
    /// went away: the client sees its connections fail.
    Refused,
}

/// One proxy on a loopback port in front of `upstream`; it runs until dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    link: watch::Sender<Link>,
    sent: Arc<Mutex<Sent>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (link, _) = watch::channel(Link::Open);
        let sent = Arc::new(Mutex::new(Sent::default()));
        let (links, all_sent) = (link.clone(), sent.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut link = links.subscribe();
                if *link.borrow_and_update() == Link::Refused {
                    continue;
                }
                let sent = all_sent.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, link, sent).await;
                    }
                });
            }
        });
        TcpProxy {
            addr,
            link,
            sent,
            accept,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what happens to the traffic, for the open connections too.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// When the client first sent bytes that reached the server (`None`: never).
    pub fn first_sent(&self) -> Option<Instant> {
        lock(&self.sent).first
    }

    /// When the client last sent bytes that reached the server (`None`: never).
    pub fn last_sent(&self) -> Option<Instant> {
        lock(&self.sent).last
    }
}

/// When bytes from the client first and last reached the server.
#[derive(Default)]
struct Sent {
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Sent {
    fn now(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Link::Refused);
    }
}

/// Copies both ways until either side closes or the path is refused.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    link: watch::Receiver<Link>,
    sent: Arc<Mutex<Sent>>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let upstream = pump(client_read, server_write, link.clone(), Some(sent));
    let downstream = pump(server_read, client_write, link, None);
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// Copies one direction; each chunk waits while the path is a black hole and ends the copy when
/// it is refused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    sent: Option<Arc<Mutex<Sent>>>,
) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            refused = link.wait_for(|p| *p == Link::Refused) => {
                let _ = refused;
                return;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match link.wait_for(|p| *p != Link::Blackhole).await {
            Ok(p) if *p == Link::Open => {}
            _ => return,
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
        if let Some(sent) = &sent {
            lock(sent).now();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
