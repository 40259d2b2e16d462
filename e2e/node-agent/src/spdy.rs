//! SPDY/3.1 framing as client-go's remotecommand speaks it (through moby/spdystream): frame
//! encoding and decoding, and the header blocks' zlib compression with SPDY/3's preset
//! dictionary. The exec session built on it lives in `server.rs`.

use std::sync::LazyLock;

use anyhow::{Context, bail, ensure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender is done with the stream.
pub const FLAG_FIN: u8 = 0x01;
/// SPDY/3.1's initial flow-control window, per stream and per session.
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// GOAWAY status OK.
pub const GOAWAY_OK: u32 = 0;
/// The largest frame payload read. The wire allows 16 MiB; client-go sends its stdin in
/// 32 KiB writes, so anything near this bound is a broken or hostile peer.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The largest decompressed header block accepted (a zlib bomb stops here).
const MAX_HEADER_BLOCK: usize = 64 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Header name/value pairs; names are lowercase on the wire.
pub type Headers = Vec<(String, String)>;

/// One frame, its header block already decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// Entries of (flags, id, value).
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
    /// A control frame type this module does not know; SPDY says to ignore it.
    Unknown {
        kind: u16,
    },
}

/// SPDY/3's zlib dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): these words, each
/// after its length as a 32-bit big-endian number, then the tail verbatim.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
});

/// The compressing side of one direction of a session: SPDY keeps one zlib stream per
/// direction for the whole connection, each header block ending in a sync flush.
pub struct HeaderCompressor(Compress);

impl HeaderCompressor {
    pub fn new() -> anyhow::Result<Self> {
        let mut z = Compress::new(Compression::default(), true);
        // Must come before the first byte is compressed (deflateSetDictionary's rule).
        z.set_dictionary(&DICTIONARY)
            .context("setting the SPDY dictionary")?;
        Ok(Self(z))
    }

    fn compress(&mut self, block: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(1024);
            }
            let before = self.0.total_in();
            self.0
                .compress_vec(&block[pos..], &mut out, FlushCompress::Sync)
                .context("compressing a header block")?;
            pos += (self.0.total_in() - before) as usize;
            // Done once all input is in and the flush left spare room (nothing pending).
            if pos == block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The decompressing side of one direction of a session (see `HeaderCompressor`).
pub struct HeaderDecompressor(Decompress);

impl HeaderDecompressor {
    pub fn new() -> Self {
        Self(Decompress::new(true))
    }

    fn decompress(&mut self, input: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                ensure!(
                    out.len() < MAX_HEADER_BLOCK,
                    "header block over {MAX_HEADER_BLOCK} bytes"
                );
                out.reserve(4096);
            }
            let (before_in, before_out) = (self.0.total_in(), self.0.total_out());
            let result = self
                .0
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.0.total_in() - before_in) as usize;
            match result {
                // The first block's zlib header names the preset dictionary.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&DICTIONARY)
                        .context("setting the SPDY dictionary")?;
                    continue;
                }
                Err(e) => bail!("header block: {e}"),
                Ok(Status::StreamEnd) => bail!("header block ended the zlib stream"),
                Ok(_) => {}
            }
            let progressed = self.0.total_in() != before_in || self.0.total_out() != before_out;
            if pos == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            ensure!(progressed, "truncated header block");
        }
    }
}

fn encode_headers(headers: &Headers, z: &mut HeaderCompressor) -> anyhow::Result<Vec<u8>> {
    let mut block = Vec::new();
    block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        for part in [name.to_ascii_lowercase().as_str(), value.as_str()] {
            block.extend_from_slice(&(part.len() as u32).to_be_bytes());
            block.extend_from_slice(part.as_bytes());
        }
    }
    z.compress(&block)
}

fn decode_headers(compressed: &[u8], z: &mut HeaderDecompressor) -> anyhow::Result<Headers> {
    let block = z.decompress(compressed)?;
    let mut r = Reader(&block);
    let count = r.u32()?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = r.string()?;
        let value = r.string()?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    ensure!(r.0.is_empty(), "trailing bytes after the header block");
    Ok(headers)
}

