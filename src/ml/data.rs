//! Labelled text rows and the file formats they come in.
//!
//! Two formats: JSON lines (`{"text": "...", "label": "..."}`, label optional or null) and
//! CSV with a header holding `text` and (optionally) `label` columns. Errors name the
//! 1-based line of the file and what is wrong with it, so a user can fix it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One row: a text and, unless it is unlabelled transfer data, its label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// The text to classify.
    pub text: String,
    /// The label name, or `None` for an unlabelled row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// The two file formats accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// One JSON object per line.
    JsonLines,
    /// Comma-separated values with a header row.
    Csv,
}

impl DataFormat {
    /// Guesses the format from a file name: `.csv` is CSV, anything else JSON lines.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => DataFormat::Csv,
            _ => DataFormat::JsonLines,
        }
    }
}

/// A problem with an input file, located by line.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read data: {0}")]
    Io(#[from] std::io::Error),
    /// A line is malformed or lacks a field.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number in the file.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no rows.
    #[error("the data holds no rows")]
    Empty,
    /// The file is larger than allowed.
    #[error("the data has more than {limit} rows")]
    TooManyRows {
        /// The limit.
        limit: usize,
    },
}

/// Limits applied while reading, so that a huge upload fails early and clearly.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Most rows accepted.
    pub max_rows: usize,
    /// Longest text accepted, in bytes.
    pub max_text_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { max_rows: 10_000_000, max_text_bytes: 1 << 20 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    text: Option<serde_json::Value>,
    #[serde(default)]
    label: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<serde_json::Value>,
}

/// Parses one JSON-lines line; `None` for a blank line.
///
/// A label may be a string, a number (taken as its decimal text) or null/absent.
///
/// # Errors
/// [`DataError::Line`] naming `line` when the JSON is malformed or `text` is missing.
pub fn parse_json_line(
    line: usize,
    raw: &str,
    limits: &ReadLimits,
) -> Result<Option<Example>, DataError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = |message: String| DataError::Line { line, message };
    let row: JsonRow = serde_json::from_str(raw).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let text = match row.text {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(bad("`text` must be a string".into())),
        None => return Err(bad("missing field `text`".into())),
    };
    let label = match row.label {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        Some(_) => return Err(bad("`label` must be a string, a number or null".into())),
    };
    check_row(line, Example { text, label }, limits).map(Some)
}

fn check_row(line: usize, example: Example, limits: &ReadLimits) -> Result<Example, DataError> {
    let bad = |message: String| DataError::Line { line, message };
    if example.text.len() > limits.max_text_bytes {
        return Err(bad(format!("text is longer than {} bytes", limits.max_text_bytes)));
    }
    if example.text.trim().is_empty() {
        return Err(bad("`text` is empty".into()));
    }
    if let Some(label) = &example.label {
        if label.trim().is_empty() {
            return Err(bad("`label` is empty (omit it or use null for an unlabelled row)".into()));
        }
    }
    Ok(example)
}

/// Reads every row of a JSON-lines stream.
///
/// # Errors
/// The first bad line, an I/O error, or [`DataError::Empty`].
pub fn read_json_lines<R: Read>(reader: R, limits: &ReadLimits) -> Result<Vec<Example>, DataError> {
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                DataError::Line { line: i + 1, message: "not valid UTF-8".into() }
            }
            _ => DataError::Io(e),
        })?;
        if let Some(example) = parse_json_line(i + 1, &line, limits)? {
            push_row(&mut rows, example, limits)?;
        }
    }
    non_empty(rows)
}

/// Reads every row of a CSV stream with a header naming `text` and optionally `label`.
///
/// An empty label cell makes an unlabelled row.
///
/// # Errors
/// The first bad record (by its line), a missing column, or [`DataError::Empty`].
pub fn read_csv<R: Read>(reader: R, limits: &ReadLimits) -> Result<Vec<Example>, DataError> {
    let mut csv = csv::ReaderBuilder::new().flexible(false).from_reader(reader);
    let header_error = |message: String| DataError::Line { line: 1, message };
    let headers = csv.headers().map_err(|e| header_error(format!("invalid CSV header: {e}")))?;
    let column = |name: &str| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let text_col =
        column("text").ok_or_else(|| header_error("header has no `text` column".into()))?;
    let label_col = column("label");

    let mut rows = Vec::new();
    for record in csv.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            DataError::Line { line, message: format!("invalid CSV record: {e}") }
        })?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let text = record.get(text_col).unwrap_or_default().to_string();
        let label = label_col
            .and_then(|c| record.get(c))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string);
        push_row(&mut rows, check_row(line, Example { text, label }, limits)?, limits)?;
    }
    non_empty(rows)
}

