//! tokio-tungstenite on both ends, each over a DeflateStream, on a real TCP connection.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use natter_wsdeflate::{DeflateStream, Role, accept_response, client_offer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

/// Deterministic pseudo-random bytes (incompressible).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn json_of_len(len: usize) -> String {
    let mut s = String::from("[");
    let mut seq = 0;
    while s.len() < len {
        s.push_str(&chat_json(seq));
        s.push(',');
        seq += 1;
    }
    s.truncate(len);
    s
}

fn messages() -> Vec<Message> {
    let min = deflate_config().min_compress_bytes;
    let mut out = Vec::new();
    for round in 0..5u64 {
        out.extend([
            Message::text(""),
            Message::binary(Vec::new()),
            Message::text("hi"),
            Message::binary(noise(100, round + 1)),
            Message::text(json_of_len(min - 1)),
            Message::text(json_of_len(min)),
            Message::text(chat_json(round)),
            Message::text(json_of_len(1024)),
            Message::binary(json_of_len(4096).into_bytes()),
            Message::text(json_of_len(60 * 1024)),
            Message::binary(noise(60 * 1024, round + 7)),
        ]);
    }
    out
}

fn is_compressed_size(len: usize) -> bool {
    len >= deflate_config().min_compress_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_round_trip_over_deflate() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        server_upgrade(&mut tcp).await.expect("client offered permessage-deflate");
        let io = DeflateStream::new(tcp, Role::Server, deflate_config());
        let mut ws = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(ws_config())).await;
        let mut echoed = 0;
        while let Some(msg) = ws.next().await {
            // Pings are answered by tungstenite; a Close is answered too, and then the
            // stream ends.
            if let m @ (Message::Text(_) | Message::Binary(_)) = msg.expect("server read") {
                ws.send(m).await.unwrap();
                echoed += 1;
            }
        }
        echoed
    });

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let response = client_upgrade(&mut tcp, client_offer()).await.expect("server agreed");
    accept_response(&response).unwrap();
    let tap = Tap::new(tcp);
    let (sent, received) = (tap.written.clone(), tap.read.clone());
    let io = DeflateStream::new(tap, Role::Client, deflate_config());
    let mut ws = WebSocketStream::from_raw_socket(io, WsRole::Client, Some(ws_config())).await;

    let messages = messages();
    for (i, msg) in messages.iter().enumerate() {
        ws.send(msg.clone()).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(&echo, msg, "message {i}");
        if i % 4 == 0 {
            ws.send(Message::Ping(format!("ping {i}").into_bytes().into())).await.unwrap();
            let pong = ws.next().await.unwrap().unwrap();
            assert_eq!(pong, Message::Pong(format!("ping {i}").into_bytes().into()));
        }
    }
    ws.close(None).await.unwrap();
    while let Some(msg) = ws.next().await {
        assert!(matches!(msg.unwrap(), Message::Close(_)));
    }
    assert_eq!(server.await.unwrap(), messages.len());

    // What was really on the wire, in both directions.
    let data_lens: Vec<usize> = messages.iter().map(|m| m.len()).collect();
    for (direction, log) in [("client→server", &sent), ("server→client", &received)] {
        let frames = parse_frames(&log.lock().unwrap());
        let data: Vec<_> = frames.iter().filter(|(op, ..)| *op == TEXT || *op == BINARY).collect();
        assert_eq!(data.len(), messages.len(), "{direction}");
        for ((_, rsv1, _), len) in data.iter().zip(&data_lens) {
            assert_eq!(*rsv1, is_compressed_size(*len), "{direction}: {len}-byte message");
        }
        // Control frames are never compressed.
        assert!(frames.iter().filter(|(op, ..)| *op >= 0x8).all(|(_, rsv1, _)| !rsv1));
        let pings = frames.iter().filter(|(op, ..)| *op == PING || *op == PONG).count();
        assert_eq!(pings, messages.len().div_ceil(4), "{direction}");
        assert_eq!(frames.iter().filter(|(op, ..)| *op == CLOSE).count(), 1, "{direction}");

        // Compressible text really shrank.
        let (mut plain, mut wire) = (0, 0);
        for ((_, _, wire_len), msg) in data.iter().zip(&messages) {
            if let Message::Text(t) = msg
                && t.len() >= 1024
            {
                plain += t.len();
                wire += wire_len;
            }
        }
        println!("{direction}: JSON text {plain} bytes → {wire} bytes on the wire");
        assert!(wire * 4 < plain, "{direction}: {wire} vs {plain}");
    }
}
