//! Every on-disk constant and codec of a queue directory, in one place.
//!
//! `docs/storage-format.md` describes these bytes for readers in other
//! languages; keep the two in step. All integers are little-endian.
//!
//! ```text
//! segment file  = segment header (32 bytes) , { record } , [ zero padding ]
//! segment header = magic[8] "\x89GMQSEG\n" | version u16 | flags u16 | base_offset u64
//!                | created_ms u64 | crc32 u32 (over the 28 bytes before it)
//! record        = crc32 u32 | len u32 | body[len]       crc32 covers len and body
//! body          = offset u64 | timestamp_ms u64 | attrs u8
//!                 [ttl_ms u64]           if attrs & TTL
//!                 [u16 len, event]       if attrs & EVENT
//!                 [u16 len, key]         if attrs & KEY
//!                 [u16 len, msg_id]      if attrs & MSG_ID
//!                 [u16 count, { u16 klen, key, u32 vlen, value }] if attrs & HEADERS
//!                 payload (the rest of the body)
//! ```
//! A record header of eight zero bytes marks the end of the log: the active
//! segment may be zero-filled past its last record (a sealed segment may not).

use bytes::Bytes;

/// Magic number at the start of every segment file. The high first byte and
/// the trailing newline catch files mangled by text-mode transfers.
pub const SEGMENT_MAGIC: [u8; 8] = *b"\x89GMQSEG\n";
/// Segment format version written by this code and the only one it reads.
pub const SEGMENT_VERSION: u16 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = 32;

/// Size of the record header: `crc32 u32 | len u32`.
pub const RECORD_HEADER_LEN: usize = 8;
/// Bytes of a body before any optional field: offset, timestamp, attrs.
pub const RECORD_FIXED_LEN: usize = 17;
/// Upper bound on a record body, checked before anything is allocated for it.
pub const MAX_RECORD_BODY: usize = 64 << 20;

/// `attrs` bits.
pub mod attrs {
    /// `ttl_ms u64` follows the fixed fields.
    pub const TTL: u8 = 1 << 0;
    /// An event name follows.
    pub const EVENT: u8 = 1 << 1;
    /// A key follows.
    pub const KEY: u8 = 1 << 2;
    /// A msg_id follows.
    pub const MSG_ID: u8 = 1 << 3;
    /// A header map follows.
    pub const HEADERS: u8 = 1 << 4;
    /// More records of the same atomic batch follow this one. A batch is
    /// complete at its first record without this bit; recovery drops an
    /// incomplete batch at the tail as a whole.
    pub const BATCH_CONT: u8 = 1 << 7;
    /// Bits this version understands; any other bit set is corruption.
    pub const KNOWN: u8 = TTL | EVENT | KEY | MSG_ID | HEADERS | BATCH_CONT;
}

/// Magic number of an index file.
pub const INDEX_MAGIC: [u8; 8] = *b"\x89GMQIDX\n";
/// Index format version.
pub const INDEX_VERSION: u16 = 1;
/// Index header: magic, version u16, reserved u16, count u32, base u64, covered u64.
pub const INDEX_HEADER_LEN: usize = 32;
/// One index entry: `offset u64 | position u64`.
pub const INDEX_ENTRY_LEN: usize = 16;
/// An index entry is written at least every this many log bytes.
pub const INDEX_INTERVAL: u64 = 4096;

/// Magic number of a queue's checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"\x89GMQCKP\n";
/// Checkpoint: magic, version u16, flags u16, reserved u32, segment base u64,
/// valid_len u64, next_offset u64, crc32 u32, reserved u32.
pub const CHECKPOINT_LEN: usize = 56;
/// Checkpoint flag: written by a clean close; nothing follows `valid_len`.
pub const CHECKPOINT_CLEAN: u16 = 1;

/// Name of the checkpoint file in a queue directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of index files.
pub const INDEX_SUFFIX: &str = ".idx";
/// Suffix of files being written before an atomic rename.
pub const TMP_SUFFIX: &str = ".tmp";
/// Directory under the data directory that holds one directory per queue.
pub const QUEUES_DIR: &str = "queues";
/// Lock file that marks a data directory as held by a live process.
pub const LOCK_FILE: &str = "LOCK";

/// `00000000000000000042.seg`: twenty digits, so directory order is log order.
pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}{SEGMENT_SUFFIX}")
}

/// `00000000000000000042.idx`.
pub fn index_file_name(base: u64) -> String {
    format!("{base:020}{INDEX_SUFFIX}")
}

