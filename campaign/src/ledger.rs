//! What clients saw, and the check of it against the delivery contract.
//!
//! Producers record every publish they attempt and every one the server
//! acknowledged (queue, offset, `msg_id`, payload); consumers record every
//! delivery and every ack the server confirmed. Payloads carry their own id
//! and checksum, so a delivery can be traced to its publish and checked
//! byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

/// A payload that names itself: `id|crc32(filler)|filler`.
pub fn payload(id: &str, filler_len: usize, salt: u64) -> Vec<u8> {
    let filler: Vec<u8> = (0..filler_len).map(|i| b'a' + ((salt as usize + i * 7) % 26) as u8).collect();
    let mut p = format!("{id}|{:08x}|", crc32fast::hash(&filler)).into_bytes();
    p.extend_from_slice(&filler);
    p
}

/// The id of a payload, if its checksum holds.
pub fn check_payload(p: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(p).map_err(|_| "not UTF-8".to_owned())?;
    let mut parts = text.splitn(3, '|');
    let (Some(id), Some(crc), Some(filler)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("not a campaign payload: {:?}", &text[..text.len().min(40)]));
    };
    if u32::from_str_radix(crc, 16).ok() != Some(crc32fast::hash(filler.as_bytes())) {
        return Err(format!("{id}: checksum mismatch"));
    }
    Ok(id.to_owned())
}

/// One delivery as a consumer saw it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Queue.
    pub queue: String,
    /// Group.
    pub group: String,
    /// Offset.
    pub offset: u64,
    /// The payload's id, or why it is not a valid payload.
    pub id: Result<String, String>,
    /// The server's delivery count.
    pub deliveries: u32,
    /// Which consumer connection (unique over the campaign).
    pub consumer: u64,
    /// Position in the ledger's global order of events.
    pub at: u64,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Ledger {
    seq: u64,
    /// Every publish attempted, by payload id.
    pub attempted: BTreeSet<String>,
    /// Payload ids published with a `msg_id` (at most one copy may be stored).
    pub with_msg_id: BTreeSet<String>,
    /// Acknowledged publishes: `(queue, offset)` → payload id.
    pub acked: BTreeMap<(String, u64), String>,
    /// An offset acknowledged for one payload, then for another: the first
    /// was lost (a crash gave its offset away).
    pub reused: Vec<((String, u64), String, String)>,
    /// Deliveries, in the order recorded.
    pub delivered: Vec<Delivered>,
    /// Acks sent (before the answer): `(queue, group, offset)`.
    pub ack_attempts: HashSet<(String, String, u64)>,
    /// Confirmed acks: `(queue, group, offset)` → when.
    pub acks: HashMap<(String, String, u64), u64>,
    /// Manual-ack groups that must see, and ack, every acknowledged message
    /// of their queue.
    pub complete_groups: BTreeSet<(String, String)>,
    /// Auto-ack groups: at most once, so never the same offset twice.
    pub auto_groups: BTreeSet<(String, String)>,
}

