//! `Sec-WebSocket-Extensions` negotiation for permessage-deflate (RFC 7692 §5, §7.1).
//!
//! The policy is fixed, because it is what makes the pooled, memory-light design possible:
//! both directions use no context takeover. A server may add `server_no_context_takeover`
//! and `client_no_context_takeover` to its response even when the client did not offer them
//! (§7.1.1.1, §7.1.1.2), so every acceptable offer can be answered the same way.

use crate::DeflateError;

const EXTENSION: &str = "permessage-deflate";
const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";

/// miniz_oxide (flate2's default backend) always compresses with a 32 KiB window.
const OUR_WINDOW_BITS: u8 = 15;

/// A negotiated permessage-deflate configuration: no context takeover in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// `Some(bits)` when the response carries `server_max_window_bits`: the server echoes 15
    /// to accept an offer of `server_max_window_bits=15` (§7.1.2.1 requires an acceptance to
    /// include it); on the client side, whatever the server announced.
    server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// The value for the server's `Sec-WebSocket-Extensions` response header.
    pub fn response_header(&self) -> String {
        let mut s =
            format!("{EXTENSION}; {SERVER_NO_CONTEXT_TAKEOVER}; {CLIENT_NO_CONTEXT_TAKEOVER}");
        if let Some(bits) = self.server_max_window_bits {
            s.push_str(&format!("; {SERVER_MAX_WINDOW_BITS}={bits}"));
        }
        s
    }

    /// The LZ77 window (as a power of two) the server compresses with, if it announced one.
    pub fn server_max_window_bits(&self) -> Option<u8> {
        self.server_max_window_bits
    }
}

/// The parameters of one permessage-deflate offer or response, validated for syntax.
#[derive(Debug, Default)]
struct Params {
    server_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in offers only).
    client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    /// Parses one `permessage-deflate; ...` list element. Errors are the reasons §7 gives for
    /// declining an offer or failing on a response: not our extension, an unknown or
    /// duplicated parameter, or an invalid value.
    fn parse(element: &str) -> Result<Params, &'static str> {
        let (name, params) = parse_extension(element).ok_or("malformed extension header")?;
        if !name.eq_ignore_ascii_case(EXTENSION) {
            return Err("not permessage-deflate");
        }
        let mut out = Params::default();
        let mut seen = [false; 4];
        for Param { name, value } in params {
            let slot = [
                SERVER_NO_CONTEXT_TAKEOVER,
                CLIENT_NO_CONTEXT_TAKEOVER,
                SERVER_MAX_WINDOW_BITS,
                CLIENT_MAX_WINDOW_BITS,
            ]
            .iter()
            .position(|known| name.eq_ignore_ascii_case(known))
            .ok_or("unknown permessage-deflate parameter")?;
            if std::mem::replace(&mut seen[slot], true) {
                return Err("duplicate permessage-deflate parameter");
            }
            let bits = match value.as_deref() {
                None => None,
                Some(_) if slot < 2 => return Err("no_context_takeover parameter with a value"),
                Some(v) => Some(window_bits(v).ok_or("window bits not in 8..=15")?),
            };
            match slot {
                0 => out.server_no_context_takeover = true,
                // client_no_context_takeover: what we always do anyway, asked for or not.
                1 => {}
                2 => {
                    out.server_max_window_bits =
                        Some(bits.ok_or("server_max_window_bits needs a value")?)
                }
                _ => out.client_max_window_bits = Some(bits),
            }
        }
        Ok(out)
    }
}

/// Server side: picks the first acceptable `permessage-deflate` offer from the values of all
/// `Sec-WebSocket-Extensions` request headers (in header order), or `None` to run uncompressed.
///
/// An offer is declined, and the next one considered, when it has an unknown or duplicated
/// parameter, an invalid value, or `server_max_window_bits` below 15 (the compressor cannot
/// shrink its window, so it could not honour that). `client_max_window_bits` is accepted with
/// or without a value and not echoed: the inflater always has a full 32 KiB window, so there
/// is nothing to limit, and §7.1.2.2 makes echoing it optional.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    offers.into_iter().flat_map(list_elements).find_map(|element| {
        let offer = Params::parse(element).ok()?;
        // Whatever else was offered, both no_context_takeover flags go into the response.
        match offer.server_max_window_bits {
            Some(bits) if bits < OUR_WINDOW_BITS => None,
            bits => Some(Agreement { server_max_window_bits: bits }),
        }
    })
}

/// The offer a client should send as its `Sec-WebSocket-Extensions` request header.
///
/// It asks for no context takeover both ways: the server must not keep its window, because
/// this crate inflates each message with a fresh decompressor, and it tells the server it need
/// not keep one for us. It does not offer `client_max_window_bits`, since the compressor cannot
/// use a smaller window, which in turn forbids the server from sending that parameter.
pub fn client_offer() -> &'static str {
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
}

/// Client side: validates the server's `Sec-WebSocket-Extensions` response to
/// [`client_offer`]. An error means the client must fail the connection (§5, §7.1).
///
/// `server_no_context_takeover` is required (we asked for it and cannot inflate with context
/// takeover); `client_no_context_takeover` and `server_max_window_bits=8..15` are allowed;
/// anything else, including `client_max_window_bits` (never offered) or another extension, is
/// rejected. A client that received no such header at all simply runs uncompressed.
pub fn accept_response(header_value: &str) -> Result<Agreement, DeflateError> {
    let mut elements = list_elements(header_value);
    let element = elements.next().ok_or(DeflateError::Negotiation("empty extension header"))?;
    if elements.next().is_some() {
        return Err(DeflateError::Negotiation("response accepts more than one extension"));
    }
    let response = Params::parse(element).map_err(DeflateError::Negotiation)?;
    if response.client_max_window_bits.is_some() {
        return Err(DeflateError::Negotiation("client_max_window_bits was not offered"));
    }
    if !response.server_no_context_takeover {
        return Err(DeflateError::Negotiation("server refused server_no_context_takeover"));
    }
    Ok(Agreement { server_max_window_bits: response.server_max_window_bits })
}