/// The base offset named by a segment or index file name with `suffix`.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn read_u64(b: &[u8], at: usize) -> u64 {
    le_u64(b, at)
}

/// Encodes a segment header.
pub fn encode_segment_header(base: u64, created_ms: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base.to_le_bytes());
    h[20..28].copy_from_slice(&created_ms.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 32 bytes, or all zero: the header was never made durable.
    Missing,
    /// Present but wrong.
    Bad(String),
}

/// Decodes and checks a segment header against the base offset in its name.
pub fn decode_segment_header(h: &[u8], expected_base: u64) -> Result<u64, HeaderError> {
    if h.len() < SEGMENT_HEADER_LEN as usize || h[..SEGMENT_HEADER_LEN as usize].iter().all(|&b| b == 0) {
        return Err(HeaderError::Missing);
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Bad("bad segment magic".into()));
    }
    let crc = le_u32(h, 28);
    if crc32fast::hash(&h[..28]) != crc {
        return Err(HeaderError::Bad("segment header checksum mismatch".into()));
    }
    let version = le_u16(h, 8);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::Bad(format!("unsupported segment version {version}")));
    }
    let base = le_u64(h, 12);
    if base != expected_base {
        return Err(HeaderError::Bad(format!(
            "segment header names base offset {base}, file name says {expected_base}"
        )));
    }
    Ok(le_u64(h, 20))
}

/// A message as handed to the engine for appending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Raw payload bytes.
    pub payload: Bytes,
    /// Optional event name.
    pub event: Option<String>,
    /// Optional key.
    pub key: Option<String>,
    /// Optional string headers, in the order given.
    pub headers: Vec<(String, String)>,
    /// Optional time to live in milliseconds from `timestamp_ms`.
    pub ttl_ms: Option<u64>,
    /// Optional producer-chosen id used for deduplication.
    pub msg_id: Option<String>,
}

impl Message {
    /// A message with only a payload.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message { payload: payload.into(), ..Message::default() }
    }
}

/// A stored record: a message with the offset and timestamp the log gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position in the queue, strictly increasing, never reused.
    pub offset: u64,
    /// Wall-clock time of the append, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The message.
    pub message: Message,
}

/// Why a byte range is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the record does; `needed` is the whole record size
    /// when it is known (the length field was readable and plausible).
    Short { needed: Option<usize> },
    /// Eight zero bytes: the end of the log.
    End,
    /// The bytes are not a record.
    Invalid(String),
    /// The checksum holds but the fields do not parse: not a torn write
    /// (which cannot produce a matching checksum) but a bad writer or
    /// deliberate damage.
    Malformed(String),
}

/// Size of the encoded record for `m`, or an error naming the field that does
/// not fit the format.
pub fn encoded_len(m: &Message) -> Result<usize, String> {
    let mut n = RECORD_HEADER_LEN + RECORD_FIXED_LEN;
    if m.ttl_ms.is_some() {
        n += 8;
    }
    for (name, f) in [("event", &m.event), ("key", &m.key), ("msg_id", &m.msg_id)] {
        if let Some(s) = f {
            if s.len() > u16::MAX as usize {
                return Err(format!("{name} is {} bytes, at most {} fit", s.len(), u16::MAX));
            }
            n += 2 + s.len();
        }
    }
    if !m.headers.is_empty() {
        if m.headers.len() > u16::MAX as usize {
            return Err(format!("{} headers, at most {} fit", m.headers.len(), u16::MAX));
        }
        n += 2;
        for (k, v) in &m.headers {
            if k.len() > u16::MAX as usize {
                return Err(format!("header name is {} bytes, at most {} fit", k.len(), u16::MAX));
            }
            n += 2 + k.len() + 4 + v.len();
        }
    }
    n += m.payload.len();
    if n - RECORD_HEADER_LEN > MAX_RECORD_BODY {
        return Err(format!("record is {} bytes, at most {MAX_RECORD_BODY} fit", n - RECORD_HEADER_LEN));
    }
    Ok(n)
}

