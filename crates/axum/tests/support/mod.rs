//! Shared by the adapter's socket tests.

use std::net::SocketAddr;

use axum::Router;

/// Serves `app` on a free loopback port, with the peer address available to handlers.
pub(crate) async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// A hand-driven WebSocket client over raw TCP, for peers that misbehave in ways a WebSocket
/// library will not: frames written byte by byte, never reading, breaking the protocol.
#[allow(dead_code)] // each test binary uses a part
pub(crate) mod raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;

    /// Completes the upgrade of `GET /ws` by hand; `recv_buffer` (bytes) shrinks the client's
    /// socket receive buffer, so that a client that does not read backs the server up sooner.
    pub(crate) async fn upgrade(addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut tcp = socket.connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        tcp
    }

    /// One frame as a client sends it: `first` is the first byte (FIN, RSV bits, opcode); masked
    /// unless `masked` is false (which RFC 6455 forbids a client).
    pub(crate) fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(mask_bit | n as u8),
            n @ 126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    /// A final, masked frame of `opcode`.
    pub(crate) fn final_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(0x80 | opcode, payload, true)
    }

    /// Reads one server frame (unmasked): its opcode and payload; `None` at the end of the
    /// stream.
    pub(crate) async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
        let first = tcp.read_u8().await.ok()?;
        let len = match tcp.read_u8().await.ok()? & 0x7f {
            126 => u64::from(tcp.read_u16().await.ok()?),
            127 => tcp.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0; usize::try_from(len).unwrap()];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((first & 0x0f, payload))
    }

    /// What a client read up to the server's close frame.
    #[derive(Debug, Default)]
    pub(crate) struct UntilClose {
        /// The close frame's code, if one came before the stream ended.
        pub(crate) code: Option<u16>,
        pub(crate) pings: usize,
        pub(crate) pongs: usize,
        pub(crate) data: usize,
    }

    /// Reads frames until the server's close frame or the end of the stream.
    pub(crate) async fn read_until_close(tcp: &mut TcpStream) -> UntilClose {
        let mut seen = UntilClose::default();
        while let Some((opcode, payload)) = read_frame(tcp).await {
            match opcode {
                CLOSE => {
                    seen.code = payload
                        .get(..2)
                        .map(|code| u16::from_be_bytes([code[0], code[1]]));
                    break;
                }
                PING => seen.pings += 1,
                PONG => seen.pongs += 1,
                _ => seen.data += 1,
            }
        }
        seen
    }
}
