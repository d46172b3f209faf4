//! RFC 6455 seen from outside, on a raw TCP socket: a manual upgrade, then client frames
//! written byte by byte (a well-behaved client library refuses to send most of these), and the
//! server's frames parsed from the bytes it sends back. The server answers a client's Close
//! with a Close echoing its code and then ends the connection (§5.5.1); invalid UTF-8 in a
//! text frame closes with 1007 and a protocol violation with 1002 (§7.4.1), never a bare
//! TCP drop. Each case uses its own connection, and the server keeps serving afterwards.

use natter_proto::{ClientFrame, ServerFrame, close};
use natter_testkit::{TestServer, TestUser, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A WebSocket client that speaks raw bytes.
struct RawWs {
    tcp: TcpStream,
    /// Bytes read but not yet parsed into a frame.
    buf: Vec<u8>,
}

/// How the server ended a connection.
#[derive(Debug, PartialEq)]
enum Ending {
    /// A Close frame (its status code, if it had one), then EOF.
    Close(Option<u16>),
    /// EOF without a Close frame.
    Dropped,
}

impl RawWs {
    /// Upgrades `/v1/ws` with a bearer token and reads the `ready` frame.
    async fn connect(server: &TestServer, user: &TestUser) -> RawWs {
        let tcp = within("connect", TcpStream::connect(server.addr)).await.expect("tcp connect");
        let mut ws = RawWs { tcp, buf: Vec::new() };
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {}\r\n\r\n",
            server.addr, user.token
        );
        ws.send(request.as_bytes()).await;
        let end = loop {
            if let Some(at) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(ws.read_more().await, "EOF during the upgrade");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        ws.buf.drain(..end);
        let (first, payload) = ws.next_frame().await.expect("a ready frame");
        assert_eq!(first, FIN | TEXT, "ready is one text frame");
        let frame: ServerFrame = serde_json::from_slice(&payload).expect("ready parses");
        assert!(matches!(frame, ServerFrame::Ready { .. }), "expected ready, got {frame:?}");
        ws
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("write", self.tcp.write_all(bytes)).await.expect("tcp write");
    }

    /// Reads what the server sends next; false at EOF.
    async fn read_more(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = within("read", self.tcp.read(&mut chunk)).await.expect("tcp read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next server frame (its first byte and payload), or `None` at EOF.
    async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if !self.read_more().await {
                assert!(self.buf.is_empty(), "EOF inside a frame: {:?}", self.buf);
                return None;
            }
        }
    }

    /// Reads until the connection ends (skipping data frames and pings) and says how it
    /// ended. After a Close, the server must send nothing more and end the TCP connection.
    async fn ending(&mut self) -> Ending {
        loop {
            let Some((first, payload)) = self.next_frame().await else { return Ending::Dropped };
            match first & 0x0f {
                CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let after = self.next_frame().await;
                    assert!(after.is_none(), "a frame after the server's close: {after:?}");
                    return Ending::Close(code);
                }
                TEXT | PING | PONG => {}
                op => panic!("unexpected opcode {op:#x} from the server"),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`: (first byte, payload) and the
/// bytes it took, or `None` when `buf` does not hold a whole frame yet.
fn parse_server_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    let (&first, rest) = buf.split_first()?;
    let (&second, rest) = rest.split_first()?;
    assert_eq!(second & 0x80, 0, "a masked frame from the server");
    let (len, header) = match second & 0x7f {
        126 => (usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)), 4),
        127 => {
            let len = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            (usize::try_from(len).expect("a frame that fits in memory"), 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buf.get(header..header + len)?;
    Some(((first, payload.to_vec()), header + len))
}

/// A masked client frame; `first` carries FIN, the RSV bits and the opcode.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    build_frame(first, payload, true)
}

fn build_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | u8::try_from(n).expect("at most 125")),
        n => {
            out.push(mask_bit | 126);
            out.extend(u16::try_from(n).expect("test frames are small").to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend(key);
        out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        out.extend(payload);
    }
    out
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend(reason);
    out
}

/// A fresh session of `user` still gets `ready` and a pong: the bad connection hurt nobody.
async fn still_serves(server: &TestServer, user: &TestUser) {
    let mut ws = server.ws(user).await;
    let pong = ws.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await;
    assert!(matches!(pong, ServerFrame::Pong { req_id: Some(_) }), "{pong:?}");
}

/// Each case on its own connection: the frames sent, and how the server must end it.
async fn check_cases(server: &TestServer, user: &TestUser, cases: &[(&str, Vec<u8>, Ending)]) {
    let mut wrong = Vec::new();
    for (name, bytes, want) in cases {
        let mut ws = RawWs::connect(server, user).await;
        ws.send(bytes).await;
        let got = ws.ending().await;
        if &got != want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong endings:\n{}", wrong.join("\n"));
    still_serves(server, user).await;
}

#[tokio::test]
async fn a_client_close_is_echoed_then_the_connection_ends() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let cases = [
        (
            "close 1000 bye",
            frame(FIN | CLOSE, &close_payload(1000, b"bye")),
            Ending::Close(Some(1000)),
        ),
        ("close 1001", frame(FIN | CLOSE, &close_payload(1001, b"")), Ending::Close(Some(1001))),
        ("close 4000", frame(FIN | CLOSE, &close_payload(4000, b"app")), Ending::Close(Some(4000))),
        // No status code in, none out.
        ("empty close", frame(FIN | CLOSE, b""), Ending::Close(None)),
        // A request first: the close still gets its answer.
        (
            "ping then close",
            [
                frame(FIN | TEXT, br#"{"type":"ping"}"#),
                frame(FIN | CLOSE, &close_payload(1000, b"bye")),
            ]
            .concat(),
            Ending::Close(Some(1000)),
        ),
    ];
    check_cases(&server, &alice, &cases).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let cases = [
        ("a stray byte", frame(FIN | TEXT, b"{\"type\":\"ping\",\"x\":\"\xff\"}")),
        ("an overlong encoding", frame(FIN | TEXT, b"\xc0\xaf")),
        ("a surrogate", frame(FIN | TEXT, b"\xed\xa0\x80")),
        (
            "the bad byte in a continuation",
            [frame(TEXT, b"{\"type\":"), frame(FIN | CONTINUATION, b"\"\xff\"}")].concat(),
        ),
        (
            "a sequence cut off at the end of the message",
            [frame(TEXT, b"ok \xe2\x82"), frame(FIN | CONTINUATION, b"")].concat(),
        ),
        ("a close reason", frame(FIN | CLOSE, &close_payload(1000, b"bye \xff"))),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(name, bytes)| (name, bytes, Ending::Close(Some(close::INVALID_PAYLOAD))))
        .collect();
    check_cases(&server, &alice, &cases).await;
    server.stop().await;
}

#[tokio::test]
async fn a_protocol_violation_closes_with_1002() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let ping = br#"{"type":"ping"}"#;
    let cases = [
        ("RSV1", frame(FIN | RSV1 | TEXT, ping)),
        ("RSV2", frame(FIN | RSV2 | TEXT, ping)),
        ("RSV3 on a ping", frame(FIN | RSV3 | PING, b"")),
        ("reserved data opcode 0x3", frame(FIN | 0x3, b"")),
        ("reserved control opcode 0xB", frame(FIN | 0xB, b"")),
        ("a fragmented ping", frame(PING, b"")),
        ("a 126-byte ping", frame(FIN | PING, &[b'p'; 126])),
        ("an unmasked frame", build_frame(FIN | TEXT, ping, false)),
        ("a continuation of nothing", frame(FIN | CONTINUATION, b"{}")),
        (
            "a new message inside a fragmented one",
            [frame(TEXT, b"{"), frame(FIN | TEXT, ping)].concat(),
        ),
        ("a one-byte close payload", frame(FIN | CLOSE, &[0x03])),
        (
            "a close code that must not be sent (1005)",
            frame(FIN | CLOSE, &close_payload(1005, b"")),
        ),
        ("a close code out of range (999)", frame(FIN | CLOSE, &close_payload(999, b""))),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(name, bytes)| (name, bytes, Ending::Close(Some(close::PROTOCOL_ERROR))))
        .collect();
    check_cases(&server, &alice, &cases).await;
    server.stop().await;
}