impl Ledger {
    fn tick(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A publish is about to be sent.
    pub fn attempt(&mut self, id: &str) {
        self.attempted.insert(id.to_owned());
    }

    /// A publish with a `msg_id` is about to be sent.
    pub fn attempt_with_msg_id(&mut self, id: &str) {
        self.attempt(id);
        self.with_msg_id.insert(id.to_owned());
    }

    /// The server acknowledged a publish.
    pub fn published(&mut self, queue: &str, offset: u64, id: &str) {
        self.tick();
        if let Some(old) = self.acked.insert((queue.to_owned(), offset), id.to_owned()) {
            if old != id {
                self.reused.push(((queue.to_owned(), offset), old, id.to_owned()));
            }
        }
    }

    /// A consumer received a message.
    pub fn delivered(&mut self, queue: &str, group: &str, consumer: u64, offset: u64, payload: &[u8], deliveries: u32) {
        let at = self.tick();
        self.delivered.push(Delivered {
            queue: queue.to_owned(),
            group: group.to_owned(),
            offset,
            id: check_payload(payload),
            deliveries,
            consumer,
            at,
        });
    }

    /// Acks of these offsets are about to be sent.
    pub fn acking(&mut self, queue: &str, group: &str, offsets: &[u64]) {
        for &o in offsets {
            self.ack_attempts.insert((queue.to_owned(), group.to_owned(), o));
        }
    }

    /// The server confirmed acks of these offsets.
    pub fn acked(&mut self, queue: &str, group: &str, offsets: &[u64]) {
        let at = self.tick();
        for &o in offsets {
            self.acks.entry((queue.to_owned(), group.to_owned(), o)).or_insert(at);
        }
    }

    /// Checks the contract; see [`Report`].
    pub fn check(&self) -> Report {
        let mut r = Report {
            acknowledged: self.acked.len() as u64,
            deliveries: self.delivered.len() as u64,
            ..Report::default()
        };
        let mut last_first: HashMap<(u64, &str, &str), u64> = HashMap::new();
        let mut auto_seen: HashSet<(&str, &str, u64)> = HashSet::new();
        let mut msg_id_copies: BTreeMap<(&str, &str), BTreeSet<u64>> = BTreeMap::new();
        for d in &self.delivered {
            match &d.id {
                Err(why) => {
                    r.corrupted += 1;
                    r.note(format!("{}@{} to {}: {why}", d.queue, d.offset, d.group));
                }
                Ok(id) => {
                    if !self.attempted.contains(id) {
                        r.unexpected += 1;
                        r.note(format!("unexpected: {}@{} holds {id}, never published", d.queue, d.offset));
                    }
                    if let Some(want) = self.acked.get(&(d.queue.clone(), d.offset)) {
                        if want != id {
                            r.corrupted += 1;
                            r.note(format!("{}@{} acknowledged as {want}, delivered as {id}", d.queue, d.offset));
                        }
                    }
                    if self.with_msg_id.contains(id) {
                        msg_id_copies.entry((&d.queue, id)).or_default().insert(d.offset);
                    }
                }
            }
            if let Some(&acked_at) = self.acks.get(&(d.queue.clone(), d.group.clone(), d.offset)) {
                if acked_at < d.at {
                    r.duplicated += 1;
                    r.note(format!("{}@{} delivered to {} after its ack was confirmed", d.queue, d.offset, d.group));
                }
            }
            if self.auto_groups.contains(&(d.queue.clone(), d.group.clone()))
                && !auto_seen.insert((&d.queue, &d.group, d.offset))
            {
                r.duplicated += 1;
                r.note(format!("{}@{} delivered twice to auto-ack group {}", d.queue, d.offset, d.group));
            }
            // First deliveries to one consumer come in offset order.
            if d.deliveries == 1 {
                let k = (d.consumer, d.queue.as_str(), d.group.as_str());
                if let Some(&prev) = last_first.get(&k) {
                    if d.offset <= prev {
                        r.fifo += 1;
                        r.note(format!(
                            "{}/{}: consumer {} got {} after {prev}",
                            d.queue, d.group, d.consumer, d.offset
                        ));
                    }
                }
                last_first.insert(k, d.offset);
            }
        }
        for ((queue, offset), old, new) in &self.reused {
            r.lost += 1;
            r.note(format!("lost: {queue}@{offset} acknowledged for {old}, later for {new}"));
        }
        // Every acknowledged message was acked by every group that must see
        // it (the drain acks whatever is delivered, so a message a group
        // skipped, or never got, has no ack).
        for ((queue, offset), id) in &self.acked {
            for (q, g) in self.complete_groups.iter().filter(|(q, _)| q == queue) {
                if !self.ack_attempts.contains(&(q.clone(), g.clone(), *offset)) {
                    r.lost += 1;
                    r.note(format!("lost: {queue}@{offset} ({id}) never delivered to {g} to ack"));
                }
            }
        }
        for ((queue, id), offsets) in msg_id_copies {
            if offsets.len() > 1 {
                r.duplicated += 1;
                r.note(format!("{queue}: {id} (published with a msg_id) stored at {offsets:?}"));
            }
        }
        r
    }
}

/// What the check found. Every count but the first two must be zero.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Publishes the server acknowledged.
    pub acknowledged: u64,
    /// Deliveries seen.
    pub deliveries: u64,
    /// Acknowledged, never delivered to a group that must see everything.
    pub lost: u64,
    /// Delivered, never published.
    pub unexpected: u64,
    /// A payload that fails its checksum, or differs from what was
    /// acknowledged at that offset.
    pub corrupted: u64,
    /// Delivered to a group after its ack was confirmed; or one `msg_id`
    /// stored twice.
    pub duplicated: u64,
    /// First deliveries to one consumer out of offset order.
    pub fifo: u64,
    /// The first problems, described.
    pub notes: Vec<String>,
}