/// §7.1.2: a decimal integer 8..=15 without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u8>().ok().filter(|bits| (8..=15).contains(bits))
}

#[derive(Debug)]
struct Param<'a> {
    name: &'a str,
    /// Unquoted; owned only because a quoted-string may contain escapes.
    value: Option<String>,
}

/// Parses one `extension-token *( ";" extension-param )` (RFC 6455 §9.1). `None` if any part
/// is not a token, so a malformed offer is declined as a whole.
fn parse_extension(element: &str) -> Option<(&str, Vec<Param<'_>>)> {
    // Unlike the list, empty parameters (`a;;b`, `a;`) are malformed.
    let mut parts = split_unquoted(element, ';').into_iter();
    let name = parts.next()?;
    if !is_token(name) {
        return None;
    }
    let params = parts
        .map(|part| {
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
                None => (part, None),
            };
            is_token(name).then_some(Param { name, value })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((name, params))
}

/// §9.1: a quoted value must still be a token once unescaped.
fn unquote(v: &str) -> Option<String> {
    let s = match v.strip_prefix('"') {
        Some(rest) => {
            let inner = rest.strip_suffix('"')?;
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next()?),
                    '"' => return None,
                    c => out.push(c),
                }
            }
            out
        }
        None => v.to_owned(),
    };
    is_token(&s).then_some(s)
}

/// RFC 7230 token: one or more tchar.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Splits on `sep` outside quoted strings and trims whitespace around each item.
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                items.push(s[start..i].trim());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    items.push(s[start..].trim());
    items
}

/// The elements of a `#rule` list (RFC 7230 §7), which may contain empty elements.
fn list_elements(s: &str) -> impl Iterator<Item = &str> {
    split_unquoted(s, ',').into_iter().filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    fn header_for(offers: &[&str]) -> Option<String> {
        negotiate(offers.iter().copied()).map(|a| a.response_header())
    }

    #[test]
    fn chromium_offer() {
        let h = header_for(&["permessage-deflate; client_max_window_bits"]);
        assert_eq!(h.as_deref(), Some(FULL));
    }

    #[test]
    fn firefox_offer() {
        assert_eq!(header_for(&["permessage-deflate"]).as_deref(), Some(FULL));
    }

    #[test]
    fn response_header_text() {
        let a = negotiate(["permessage-deflate"]).unwrap();
        assert_eq!(
            a.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn small_server_window_is_declined() {
        assert_eq!(header_for(&["permessage-deflate; server_max_window_bits=10"]), None);
    }

    #[test]
    fn full_server_window_is_accepted_and_echoed() {
        // §7.1.2.1: accepting this parameter means including it in the response.
        let h = header_for(&["permessage-deflate; server_max_window_bits=15"]);
        assert_eq!(h.unwrap(), format!("{FULL}; server_max_window_bits=15"));
    }

    #[test]
    fn first_offer_declined_second_accepted() {
        // RFC 7692 §7.1.3's fallback example, in one header and across two headers.
        let one = "permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
                   permessage-deflate; client_max_window_bits";
        assert_eq!(header_for(&[one]).as_deref(), Some(FULL));
        let two = ["permessage-deflate; server_max_window_bits=10", "permessage-deflate"];
        assert_eq!(header_for(&two).as_deref(), Some(FULL));
    }

    #[test]
    fn other_extensions_are_skipped() {
        let h = header_for(&["x-webkit-deflate-frame, permessage-deflate"]);
        assert_eq!(h.as_deref(), Some(FULL));
    }

    #[test]
    fn names_are_case_insensitive_and_quoted_values_allowed() {
        let h = header_for(&[
            r#"PerMessage-Deflate; Client_Max_Window_Bits="10"; SERVER_MAX_WINDOW_BITS="1\5""#,
        ]);
        assert_eq!(h.unwrap(), format!("{FULL}; server_max_window_bits=15"));
    }

    #[test]
    fn garbage_is_declined() {
        for offer in [
            "",
            ",,,",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=015",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=\"1,0\"",
            "permessage-deflate; client_max_window_bits=\"10",
            "permessage deflate",
            "permessage-deflate;;",
            "\u{00e9}; \"",
            "x-other",
        ] {
            assert_eq!(header_for(&[offer]), None, "offer {offer:?}");
        }
    }

    #[test]
    fn client_accepts_our_own_server_response() {
        let a = negotiate([client_offer()]).unwrap();
        let agreed = accept_response(&a.response_header()).unwrap();
        assert_eq!(agreed.server_max_window_bits(), None);
        let agreed = accept_response(
            "permessage-deflate;server_no_context_takeover;server_max_window_bits=10",
        )
        .unwrap();
        assert_eq!(agreed.server_max_window_bits(), Some(10));
    }

    #[test]
    fn client_rejects_params_it_did_not_allow() {
        for response in [
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits",
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate",
            "permessage-deflate; server_no_context_takeover, permessage-deflate",
            "x-other",
            "",
        ] {
            assert!(
                matches!(accept_response(response), Err(DeflateError::Negotiation(_))),
                "response {response:?}"
            );
        }
    }
}
