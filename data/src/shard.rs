//! Shard discovery, hashing and document streaming (plain text, JSONL, Parquet).

use crate::error::{DataError, Result};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A plain-text shard is cut into pieces of at most this many bytes (after a line end when the
/// window has one), so a huge file is never held whole in memory. The rule depends only on the
/// file's bytes, so every node cuts it the same way.
pub(crate) const TEXT_PIECE_BYTES: usize = 1 << 20;

/// Parquet values requested per `read_records` call.
const PARQUET_BATCH: usize = 1024;

/// The format of a shard, from its file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardFormat {
    /// `*.txt` (or any single file given directly): the whole file is one document.
    Text,
    /// `*.jsonl`: one JSON object per line with a string `text` field; each line a document.
    Jsonl,
    /// `*.parquet`: a UTF-8 `text` column; each row a document.
    Parquet,
}

impl ShardFormat {
    /// The format for a directory entry's extension, or `None` if it is not a shard.
    fn from_extension(path: &Path) -> Option<ShardFormat> {
        match path.extension()?.to_str()? {
            "txt" => Some(ShardFormat::Text),
            "jsonl" => Some(ShardFormat::Jsonl),
            "parquet" => Some(ShardFormat::Parquet),
            _ => None,
        }
    }
}

/// One shard file of a dataset.
#[derive(Clone, Debug)]
pub(crate) struct Shard {
    /// Where the file is.
    pub(crate) path: PathBuf,
    /// File name (the key in the manifest).
    pub(crate) name: String,
    /// How its documents are stored.
    pub(crate) format: ShardFormat,
}

/// The shards at `path`: the file itself (a text file unless it ends in `.jsonl`/`.parquet`), or a
/// directory's `*.txt`, `*.jsonl` and `*.parquet` files (not subdirectories) in name order.
pub(crate) fn discover(path: &Path) -> Result<Vec<Shard>> {
    let meta = std::fs::metadata(path).map_err(|e| DataError::io("cannot read", path, e))?;
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    if meta.is_file() {
        let format = ShardFormat::from_extension(path).unwrap_or(ShardFormat::Text);
        return Ok(vec![Shard {
            path: path.to_path_buf(),
            name: name_of(path),
            format,
        }]);
    }
    let mut shards = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| DataError::io("cannot list", path, e))?;
    for entry in entries {
        let p = entry
            .map_err(|e| DataError::io("cannot list", path, e))?
            .path();
        let name = name_of(&p);
        if name.starts_with('.') || !p.is_file() {
            continue;
        }
        match ShardFormat::from_extension(&p) {
            Some(format) => shards.push(Shard {
                path: p,
                name,
                format,
            }),
            None => tracing::debug!(file = %p.display(), "not a shard (extension), skipped"),
        }
    }
    if shards.is_empty() {
        return Err(DataError::Invalid(format!(
            "dataset directory {} has no shards; put *.txt, *.jsonl or *.parquet files in it",
            path.display()
        )));
    }
    shards.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(shards)
}

/// blake3 and size of a file, read in a streaming fashion.
pub(crate) fn hash_file(path: &Path) -> Result<([u8; 32], u64)> {
    let file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(|e| DataError::io("cannot read", path, e))?;
    Ok((*hasher.finalize().as_bytes(), hasher.count()))
}

/// A piece of a document: a whole document, or (for plain text) a part of one.
pub(crate) struct Piece {
    /// The text (UTF-8 unless read from a text shard with `need_utf8 == false`).
    pub(crate) bytes: Vec<u8>,
    /// Whether this piece starts a new document.
    pub(crate) new_doc: bool,
}

