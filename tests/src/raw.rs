//! A minimal hand-driven AMQP client: raw frames over a socket, for the cases a well-behaved
//! client (lapin) cannot produce.

use crate::client::within;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// (class id, method id) of a method frame.
    pub fn method_id(&self) -> (u16, u16) {
        assert_eq!(self.kind, FRAME_METHOD, "not a method frame");
        let p = &self.payload;
        (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        )
    }

    /// The reply code of a connection.close or channel.close.
    pub fn close_code(&self) -> u16 {
        let p = &self.payload;
        u16::from_be_bytes([p[4], p[5]])
    }
}

pub fn heartbeat_frame() -> Vec<u8> {
    vec![FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]
}

pub fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut f = vec![FRAME_METHOD];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&((args.len() + 4) as u32).to_be_bytes());
    f.extend_from_slice(&class.to_be_bytes());
    f.extend_from_slice(&method.to_be_bytes());
    f.extend_from_slice(args);
    f.push(FRAME_END);
    f
}

fn shortstr(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn longstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = within("raw connect", TcpStream::connect(addr))
            .await
            .expect("raw connect");
        RawClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        within("raw send", self.stream.write_all(bytes))
            .await
            .expect("raw send");
    }

    /// Reads one frame; `None` when the server closed the socket.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 7 {
                let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                    as usize;
                if self.buf.len() >= 8 + size {
                    let f = Frame {
                        kind: self.buf[0],
                        channel: u16::from_be_bytes([self.buf[1], self.buf[2]]),
                        payload: self.buf[7..7 + size].to_vec(),
                    };
                    assert_eq!(self.buf[7 + size], FRAME_END, "frame end octet");
                    self.buf.drain(..8 + size);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            match within("raw read", self.stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until a method frame on channel 0 (skipping heartbeats).
    pub async fn read_method(&mut self) -> Option<Frame> {
        loop {
            let f = self.read_frame().await?;
            if f.kind == FRAME_METHOD {
                return Some(f);
            }
        }
    }

    /// Reads all the bytes the server sends until it closes the socket.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf);
        let _ = within("raw read_to_end", self.stream.read_to_end(&mut all)).await;
        all
    }

    /// Header, start-ok (PLAIN guest/guest), tune-ok, open on vhost `/`.
    pub async fn handshake(&mut self) {
        self.handshake_with_heartbeat(0).await
    }

    /// The handshake, accepting `heartbeat` seconds in tune-ok.
    pub async fn handshake_with_heartbeat(&mut self, heartbeat: u16) {
        self.send(PROTOCOL_HEADER).await;
        let start = self.read_method().await.expect("connection.start");
        assert_eq!(start.method_id(), (10, 10), "expected connection.start");
        let mut a = Vec::new();
        a.extend_from_slice(&0u32.to_be_bytes()); // empty client properties
        shortstr(&mut a, "PLAIN");
        longstr(&mut a, b"\0guest\0guest");
        shortstr(&mut a, "en_US");
        self.send(&method_frame(0, 10, 11, &a)).await;
        let tune = self.read_method().await.expect("connection.tune");
        assert_eq!(tune.method_id(), (10, 30), "expected connection.tune");
        let mut a = Vec::new();
        a.extend_from_slice(&2047u16.to_be_bytes());
        a.extend_from_slice(&131072u32.to_be_bytes());
        a.extend_from_slice(&heartbeat.to_be_bytes());
        self.send(&method_frame(0, 10, 31, &a)).await;
        let mut a = Vec::new();
        shortstr(&mut a, "/");
        shortstr(&mut a, "");
        a.push(0);
        self.send(&method_frame(0, 10, 40, &a)).await;
        let open_ok = self.read_method().await.expect("connection.open-ok");
        assert_eq!(open_ok.method_id(), (10, 41), "expected connection.open-ok");
    }

    /// Expects connection.close with `code`, answers close-ok, then expects the socket to
    /// be closed by the server.
    pub async fn expect_connection_close(&mut self, code: u16) {
        let f = self
            .read_method()
            .await
            .expect("connection.close from the server");
        assert_eq!(f.channel, 0);
        assert_eq!(f.method_id(), (10, 50), "expected connection.close");
        assert_eq!(f.close_code(), code, "connection.close reply code");
        self.send(&method_frame(0, 10, 51, &[])).await;
        let rest = self.read_to_end().await;
        let _ = rest;
    }
}
