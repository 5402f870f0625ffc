//! A userspace TCP proxy on loopback that can cut a link the way a partition does: while cut,
//! connections stay open but every byte either way is read and dropped, and new connections
//! are accepted and then hear nothing, so peers see silence and time out rather than a reset
//! (this kernel has no netem, and nftables drops would need the peer in a network namespace).
//! Healing closes the connections that lived through the cut, so that peers reconnect cleanly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A proxy from a free loopback port to one upstream address.
pub struct Proxy {
    /// `127.0.0.1:PORT` to connect to instead of the upstream.
    pub addr: String,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    /// Both sockets of every connection open now, to close them when healing.
    open: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`HOST:PORT`).
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_string();
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let shared = accepting.clone();
                let upstream = upstream.clone();
                thread::spawn(move || shared.relay(client, &upstream));
            }
        });
        Self { addr, shared }
    }

    /// Cuts the link: from now on nothing crosses it either way.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Restores the link, closing the connections that saw the cut.
    pub fn heal(&self) {
        let open = std::mem::take(&mut *self.shared.open.lock().expect("proxy lock"));
        self.shared.cut.store(false, Ordering::SeqCst);
        for socket in open {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    fn relay(self: Arc<Self>, client: TcpStream, upstream: &str) {
        let Ok(server) = TcpStream::connect(upstream) else {
            return;
        };
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        {
            let mut open = self.open.lock().expect("proxy lock");
            open.push(client_copy);
            open.push(server_copy);
        }
        let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let back = self.clone();
        thread::spawn(move || back.pump(server_in, client));
        self.pump(client_in, server);
    }

    /// Copies `from` to `to` until either closes, dropping what arrives while cut.
    fn pump(&self, mut from: TcpStream, mut to: TcpStream) {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            if self.cut.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
}