/// Streams the pieces of `shard` to `sink` in order. With `need_utf8`, plain-text pieces are
/// checked to be UTF-8 (JSONL and Parquet text always is).
pub(crate) fn read_pieces(
    shard: &Shard,
    need_utf8: bool,
    sink: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<()> {
    match shard.format {
        ShardFormat::Text => read_text(shard, need_utf8, sink),
        ShardFormat::Jsonl => read_jsonl(shard, sink),
        ShardFormat::Parquet => read_parquet(shard, sink),
    }
}

/// Where the next piece of a text buffer ends: the whole buffer at the end of the file if it
/// fits, else after the last `\n` in the first [`TEXT_PIECE_BYTES`] bytes, else at the last UTF-8
/// character boundary at or before that limit.
fn text_cut(buf: &[u8], eof: bool) -> usize {
    if eof && buf.len() <= TEXT_PIECE_BYTES {
        return buf.len();
    }
    let window = &buf[..TEXT_PIECE_BYTES.min(buf.len())];
    if let Some(nl) = window.iter().rposition(|&b| b == b'\n') {
        return nl + 1;
    }
    let mut cut = window.len();
    // Step back over at most 3 continuation bytes (0b10xx_xxxx) to a character start.
    while cut > window.len().saturating_sub(3) && cut < buf.len() && (buf[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut == 0 {
        window.len()
    } else {
        cut
    }
}

fn read_text(
    shard: &Shard,
    need_utf8: bool,
    sink: &mut dyn FnMut(Piece) -> Result<()>,
) -> Result<()> {
    let path = &shard.path;
    let mut file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(2 * TEXT_PIECE_BYTES);
    let mut eof = false;
    let mut offset = 0u64;
    let mut first = true;
    loop {
        // Fill to more than one piece (or the end of the file).
        while !eof && buf.len() <= TEXT_PIECE_BYTES {
            let start = buf.len();
            buf.resize(start + TEXT_PIECE_BYTES, 0);
            let n = file
                .read(&mut buf[start..])
                .map_err(|e| DataError::io("cannot read", path, e))?;
            buf.truncate(start + n);
            eof = n == 0;
        }
        if buf.is_empty() {
            return Ok(());
        }
        let cut = text_cut(&buf, eof);
        let rest = buf.split_off(cut);
        let piece = std::mem::replace(&mut buf, rest);
        if need_utf8 {
            if let Err(e) = std::str::from_utf8(&piece) {
                return Err(DataError::shard(
                    &shard.name,
                    format!(
                        "not UTF-8 text at byte {} ({e}); convert the file to UTF-8 or use the \
                         byte tokenizer",
                        offset + e.valid_up_to() as u64
                    ),
                ));
            }
        }
        offset += piece.len() as u64;
        sink(Piece {
            bytes: piece,
            new_doc: first,
        })?;
        first = false;
    }
}

/// One JSONL record: only `text` is read, other fields are ignored.
#[derive(serde::Deserialize)]
struct JsonlRow<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

fn read_jsonl(shard: &Shard, sink: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
    let path = &shard.path;
    let file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::io("cannot read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: JsonlRow<'_> = serde_json::from_slice(&line).map_err(|e| {
            DataError::shard(
                format!("{}:{line_no}", shard.name),
                format!(
                    "not a JSON object with a string `text` field ({e}); every non-empty line \
                     of a .jsonl shard must be one such object"
                ),
            )
        })?;
        sink(Piece {
            bytes: row.text.into_owned().into_bytes(),
            new_doc: true,
        })?;
    }
}

fn read_parquet(shard: &Shard, sink: &mut dyn FnMut(Piece) -> Result<()>) -> Result<()> {
    use parquet::basic::Type as PhysicalType;
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::SerializedFileReader;

    let path = &shard.path;
    let bad = |message: String| DataError::shard(&shard.name, message);
    let pq = |what: &str, e: parquet::errors::ParquetError| {
        bad(format!(
            "cannot {what} ({e}); check that the file is a complete Parquet file (snappy, \
             zstd when built with the `zstd` feature, or uncompressed)"
        ))
    };
    let file = File::open(path).map_err(|e| DataError::io("cannot open", path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| pq("read the Parquet footer", e))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let column = (0..schema.num_columns())
        .find(|&i| schema.column(i).path().string() == "text")
        .ok_or_else(|| {
            bad(
                "has no top-level `text` column; Parquet shards need a UTF-8 string column \
                 named `text` (as FineWeb ships)"
                    .to_string(),
            )
        })?;
    let descr = schema.column(column);
    if descr.physical_type() != PhysicalType::BYTE_ARRAY || descr.max_rep_level() != 0 {
        return Err(bad(format!(
            "column `text` is {:?} (repetition level {}), not a plain string column",
            descr.physical_type(),
            descr.max_rep_level()
        )));
    }
    let mut values = Vec::with_capacity(PARQUET_BATCH);
    let mut defs: Vec<i16> = Vec::with_capacity(PARQUET_BATCH);
    let mut row = 0u64;
    let mut nulls = 0u64;
    for rg in 0..reader.num_row_groups() {
        let group = reader
            .get_row_group(rg)
            .map_err(|e| pq("read a row group", e))?;
        let ColumnReader::ByteArrayColumnReader(mut col) = group
            .get_column_reader(column)
            .map_err(|e| pq("read the `text` column", e))?
        else {
            return Err(bad("column `text` is not a byte-array column".to_string()));
        };
        loop {
            values.clear();
            defs.clear();
            let (records, read_values, _levels) = col
                .read_records(PARQUET_BATCH, Some(&mut defs), None, &mut values)
                .map_err(|e| pq("decode the `text` column", e))?;
            if records == 0 {
                break;
            }
            nulls += (records - read_values) as u64;
            for v in values.drain(..) {
                let text = v.as_utf8().map_err(|e| {
                    bad(format!(
                        "row {row}: `text` is not UTF-8 ({e}); the column must hold strings"
                    ))
                })?;
                sink(Piece {
                    bytes: text.as_bytes().to_vec(),
                    new_doc: true,
                })?;
                row += 1;
            }
        }
    }
    if nulls > 0 {
        tracing::warn!(shard = %shard.name, nulls, "null `text` values skipped");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_cut_rules() {
        // Fits at the end of the file: everything.
        assert_eq!(text_cut(b"abc", true), 3);
        // Longer than a piece: after the last newline in the window.
        let mut buf = vec![b'a'; TEXT_PIECE_BYTES + 10];
        buf[100] = b'\n';
        assert_eq!(text_cut(&buf, false), 101);
        // No newline: at a character boundary.
        let mut buf = vec![b'a'; TEXT_PIECE_BYTES - 1];
        buf.extend("é".as_bytes());
        buf.extend(b"zz");
        assert_eq!(text_cut(&buf, false), TEXT_PIECE_BYTES - 1);
        let buf = vec![b'a'; TEXT_PIECE_BYTES + 5];
        assert_eq!(text_cut(&buf, false), TEXT_PIECE_BYTES);
    }
}
