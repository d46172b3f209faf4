//! Signed download URLs: an HMAC-SHA256 over (media id, variant, reader, expiry) with the
//! server's media secret. A URL is good for one reader until its expiry; the download route
//! also re-checks that the reader may still see the media (a former member is refused even
//! with a URL signed while they were a member).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use natter_proto::UserId;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Which bytes of a media item a URL serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    Original,
    Thumbnail,
}

impl Variant {
    fn tag(self) -> &'static str {
        match self {
            Variant::Original => "o",
            Variant::Thumbnail => "t",
        }
    }
}

/// What a signed URL grants, once its signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) reader: UserId,
    pub(crate) expires: i64,
}

/// Why a URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    BadSignature,
    Expired,
}

/// Signs and checks download URLs. The secret never leaves it (no `Debug` of the key).
#[derive(Clone)]
pub(crate) struct Signer {
    key: HmacSha256,
    /// How long a URL is valid, in seconds.
    ttl_secs: i64,
}

impl Signer {
    pub(crate) fn new(secret: &[u8], ttl_secs: u64) -> Signer {
        let key = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        Signer { key, ttl_secs: ttl_secs.max(60) as i64 }
    }

    fn mac(&self, id: &str, variant: Variant, reader: UserId, expires: i64) -> HmacSha256 {
        let mut mac = self.key.clone();
        // Fields separated by a byte no id, number or tag contains, so no two tuples share an
        // input.
        for part in [id, variant.tag(), &reader.0.to_string(), &expires.to_string()] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    /// The expiry of a URL signed at `now_secs`: rounded up to a tenth of the lifetime, so
    /// an entry sent twice within that window carries the same URL (browsers cache it).
    pub(crate) fn expiry(&self, now_secs: i64) -> i64 {
        let step = (self.ttl_secs / 10).max(1);
        (now_secs + self.ttl_secs + step - 1) / step * step
    }

    /// The path and query of a URL for `reader`, expiring at `expires` (seconds since the
    /// epoch): `/v1/media/{id}/content?u=..&e=..&s=..` (or `/thumbnail`).
    pub(crate) fn url(&self, id: &str, variant: Variant, reader: UserId, expires: i64) -> String {
        let sig =
            URL_SAFE_NO_PAD.encode(self.mac(id, variant, reader, expires).finalize().into_bytes());
        let leaf = match variant {
            Variant::Original => "content",
            Variant::Thumbnail => "thumbnail",
        };
        format!("/v1/media/{id}/{leaf}?u={reader}&e={expires}&s={sig}")
    }

    /// Checks a URL's query fields (constant-time comparison of the signature).
    pub(crate) fn check(
        &self,
        id: &str,
        variant: Variant,
        reader: UserId,
        expires: i64,
        sig: &str,
        now_secs: i64,
    ) -> Result<Grant, Refused> {
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Refused::BadSignature)?;
        self.mac(id, variant, reader, expires)
            .verify_slice(&sig)
            .map_err(|_| Refused::BadSignature)?;
        if expires <= now_secs {
            return Err(Refused::Expired);
        }
        Ok(Grant { reader, expires })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(url: &str) -> (UserId, i64, String) {
        let q = url.split_once('?').unwrap().1;
        let get = |k: &str| {
            q.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}="))).unwrap().to_owned()
        };
        (UserId(get("u").parse().unwrap()), get("e").parse().unwrap(), get("s"))
    }

    #[test]
    fn a_url_checks_only_for_its_id_variant_reader_and_time() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef", 3600);
        let exp = signer.expiry(1_000_000);
        assert!((1_000_000 + 3600..1_000_000 + 3600 + 360).contains(&exp), "{exp}");
        let url = signer.url("m1", Variant::Original, UserId(7), exp);
        assert!(url.starts_with("/v1/media/m1/content?u=7&e="), "{url}");
        let (u, e, s) = query(&url);
        let ok = |id, v, u, e, s: &str, now| signer.check(id, v, u, e, s, now);
        assert_eq!(
            ok("m1", Variant::Original, u, e, &s, 1_000_001),
            Ok(Grant { reader: u, expires: e })
        );
        assert_eq!(ok("m2", Variant::Original, u, e, &s, 1_000_001), Err(Refused::BadSignature));
        assert_eq!(ok("m1", Variant::Thumbnail, u, e, &s, 1_000_001), Err(Refused::BadSignature));
        assert_eq!(
            ok("m1", Variant::Original, UserId(8), e, &s, 1_000_001),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            ok("m1", Variant::Original, u, e + 1, &s, 1_000_001),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            ok("m1", Variant::Original, u, e, "AAAA", 1_000_001),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            ok("m1", Variant::Original, u, e, "not base64!", 1_000_001),
            Err(Refused::BadSignature)
        );
        assert_eq!(ok("m1", Variant::Original, u, e, &s, e), Err(Refused::Expired));
        let other = Signer::new(b"another secret, also 32 bytes...", 3600);
        assert_eq!(
            other.check("m1", Variant::Original, u, e, &s, 1_000_001),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn urls_signed_close_together_are_equal() {
        let signer = Signer::new(b"k", 3600);
        assert_eq!(signer.expiry(1_000_000), signer.expiry(1_000_001));
    }
}