impl Report {
    fn note(&mut self, n: String) {
        if self.notes.len() < 20 {
            self.notes.push(n);
        }
    }

    /// Nothing broke the contract.
    pub fn clean(&self) -> bool {
        self.lost + self.unexpected + self.corrupted + self.duplicated + self.fifo == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged {}, deliveries {}, lost {}, unexpected {}, corrupted {}, duplicated beyond contract {}, FIFO violations {}",
            self.acknowledged, self.deliveries, self.lost, self.unexpected, self.corrupted, self.duplicated, self.fifo
        )?;
        for n in &self.notes {
            write!(f, "\n  {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_finds_each_kind_of_violation() {
        let mut l = Ledger::default();
        l.complete_groups.insert(("q".into(), "g".into()));
        l.auto_groups.insert(("q".into(), "auto".into()));
        let p = |id: &str| payload(id, 10, 3);
        for id in ["a", "c", "r1", "r2"] {
            l.attempt(id);
        }
        l.attempt_with_msg_id("b");
        l.published("q", 0, "a");
        l.published("q", 1, "b");
        l.published("q", 2, "c");
        // Offset 3 acknowledged twice for different payloads: r1 was lost.
        l.published("q", 3, "r1");
        l.published("q", 3, "r2");
        l.delivered("q", "g", 1, 0, &p("a"), 1);
        l.acking("q", "g", &[0]);
        l.acked("q", "g", &[0]);
        // Delivered after its ack was confirmed.
        l.delivered("q", "g", 2, 0, &p("a"), 2);
        // Never published.
        l.delivered("q", "g", 1, 1, &p("zz"), 1);
        // A bad checksum.
        let mut bad = p("c");
        bad[12] ^= 1;
        l.delivered("q", "g", 3, 2, &bad, 1);
        // Out of order for consumer 3.
        l.delivered("q", "g", 3, 1, &p("b"), 1);
        // The msg_id payload at a second offset.
        l.delivered("q", "g", 4, 9, &p("b"), 1);
        // An auto-ack group sees offset 2 twice.
        l.delivered("q", "auto", 5, 2, &p("c"), 1);
        l.delivered("q", "auto", 6, 2, &p("c"), 1);
        l.acking("q", "g", &[1, 2, 3]);
        let r = l.check();
        // lost: the reused offset; unexpected: zz; corrupted: the CRC and
        // "b acknowledged at 1, zz delivered"; duplicated: after the ack,
        // the msg_id copy and the auto-ack repeat; FIFO: consumer 3.
        assert_eq!((r.lost, r.unexpected, r.corrupted, r.duplicated, r.fifo), (1, 1, 2, 3, 1), "{r}");

        let mut clean = Ledger::default();
        clean.complete_groups.insert(("q".into(), "g".into()));
        clean.attempt("a");
        clean.published("q", 0, "a");
        assert_eq!(clean.check().lost, 1, "never acked by g");
        clean.delivered("q", "g", 1, 0, &p("a"), 1);
        assert_eq!(clean.check().lost, 1, "delivered is not enough: acked");
        clean.acking("q", "g", &[0]);
        assert!(clean.check().clean());
    }
}
