//! Just enough RFC 6455 framing (§5.2) to find message boundaries and rewrite data frames.

use crate::DeflateError;

/// 2 fixed bytes + 8 bytes of 64-bit length + 4 bytes of masking key.
pub(crate) const MAX_HEADER: usize = 14;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const MASKED: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub fin: bool,
    pub rsv1: bool,
    /// RSV2 or RSV3: no extension we negotiate defines them.
    pub rsv23: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
}

impl Header {
    pub(crate) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    pub(crate) fn is_data_start(&self) -> bool {
        self.opcode == OP_TEXT || self.opcode == OP_BINARY
    }

    /// Encodes the header into the *end* of `out` and returns how many bytes it used, so a
    /// caller that reserved [`MAX_HEADER`] bytes in front of a payload can place it flush
    /// against the payload.
    pub(crate) fn encode_right_aligned(&self, out: &mut [u8; MAX_HEADER]) -> usize {
        let mut tmp = [0u8; MAX_HEADER];
        let mut n = 0;
        debug_assert!(!self.rsv23, "frames we encode never carry RSV2/RSV3");
        tmp[0] = self.opcode | if self.fin { FIN } else { 0 } | if self.rsv1 { RSV1 } else { 0 };
        let mask_bit = if self.mask.is_some() { MASKED } else { 0 };
        if self.len < 126 {
            tmp[1] = mask_bit | self.len as u8;
            n += 2;
        } else if self.len <= u64::from(u16::MAX) {
            tmp[1] = mask_bit | 126;
            tmp[2..4].copy_from_slice(&(self.len as u16).to_be_bytes());
            n += 4;
        } else {
            tmp[1] = mask_bit | 127;
            tmp[2..10].copy_from_slice(&self.len.to_be_bytes());
            n += 10;
        }
        if let Some(key) = self.mask {
            tmp[n..n + 4].copy_from_slice(&key);
            n += 4;
        }
        out[MAX_HEADER - n..].copy_from_slice(&tmp[..n]);
        n
    }
}

/// Collects a frame header that may arrive split across any number of reads or writes.
#[derive(Debug, Default)]
pub(crate) struct HeaderBuf {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

impl HeaderBuf {
    /// The header's raw bytes, exactly as received; pass-through frames reuse them verbatim.
    pub(crate) fn raw(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn needed(&self) -> usize {
        if self.len < 2 {
            return 2;
        }
        let ext = match self.bytes[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if self.bytes[1] & MASKED != 0 { 4 } else { 0 }
    }

    /// Takes header bytes from `input`. Returns how many were consumed and, once the header is
    /// complete, the parsed header; [`HeaderBuf::raw`] stays valid until [`HeaderBuf::clear`].
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Header>), DeflateError> {
        let mut used = 0;
        loop {
            let have = usize::from(self.len);
            let need = self.needed();
            if have == need {
                return Ok((used, Some(self.parse()?)));
            }
            let take = (need - have).min(input.len() - used);
            if take == 0 {
                return Ok((used, None));
            }
            self.bytes[have..have + take].copy_from_slice(&input[used..used + take]);
            self.len += take as u8;
            used += take;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    fn parse(&self) -> Result<Header, DeflateError> {
        let b = &self.bytes;
        let (len, mut at) = match b[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 => {
                let len = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(DeflateError::Protocol("64-bit frame length has its top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if b[1] & MASKED != 0 {
            let key = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(key)
        } else {
            None
        };
        debug_assert_eq!(at, usize::from(self.len));
        Ok(Header {
            fin: b[0] & FIN != 0,
            rsv1: b[0] & RSV1 != 0,
            rsv23: b[0] & (RSV2 | RSV3) != 0,
            opcode: b[0] & 0x0f,
            mask,
            len,
        })
    }
}

/// XORs `buf` with `key`, where `buf` starts `offset` bytes into the frame payload, so a
/// payload can be (un)masked piecewise as it streams through.
pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let mut key = key;
    key.rotate_left(offset % 4);
    let word = u32::from_ne_bytes(key);
    let mut chunks = buf.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(h: &Header) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER];
        let n = h.encode_right_aligned(&mut out);
        out[MAX_HEADER - n..].to_vec()
    }

    #[test]
    fn header_round_trips_for_every_length_form() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let h = Header { fin: true, rsv1: true, rsv23: false, opcode: 2, mask, len };
                let bytes = encode(&h);
                // Feed one byte at a time: headers arrive split across reads.
                let mut hb = HeaderBuf::default();
                let mut parsed = None;
                for (i, b) in bytes.iter().enumerate() {
                    let (used, h) = hb.feed(std::slice::from_ref(b)).unwrap();
                    assert_eq!(used, 1);
                    assert_eq!(h.is_some(), i == bytes.len() - 1);
                    parsed = h;
                }
                assert_eq!(parsed, Some(h));
                assert_eq!(hb.raw(), &bytes[..]);
            }
        }
    }

    #[test]
    fn header_feed_stops_at_header_end() {
        let mut hb = HeaderBuf::default();
        let (used, h) = hb.feed(&[0x81, 0x03, b'a', b'b', b'c']).unwrap();
        assert_eq!(used, 2);
        let h = h.unwrap();
        assert_eq!((h.opcode, h.len, h.fin, h.rsv1), (OP_TEXT, 3, true, false));
    }

    #[test]
    fn top_bit_of_64_bit_length_is_rejected() {
        let mut hb = HeaderBuf::default();
        let mut bytes = vec![0x82, 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert!(matches!(hb.feed(&bytes), Err(DeflateError::Protocol(_))));
    }

    #[test]
    fn piecewise_masking_matches_whole_masking() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for (i, b) in whole.iter().enumerate() {
            assert_eq!(*b, data[i] ^ key[i % 4]);
        }
        let mut pieces = data.clone();
        let mut at = 0;
        for step in [1, 3, 7, 4, 100, 885] {
            apply_mask(&mut pieces[at..at + step], key, at);
            at += step;
        }
        assert_eq!(pieces, whole);
    }
}
