//! Markdown tables and the number formats reports use.

use std::fmt::Write as _;

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A markdown table built row by row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = (S, Align)>) -> Self {
        Table { headers: headers.into_iter().map(|(h, a)| (h.into(), a)).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are left empty, extra cells are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells.into_iter().map(Into::into).collect();
        r.resize(self.headers.len(), String::new());
        self.rows.push(r);
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as GitHub-flavoured markdown, columns padded to line up.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut widths: Vec<usize> = self.headers.iter().map(|(h, _)| esc(h).chars().count().max(3)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(esc(c).chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<String>| {
            out.push('|');
            for ((c, w), (_, a)) in cells.iter().zip(&widths).zip(&self.headers) {
                let _ = match a {
                    Align::Left => write!(out, " {c:<w$} |"),
                    Align::Right => write!(out, " {c:>w$} |"),
                };
            }
            out.push('\n');
        };
        line(&mut out, self.headers.iter().map(|(h, _)| esc(h)).collect());
        let rule = widths
            .iter()
            .zip(&self.headers)
            .map(|(w, (_, a))| match a {
                Align::Left => format!(":{}", "-".repeat(w - 1)),
                Align::Right => format!("{}:", "-".repeat(w - 1)),
            })
            .collect();
        line(&mut out, rule);
        for r in &self.rows {
            line(&mut out, r.iter().map(|c| esc(c)).collect());
        }
        out
    }
}

/// An integer-ish quantity with thin grouping: `1 234 567`.
pub fn grouped(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(ch);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A value with three significant digits or so: `0.123`, `12.3`, `1234`.
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        grouped(x)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A latency given in µs, in the unit that reads best: `850 µs`, `4.21 ms`.
pub fn latency_us(us: f64) -> String {
    if !us.is_finite() {
        "–".into()
    } else if us >= 1_000_000.0 {
        format!("{} s", sig3(us / 1_000_000.0))
    } else if us >= 1000.0 {
        format!("{} ms", sig3(us / 1000.0))
    } else {
        format!("{} µs", sig3(us))
    }
}

/// A percentage: `72.4 %`.
pub fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1} %")
    } else {
        "–".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown() {
        let mut t = Table::new([("name", Align::Left), ("n", Align::Right)]);
        t.row(["a|b", "1"]);
        t.row(["long name"]);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.to_markdown(),
            "| name      |   n |\n\
             | :-------- | --: |\n\
             | a\\|b      |   1 |\n\
             | long name |     |\n"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(grouped(1234567.4), "1 234 567");
        assert_eq!(grouped(-1000.0), "-1 000");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(sig3(0.1234), "0.123");
        assert_eq!(sig3(12.34), "12.3");
        assert_eq!(sig3(123.4), "123");
        assert_eq!(sig3(12345.0), "12 345");
        assert_eq!(latency_us(850.0), "850 µs");
        assert_eq!(latency_us(4210.0), "4.21 ms");
        assert_eq!(latency_us(2_500_000.0), "2.50 s");
        assert_eq!(pct(72.44), "72.4 %");
        assert_eq!(pct(f64::NAN), "–");
    }
}
