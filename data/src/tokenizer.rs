//! Tokenizers: the byte-level default and any Hugging Face `tokenizer.json`.

use crate::error::{DataError, Result};
use std::path::Path;
use std::sync::Arc;

/// Domain-separation string hashed to give the byte tokenizer its fixed id.
const BYTES_ID: &[u8] = b"apiary-data byte tokenizer v1";

/// Special tokens tried, in order, as the end-of-document separator of a `tokenizer.json`.
const EOS_CANDIDATES: &[&str] = &[
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|eos|>",
    "[EOS]",
];

/// Turns text into token ids and back.
///
/// Cheap to clone (the Hugging Face tokenizer is shared behind an `Arc`). Two tokenizers with the
/// same [`Tokenizer::hash`] and [`Tokenizer::eos_id`] cut any text into the same tokens.
#[derive(Clone)]
pub struct Tokenizer {
    kind: Kind,
    hash: [u8; 32],
    vocab_size: usize,
    eos_id: Option<u32>,
}

#[derive(Clone)]
enum Kind {
    /// One token per byte, vocabulary 256.
    Bytes,
    /// A Hugging Face tokenizer loaded from `path`.
    Hf {
        inner: Arc<tokenizers::Tokenizer>,
        path: String,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.name())
            .field("vocab_size", &self.vocab_size)
            .field("eos_id", &self.eos_id)
            .field("hash", &hex::encode(self.hash))
            .finish()
    }
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::bytes()
    }
}

