//! One output switch for every command: a table for people, JSON or CSV for scripts.
//!
//! JSON is the API's answer unchanged, so a script sees every field the API gives; the table
//! and CSV show the columns a command names, read from the answer by dotted paths.

use std::io::Write;

use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

use super::Error;

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    #[default]
    Table,
    /// The API's answer as JSON.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// The `-o` flag every client command takes.
#[derive(Clone, Copy, Debug, Default, clap::Args)]
pub struct Output {
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value_t
    )]
    pub format: Format,
}

/// A column: its header and where its value is in an item (`last_job.status`).
#[derive(Clone, Copy, Debug)]
pub struct Column(pub &'static str, pub &'static str);

/// The value at a dotted `path` of `v` (`next_fires.0` indexes an array), `Null` when absent.
pub fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(v, |v, k| match (v, k.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i),
            _ => v.get(k),
        })
        .unwrap_or(&Value::Null)
}

/// A value as a cell: strings bare, `null` empty, arrays of scalars joined by commas, objects
/// as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

impl Output {
    /// Prints a list: `items` in table or CSV, `whole` (the API's answer) as JSON.
    ///
    /// # Errors
    /// [`Error::Io`] when stdout is closed.
    pub fn list(&self, whole: &Value, items: &[Value], cols: &[Column]) -> Result<(), Error> {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| cols.iter().map(|c| cell(at(i, c.1))).collect())
            .collect();
        let headers: Vec<&str> = cols.iter().map(|c| c.0).collect();
        match self.format {
            Format::Json => json(whole),
            Format::Csv => csv(&headers, &rows),
            Format::Table => {
                let mut out = std::io::stdout().lock();
                if rows.is_empty() {
                    writeln!(out, "(none)")?;
                    return Ok(());
                }
                writeln!(out, "{}", table(&headers, rows))?;
                Ok(())
            }
        }
    }

    /// Prints one object: field and value per line in a table, one row in CSV, as is in JSON.
    ///
    /// # Errors
    /// [`Error::Io`] when stdout is closed.
    pub fn one(&self, v: &Value) -> Result<(), Error> {
        let Some(map) = v.as_object() else {
            return json(v);
        };
        match self.format {
            Format::Json => json(v),
            Format::Csv => {
                let headers: Vec<&str> = map.keys().map(String::as_str).collect();
                csv(&headers, &[map.values().map(cell).collect()])
            }
            Format::Table => {
                // `field  value` lines: a table's padding would follow the longest value.
                let width = map.keys().map(|k| k.chars().count()).max().unwrap_or(0);
                let mut out = std::io::stdout().lock();
                for (k, v) in map {
                    writeln!(out, "{k:width$}  {}", cell(v))?;
                }
                Ok(())
            }
        }
    }

    /// Prints a line for people; in JSON or CSV, `v` instead (nothing when it is `null`).
    ///
    /// # Errors
    /// [`Error::Io`] when stdout is closed.
    pub fn done(&self, message: &str, v: &Value) -> Result<(), Error> {
        match self.format {
            Format::Table => writeln!(std::io::stdout().lock(), "{message}")?,
            _ if v.is_null() => {}
            Format::Json => json(v)?,
            Format::Csv => self.one(v)?,
        }
        Ok(())
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> Table {
    let mut t = Table::new();
    // Columns without rules, as `kubectl get` prints them: easy to read and to grep.
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !headers.is_empty() {
        t.set_header(headers.to_vec());
    }
    for r in rows {
        t.add_row(r);
    }
    t
}

fn json(v: &Value) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn csv(headers: &[&str], rows: &[Vec<String>]) -> Result<(), Error> {
    let mut w = ::csv::Writer::from_writer(std::io::stdout().lock());
    w.write_record(headers).map_err(std::io::Error::from)?;
    for r in rows {
        w.write_record(r).map_err(std::io::Error::from)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_read_dotted_paths() {
        let v = json!({"name": "a", "last_job": {"status": "SUCCESS"}, "hours": [1, 13],
                       "tags": {"env": "prod"}, "none": null, "n": 3});
        assert_eq!(cell(at(&v, "last_job.status")), "SUCCESS");
        assert_eq!(cell(at(&v, "hours")), "1,13");
        assert_eq!(cell(at(&v, "tags")), r#"{"env":"prod"}"#);
        assert_eq!(cell(at(&v, "none")), "");
        assert_eq!(cell(at(&v, "missing.deeper")), "");
        assert_eq!(cell(at(&v, "n")), "3");
        assert_eq!(cell(at(&v, "hours.1")), "13");
        assert_eq!(cell(at(&v, "hours.2")), "");
    }
}
