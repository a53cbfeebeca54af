//! Topic routing: persistent bindings `queue ← pattern`. A topic is words
//! separated by `.`; in a pattern `*` matches exactly one word and `#` zero
//! or more. A topic publish stores a copy in every queue with a matching
//! binding (fan-out = pattern `#`).
//!
//! The bindings live in `<data>/bindings`, one `queue pattern` per line
//! under a version line, replaced crash-safely on every change.

use std::collections::BTreeSet;

/// File name of the bindings in the data directory.
pub const BINDINGS_FILE: &str = "bindings";

fn valid_word(w: &str) -> bool {
    (1..=200).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// Whether `topic` is a valid topic: 1–200 bytes of words of
/// `[A-Za-z0-9_-]` separated by single dots.
pub fn valid_topic(topic: &str) -> bool {
    topic.len() <= 200 && topic.split('.').all(valid_word)
}

/// Whether `pattern` is a valid binding pattern: like a topic, where a word
/// may also be `*` or `#`.
pub fn valid_pattern(pattern: &str) -> bool {
    pattern.len() <= 200 && pattern.split('.').all(|w| w == "*" || w == "#" || valid_word(w))
}

/// Whether `topic` matches `pattern`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    // ok[j]: pattern prefix consumed so far matches topic prefix t[..j].
    let mut ok = vec![false; t.len() + 1];
    ok[0] = true;
    for w in p {
        let mut next = vec![false; t.len() + 1];
        match w {
            "#" => {
                let mut any = false;
                for j in 0..=t.len() {
                    any |= ok[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 0..t.len() {
                    if ok[j] && (w == "*" || w == t[j]) {
                        next[j + 1] = true;
                    }
                }
            }
        }
        ok = next;
    }
    ok[t.len()]
}

/// The set of bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    set: BTreeSet<(String, String)>,
}

impl Bindings {
    /// Adds `queue ← pattern`; returns whether it is new.
    pub fn bind(&mut self, queue: &str, pattern: &str) -> bool {
        self.set.insert((queue.to_owned(), pattern.to_owned()))
    }

    /// Removes `queue ← pattern`; returns whether it was there.
    pub fn unbind(&mut self, queue: &str, pattern: &str) -> bool {
        self.set.remove(&(queue.to_owned(), pattern.to_owned()))
    }

    /// Removes every binding of `queue`.
    pub fn remove_queue(&mut self, queue: &str) -> bool {
        let before = self.set.len();
        self.set.retain(|(q, _)| q != queue);
        before != self.set.len()
    }

    /// Every `(queue, pattern)`, sorted.
    pub fn list(&self) -> Vec<(String, String)> {
        self.set.iter().cloned().collect()
    }

    /// The queues a topic routes to, each once, sorted.
    pub fn route(&self, topic: &str) -> Vec<String> {
        let qs: BTreeSet<&String> = self.set.iter().filter(|(_, p)| matches(p, topic)).map(|(q, _)| q).collect();
        qs.into_iter().cloned().collect()
    }

    /// The file's contents.
    pub fn encode(&self) -> String {
        let mut s = String::from("# GMQ bindings: queue pattern\nversion 1\n");
        for (q, p) in &self.set {
            s.push_str(q);
            s.push(' ');
            s.push_str(p);
            s.push('\n');
        }
        s
    }

    /// Parses the file.
    pub fn decode(text: &str) -> Result<Bindings, String> {
        let mut b = Bindings::default();
        let mut version = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "version 1" {
                version = true;
                continue;
            }
            match line.split_once(' ') {
                Some((q, p)) if crate::valid_name(q) && valid_pattern(p) => {
                    b.bind(q, p);
                }
                _ => return Err(format!("line {}: expected `queue pattern`, found {line:?}", i + 1)),
            }
        }
        if !version {
            return Err("no version line".into());
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, t, want) in [
            ("a.b", "a.b", true),
            ("a.*", "a.b", true),
            ("a.*", "a.b.c", false),
            ("a.*", "a", false),
            ("a.#", "a", true),
            ("a.#", "a.b.c", true),
            ("#", "x.y", true),
            ("#.c", "c", true),
            ("#.c", "a.b.c", true),
            ("#.c", "a.b", false),
            ("*.b.#", "a.b", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("*", "a.b", false),
        ] {
            assert_eq!(matches(p, t), want, "{p} vs {t}");
        }
        assert!(valid_topic("orders.eu.created") && !valid_topic("a..b") && !valid_topic("a.*"));
        assert!(valid_pattern("a.*.#") && !valid_pattern("a.b*") && !valid_pattern(""));
        let mut b = Bindings::default();
        b.bind("q1", "orders.#");
        b.bind("q2", "*.eu.*");
        b.bind("q2", "orders.eu.created");
        assert_eq!(b.route("orders.eu.created"), vec!["q1", "q2"]);
        assert_eq!(Bindings::decode(&b.encode()), Ok(b));
    }
}
