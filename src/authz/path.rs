//! Request path normalization, done once before any policy or route sees a path; the request
//! is then forwarded with this path, so the application receives the path the policy saw.
//! It is Istio's strictest option, `DECODE_AND_MERGE_SLASHES`, which includes `BASE` (RFC 3986
//! §6.2.2: escapes of unreserved characters decoded, other escapes upper-cased, `.` and `..`
//! segments removed, `\` read as `/`) and `MERGE_SLASHES`, and also decodes `%2F` and `%5C`.
//! Decoding happens first, so `/a/%2e%2e/b` and `/a%2F..%2Fb` are both `/b`. A path that cannot
//! be read safely (a bad escape, a control character, a fragment) is refused, never guessed.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("the path has a control character, space or fragment at byte {0}")]
    Forbidden(usize),
}

/// Normalizes a request path (without its query). Borrows when the path is already normal,
/// which is the common case and costs one scan.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        // `OPTIONS *`: no path to normalize.
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// True when normalizing would change nothing; errors for bytes no path may carry.
fn is_normal(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    let mut normal = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0..=0x20 | 0x7f | b'#' => return Err(PathError::Forbidden(i)),
            b'%' | b'\\' => normal = false,
            b'/' if matches!(bytes.get(i + 1), Some(b'/')) => normal = false,
            b'.' if bytes[i - 1] == b'/'
                && matches!(
                    (bytes.get(i + 1), bytes.get(i + 2)),
                    (None | Some(b'/'), _) | (Some(b'.'), None | Some(b'/'))
                ) =>
            {
                normal = false
            }
            0x80.. => normal = false,
            _ => {}
        }
    }
    Ok(normal)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters, `/` and `\`; upper-cases the others; escapes
/// bytes outside ASCII; reads `\` as `/`; merges runs of `/`.
fn decode(path: &str) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let push = |out: &mut String, c: char| {
        if c == '/' && out.ends_with('/') {
            return;
        }
        out.push(c);
    };
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape(i));
                };
                let d = h << 4 | l;
                match d {
                    b'/' | b'\\' => push(&mut out, '/'),
                    d if unreserved(d) => push(&mut out, d as char),
                    d => {
                        out.push('%');
                        out.push(HEX[(d >> 4) as usize] as char);
                        out.push(HEX[(d & 15) as usize] as char);
                    }
                }
                i += 3;
                continue;
            }
            b'\\' => push(&mut out, '/'),
            0..=0x20 | 0x7f | b'#' => return Err(PathError::Forbidden(i)),
            0x80.. => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            _ => push(&mut out, b as char),
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path whose slashes are already merged: `.` segments go,
/// `..` removes the segment before it (never above the root), a final `.`/`..` leaves `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                kept.pop();
                trailing_slash = last;
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &kept {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{PathError, normalize};

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/a?"] {
            assert!(
                matches!(normalize(p), Ok(std::borrow::Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn normalizes_as_decode_and_merge_slashes() {
        let cases = [
            ("/a/../b", "/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("//a///b", "/a/b"),
            ("/a\\b", "/a/b"),
            ("/a%2Fb", "/a/b"),
            ("/a%2fb", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/a%2F..%2Fadmin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%20b", "/a%20b"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a/..//admin", "/admin"),
            ("/admin/", "/admin/"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_safely() {
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize("/a#frag"), Err(PathError::Forbidden(2)));
        assert_eq!(normalize("/a b"), Err(PathError::Forbidden(2)));
        assert_eq!(normalize("/a\0"), Err(PathError::Forbidden(2)));
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for raw in [
            "/a/%2e%2e/%2e/b//c",
            "/x\\..\\y",
            "/%7euser/../~me",
            "/a/b/../../..",
        ] {
            let once = normalize(raw).unwrap().into_owned();
            assert_eq!(normalize(&once).unwrap(), once, "{raw}");
        }
    }
}