/// Appends the encoding of a record to `out`. `extra_attrs` may carry
/// [`attrs::BATCH_CONT`]. The caller has checked the message with [`encoded_len`].
pub fn encode_record(out: &mut Vec<u8>, offset: u64, timestamp_ms: u64, m: &Message, extra_attrs: u8) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    let mut a = extra_attrs;
    for (bit, present) in [
        (attrs::TTL, m.ttl_ms.is_some()),
        (attrs::EVENT, m.event.is_some()),
        (attrs::KEY, m.key.is_some()),
        (attrs::MSG_ID, m.msg_id.is_some()),
        (attrs::HEADERS, !m.headers.is_empty()),
    ] {
        if present {
            a |= bit;
        }
    }
    out.push(a);
    if let Some(ttl) = m.ttl_ms {
        out.extend_from_slice(&ttl.to_le_bytes());
    }
    for s in [&m.event, &m.key, &m.msg_id].into_iter().flatten() {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    if !m.headers.is_empty() {
        out.extend_from_slice(&(m.headers.len() as u16).to_le_bytes());
        for (k, v) in &m.headers {
            out.extend_from_slice(&(k.len() as u16).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
    }
    out.extend_from_slice(&m.payload);
    let len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A record decoded in place: the fields that recovery and indexing need,
/// and the body for building a [`Record`] on demand.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// The record's offset.
    pub offset: u64,
    /// Its timestamp.
    pub timestamp_ms: u64,
    /// Its attribute bits.
    pub attrs: u8,
    /// Whole encoded size, header included.
    pub size: usize,
    body: &'a [u8],
}

/// Reads a length-prefixed string; `Err` names what was wrong.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() - self.at < n {
            return Err(DecodeError::Invalid("field runs past the end of the record".into()));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(le_u16(self.take(2)?, 0) as usize)
    }
    fn u32(&mut self) -> Result<usize, DecodeError> {
        Ok(le_u32(self.take(4)?, 0) as usize)
    }
    fn str(&mut self, len: usize) -> Result<&'a str, DecodeError> {
        let s = self.take(len)?;
        std::str::from_utf8(s).map_err(|_| DecodeError::Invalid("string field is not UTF-8".into()))
    }
}

impl RecordRef<'_> {
    /// Whether more records of this record's atomic batch follow.
    pub fn batch_continues(&self) -> bool {
        self.attrs & attrs::BATCH_CONT != 0
    }

    /// Builds the owned record. Cannot fail on a record [`decode_record`]
    /// returned, which has already checked every field.
    pub fn to_record(&self) -> Result<Record, DecodeError> {
        let mut m = Message::default();
        let start = walk_fields(self.body, self.attrs, |f| match f {
            Field::Ttl(t) => m.ttl_ms = Some(t),
            Field::Event(e) => m.event = Some(e.to_owned()),
            Field::Key(k) => m.key = Some(k.to_owned()),
            Field::MsgId(i) => m.msg_id = Some(i.to_owned()),
            Field::Header(k, v) => m.headers.push((k.to_owned(), v.to_owned())),
        })?;
        m.payload = Bytes::copy_from_slice(&self.body[start..]);
        Ok(Record { offset: self.offset, timestamp_ms: self.timestamp_ms, message: m })
    }
}

