//! weft-null-relay: the floor of `make bench`. A plaintext TCP relay that does nothing but copy
//! bytes (16 KiB buffers, TCP_NODELAY, half-close on EOF): no TLS, no parsing, no metrics, no
//! capture. A pair of these on the same cores as the proxies shows what two user-space hops
//! cost on the machine itself, so the proxies' added latency and CPU can be read against it.
//! Two shapes, so the floor does not depend on one I/O model:
//!   (default)  one event loop: tokio's current-thread runtime and `copy_bidirectional`, the
//!              shape of weft-proxy without any of its work
//!   --threads  one blocking thread per direction: no event loop at all, the fewest syscalls
//!              per wake-up (a read and a write)
//!
//! Usage: weft-null-relay [--threads] LISTEN_ADDR UPSTREAM_ADDR
//!        (e.g. 127.0.0.1:10446 198.18.250.2:9446)

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args.first().is_some_and(|a| a == "--threads");
    if threads {
        args.remove(0);
    }
    let parsed = match args.as_slice() {
        [listen, upstream] => listen
            .parse::<SocketAddr>()
            .and_then(|l| Ok((l, upstream.parse::<SocketAddr>()?))),
        _ => {
            eprintln!("usage: weft-null-relay [--threads] LISTEN_ADDR UPSTREAM_ADDR");
            std::process::exit(2);
        }
    };
    let (listen, upstream) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "weft-null-relay: {e}: give two socket addresses, e.g. 127.0.0.1:10446 198.18.250.2:9446"
            );
            std::process::exit(2);
        }
    };
    let served = if threads {
        serve_threads(listen, upstream)
    } else {
        serve_event_loop(listen, upstream)
    };
    if let Err(e) = served {
        eprintln!("weft-null-relay: {listen}: {e}");
        std::process::exit(1);
    }
}

fn serve_event_loop(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (mut down, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("weft-null-relay: accept: {e}");
                    continue;
                }
            };
            tokio::spawn(async move {
                let relayed = async {
                    let mut up = tokio::net::TcpStream::connect(upstream).await?;
                    down.set_nodelay(true)?;
                    up.set_nodelay(true)?;
                    tokio::io::copy_bidirectional_with_sizes(
                        &mut down,
                        &mut up,
                        16 * 1024,
                        16 * 1024,
                    )
                    .await
                };
                if let Err(e) = relayed.await {
                    eprintln!("weft-null-relay: {upstream}: {e}");
                }
            });
        }
    })
}

fn serve_threads(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    for down in listener.incoming() {
        let down = match down {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weft-null-relay: accept: {e}");
                continue;
            }
        };
        thread::spawn(move || {
            if let Err(e) = relay(down, upstream) {
                eprintln!("weft-null-relay: {upstream}: {e}");
            }
        });
    }
    Ok(())
}

fn relay(down: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let up = TcpStream::connect(upstream)?;
    down.set_nodelay(true)?;
    up.set_nodelay(true)?;
    let (down2, up2) = (down.try_clone()?, up.try_clone()?);
    let back = thread::spawn(move || copy(up2, down2));
    copy(down, up)?;
    back.join()
        .map_err(|_| io::Error::other("the upstream→downstream thread panicked"))?
}

/// Copies until EOF, then half-closes the writer so the other direction can finish.
fn copy(mut from: TcpStream, mut to: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
    match to.shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}
