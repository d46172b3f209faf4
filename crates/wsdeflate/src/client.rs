//! A client's opening handshake with permessage-deflate (feature `client`): tokio-tungstenite
//! cannot hand over its socket after its own handshake, so the request is written and the
//! response read here, and tungstenite starts on the [`DeflateStream`] afterwards.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{self, WebSocketConfig};

use crate::{
    Agreement, DeflateConfig, DeflateStream, MaybeDeflate, Role, accept_response, client_offer,
};

/// The longest response head read before giving up.
const MAX_HEAD: usize = 16 * 1024;

/// Opens a WebSocket on `stream` to `http://{host}{path}` offering permessage-deflate, with
/// `headers` added to the request (e.g. `Authorization`). Fails unless the server answers 101
/// with the right accept key and agrees to the extension. `config.max_message_bytes` bounds
/// what the server's messages may inflate to: a client takes its largest reply, not its own
/// frame cap.
pub async fn connect<S>(
    mut stream: S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    config: DeflateConfig,
    ws_config: Option<WebSocketConfig>,
) -> io::Result<(WebSocketStream<MaybeDeflate<S>>, Agreement)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = generate_key();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Extensions: {}\r\n",
        client_offer()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;

    // Byte by byte: whatever follows the head is the server's first frame, and belongs to
    // the WebSocket.
    let mut head = Vec::with_capacity(512);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() == MAX_HEAD {
            return Err(invalid("response head too long"));
        }
        head.push(stream.read_u8().await?);
    }
    let head = String::from_utf8(head).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(invalid(format!("upgrade refused: {status}")));
    }
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if header("sec-websocket-accept").as_deref() != Some(&derive_accept_key(key.as_bytes())) {
        return Err(invalid("wrong Sec-WebSocket-Accept"));
    }
    let extensions = header("sec-websocket-extensions")
        .ok_or_else(|| invalid("the server did not agree to permessage-deflate"))?;
    let agreement = accept_response(&extensions).map_err(io::Error::from)?;
    let stream = MaybeDeflate::Deflate(Box::new(DeflateStream::new(stream, Role::Client, config)));
    let ws = WebSocketStream::from_raw_socket(stream, protocol::Role::Client, ws_config).await;
    Ok((ws, agreement))
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}