/// One optional field of a record body, borrowed.
enum Field<'a> {
    Ttl(u64),
    Event(&'a str),
    Key(&'a str),
    MsgId(&'a str),
    Header(&'a str, &'a str),
}

/// Walks the optional fields of a body in format order, checking each
/// (bounds, UTF-8, canonical form: a header map is present only when it has
/// entries, as the encoder writes it), and returns where the payload starts.
fn walk_fields<'a>(body: &'a [u8], a: u8, mut f: impl FnMut(Field<'a>)) -> Result<usize, DecodeError> {
    let mut c = Cursor { b: body, at: RECORD_FIXED_LEN };
    if a & attrs::TTL != 0 {
        f(Field::Ttl(le_u64(c.take(8)?, 0)));
    }
    for bit in [attrs::EVENT, attrs::KEY, attrs::MSG_ID] {
        if a & bit != 0 {
            let n = c.u16()?;
            let v = c.str(n)?;
            f(match bit {
                attrs::EVENT => Field::Event(v),
                attrs::KEY => Field::Key(v),
                _ => Field::MsgId(v),
            });
        }
    }
    if a & attrs::HEADERS != 0 {
        let count = c.u16()?;
        if count == 0 {
            return Err(DecodeError::Invalid("header map flagged but empty".into()));
        }
        for _ in 0..count {
            let kl = c.u16()?;
            let k = c.str(kl)?;
            let vl = c.u32()?;
            let v = c.str(vl)?;
            f(Field::Header(k, v));
        }
    }
    Ok(c.at)
}

/// Decodes the record at the start of `buf`, checking its length bound and
/// checksum before anything else looks at it, then every field, so that a
/// record this accepts can always be read.
pub fn decode_record(buf: &[u8]) -> Result<RecordRef<'_>, DecodeError> {
    if buf.len() < RECORD_HEADER_LEN {
        if !buf.is_empty() && buf.iter().all(|&b| b == 0) {
            return Err(DecodeError::End);
        }
        return Err(DecodeError::Short { needed: None });
    }
    let crc = le_u32(buf, 0);
    let len = le_u32(buf, 4) as usize;
    if crc == 0 && len == 0 {
        return Err(DecodeError::End);
    }
    if !(RECORD_FIXED_LEN..=MAX_RECORD_BODY).contains(&len) {
        return Err(DecodeError::Invalid(format!("record length {len} out of range")));
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Err(DecodeError::Short { needed: Some(total) });
    }
    if crc32fast::hash(&buf[4..total]) != crc {
        return Err(DecodeError::Invalid("record checksum mismatch".into()));
    }
    let body = &buf[RECORD_HEADER_LEN..total];
    let attrs = body[16];
    if attrs & !attrs::KNOWN != 0 {
        return Err(DecodeError::Invalid(format!("unknown attribute bits {attrs:#04x}")));
    }
    walk_fields(body, attrs, |_| {}).map_err(|e| match e {
        DecodeError::Invalid(m) => DecodeError::Malformed(m),
        e => e,
    })?;
    Ok(RecordRef { offset: le_u64(body, 0), timestamp_ms: le_u64(body, 8), attrs, size: total, body })
}

/// Encodes an index file.
pub fn encode_index(base: u64, covered: u64, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN + entries.len() * INDEX_ENTRY_LEN + 4);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&covered.to_le_bytes());
    for (o, p) in entries {
        out.extend_from_slice(&o.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks an index file and returns `(count, covered)`; entries are read in
/// place with [`index_entry`]. Entries must increase in both fields and point
/// inside the covered part of the segment.
pub fn check_index(b: &[u8], base: u64) -> Result<(usize, u64), String> {
    if b.len() < INDEX_HEADER_LEN + 4 || b[0..8] != INDEX_MAGIC {
        return Err("bad index magic or size".into());
    }
    if le_u16(b, 8) != INDEX_VERSION {
        return Err("unsupported index version".into());
    }
    let count = le_u32(b, 12) as usize;
    if b.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN + 4 {
        return Err("index size does not match its entry count".into());
    }
    let body = b.len() - 4;
    if crc32fast::hash(&b[..body]) != le_u32(b, body) {
        return Err("index checksum mismatch".into());
    }
    if le_u64(b, 16) != base {
        return Err("index names another segment".into());
    }
    let covered = le_u64(b, 24);
    let mut prev: Option<(u64, u64)> = None;
    for i in 0..count {
        let (o, p) = index_entry(b, i);
        if o < base || p < SEGMENT_HEADER_LEN || p >= covered || prev.is_some_and(|(po, pp)| o <= po || p <= pp) {
            return Err(format!("index entry {i} is out of order or out of range"));
        }
        prev = Some((o, p));
    }
    Ok((count, covered))
}

/// The entry count of an index already checked with [`check_index`], or
/// `None` when the bytes are not an index of a consistent size.
pub fn check_index_header(b: &[u8]) -> Option<usize> {
    if b.len() < INDEX_HEADER_LEN + 4 || b[0..8] != INDEX_MAGIC {
        return None;
    }
    let count = le_u32(b, 12) as usize;
    (b.len() == INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN + 4).then_some(count)
}

/// Entry `i` of a checked index file.
pub fn index_entry(b: &[u8], i: usize) -> (u64, u64) {
    let at = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
    (le_u64(b, at), le_u64(b, at + 8))
}

/// A queue's recovery checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Base offset of the segment that was active.
    pub segment: u64,
    /// Bytes of that segment known to hold only valid, synced records.
    pub valid_len: u64,
    /// The offset the next record would get.
    pub next_offset: u64,
    /// Written by a clean close: nothing was appended after it.
    pub clean: bool,
}

/// Encodes a checkpoint.
pub fn encode_checkpoint(c: &Checkpoint) -> [u8; CHECKPOINT_LEN] {
    let mut b = [0u8; CHECKPOINT_LEN];
    b[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    b[8..10].copy_from_slice(&1u16.to_le_bytes());
    let flags = if c.clean { CHECKPOINT_CLEAN } else { 0 };
    b[10..12].copy_from_slice(&flags.to_le_bytes());
    b[16..24].copy_from_slice(&c.segment.to_le_bytes());
    b[24..32].copy_from_slice(&c.valid_len.to_le_bytes());
    b[32..40].copy_from_slice(&c.next_offset.to_le_bytes());
    let crc = crc32fast::hash(&b[..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a checkpoint; `None` when it is absent, torn or of another version.
pub fn decode_checkpoint(b: &[u8]) -> Option<Checkpoint> {
    if b.len() != CHECKPOINT_LEN || b[0..8] != CHECKPOINT_MAGIC || le_u16(b, 8) != 1 {
        return None;
    }
    if crc32fast::hash(&b[..40]) != le_u32(b, 40) {
        return None;
    }
    Some(Checkpoint {
        segment: le_u64(b, 16),
        valid_len: le_u64(b, 24),
        next_offset: le_u64(b, 32),
        clean: le_u16(b, 10) & CHECKPOINT_CLEAN != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        Message {
            payload: Bytes::from_static(b"hello"),
            event: Some("created".into()),
            key: Some("order-17".into()),
            headers: vec![("reply_to".into(), "replies.abc".into()), ("x".into(), String::new())],
            ttl_ms: Some(5000),
            msg_id: Some("m-1".into()),
        }
    }

    #[test]
    fn record_round_trips_with_every_field() {
        for m in [Message::new(&b""[..]), Message::new(&b"x"[..]), full()] {
            let mut buf = Vec::new();
            encode_record(&mut buf, 42, 1_763_800_000_000, &m, 0);
            assert_eq!(buf.len(), encoded_len(&m).unwrap());
            let r = decode_record(&buf).unwrap();
            assert_eq!(r.size, buf.len());
            let rec = r.to_record().unwrap();
            assert_eq!(rec, Record { offset: 42, timestamp_ms: 1_763_800_000_000, message: m });
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 9, &full(), 0);
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&b).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn zero_header_is_end_and_short_is_short() {
        assert_eq!(decode_record(&[0; 8]).unwrap_err(), DecodeError::End);
        assert_eq!(decode_record(&[0; 3]).unwrap_err(), DecodeError::End);
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 1, &Message::new(&b"abc"[..]), 0);
        assert_eq!(decode_record(&buf[..buf.len() - 1]).unwrap_err(), DecodeError::Short { needed: Some(buf.len()) });
        assert_eq!(decode_record(&buf[..5]).unwrap_err(), DecodeError::Short { needed: None });
    }

    #[test]
    fn a_record_that_decodes_always_reads_and_re_encodes_identically() {
        // A checksummed body whose header map is flagged but empty, and one
        // whose event length runs past the body: both are refused up front.
        for body_tail in [&[0x10u8, 0, 0][..], &[0x02, 0xff, 0x00][..]] {
            let mut body = vec![0u8; 16];
            body.extend_from_slice(body_tail);
            let mut rec = Vec::new();
            rec.extend_from_slice(&[0; 4]);
            rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
            rec.extend_from_slice(&body);
            let crc = crc32fast::hash(&rec[4..]);
            rec[..4].copy_from_slice(&crc.to_le_bytes());
            assert!(matches!(decode_record(&rec), Err(DecodeError::Malformed(_))), "{body_tail:?}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocation() {
        let mut b = [0u8; 8];
        b[0] = 1;
        b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_record(&b), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn header_index_checkpoint_round_trip() {
        let h = encode_segment_header(100, 5);
        assert_eq!(decode_segment_header(&h, 100), Ok(5));
        assert!(matches!(decode_segment_header(&h, 101), Err(HeaderError::Bad(_))));
        assert_eq!(decode_segment_header(&[0; 32], 100), Err(HeaderError::Missing));
        let idx = encode_index(100, 9000, &[(100, 32), (150, 4200)]);
        assert_eq!(check_index(&idx, 100), Ok((2, 9000)));
        assert_eq!(index_entry(&idx, 1), (150, 4200));
        assert!(check_index(&idx, 99).is_err());
        let c = Checkpoint { segment: 100, valid_len: 4242, next_offset: 180, clean: true };
        assert_eq!(decode_checkpoint(&encode_checkpoint(&c)), Some(c));
        let mut bad = encode_checkpoint(&c);
        bad[30] ^= 1;
        assert_eq!(decode_checkpoint(&bad), None);
    }

    #[test]
    fn file_names_sort_as_offsets() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name("00000000000000000042.seg", SEGMENT_SUFFIX), Some(42));
        assert_eq!(parse_file_name("42.seg", SEGMENT_SUFFIX), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg", SEGMENT_SUFFIX), None);
    }
}