impl Tokenizer {
    /// The byte-level tokenizer: one token per byte (vocabulary 256), no end-of-document token.
    /// Its [`Tokenizer::hash`] is a fixed id.
    pub fn bytes() -> Tokenizer {
        Tokenizer {
            kind: Kind::Bytes,
            hash: *blake3::hash(BYTES_ID).as_bytes(),
            vocab_size: 256,
            eos_id: None,
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    ///
    /// Truncation and padding settings in the file are switched off (documents are tokenized
    /// whole). The end-of-document token is the first of `<|endoftext|>`, `<|end_of_text|>`,
    /// `</s>`, `<eos>`, `<|eos|>`, `[EOS]` present in the vocabulary, if any; override it with
    /// [`Tokenizer::with_eos`]. The hash is blake3 of the file's bytes.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io("cannot read", path, e))?;
        Tokenizer::from_json_bytes(&bytes, &path.display().to_string())
    }

    /// Loads a Hugging Face tokenizer from the bytes of a `tokenizer.json`; `name` is used in
    /// error messages. Same rules as [`Tokenizer::from_file`].
    pub fn from_json_bytes(bytes: &[u8], name: &str) -> Result<Tokenizer> {
        let err = |message: String| DataError::Tokenizer {
            path: name.to_string(),
            message,
        };
        let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| {
            err(format!(
                "not a valid Hugging Face tokenizer.json ({e}); pass the tokenizer.json file \
                 saved by the `tokenizers` library"
            ))
        })?;
        inner
            .with_truncation(None)
            .map_err(|e| err(format!("cannot switch truncation off: {e}")))?;
        inner.with_padding(None);
        let vocab_size = inner.get_vocab_size(true);
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            return Err(err(format!("unusable vocabulary size {vocab_size}")));
        }
        let eos_id = EOS_CANDIDATES.iter().find_map(|t| inner.token_to_id(t));
        Ok(Tokenizer {
            kind: Kind::Hf {
                inner: Arc::new(inner),
                path: name.to_string(),
            },
            hash: *blake3::hash(bytes).as_bytes(),
            vocab_size,
            eos_id,
        })
    }

    /// Sets (or, with `None`, removes) the end-of-document token placed between documents.
    /// Fails if the id is outside the vocabulary.
    pub fn with_eos(mut self, eos_id: Option<u32>) -> Result<Tokenizer> {
        if let Some(id) = eos_id {
            if id as usize >= self.vocab_size {
                return Err(DataError::Tokenizer {
                    path: self.name(),
                    message: format!(
                        "end-of-document id {id} is outside the vocabulary of {}",
                        self.vocab_size
                    ),
                });
            }
        }
        self.eos_id = eos_id;
        Ok(self)
    }

    /// `bytes` for the byte tokenizer, otherwise the path of the `tokenizer.json`.
    pub fn name(&self) -> String {
        match &self.kind {
            Kind::Bytes => "bytes".to_string(),
            Kind::Hf { path, .. } => path.clone(),
        }
    }

    /// Whether this is the byte-level tokenizer.
    pub fn is_bytes(&self) -> bool {
        matches!(self.kind, Kind::Bytes)
    }

    /// Number of token ids (including added/special tokens); every id is below it.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The end-of-document token placed between documents, if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// blake3 of the `tokenizer.json` bytes, or a fixed id for the byte tokenizer.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_bytes(text.as_bytes())
    }

    /// Token ids of raw bytes: any bytes for the byte tokenizer; UTF-8 text for a Hugging Face
    /// tokenizer (an error otherwise).
    pub fn encode_bytes(&self, bytes: &[u8]) -> Result<Vec<u32>> {
        match &self.kind {
            Kind::Bytes => Ok(bytes.iter().map(|&b| u32::from(b)).collect()),
            Kind::Hf { inner, path } => {
                let text = std::str::from_utf8(bytes).map_err(|e| DataError::Tokenizer {
                    path: path.clone(),
                    message: format!("input is not UTF-8 text ({e})"),
                })?;
                let encoding =
                    inner
                        .encode_fast(text, false)
                        .map_err(|e| DataError::Tokenizer {
                            path: path.clone(),
                            message: format!("cannot encode text: {e}"),
                        })?;
                Ok(encoding.get_ids().to_vec())
            }
        }
    }

    /// Token ids of several texts, encoded in parallel for a Hugging Face tokenizer.
    pub fn encode_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        match &self.kind {
            Kind::Bytes => Ok(texts
                .iter()
                .map(|t| t.bytes().map(u32::from).collect())
                .collect()),
            Kind::Hf { inner, path } => {
                let encodings =
                    inner
                        .encode_batch_fast(texts, false)
                        .map_err(|e| DataError::Tokenizer {
                            path: path.clone(),
                            message: format!("cannot encode text: {e}"),
                        })?;
                Ok(encodings
                    .into_iter()
                    .map(|e| e.get_ids().to_vec())
                    .collect())
            }
        }
    }

    /// Text of token ids (special tokens kept). For the byte tokenizer, bytes that are not valid
    /// UTF-8 (e.g. a page cut inside a character) become U+FFFD; ids above 255 are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.kind {
            Kind::Bytes => {
                let bytes = ids
                    .iter()
                    .map(|&id| {
                        u8::try_from(id).map_err(|_| DataError::Tokenizer {
                            path: self.name(),
                            message: format!("token id {id} is not a byte (0..256)"),
                        })
                    })
                    .collect::<Result<Vec<u8>>>()?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Kind::Hf { inner, path } => {
                inner.decode(ids, false).map_err(|e| DataError::Tokenizer {
                    path: path.clone(),
                    message: format!("cannot decode ids: {e}"),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_fixed_hash() {
        let t = Tokenizer::bytes();
        let ids = t.encode("héllo\n").unwrap();
        assert_eq!(ids.len(), "héllo\n".len());
        assert_eq!(t.decode(&ids).unwrap(), "héllo\n");
        assert_eq!(t.vocab_size(), 256);
        assert_eq!(t.eos_id(), None);
        assert_eq!(t.hash(), Tokenizer::bytes().hash());
        assert!(t.decode(&[256]).is_err());
        assert!(t.clone().with_eos(Some(300)).is_err());
    }

    #[test]
    fn bad_tokenizer_json_is_refused() {
        let e = Tokenizer::from_json_bytes(b"{\"not\": 1}", "x.json").unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
    }
}