/// A cursor over a frame's payload; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        ensure!(self.0.len() >= n, "frame too short");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 31-bit stream id (the top bit is reserved).
    fn id(&mut self) -> anyhow::Result<u32> {
        Ok(self.u32()? & 0x7fff_ffff)
    }

    fn string(&mut self) -> anyhow::Result<String> {
        let n = self.u32()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    ensure!(payload.len() < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn be(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

impl Frame {
    /// The frame's bytes on the wire; header blocks go through `z`, so frames must be
    /// written in the order they are encoded.
    pub fn encode(&self, z: &mut HeaderCompressor) -> anyhow::Result<Vec<u8>> {
        match self {
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers,
            } => {
                let mut p = be(&[*stream & 0x7fff_ffff, *associated & 0x7fff_ffff]);
                p.extend_from_slice(&[(priority & 0x7) << 5, 0]);
                p.extend(encode_headers(headers, z)?);
                control(SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream,
                flags,
                headers,
            } => {
                let mut p = be(&[*stream & 0x7fff_ffff]);
                p.extend(encode_headers(headers, z)?);
                control(SYN_REPLY, *flags, &p)
            }
            Frame::Headers {
                stream,
                flags,
                headers,
            } => {
                let mut p = be(&[*stream & 0x7fff_ffff]);
                p.extend(encode_headers(headers, z)?);
                control(HEADERS, *flags, &p)
            }
            Frame::RstStream { stream, status } => {
                control(RST_STREAM, 0, &be(&[*stream & 0x7fff_ffff, *status]))
            }
            Frame::Settings { flags, entries } => {
                let mut p = be(&[entries.len() as u32]);
                for (flags, id, value) in entries {
                    p.extend(be(&[(u32::from(*flags) << 24) | (id & 0xff_ffff), *value]));
                }
                control(SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(PING, 0, &be(&[*id])),
            Frame::GoAway { last_good, status } => {
                control(GOAWAY, 0, &be(&[*last_good & 0x7fff_ffff, *status]))
            }
            Frame::WindowUpdate { stream, delta } => control(
                WINDOW_UPDATE,
                0,
                &be(&[*stream & 0x7fff_ffff, *delta & 0x7fff_ffff]),
            ),
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                ensure!(data.len() < 1 << 24, "data frame too long");
                let mut out = be(&[
                    *stream & 0x7fff_ffff,
                    (u32::from(*flags) << 24) | data.len() as u32,
                ]);
                out.extend_from_slice(data);
                Ok(out)
            }
            Frame::Unknown { kind } => bail!("cannot encode unknown frame type {kind}"),
        }
    }

    /// Decodes a frame from its 8-byte head and its payload.
    pub fn decode(
        head: [u8; 8],
        payload: &[u8],
        z: &mut HeaderDecompressor,
    ) -> anyhow::Result<Frame> {
        let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        if first & 0x8000_0000 == 0 {
            return Ok(Frame::Data {
                stream: first & 0x7fff_ffff,
                flags,
                data: payload.to_vec(),
            });
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        ensure!(version == VERSION, "SPDY version {version}, not {VERSION}");
        let kind = (first & 0xffff) as u16;
        let mut r = Reader(payload);
        let frame = match kind {
            SYN_STREAM => {
                let stream = r.id()?;
                let associated = r.id()?;
                let priority = r.take(2)?[0] >> 5;
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    flags,
                    headers: decode_headers(r.0, z)?,
                }
            }
            SYN_REPLY => Frame::SynReply {
                stream: r.id()?,
                flags,
                headers: decode_headers(&payload[4.min(payload.len())..], z)?,
            },
            HEADERS => Frame::Headers {
                stream: r.id()?,
                flags,
                headers: decode_headers(&payload[4.min(payload.len())..], z)?,
            },
            RST_STREAM => Frame::RstStream {
                stream: r.id()?,
                status: r.u32()?,
            },
            SETTINGS => {
                let count = r.u32()?;
                let mut entries = Vec::new();
                for _ in 0..count {
                    let word = r.u32()?;
                    entries.push(((word >> 24) as u8, word & 0xff_ffff, r.u32()?));
                }
                Frame::Settings { flags, entries }
            }
            PING => Frame::Ping { id: r.u32()? },
            GOAWAY => Frame::GoAway {
                last_good: r.id()?,
                status: r.u32()?,
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream: r.id()?,
                delta: r.id()?,
            },
            kind => Frame::Unknown { kind },
        };
        Ok(frame)
    }
}

/// Reads the next frame; `None` at a clean end of the connection (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    z: &mut HeaderDecompressor,
) -> anyhow::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut head[1..])
        .await
        .context("reading a frame head")?;
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    ensure!(len <= MAX_PAYLOAD, "frame of {len} bytes");
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)
        .await
        .context("reading a frame payload")?;
    Frame::decode(head, &payload, z).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frames: &[Frame]) {
        let (mut tx, mut rx) = (HeaderCompressor::new().unwrap(), HeaderDecompressor::new());
        for frame in frames {
            let bytes = frame.encode(&mut tx).unwrap();
            let head: [u8; 8] = bytes[..8].try_into().unwrap();
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            assert_eq!(len, bytes.len() - 8, "{frame:?}: length field");
            assert_eq!(&Frame::decode(head, &bytes[8..], &mut rx).unwrap(), frame);
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_is_spdy3s() {
        // The Adler-32 that every SPDY/3 header stream's zlib header names (its DICTID), and
        // the length the draft gives: a transcription error changes one or the other.
        let dict = &*DICTIONARY;
        assert_eq!(dict.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for byte in dict {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn every_frame_type_round_trips_through_one_compression_context() {
        round_trip(&[
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream: 3,
                associated: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "stdout"), ("x-extra", "a\0b")]),
            },
            Frame::SynReply {
                stream: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream: 3,
                flags: FLAG_FIN,
                headers: h(&[("k", "v")]),
            },
            Frame::RstStream {
                stream: 5,
                // PROTOCOL_ERROR
                status: 1,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![(1, 7, INITIAL_WINDOW)],
            },
            Frame::Ping { id: 0x8000_0001 },
            Frame::GoAway {
                last_good: 7,
                status: GOAWAY_OK,
            },
            Frame::WindowUpdate {
                stream: 0,
                delta: 65_535,
            },
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream: 0x7fff_ffff,
                flags: 0,
                data: vec![],
            },
        ]);
    }

    #[test]
    fn frame_layout_matches_the_spec() {
        let mut z = HeaderCompressor::new().unwrap();
        // Control bit, version 3, type 6, no flags, length 4, id.
        assert_eq!(
            Frame::Ping { id: 7 }.encode(&mut z).unwrap(),
            [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]
        );
        // Data: stream id, FLAG_FIN, length 2, payload.
        assert_eq!(
            Frame::Data {
                stream: 5,
                flags: FLAG_FIN,
                data: b"hi".to_vec()
            }
            .encode(&mut z)
            .unwrap(),
            [0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(
            Frame::WindowUpdate {
                stream: 1,
                delta: 0x1234
            }
            .encode(&mut z)
            .unwrap(),
            [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0x12, 0x34]
        );
    }

    #[test]
    fn decodes_header_blocks_compressed_by_c_zlib() {
        // Two consecutive blocks ({streamtype: error}, then {streamtype: stdout}) from one
        // zlib stream with the SPDY dictionary, made by C zlib (Python's zlib.compressobj with
        // zdict, level 9, Z_SYNC_FLUSH after each): the second depends on the first's window.
        let first = [
            0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0xa6, 0x23, 0x46, 0x70, 0x3a, 0x2b, 0x29,
            0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x06, 0x00, 0x00, 0x00,
            0xff, 0xff,
        ];
        let second = [
            0xc2, 0x2a, 0x05, 0x4c, 0xcc, 0x29, 0xf9, 0xa5, 0x25, 0x00, 0x00, 0x00, 0x00, 0xff,
            0xff,
        ];
        let mut z = HeaderDecompressor::new();
        assert_eq!(
            decode_headers(&first, &mut z).unwrap(),
            h(&[("streamtype", "error")])
        );
        assert_eq!(
            decode_headers(&second, &mut z).unwrap(),
            h(&[("streamtype", "stdout")])
        );
    }

    #[test]
    fn rejects_malformed_frames() {
        let mut z = HeaderDecompressor::new();
        // SPDY/2 control frame.
        let head = [0x80, 2, 0, 6, 0, 0, 0, 4];
        assert!(Frame::decode(head, &[0, 0, 0, 1], &mut z).is_err());
        // A PING too short for its id.
        let head = [0x80, 3, 0, 6, 0, 0, 0, 2];
        assert!(Frame::decode(head, &[0, 1], &mut z).is_err());
        // A SYN_STREAM whose header block is not zlib.
        let head = [0x80, 3, 0, 1, 0, 0, 0, 14];
        let payload = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(Frame::decode(head, &payload, &mut HeaderDecompressor::new()).is_err());
        // Unknown control types are ignored, not errors.
        let head = [0x80, 3, 0, 0x0a, 0, 0, 0, 0];
        assert_eq!(
            Frame::decode(head, &[], &mut z).unwrap(),
            Frame::Unknown { kind: 10 }
        );
    }

    #[test]
    fn a_header_bomb_is_refused() {
        let mut tx = HeaderCompressor::new().unwrap();
        let big = "x".repeat(MAX_HEADER_BLOCK * 2);
        let compressed = encode_headers(&h(&[("k", &big)]), &mut tx).unwrap();
        assert!(
            compressed.len() < 4096,
            "compresses well: {}",
            compressed.len()
        );
        let err = decode_headers(&compressed, &mut HeaderDecompressor::new()).unwrap_err();
        assert!(err.to_string().contains("over"), "{err}");
    }

    #[tokio::test]
    async fn reads_frames_from_a_byte_stream_and_ends_cleanly() {
        let mut tx = HeaderCompressor::new().unwrap();
        let frames = [
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "stdin")]),
            },
            Frame::Data {
                stream: 1,
                flags: FLAG_FIN,
                data: b"input".to_vec(),
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(f.encode(&mut tx).unwrap());
        }
        let mut r = wire.as_slice();
        let mut z = HeaderDecompressor::new();
        for f in &frames {
            assert_eq!(read_frame(&mut r, &mut z).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r, &mut z).await.unwrap(), None);
        // A connection cut inside a frame is an error, not a clean end.
        let mut cut = &wire[..5];
        assert!(
            read_frame(&mut cut, &mut HeaderDecompressor::new())
                .await
                .is_err()
        );
    }
}
