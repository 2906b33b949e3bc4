//! Everything the CLI prints on stdout: plain lines, aligned tables and pretty JSON.
//!
//! All stdout goes through here so that a closed pipe (`nixfleet machines list | head -1`)
//! surfaces as an error `main` treats as success, instead of a panic in `println!`.

use crate::error::Result;
use std::io::Write;

/// Prints one line on stdout.
pub fn line(text: impl AsRef<str>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref().as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("wire types always serialize to JSON");
    line(text)
}

/// A table printed with columns padded to their widest cell.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders the table as text (no trailing newline).
    pub fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let fmt_row = |cells: &[String]| {
            let mut s = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                s.push_str(cell);
                if i + 1 < cols {
                    s.push_str(&" ".repeat(width - cell.chars().count() + 2));
                }
            }
            s.trim_end().to_string()
        };
        let mut lines = vec![fmt_row(&self.header)];
        lines.extend(self.rows.iter().map(|r| fmt_row(r)));
        lines.join("\n")
    }

    /// Prints the table on stdout.
    pub fn print(&self) -> Result<()> {
        line(self.render())
    }
}

/// Shortens a store path to its name part for tables (`/nix/store/abc…-nixos-system-x` → `abc12345…-nixos-system-x`).
pub fn short_path(path: &str) -> String {
    match path.strip_prefix("/nix/store/") {
        Some(rest) if rest.len() > 33 => format!("{}…{}", &rest[..8], &rest[32..]),
        Some(rest) => rest.to_string(),
        None => path.to_string(),
    }
}

/// "—" for absent values in tables.
pub fn or_dash(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "—".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let mut t = Table::new(&["ID", "STATE"]);
        t.row(vec!["web-01".into(), "ok".into()]);
        t.row(vec!["a".into(), "error".into()]);
        assert_eq!(t.render(), "ID      STATE\nweb-01  ok\na       error");
    }

    #[test]
    fn store_paths_are_shortened_but_keep_their_name() {
        let p = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web";
        assert_eq!(short_path(p), "01234567…-nixos-system-web");
    }
}
