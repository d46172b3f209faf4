//! Which upload types are allowed, and how large each may be (`media_types`).

use anyhow::bail;
use natter_media::{Kind, Sniffed};

use crate::config::Limits;

/// The allow-list: patterns tried in order, the first match giving the type's cap.
#[derive(Debug, Clone)]
pub(crate) struct TypePolicy {
    rules: Vec<Rule>,
    max_upload: u64,
    max_image: u64,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `image/png` exactly, or (ending in `*`) every type starting with what precedes it.
    pattern: String,
    cap: Option<u64>,
}

impl Rule {
    fn matches(&self, content_type: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => content_type.starts_with(prefix),
            None => content_type == self.pattern,
        }
    }
}

/// Why an upload's type or size is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TypeRefusal {
    NotAllowed,
    TooLarge { cap: u64 },
}

impl TypePolicy {
    /// Reads `type/subtype`, `type/*` or `*`, each optionally `=max_bytes`.
    pub(crate) fn parse(patterns: &[String], limits: &Limits) -> anyhow::Result<TypePolicy> {
        let mut rules = Vec::with_capacity(patterns.len());
        for raw in patterns {
            let (pattern, cap) = match raw.split_once('=') {
                Some((p, cap)) => match cap.trim().parse::<u64>() {
                    Ok(cap) if cap > 0 => (p, Some(cap)),
                    _ => bail!("media_types: {raw:?}: the cap must be a positive byte count"),
                },
                None => (raw.as_str(), None),
            };
            let pattern = pattern.trim().to_ascii_lowercase();
            let valid = pattern == "*"
                || pattern.split_once('/').is_some_and(|(top, sub)| {
                    !top.is_empty()
                        && !top.contains('*')
                        && !sub.is_empty()
                        && !sub.trim_end_matches('*').contains('*')
                });
            if !valid {
                bail!("media_types: {raw:?} is not type/subtype, type/* or *");
            }
            rules.push(Rule { pattern, cap });
        }
        Ok(TypePolicy {
            rules,
            max_upload: limits.max_upload_bytes,
            max_image: limits.max_image_bytes,
        })
    }

    /// The most bytes any upload may have, whatever its type.
    pub(crate) fn max_upload(&self) -> u64 {
        self.max_upload
    }

    /// The cap for an upload sniffed as `sniffed`, or why it is refused outright.
    pub(crate) fn cap(&self, sniffed: &Sniffed) -> Result<u64, TypeRefusal> {
        let rule = self.rules.iter().find(|r| r.matches(sniffed.content_type));
        let Some(rule) = rule else { return Err(TypeRefusal::NotAllowed) };
        let mut cap = rule.cap.unwrap_or(u64::MAX).min(self.max_upload);
        if decodable(sniffed) {
            cap = cap.min(self.max_image);
        }
        Ok(cap)
    }

    /// Checks an upload of `size` bytes sniffed as `sniffed`.
    pub(crate) fn check(&self, sniffed: &Sniffed, size: u64) -> Result<(), TypeRefusal> {
        let cap = self.cap(sniffed)?;
        if size > cap {
            return Err(TypeRefusal::TooLarge { cap });
        }
        Ok(())
    }
}

/// Images the server decodes (for their thumbnail, and to strip their metadata).
pub(crate) fn decodable(sniffed: &Sniffed) -> bool {
    sniffed.kind == Kind::Image
        && matches!(sniffed.content_type, "image/jpeg" | "image/png" | "image/gif" | "image/webp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> anyhow::Result<TypePolicy> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        TypePolicy::parse(&patterns, &Limits::default())
    }

    const PNG: Sniffed = Sniffed { content_type: "image/png", kind: Kind::Image };
    const MP4: Sniffed = Sniffed { content_type: "video/mp4", kind: Kind::Video };
    const EXE: Sniffed = Sniffed { content_type: "application/x-msdownload", kind: Kind::Other };

    #[test]
    fn first_match_gives_the_cap_and_images_keep_theirs() {
        let p = policy(&["video/mp4=1000", "video/*", "image/*"]).unwrap();
        let l = Limits::default();
        assert_eq!(p.cap(&MP4), Ok(1000));
        let webm = Sniffed { content_type: "video/webm", kind: Kind::Video };
        assert_eq!(p.cap(&webm), Ok(l.max_upload_bytes));
        assert_eq!(p.cap(&PNG), Ok(l.max_image_bytes));
        assert_eq!(p.cap(&EXE), Err(TypeRefusal::NotAllowed));
        assert_eq!(p.check(&MP4, 1001), Err(TypeRefusal::TooLarge { cap: 1000 }));
        assert_eq!(p.check(&MP4, 1000), Ok(()));
        assert_eq!(policy(&["*"]).unwrap().cap(&EXE), Ok(l.max_upload_bytes));
    }

    #[test]
    fn bad_patterns_fail() {
        for bad in ["image", "*/png", "image/*=0", "image/*=lots", "im*ge/png", "/png"] {
            assert!(policy(&[bad]).is_err(), "{bad}");
        }
        let defaults: Vec<&str> = crate::config::DEFAULT_MEDIA_TYPES.to_vec();
        assert!(policy(&defaults).is_ok());
    }
}
