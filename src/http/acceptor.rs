//! Taking connections off the kernel's accept queue on a thread of its own.
//!
//! The kernel queues connections it has completed until `accept` takes them
//! (the `listen` backlog, capped by `net.core.somaxconn`). When that queue is
//! full it drops new SYNs, and each client waits a second for its retry. An
//! accept loop on the runtime accepts only when the runtime gets to it: with
//! a single worker busy starting thousands of connection tasks, a flood of
//! connections overflowed the queue and a real delivery was answered after
//! 1.2-1.6 s (one listen overflow, one SYN retransmitted). This thread does
//! nothing but accept, so the kernel's queue drains at the speed of `accept`
//! whatever the runtime's load, and the connections wait their turn in a
//! bounded channel instead, in the order they came.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Accepted connections waiting for the server's accept loop. Each holds a
/// file descriptor, so the open-file limit accounts for them.
pub const ACCEPT_QUEUE: usize = 4096;

/// Wake-up bound for the thread's wait on the listener, in case the
/// `shutdown` that ends it raced with the start of the wait.
const POLL_TIMEOUT: Duration = Duration::from_millis(200);

type Accepted = (std::net::TcpStream, SocketAddr);

/// The accepting thread's end of the channel. Dropping it stops accepting:
/// the listening socket is shut down (new connections are refused at once)
/// and the thread ends.
pub struct Acceptor {
    queue: mpsc::Receiver<Accepted>,
    listener: Arc<std::net::TcpListener>,
}

impl Acceptor {
    /// Starts the accepting thread on a bound, listening socket.
    pub fn start(listener: tokio::net::TcpListener) -> io::Result<Acceptor> {
        let listener = Arc::new(listener.into_std()?);
        listener.set_nonblocking(true)?;
        let (sender, queue) = mpsc::channel(ACCEPT_QUEUE);
        let thread_listener = Arc::clone(&listener);
        std::thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || accept_until_closed(&thread_listener, &sender))?;
        Ok(Acceptor { queue, listener })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, in the order the kernel completed them.
    pub async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let Some((stream, peer)) = self.queue.recv().await else {
            return Err(io::Error::other("the acceptor thread has ended"));
        };
        Ok((TcpStream::from_std(stream)?, peer))
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Closed first, so the thread, woken by the shutdown, sees it.
        self.queue.close();
        // On Linux, shutting a listening socket down stops it listening and
        // wakes a thread waiting on it; the descriptor closes when the
        // thread lets go of it.
        if let Err(error) = rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Read) {
            tracing::warn!(%error, "shutting the listening socket down");
        }
    }
}

fn accept_until_closed(listener: &std::net::TcpListener, queue: &mpsc::Sender<Accepted>) {
    let timeout = rustix::event::Timespec::try_from(POLL_TIMEOUT).expect("a small timeout");
    loop {
        if queue.is_closed() {
            return;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                // Accepted sockets do not inherit the listener's mode.
                if let Err(error) = stream.set_nonblocking(true) {
                    tracing::warn!(%error, %peer, "cannot make an accepted socket non-blocking");
                    continue;
                }
                // Waits while the queue is full: the kernel's queue then
                // holds the next ones, as it would without this thread.
                if queue.blocking_send((stream, peer)).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let mut waiting = [rustix::event::PollFd::new(
                    listener,
                    rustix::event::PollFlags::IN,
                )];
                // EINTR and the timeout both lead back to `accept`.
                let _ = rustix::event::poll(&mut waiting, Some(&timeout));
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                if queue.is_closed() {
                    return;
                }
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream as StdStream;

    /// A listener whose kernel queue holds about `backlog` connections.
    fn listener_with_backlog(backlog: u32) -> tokio::net::TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(backlog).unwrap()
    }

    /// With nobody calling `accept`, a kernel queue of 8 would drop the
    /// tenth SYN and its client would wait a second for the retry; the thread
    /// drains it, so 100 clients connect at once, and they come out in order.
    #[tokio::test]
    async fn connections_are_taken_off_the_kernel_queue_while_nobody_accepts() {
        let mut acceptor = Acceptor::start(listener_with_backlog(8)).unwrap();
        let addr = acceptor.local_addr().unwrap();
        let clients: Vec<StdStream> = tokio::task::spawn_blocking(move || {
            (0..100)
                .map(|n| {
                    std::thread::sleep(Duration::from_millis(1));
                    StdStream::connect_timeout(&addr, Duration::from_millis(900))
                        .unwrap_or_else(|error| panic!("client {n} could not connect: {error}"))
                })
                .collect()
        })
        .await
        .unwrap();
        for client in &clients {
            let (_, peer) = acceptor.accept().await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
        }
    }

    /// Dropping the acceptor stops the listening: the next client is refused
    /// at once instead of waiting in a queue nobody will take from.
    #[tokio::test]
    async fn dropping_the_acceptor_refuses_new_connections() {
        let mut acceptor = Acceptor::start(listener_with_backlog(8)).unwrap();
        let addr = acceptor.local_addr().unwrap();
        let _first = StdStream::connect(addr).unwrap();
        acceptor.accept().await.unwrap();
        drop(acceptor);
        let refused = StdStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }
}
