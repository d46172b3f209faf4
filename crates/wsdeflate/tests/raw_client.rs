//! Hand-made client frames on a raw TCP socket against tokio-tungstenite over a server-role
//! DeflateStream: what a browser might send, including what it must not.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use natter_wsdeflate::DeflateError;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const KEYS: [[u8; 4]; 4] = [[0x37, 0xfa, 0x21, 0x3d], [1, 2, 3, 4], [0xff; 4], [0; 4]];

fn history_page() -> String {
    let items: Vec<String> = (0..12).map(chat_json).collect();
    format!("[{}]", items.join(","))
}

#[tokio::test]
async fn compressed_message_in_three_fragments_with_a_ping_between() {
    let (mut client, mut ws) = raw_client_session(deflate_config()).await;
    let text = history_page();
    let z = peer_deflate(text.as_bytes(), 6);
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);

    let mut wire = frame(false, true, TEXT, Some(KEYS[0]), a);
    wire.extend(frame(false, false, CONTINUATION, Some(KEYS[1]), b));
    wire.extend(frame(true, false, PING, Some(KEYS[2]), b"between"));
    wire.extend(frame(true, false, CONTINUATION, Some(KEYS[3]), c));
    client.write_all(&wire).await.unwrap();

    // The ping overtakes the message it interrupted, as RFC 6455 §5.4 intends.
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Ping(b"between".to_vec().into()));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text.clone()));

    ws.send(Message::text(text.clone())).await.unwrap();
    let pong = read_frame(&mut client).await;
    assert_eq!((pong.opcode, pong.rsv1, pong.payload.as_slice()), (PONG, false, &b"between"[..]));
    let echo = read_frame(&mut client).await;
    assert!(echo.fin && echo.rsv1 && !echo.masked, "{echo:?}");
    assert_eq!(echo.opcode, TEXT);
    assert!(echo.payload.len() < text.len() / 3);
    assert_eq!(peer_inflate(&echo.payload), text.as_bytes());
}

#[tokio::test]
async fn independently_compressed_and_uncompressed_messages() {
    let (mut client, mut ws) = raw_client_session(deflate_config()).await;
    let page = history_page();
    let one = chat_json(1);

    // Sync-flushed at flate2's best level, a complete BFINAL stream from a different API,
    // a plain text frame, a plain fragmented binary message, and an empty compressed message
    // (§7.2.3.6's single 0x00 byte).
    let mut wire = frame(true, true, TEXT, Some(KEYS[0]), &peer_deflate(page.as_bytes(), 9));
    wire.extend(frame(true, true, BINARY, Some(KEYS[1]), &peer_deflate_final(one.as_bytes())));
    wire.extend(frame(true, false, TEXT, Some(KEYS[2]), b"plain text"));
    wire.extend(frame(false, false, BINARY, Some(KEYS[3]), b"frag"));
    wire.extend(frame(true, false, CONTINUATION, Some(KEYS[0]), b"mented"));
    wire.extend(frame(true, true, TEXT, Some(KEYS[1]), &[0x00]));
    client.write_all(&wire).await.unwrap();

    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(page));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(one.into_bytes()));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("plain text"));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(b"fragmented".to_vec()));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(""));

    // Below min_compress_bytes the server answers uncompressed.
    ws.send(Message::text("ok")).await.unwrap();
    let f = read_frame(&mut client).await;
    assert_eq!(
        (f.opcode, f.rsv1, f.masked, f.payload.as_slice()),
        (TEXT, false, false, &b"ok"[..])
    );
}

/// Reads the error the server's tungstenite reports, then closes with `code` the normal way
/// and checks that the raw client receives that close frame.
async fn expect_error_then_close(
    client: &mut tokio::net::TcpStream,
    ws: &mut ServerWs,
    expected: DeflateError,
) {
    let err = match ws.next().await {
        Some(Err(WsError::Io(e))) => e,
        other => panic!("expected an I/O error, got {other:?}"),
    };
    let found = *DeflateError::from_io(&err).expect("a DeflateError inside");
    assert_eq!(std::mem::discriminant(&found), std::mem::discriminant(&expected), "{found}");
    let code = found.close_code();
    ws.close(Some(CloseFrame { code: CloseCode::from(code), reason: "bye".into() })).await.unwrap();
    let close = read_frame(client).await;
    assert_eq!(close.opcode, CLOSE);
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), code);
    assert_eq!(&close.payload[2..], b"bye");
}

#[tokio::test]
async fn rsv1_on_a_ping_is_a_protocol_error() {
    let (mut client, mut ws) = raw_client_session(deflate_config()).await;
    client.write_all(&frame(true, true, PING, Some(KEYS[0]), b"zip?")).await.unwrap();
    expect_error_then_close(&mut client, &mut ws, DeflateError::Protocol("")).await;
}

#[tokio::test]
async fn rsv1_on_a_continuation_is_a_protocol_error() {
    let (mut client, mut ws) = raw_client_session(deflate_config()).await;
    let z = peer_deflate(b"hello hello hello", 6);
    let mut wire = frame(false, true, TEXT, Some(KEYS[0]), &z[..3]);
    wire.extend(frame(true, true, CONTINUATION, Some(KEYS[1]), &z[3..]));
    client.write_all(&wire).await.unwrap();
    expect_error_then_close(&mut client, &mut ws, DeflateError::Protocol("")).await;
}

#[tokio::test]
async fn rsv2_is_a_protocol_error() {
    let (mut client, mut ws) = raw_client_session(deflate_config()).await;
    let mut f = frame(true, false, TEXT, Some(KEYS[0]), b"x");
    f[0] |= 0x20;
    client.write_all(&f).await.unwrap();
    expect_error_then_close(&mut client, &mut ws, DeflateError::Protocol("")).await;
}

#[tokio::test]
async fn invalid_deflate_data_is_reported_as_corrupt() {
    let (mut client, mut ws) = raw_client_session(deflate_config()).await;
    // BTYPE=11 is reserved in DEFLATE.
    client.write_all(&frame(true, true, TEXT, Some(KEYS[0]), &[0xff, 0xff, 0xff])).await.unwrap();
    expect_error_then_close(&mut client, &mut ws, DeflateError::CorruptData).await;
}