fn push_row(
    rows: &mut Vec<Example>,
    example: Example,
    limits: &ReadLimits,
) -> Result<(), DataError> {
    if rows.len() >= limits.max_rows {
        return Err(DataError::TooManyRows { limit: limits.max_rows });
    }
    rows.push(example);
    Ok(())
}

fn non_empty(rows: Vec<Example>) -> Result<Vec<Example>, DataError> {
    if rows.is_empty() {
        return Err(DataError::Empty);
    }
    Ok(rows)
}

/// Reads a data file, its format chosen by [`DataFormat::from_path`].
///
/// # Errors
/// As [`read_json_lines`] and [`read_csv`].
pub fn read_file(path: &Path, limits: &ReadLimits) -> Result<Vec<Example>, DataError> {
    let file = File::open(path)?;
    match DataFormat::from_path(path) {
        DataFormat::JsonLines => read_json_lines(file, limits),
        DataFormat::Csv => read_csv(file, limits),
    }
}

/// Row counts of a data set: per label (sorted by name) and unlabelled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSummary {
    /// All rows.
    pub rows: usize,
    /// Rows per label name.
    pub labels: BTreeMap<String, usize>,
    /// Rows without a label.
    pub unlabelled: usize,
}

impl DataSummary {
    /// Counts the rows of `examples`.
    pub fn of(examples: &[Example]) -> Self {
        let mut summary = DataSummary { rows: examples.len(), ..Default::default() };
        for example in examples {
            match &example.label {
                Some(label) => *summary.labels.entry(label.clone()).or_default() += 1,
                None => summary.unlabelled += 1,
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_with_unlabelled_rows_and_blank_lines() {
        let text = "{\"text\": \"good\", \"label\": \"pos\"}\n\n{\"text\": \"meh\"}\n{\"text\": \"x\", \"label\": 3}\n";
        let rows = read_json_lines(text.as_bytes(), &ReadLimits::default()).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].label, None);
        assert_eq!(rows[2].label.as_deref(), Some("3"));
        let summary = DataSummary::of(&rows);
        assert_eq!(summary.unlabelled, 1);
        assert_eq!(summary.labels["pos"], 1);
    }

    #[test]
    fn json_errors_name_the_line() {
        let cases = [
            ("{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", "line 2"),
            ("{\"text\": \"a\"}\n\n{oops\n", "line 3"),
            ("{\"text\": \"\"}\n", "line 1: `text` is empty"),
            ("{\"text\": 5}\n", "line 1: `text` must be a string"),
        ];
        for (input, expected) in cases {
            let err = read_json_lines(input.as_bytes(), &ReadLimits::default()).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{input:?}: {err}");
        }
        let err = read_json_lines("\n".as_bytes(), &ReadLimits::default()).unwrap_err();
        assert!(matches!(err, DataError::Empty));
    }

    #[test]
    fn csv_with_quotes_and_missing_labels() {
        let text = "label,text\npos,\"good, really\"\n,unlabelled one\n";
        let rows = read_csv(text.as_bytes(), &ReadLimits::default()).unwrap();
        assert_eq!(rows[0].text, "good, really");
        assert_eq!(rows[1].label, None);
        let err = read_csv("label,body\na,b\n".as_bytes(), &ReadLimits::default()).unwrap_err();
        assert!(err.to_string().contains("no `text` column"), "{err}");
        let err = read_csv("text,label\na,b\nc\n".as_bytes(), &ReadLimits::default()).unwrap_err();
        assert!(err.to_string().starts_with("line 3"), "{err}");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = ReadLimits { max_rows: 1, max_text_bytes: 4 };
        let err = read_json_lines("{\"text\": \"abcdef\"}".as_bytes(), &limits).unwrap_err();
        assert!(err.to_string().contains("longer than 4 bytes"), "{err}");
        let two = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
        assert!(matches!(
            read_json_lines(two.as_bytes(), &limits),
            Err(DataError::TooManyRows { .. })
        ));
    }
}
